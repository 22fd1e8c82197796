"""Paper B, ViT feature-constrained distillation: eqs. (1)-(10) on hand-made tensors, position strategies,
every fcd_vit registry variant end to end, seeded determinism and kill+resume."""

from __future__ import annotations

import math

import pytest
import torch

from adrepro.methods.base import FitContext, Teacher
from adrepro.methods.fcd_vit import losses as L
from adrepro.methods.fcd_vit.method import DEFAULTS, EpochSampler, FCDViT, make_optimizer, warmup_scheduler
from adrepro.methods.fcd_vit.model import AnchorBank, load_teacher_file
from adrepro.registry import VARIANTS
from adrepro.training import Interrupted, seed_everything

TINY_VIT = dict(img_size=16, patch_size=8, embed_dim=12, depth=12, num_heads=2, num_classes=0)




@pytest.fixture(scope="module")
def vit_teacher(tmp_path_factory) -> Teacher:
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(7)
    path = tmp_path_factory.mktemp("teachers") / "random_vit_test.pt"
    from adrepro.methods.teachers.provision import save_teacher_file  # records state_sha256 (checked on load)

    save_teacher_file(path, "vit", TINY_VIT, VisionTransformer(**TINY_VIT).state_dict(),
                      {"id": "random_vit_test", "paper_teacher": False})
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


def test_eq4_gram_default_is_channel_fsp_averaged_over_positions():
    phi1 = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [0.0, 1.0]]])  # B=1, N=3 tokens, D=2 channels
    phi2 = torch.tensor([[[1.0, 0.0], [2.0, 1.0], [1.0, 3.0]]])
    # FSP (Yim et al. 2017): G[i, j] = 1/N sum_p phi1[p, i] phi2[p, j], worked out by hand:
    # G[0,0] = (1*1 + 3*2 + 0*1)/3 = 7/3   G[0,1] = (1*0 + 3*1 + 0*3)/3 = 1
    # G[1,0] = (2*1 + 4*2 + 1*1)/3 = 11/3  G[1,1] = (2*0 + 4*1 + 1*3)/3 = 7/3
    g = L.gram_matrix(phi1, phi2)
    assert g.shape == (1, 2, 2)
    assert torch.allclose(g[0], torch.tensor([[7 / 3, 1.0], [11 / 3, 7 / 3]]))
    assert torch.allclose(L.gram_matrix(phi1, phi2, normalize=False)[0], torch.tensor([[7.0, 3.0], [11.0, 7.0]]))
    with pytest.raises(ValueError, match="gram_mode"):
        L.gram_matrix(phi1, phi2, mode="spatial")


def test_eq4_gram_token_option():
    phi = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [0.0, 1.0]]])  # B=1, N=3 tokens, D=2
    g = L.gram_matrix(phi, phi, mode="token", normalize=False)
    assert g.shape == (1, 3, 3)
    assert torch.equal(g[0], torch.tensor([[5.0, 11.0, 2.0], [11.0, 25.0, 4.0], [2.0, 4.0, 1.0]]))
    assert torch.allclose(L.gram_matrix(phi, phi, mode="token"), g / 2)  # averaged over the D channels


def test_eq5_gram_loss():
    t = {0: torch.tensor([[[1.0, 0.0], [0.0, 1.0]]]), 1: torch.tensor([[[2.0, 0.0], [0.0, 0.0]]])}
    s = {0: torch.tensor([[[1.0, 0.0], [0.0, 1.0]]]), 1: torch.zeros(1, 2, 2)}
    # channel Gram: G_T(0,1) = t0^T t1 = [[2,0],[0,0]], G_S(0,1) = 0 -> Frobenius 2 (unnormalised), 1 with /N=2
    assert torch.allclose(L.gram_loss(t, s, [(0, 1)], normalize=False), torch.tensor([2.0]))
    assert torch.allclose(L.gram_loss(t, s, [(0, 1), (0, 0)]), torch.tensor([1.0]))
    assert torch.allclose(L.gram_loss(t, s, [(0, 1)], mode="token", normalize=False), torch.tensor([2.0]))


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


def test_optimiser_defaults_in_every_profile():
    """SGD momentum 0.9, linear warm-up then cosine decay, clipping at 1.0 (docs/deviations.md), all profiles."""
    from adrepro.config import load_params

    params = load_params()
    for name, prof in params["profiles"].items():
        cfg = {**DEFAULTS, **params["methods"]["fcd_vit"], **prof["methods"]["fcd_vit"]}
        optimiser = (cfg["optimizer"], cfg["momentum"], cfg["lr_schedule"], cfg["grad_clip"], cfg["weight_decay"])
        assert optimiser == ("sgd", 0.9, "cosine", 1.0, 0.0), name
        assert (cfg["gram_mode"], cfg["final_norm"], cfg["val_fraction"]) == ("channel", False, 0.0), name
        opt = make_optimizer([torch.nn.Parameter(torch.zeros(1))], cfg, 0.1)
        assert isinstance(opt, torch.optim.SGD) and opt.param_groups[0]["momentum"] == 0.9


def test_warmup_then_cosine_schedule_hand_computed():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = warmup_scheduler(opt, warmup_steps=2, total_steps=6)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    # warm-up 0.1 * 1/2, 0.1 * 2/2; then 0.1 * (1 + cos(pi * k / 4)) / 2 for k = 0..3
    c = math.cos(math.pi / 4)
    assert lrs == pytest.approx([0.05, 0.1, 0.1, 0.05 * (1 + c), 0.05, 0.05 * (1 - c)])
    with pytest.raises(ValueError, match="optimizer"):
        make_optimizer([torch.nn.Parameter(torch.zeros(1))], {**DEFAULTS, "optimizer": "lamb"}, 0.1)


def test_unknown_cfg_key_is_an_error():
    with pytest.raises(ValueError, match="gram_mod'"):
        FCDViT(_cfg(gram_mod="channel"), None)


def test_score_parts_sum_to_score_and_final_norm_switch(vit_teacher, tmp_path):
    m, summary = _fit(vit_teacher, tmp_path, steps=2)
    assert (summary["optimizer"], summary["lr_schedule"], summary["final_norm"]) == ("sgd", "cosine", False)
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    scores, _, parts = m.predict_with_parts(x)
    assert set(parts) == {"s_d", "s_a_teacher", "s_a_student"}
    assert torch.allclose(scores, parts["s_d"] + parts["s_a_teacher"] + parts["s_a_student"])
    t_cls = m._feats(m.teacher_net, m._prep(x))[11][:, 0]
    assert torch.allclose(parts["s_a_teacher"], (t_cls - m.anchors.anchor[0]).norm(dim=1))
    no_anchor, _ = _fit(vit_teacher, tmp_path / "b", steps=1, anchor=False, gram=False)
    assert set(no_anchor.predict_with_parts(x)[2]) == {"s_d"}
    normed = FCDViT(_cfg(final_norm=True), vit_teacher)
    normed.load_state_dict(m.state_dict())
    feats = normed._feats(normed.teacher_net, normed._prep(x))[6]
    assert torch.allclose(feats, m.teacher_net.norm(m._feats(m.teacher_net, m._prep(x))[6]))


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


def test_score_parts_reach_metrics_json_and_mlflow(vit_teacher, tmp_path, mlflow_tmp):
    """Evaluate writes S_D and eq. 7's teacher / student terms under ``score_parts``; track logs them to MLflow."""
    import mlflow

    from adrepro.config import load_params
    from adrepro.pipelines.evaluate import score, score_parts_summary
    from adrepro.registry import experiments
    from adrepro.results import write_json
    from adrepro.tracking import sync

    m, _ = _fit(vit_teacher, tmp_path / "fit", steps=1)
    test = [(img, i % 2, None, {"anomaly_type": "good" if i % 2 == 0 else "bad"})
            for i, (img, *_rest) in enumerate(_data(5, 9))]
    parts: dict = {}
    scores, labels, *_ = score(m, test, parts)
    assert set(parts) == {"s_d", "s_a_teacher", "s_a_student"} and all(len(v) == 5 for v in parts.values())
    assert scores == pytest.approx([sum(p) for p in zip(*parts.values())], rel=1e-5)
    # hand-made parts: AUROC alone (fraction of anomalous > normal pairs) and class means
    summary = score_parts_summary({"s_d": [1.0, 2.0, 3.0, 4.0], "s_a_teacher": [3.0, 1.0, 2.0, 0.0]},
                                  [0, 0, 1, 1], ["good", "good", "bad", "bad"])
    assert summary["s_d"] == {"auroc": 1.0, "mean_normal": 1.5, "mean_anomalous": 3.5}
    assert summary["s_a_teacher"] == {"auroc": 0.25, "mean_normal": 2.0, "mean_anomalous": 1.0}
    exp = next(e for e in experiments(load_params(), "smoke") if e.method == "fcd_vit")
    write_json(tmp_path / "results" / exp.id / "metrics.json",
               {"status": "ok", "auroc": {"image": 0.5}, "steps": 1, "score_parts": summary})
    assert sync([exp], lambda p, e: tmp_path / "models" / e, lambda p, e: tmp_path / "results" / e / "metrics.json",
                lambda p, e: tmp_path / "plots" / e) == (1, 0)
    run = mlflow.search_runs(experiment_names=[f"adrepro-{exp.profile}"], output_format="list")[0]
    assert run.data.metrics["score_parts.s_a_teacher.auroc"] == 0.25
    assert run.data.metrics["score_parts.s_d.mean_anomalous"] == 3.5
