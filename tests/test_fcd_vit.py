"""Paper B, ViT feature-constrained distillation: eqs. (1)-(10) on hand-made tensors, position strategies,
every fcd_vit registry variant end to end, seeded determinism and kill+resume."""

from __future__ import annotations

import math

import pytest
import torch

from adrepro.methods.base import FitContext, Teacher
from adrepro.methods.fcd_vit import losses as L
from adrepro.methods.fcd_vit.method import EpochSampler, FCDViT
from adrepro.methods.fcd_vit.model import AnchorBank, load_teacher_file
from adrepro.registry import VARIANTS
from adrepro.training import Interrupted, seed_everything

TINY_VIT = dict(img_size=16, patch_size=8, embed_dim=12, depth=12, num_heads=2, num_classes=0)




@pytest.fixture(scope="module")
def vit_teacher(tmp_path_factory) -> Teacher:
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(7)
    path = tmp_path_factory.mktemp("teachers") / "random_vit_test.pt"
    torch.save({"arch": "vit", "kwargs": TINY_VIT, "state_dict": VisionTransformer(**TINY_VIT).state_dict(),
                "provenance": {"id": "random_vit_test", "paper_teacher": False}}, path)
    return Teacher("random_vit_test", path, {"sha256": "test"})


def _data(n: int, seed: int, lo: float = 0.3, hi: float = 0.6) -> list:
    g = torch.Generator().manual_seed(seed)
    return [(lo + (hi - lo) * torch.rand(3, 16, 16, generator=g), 0, None, {"split": "train"}) for _ in range(n)]


def _cfg(**kw) -> dict:
    cfg = dict(image_size=16, steps=3, batch_size=4, lr=0.1, warmup_steps=2, checkpoint_every=2,
               distill=True, gram=True, anchor=True, pos_strategy=2, protocol="cifar10", seed=0)
    cfg.update(kw)
    return cfg


def _fit(teacher, work_dir, **kw):
    stop = kw.pop("stop_after", None)
    m = FCDViT(_cfg(**kw), teacher)
    summary = m.fit(_data(10, 0), None, FitContext("t", work_dir, 0, stop_after=stop))
    return m, summary


# ---------------- equations on hand-made tensors ----------------

def test_eq1_anchor_cumulative_moving_average_equals_mean():
    feats = torch.arange(30, dtype=torch.float32).reshape(10, 1, 3)
    bank = AnchorBank(1, 3)
    for chunk in feats.split(3):  # batches of 3, 3, 3, 1
        bank.update(chunk)
    assert torch.allclose(bank.anchor, feats.mean(0))
    assert int(bank.count) == 10


def test_eq1_anchor_exponential_moving_average():
    a, c = L.update_anchor(torch.zeros(2), torch.tensor(0), torch.tensor([[2.0, 4.0]]), momentum=0.9)
    assert torch.equal(a, torch.tensor([2.0, 4.0]))  # first batch initialises
    a, c = L.update_anchor(a, c, torch.tensor([[12.0, 4.0], [12.0, 14.0]]), momentum=0.9)
    assert torch.allclose(a, torch.tensor([0.9 * 2 + 0.1 * 12, 0.9 * 4 + 0.1 * 9]))
    assert int(c) == 3


def test_eq2_anchor_loss():
    s = torch.tensor([[3.0, 4.0], [1.0, 1.0]])
    assert torch.allclose(L.anchor_loss(s, torch.zeros(2)), torch.tensor([5.0, math.sqrt(2)]))
    # two anchor layers [B, L, D]: summed over layers
    s2 = torch.tensor([[[3.0, 4.0], [0.0, 1.0]]])
    assert torch.allclose(L.anchor_loss(s2, torch.zeros(2, 2)), torch.tensor([6.0]))


def test_eq3_distill_loss_norm_and_mse():
    t = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    s = torch.tensor([[[0.0, 1.0], [0.0, 2.0]]])  # token 0 orthogonal (1 - cos = 1), token 1 parallel (0)
    assert torch.allclose(L.distill_loss([t], [s]), torch.tensor([math.sqrt(3) + 1.0]))
    assert torch.allclose(L.distill_loss([t], [s], l2="mse"), torch.tensor([3 / 4 + 1.0]))
    assert torch.allclose(L.distill_loss([t, t], [s, s]), torch.tensor([2 * (math.sqrt(3) + 1.0)]))
    with pytest.raises(ValueError, match="distill_l2"):
        L.distill_loss([t], [s], l2="l1")


def test_eq4_gram_shapes_values_and_symmetry():
    phi = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [0.0, 1.0]]])  # B=1, N=3 tokens, D=2
    g = L.gram_matrix(phi, phi, normalize=False)
    assert g.shape == (1, 3, 3)
    assert torch.equal(g[0], torch.tensor([[5.0, 11.0, 2.0], [11.0, 25.0, 4.0], [2.0, 4.0, 1.0]]))
    assert torch.equal(g, g.transpose(1, 2))
    assert torch.allclose(L.gram_matrix(phi, phi), g / 2)
    gc = L.gram_matrix(phi, phi, mode="channel", normalize=False)
    assert gc.shape == (1, 2, 2) and torch.equal(gc[0], torch.tensor([[10.0, 14.0], [14.0, 21.0]]))
    x, y = torch.randn(2, 5, 4), torch.randn(2, 5, 4)
    assert torch.allclose(L.gram_matrix(x, y), L.gram_matrix(y, x).transpose(1, 2))


def test_eq5_gram_loss():
    t = {0: torch.tensor([[[1.0, 0.0], [0.0, 1.0]]]), 1: torch.tensor([[[2.0, 0.0], [0.0, 0.0]]])}
    s = {0: torch.tensor([[[1.0, 0.0], [0.0, 1.0]]]), 1: torch.zeros(1, 2, 2)}
    # G_T(0,1) = [[2,0],[0,0]], G_S(0,1) = 0 -> Frobenius 2 (unnormalised), 1 with /D
    assert torch.allclose(L.gram_loss(t, s, [(0, 1)], normalize=False), torch.tensor([2.0]))
    assert torch.allclose(L.gram_loss(t, s, [(0, 1), (0, 0)]), torch.tensor([1.0]))


def test_eq6_total_loss():
    assert torch.equal(L.total_loss(torch.tensor(2.0), torch.tensor(3.0), torch.tensor(4.0), lam=0.5), torch.tensor(5.5))


def test_eq7_anchor_score():
    t, s, a = torch.tensor([[3.0, 4.0]]), torch.tensor([[0.0, 1.0]]), torch.zeros(2)
    assert torch.allclose(L.anchor_score(t, s, a), torch.tensor([6.0]))


def test_eq8_token_diff():
    t = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    s = torch.tensor([[[0.0, 1.0], [0.0, 3.0]]])
    assert torch.allclose(L.token_diff(t, s), torch.tensor([[math.sqrt(2) + 1.0, 2.0]]))


def test_eq9_topk_k20_and_k_larger_than_tokens():
    diff = torch.arange(1, 31, dtype=torch.float32)[torch.randperm(30)][None]  # 30 patch values
    assert torch.allclose(L.avg_topk(diff, 20), torch.tensor([sum(range(11, 31)) / 20]))
    assert torch.allclose(L.avg_topk(diff, 50), torch.tensor([15.5]))  # k > P: mean of all
    # S_D: cls diff + AvgTopk(patches, cls excluded) per layer, summed over layers
    t = torch.zeros(1, 4, 2)
    s = torch.zeros(1, 4, 2)
    t[0, :, 0] = 1.0
    s[0, :, 0] = torch.tensor([5.0, 2.0, 3.0, 4.0])  # parallel -> Diff = |t - s|: cls 4, patches 1, 2, 3
    assert torch.allclose(L.feature_diff_score([t], [s], k=2), torch.tensor([4.0 + 2.5]))
    assert torch.allclose(L.feature_diff_score([t, t], [s, s], k=20), torch.tensor([2 * (4.0 + 2.0)]))


def test_eq10_score():
    assert torch.equal(L.anomaly_score(torch.tensor([1.0]), torch.tensor([2.0])), torch.tensor([3.0]))


# ---------------- model / training ----------------

def test_teacher_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_teacher_file(tmp_path / "missing.pt")
    torch.save({"arch": "vit"}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="bad.pt.*kwargs"):
        load_teacher_file(tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="provisioned teacher"):
        FCDViT(_cfg(), None).fit(_data(2, 0), None, FitContext("t", tmp_path, 0))


def test_epoch_sampler_covers_each_epoch():
    s = EpochSampler(5, torch.Generator().manual_seed(0))
    idx = s.next(3) + s.next(3) + s.next(4)
    assert sorted(idx[:5]) == list(range(5)) and sorted(idx[5:]) == list(range(5))


def test_pos_strategy_2_copies_and_freezes_teacher_pos_embed(vit_teacher, tmp_path):
    m, _ = _fit(vit_teacher, tmp_path, steps=1, pos_strategy=2)
    assert torch.equal(m.student.pos_embed, m.teacher_net.pos_embed)
    assert not m.student.pos_embed.requires_grad and m.student.pos_embed.grad is None
    assert not torch.equal(m.student.cls_token, m.teacher_net.cls_token)  # only the position embedding is shared


def test_pos_strategy_1_student_learns_its_own(vit_teacher, tmp_path):
    seed_everything(0)
    init = FCDViT(_cfg(pos_strategy=1), vit_teacher)
    init._build()
    m, _ = _fit(vit_teacher, tmp_path, steps=2, pos_strategy=1)
    assert m.student.pos_embed.requires_grad and m.student.pos_embed.grad is not None
    assert not torch.equal(m.student.pos_embed, init.student.pos_embed)
    assert not torch.allclose(m.student.pos_embed, m.teacher_net.pos_embed)


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v.method == "fcd_vit"], ids=lambda v: v.id)
def test_every_registry_variant_fits_and_predicts(variant, vit_teacher, tmp_path):
    cfg = _cfg(**variant.options, protocol=variant.protocols[-1], batch_size_mvtec=2, lr_mvtec=0.2)
    m = FCDViT(cfg, vit_teacher)
    summary = m.fit(_data(6, 0), None, FitContext(variant.id, tmp_path, 0))
    assert summary["steps"] == 3
    if variant.protocols[-1] == "mvtec_ad":
        assert (summary["lr"], summary["batch_size"]) == (0.2, 2)
    assert summary["anchor_images_seen"] == (3 * summary["batch_size"] if variant.options["anchor"] else 0)
    scores, maps = m.predict(torch.rand(5, 3, 24, 24))
    assert scores.shape == (5,) and maps.shape == (5, 24, 24)
    assert torch.isfinite(scores).all()
    m2 = FCDViT(m.cfg, vit_teacher)
    m2.load_state_dict(m.state_dict())
    assert torch.equal(m2.predict(torch.ones(2, 3, 16, 16))[0], m.predict(torch.ones(2, 3, 16, 16))[0])


def test_seeded_fit_is_deterministic_and_resume_bit_identical(vit_teacher, tmp_path):
    ref, _ = _fit(vit_teacher, tmp_path / "ref", steps=4)
    again, _ = _fit(vit_teacher, tmp_path / "again", steps=4)
    with pytest.raises(Interrupted):
        _fit(vit_teacher, tmp_path / "run", steps=4, stop_after=3)  # last checkpoint at step 2
    resumed, summary = _fit(vit_teacher, tmp_path / "run", steps=4)
    assert summary["steps_this_call"] == 2
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    for other in (again, resumed):
        for (k, v), w in zip(ref.state_dict()["student"].items(), other.state_dict()["student"].values()):
            assert torch.equal(v, w), k
        assert torch.equal(ref.anchors.anchor, other.anchors.anchor)
        assert torch.equal(ref.predict(x)[0], other.predict(x)[0])
    assert int(resumed.anchors.count) == 4 * 4


def test_benchmark_predict(benchmark, vit_teacher, tmp_path):
    m, _ = _fit(vit_teacher, tmp_path, steps=1)
    scores, maps = benchmark(m.predict, torch.rand(16, 3, 16, 16))
    assert scores.shape == (16,) and maps.shape == (16, 16, 16)
