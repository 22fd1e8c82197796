"""EfficientAD (Batzner et al.): PDN sizes, its losses on hand-made tensors, quantile normalisation,
the Method contract (fit/predict/state), seeded determinism and bit-identical kill+resume."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from adrepro.methods.base import FitContext, Teacher
from adrepro.methods.efficientad import losses as L
from adrepro.methods.efficientad.method import EfficientAD, ImageSampler
from adrepro.methods.efficientad.model import EfficientADAutoencoder, normalise_map, pdn_output_size
from adrepro.methods.efficientad.pdn import build_pdn
from adrepro.training import Interrupted

sys.path.insert(0, str(Path(__file__).parent))
from conftest import TinyDataset  # noqa: E402


TINY = dict(image_size=32, steps=4, pdn_width=0.125, ae_latent=8, checkpoint_every=2, seed=0)


def teacher_file(path, arch="pdn_s", out_channels=16, width=0.125, seed=0) -> Teacher:
    torch.manual_seed(seed)
    net = build_pdn("S" if arch == "pdn_s" else "M", out_channels, width)
    from adrepro.methods.teachers.provision import save_teacher_file  # records state_sha256 (checked on load)

    save_teacher_file(path, arch, {"out_channels": out_channels, "width": width}, net.state_dict(), {"id": "random"})
    return Teacher("random_pdn", path, {"paper_teacher": False})


def fit(tmp_path, name="run", stop_after=None, penalty=True, val=True, **opts):
    teacher = teacher_file(tmp_path / "teacher.pt")
    method = EfficientAD({**TINY, **opts}, teacher)
    ctx = FitContext(name, tmp_path / name, seed=0, stop_after=stop_after,
                     extra={"penalty": TinyDataset(40, n=5, seed=3) if penalty else None})
    summary = method.fit(TinyDataset(32, n=6, seed=1), TinyDataset(32, n=3, seed=2) if val else None, ctx)
    return method, summary


# ---- PDN (EfficientAD Tables 6-7) ----
def _n(module):
    return sum(p.numel() for p in module.parameters())


def test_pdn_parameter_counts_match_layer_shapes():
    # PDN-S: 4x4 3->128, 4x4 128->256, 3x3 256->256, 4x4 256->384 (weights + biases)
    s = (3 * 128 * 16 + 128) + (128 * 256 * 16 + 256) + (256 * 256 * 9 + 256) + (256 * 384 * 16 + 384)
    assert s == 2_694_144
    assert _n(build_pdn("S")) == s
    assert _n(build_pdn("S", 768)) == s - (256 * 384 * 16 + 384) + (256 * 768 * 16 + 768)
    # PDN-M teacher: 4x4 3->256, 4x4 256->512, 1x1 512->512, 3x3 512->512, 4x4 512->384, 1x1 384->384
    m = ((3 * 256 * 16 + 256) + (256 * 512 * 16 + 512) + (512 * 512 + 512) + (512 * 512 * 9 + 512)
         + (512 * 384 * 16 + 384) + (384 * 384 + 384))
    assert _n(build_pdn("M")) == m == 8_026_624
    # PDN-M student (EfficientAD: the last two convs carry the doubled output): ... 4x4 512->768, 1x1 768->768
    ms = m - (512 * 384 * 16 + 384) - (384 * 384 + 384) + (512 * 768 * 16 + 768) + (768 * 768 + 768)
    student = build_pdn("M", 768)
    assert _n(student) == ms == 11_615_488
    assert (student[-3].in_channels, student[-3].out_channels, student[-1].in_channels) == (512, 768, 768)


def test_pdn_and_autoencoder_output_sizes_at_256():
    for size in ("S", "M"):
        assert pdn_output_size(build_pdn(size, 8, 0.03), 256) == 64
    ae = EfficientADAutoencoder(8, 256, 64, latent=64)
    assert ae.sizes == [3, 8, 15, 32, 63, 127]
    assert ae.encoder[-1].kernel_size == (8, 8)
    with torch.no_grad():
        assert ae.encoder(torch.zeros(1, 3, 256, 256)).shape == (1, 64, 1, 1)
        assert ae.eval()(torch.zeros(1, 3, 256, 256)).shape == (1, 8, 64, 64)


# ---- losses ----
def test_hard_loss_selects_exactly_the_top_0_1_percent():
    d = torch.randperm(10_000).double() + 1.0  # distinct squared distances 1..10000
    student = torch.zeros(1, 100, 10, 10, dtype=torch.double, requires_grad=True)
    teacher = d.sqrt().view(1, 100, 10, 10)
    loss = L.hard_loss(teacher, student, p_hard=0.999)
    assert loss.item() == pytest.approx(np.mean(np.arange(9991, 10001)))
    loss.backward()
    assert int((student.grad != 0).sum()) == 10  # only the 10 largest of 10000 get a gradient
    assert set(d[student.grad.flatten() != 0].tolist()) == set(range(9991, 10001))


def test_st_penalty_ta_losses_are_channel_and_position_means():
    t = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]]])  # [1,2,1,2]
    s = torch.tensor([[[[0.0, 0.0]], [[1.0, 1.0]]]])
    # eq 11/14: squared distances 1,4 | 4,9 -> channel means 2.5, 6.5 -> position mean 4.5
    assert L.st_loss(t, s).item() == pytest.approx(4.5)
    assert L.st_loss(t, s, reduction="sum").item() == pytest.approx(9.0)
    assert L.ta_loss(t, s).item() == pytest.approx(4.5)
    assert L.penalty_loss(t).item() == pytest.approx((1 + 4 + 9 + 16) / 4)  # eq 12
    assert L.distillation_loss(torch.tensor(2.0), torch.tensor(3.0)).item() == 5.0  # eq 13


# ---- quantile normalisation ----
def test_normalise_map_sends_q_a_to_0_and_q_b_to_0_1():
    m = torch.tensor([2.0, 4.0, 6.0])
    assert torch.allclose(normalise_map(m, 2.0, 6.0), torch.tensor([0.0, 0.05, 0.1]))


def test_fit_quantiles_come_from_validation_maps(tmp_path):
    method, summary = fit(tmp_path)
    assert summary["quantiles_from"] == "validation set (3 images)"  # no val_source in ctx.extra: counted
    assert summary["teacher_norm"] == "train mean/std" and summary["steps"] == TINY["steps"]
    m = method.model
    val = TinyDataset(32, n=3, seed=2).images
    with torch.no_grad():
        raw = m.raw_maps(m.normalise_input(val))
    for k in range(raw.shape[1]):
        qa, qb = np.quantile(raw[:, k].double().numpy().ravel(), [0.9, 0.995])
        assert m.quantiles[k].tolist() == pytest.approx([qa, qb], rel=1e-5)
        norm = normalise_map(torch.tensor([qa, qb]), m.quantiles[k, 0].double(), m.quantiles[k, 1].double())
        assert norm.tolist() == pytest.approx([0.0, 0.1], abs=1e-6)
    # combined map = 0.5 * ST + 0.5 * AE of the normalised maps; score = its max
    scores, maps = method.predict(val)
    q = m.quantiles.double()
    comb = 0.5 * normalise_map(raw[:, 0].double(), q[0, 0], q[0, 1]) + 0.5 * normalise_map(raw[:, 1].double(), q[1, 0], q[1, 1])
    comb = torch.nn.functional.interpolate(comb[:, None], size=(32, 32), mode="bilinear", align_corners=False)[:, 0]
    assert torch.allclose(maps.double(), comb, atol=1e-5)
    assert torch.equal(scores, maps.flatten(1).amax(1))


def test_teacher_normalisation_is_train_channel_mean_std(tmp_path):
    method, _ = fit(tmp_path)
    m = method.model
    with torch.no_grad():
        y = m.teacher(m.normalise_input(TinyDataset(32, n=6, seed=1).images)).double()
    assert torch.allclose(m.teacher_mean.flatten().double(), y.mean(dim=(0, 2, 3)), atol=1e-5)
    assert torch.allclose(m.teacher_std.flatten().double(), y.permute(1, 0, 2, 3).flatten(1).std(1, unbiased=False), atol=1e-4)


# ---- Method contract ----
def test_predict_maps_have_the_input_size_and_state_round_trips(tmp_path):
    method, _ = fit(tmp_path)
    images = torch.rand(2, 3, 40, 48)
    scores, maps = method.predict(images)
    assert scores.shape == (2,) and maps.shape == (2, 40, 48)
    assert torch.allclose(scores, maps.flatten(1).amax(1))
    state = method.state_dict()
    assert {"teacher_mean", "teacher_std", "quantiles"} <= set(state["model"])
    other = EfficientAD(dict(TINY), teacher_file(tmp_path / "t2.pt", seed=5))
    other.load_state_dict(state)
    s2, m2 = other.predict(images)
    assert torch.equal(scores, s2) and torch.equal(maps, m2)
    assert method.inference_modules() == [method.model]


def test_penalty_off_and_no_validation_are_recorded(tmp_path):
    _, summary = fit(tmp_path, penalty=False, val=False)
    assert summary["penalty"] == "off (no penalty images)"
    assert summary["quantiles_from"] == "train/good (6 training images; no validation set)"
    assert summary["sampling"] == "shuffle" and "sfm_in_ta" not in summary  # no SFM in the baseline


# ---- training-image sampling ----
def test_shuffle_sampling_visits_each_image_once_per_epoch_and_resumes_statelessly():
    n, g = 5, torch.Generator().manual_seed(0)
    sampler = ImageSampler(n, "shuffle", seed=3, generator=g)
    state = g.get_state()
    order = [sampler.index(step) for step in range(3 * n)]
    assert torch.equal(g.get_state(), state)  # the run's generator is not consumed
    epochs = [order[e * n:(e + 1) * n] for e in range(3)]
    assert all(sorted(e) == list(range(n)) for e in epochs)  # without replacement within an epoch
    assert len({tuple(e) for e in epochs}) > 1  # a new permutation each epoch
    # a sampler created at step 7 (a resumed run) continues the same order
    fresh = ImageSampler(n, "shuffle", seed=3, generator=torch.Generator().manual_seed(99))
    assert [fresh.index(step) for step in range(7, 3 * n)] == order[7:]
    other_seed = ImageSampler(n, "shuffle", seed=4, generator=g)
    assert [other_seed.index(step) for step in range(3 * n)] != order


def test_replacement_sampling_is_iid_draws_from_the_run_generator():
    n = 3
    sampler = ImageSampler(n, "replacement", seed=0, generator=torch.Generator().manual_seed(5))
    expected_g = torch.Generator().manual_seed(5)
    expected = [int(torch.randint(n, (1,), generator=expected_g)) for _ in range(30)]
    order = [sampler.index(step) for step in range(30)]
    assert order == expected
    assert any(sorted(order[i:i + n]) != list(range(n)) for i in range(0, 30, n))  # repeats within an "epoch"


def test_fit_uses_the_configured_sampling(tmp_path, monkeypatch):
    seen = []
    original = ImageSampler.index

    def spy(self, step):
        seen.append((self.mode, step, self.n))
        return original(self, step)

    monkeypatch.setattr(ImageSampler, "index", spy)
    _, summary = fit(tmp_path, "rep", sampling="replacement")
    assert summary["sampling"] == "replacement"
    assert seen == [("replacement", s, 6) for s in range(TINY["steps"])]
    with pytest.raises(ValueError, match="sampling"):
        EfficientAD({**TINY, "sampling": "random"}, teacher_file(tmp_path / "t.pt"))


def test_bad_teacher_and_config_give_clear_errors(tmp_path):
    t = teacher_file(tmp_path / "t.pt")
    with pytest.raises(ValueError, match="out_channels"):
        EfficientAD({**TINY, "out_channels": 384}, t)
    with pytest.raises(ValueError, match="unknown config"):
        EfficientAD({**TINY, "lamda_csf": 0.5}, t)
    torch.save({"arch": "resnet", "kwargs": {}, "state_dict": {}}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="arch"):
        EfficientAD(dict(TINY), Teacher("bad", tmp_path / "bad.pt"))
    with pytest.raises(ValueError, match="teacher"):
        EfficientAD(dict(TINY), None)


def test_disable_student_training_cuts_the_student_teacher_loss(tmp_path):
    method, summary = fit(tmp_path, steps=1, disable=["student_training"])
    assert summary["disabled"] == ["student_training"]
    grad = method.model.student[-1].weight.grad
    assert bool((grad[:16] == 0).all()) and bool((grad[16:] != 0).any())  # S' gets nothing, S'' still learns
    with pytest.raises(ValueError, match="disable"):
        EfficientAD({**TINY, "disable": ["teacher"]}, teacher_file(tmp_path / "t.pt"))


# ---- determinism ----
FULL = dict(dual_ae=True, srm=True, crm=True, sfm=True, csf=True, steps=8)  # 6 images: crosses an epoch


def _equal_states(a, b):
    sa, sb = a.state_dict()["model"], b.state_dict()["model"]
    assert sa.keys() == sb.keys()
    return all(torch.equal(sa[k], sb[k]) for k in sa)


def test_two_seeded_fits_are_identical(tmp_path):
    a, _ = fit(tmp_path, "a", **FULL)
    b, _ = fit(tmp_path, "b", **FULL)
    assert _equal_states(a, b)


def test_kill_and_resume_equals_uninterrupted_fit(tmp_path):
    full, _ = fit(tmp_path, "full", **FULL)
    with pytest.raises(Interrupted):
        fit(tmp_path, "resumed", stop_after=3, **FULL)  # checkpoint at step 2, step 3 is redone
    resumed, _ = fit(tmp_path, "resumed", **FULL)
    assert _equal_states(full, resumed)
    images = torch.rand(2, 3, 32, 32)
    assert torch.equal(full.predict(images)[1], resumed.predict(images)[1])


def test_benchmark_smoke_training(benchmark, tmp_path):
    """Smoke-profile sizes (64 px, PDN width 0.25, 64 teacher channels, latent 32): 10 training steps."""
    teacher = teacher_file(tmp_path / "smoke_teacher.pt", out_channels=64, width=0.25)
    cfg = dict(image_size=64, steps=10, pdn_width=0.25, ae_latent=32, checkpoint_every=50, seed=0)
    train, penalty = TinyDataset(64, n=6, seed=1), TinyDataset(64, n=4, seed=3)
    runs = iter(range(1000))

    def run():
        ctx = FitContext("bench", tmp_path / f"b{next(runs)}", 0, extra={"penalty": penalty})
        return EfficientAD(cfg, teacher).fit(train, None, ctx)

    assert benchmark(run)["steps"] == 10
