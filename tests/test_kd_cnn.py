"""Paper B backbone ablation (kd_cnn): MKDAD's loss and score on hand-made tensors (values worked out by hand from
MKDAD's equations), the MKDAD cloner, presets, CNN "cls", feature taps, every kd_cnn registry variant end to end
with tiny teachers, seeded determinism and kill+resume."""

from __future__ import annotations

import math

import pytest
import torch

from adrepro.methods.base import FitContext, Teacher
from torch import nn

from adrepro.methods.fcd_vit.method import make_optimizer
from adrepro.methods.fcd_vit.model import AnchorBank
from adrepro.methods.kd_cnn.losses import cnn_cls, mkdad_loss
from adrepro.methods.kd_cnn.method import KDCNN, kd_config
from adrepro.methods.kd_cnn.model import DEFAULT_TAPS, TappedCNN, build_cloner, build_cnn
from adrepro.registry import VARIANTS
from adrepro.training import Interrupted

TINY = {"vgg16": ("tiny_vgg", {"widths": [4, 8, 8, 8]}), "resnet18": ("tiny_resnet", {"widths": [4, 8, 8, 8]})}




@pytest.fixture(scope="module")
def teachers(tmp_path_factory) -> dict[str, Teacher]:
    from adrepro.methods.teachers.provision import save_teacher_file  # records state_sha256 (checked on load)

    root = tmp_path_factory.mktemp("teachers")
    out = {}
    for backbone, (arch, kwargs) in TINY.items():
        torch.manual_seed(5)
        path = root / f"{arch}.pt"
        save_teacher_file(path, arch, kwargs, build_cnn(arch, kwargs).state_dict(), {"id": f"random_{arch}"})
        out[backbone] = Teacher(f"random_{arch}", path, {"sha256": arch})
    return out


def _data(n: int) -> list:
    g = torch.Generator().manual_seed(0)
    return [(0.3 + 0.3 * torch.rand(3, 16, 16, generator=g), 0, None, {"split": "train"}) for _ in range(n)]


def _fit(teacher, work_dir, stop_after=None, **kw):
    cfg = dict(image_size=16, steps=3, batch_size=4, lr=0.01, checkpoint_every=2, backbone="vgg16", anchor=True,
               protocol="cifar10", seed=0)
    cfg.update(kw)
    m = KDCNN(cfg, teacher)
    return m, m.fit(_data(10), None, FitContext("t", work_dir, 0, stop_after=stop_after))


# Four taps (pool2-5 stand-ins) of one image, teacher T and student S, chosen so each term is easy by hand:
#   tap 0: T (1, 0),         S (0, 1)          -> 1 - cos = 1,            mean sq. diff (1 + 1) / 2 = 1
#   tap 1: T (2, 0),         S (4, 0)          -> 1 - cos = 0,            (4 + 0) / 2 = 2
#   tap 2: T (3, 4, 0, 0),   S (4, 3, 0, 0)    -> 1 - 24/25 = 0.04,       (1 + 1 + 0 + 0) / 4 = 0.5
#   tap 3: T (2),            S (-1)            -> 1 - (-1) = 2,           9
T_TAPS = [torch.tensor([1.0, 0.0]).view(1, 1, 1, 2), torch.tensor([2.0, 0.0]).view(1, 2, 1, 1),
          torch.tensor([3.0, 4.0, 0.0, 0.0]).view(1, 1, 2, 2), torch.tensor([2.0]).view(1, 1, 1, 1)]
S_TAPS = [torch.tensor([0.0, 1.0]).view(1, 1, 1, 2), torch.tensor([4.0, 0.0]).view(1, 2, 1, 1),
          torch.tensor([4.0, 3.0, 0.0, 0.0]).view(1, 1, 2, 2), torch.tensor([-1.0]).view(1, 1, 1, 1)]
# MKDAD: L = sum_i (1 - cos_i) + lambda * sum_i MSE_i
LOSS_ALL = {0.01: (1 + 0 + 0.04 + 2) + 0.01 * (1 + 2 + 0.5 + 9), 0.5: 3.04 + 0.5 * 12.5}  # 3.165, 9.29
SCORE_POOL3_5 = {0.01: (0 + 0.04 + 2) + 0.01 * (2 + 0.5 + 9), 0.5: 2.04 + 0.5 * 11.5}  # last three taps


def test_mkdad_loss_hand_computed():
    t = [torch.cat([x, x]) for x in T_TAPS]  # second image: student equals teacher -> 0
    s = [torch.cat([y, x]) for x, y in zip(T_TAPS, S_TAPS)]
    for lam, expected in LOSS_ALL.items():
        assert torch.allclose(mkdad_loss(t, s, lam_mse=lam), torch.tensor([expected, 0.0]), atol=1e-6)
    assert math.isclose(LOSS_ALL[0.01], 3.165) and math.isclose(LOSS_ALL[0.5], 9.29)
    # same_arch preset's weighting: MSE + 0.5 (1 - cos)
    assert torch.allclose(mkdad_loss(T_TAPS, S_TAPS, lam_mse=1.0, lam_dir=0.5), torch.tensor([12.5 + 0.5 * 3.04]))


class _Fixed(nn.Module):
    def __init__(self, feats: list[torch.Tensor]):
        super().__init__()
        self.feats = feats

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [f.expand(x.shape[0], *f.shape[1:]) if f.shape[0] == 1 else f for f in self.feats]


def _stub(protocol: str, anchor: bool) -> KDCNN:
    """A KDCNN whose teacher and student return the hand-made taps (2 images: S_TAPS, then T_TAPS)."""
    m = KDCNN(dict(image_size=2, anchor=anchor, protocol=protocol), None)
    m.teacher_net = _Fixed([torch.cat([x, x]) for x in T_TAPS])
    m.student = _Fixed([torch.cat([y, x]) for x, y in zip(T_TAPS, S_TAPS)])
    m.anchors = AnchorBank(1, 1)
    m.anchors.anchor.fill_(1.0)
    m.mean, m.std = torch.zeros(1, 3, 1, 1), torch.ones(1, 3, 1, 1)
    return m


@pytest.mark.parametrize("protocol,lam", [("cifar10", 0.01), ("mvtec_ad", 0.5)])
def test_mkdad_score_is_pool3_to_5_with_protocol_lambda(protocol, lam):
    scores, maps, parts = _stub(protocol, anchor=False).predict_with_parts(torch.zeros(2, 3, 2, 2))
    assert torch.allclose(scores, torch.tensor([SCORE_POOL3_5[lam], 0.0]), atol=1e-6)
    assert set(parts) == {"s_d"} and torch.equal(parts["s_d"], scores)
    assert maps.shape == (2, 2, 2)


def test_score_parts_with_anchor_hand_computed():
    # cls = global average of the last tap: T 2, S -1; anchor 1 -> ||T - a|| = 1, ||S - a|| = 2 (image 2: 1, 1)
    scores, _, parts = _stub("cifar10", anchor=True).predict_with_parts(torch.zeros(2, 3, 2, 2))
    assert torch.allclose(parts["s_a_teacher"], torch.tensor([1.0, 1.0]))
    assert torch.allclose(parts["s_a_student"], torch.tensor([2.0, 1.0]))
    assert torch.allclose(scores, torch.tensor([SCORE_POOL3_5[0.01] + 3.0, 2.0]), atol=1e-6)


def test_presets_and_overrides():
    mk = kd_config({"preset": "mkdad"})
    assert (mk["student"], mk["optimizer"], mk["lr"], mk["batch_size"]) == ("cloner", "adam", 1e-3, 128)
    assert (mk["lambda_dir"], mk["lambda_mse"], mk["lambda_mse_mvtec"], mk["score_last"]) == (1.0, 0.01, 0.5, 3)
    assert isinstance(make_optimizer([nn.Parameter(torch.zeros(1))], mk, 1e-3), torch.optim.Adam)
    same = kd_config({"preset": "same_arch", "lambda_mse": 2.0})
    assert (same["student"], same["optimizer"], same["score_last"], same["lambda_mse"]) == ("same_arch", "sgd", 0, 2.0)
    assert KDCNN({"protocol": "mvtec_ad"}, None).lam_mse == 0.5 and KDCNN({"protocol": "cifar10"}, None).lam_mse == 0.01
    with pytest.raises(ValueError, match="preset"):
        kd_config({"preset": "mkdad2"})
    with pytest.raises(ValueError, match="lambda_dri"):
        KDCNN({"lambda_dri": 1.0}, None)
    assert all(v.options["preset"] == "mkdad" for v in VARIANTS if v.method == "kd_cnn")


def test_mkdad_vgg16_cloner_architecture():
    net = build_cloner("vgg16", DEFAULT_TAPS["vgg16"], [], 64)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    # MKDAD's smaller student: widths per block (16,16) (16,128) (16,16,256) (16,16,512) (16,16,512), no bias
    assert [c.out_channels for c in convs] == [16, 16, 16, 128, 16, 16, 256, 16, 16, 512, 16, 16, 512]
    assert all(c.bias is None and c.kernel_size == (3, 3) for c in convs)
    # BatchNorm after every conv but each block's last (8 BNs of 16 channels); a ReLU after every conv
    assert [m.num_features for m in net.modules() if isinstance(m, nn.BatchNorm2d)] == [16] * 8
    assert sum(isinstance(m, nn.ReLU) for m in net.modules()) == 13
    weights = (3 * 16 + 16 * 16) + (16 * 16 + 16 * 128) + (128 * 16 + 16 * 16 + 16 * 256) \
        + (256 * 16 + 16 * 16 + 16 * 512) + (512 * 16 + 16 * 16 + 16 * 512)
    assert sum(p.numel() for p in net.parameters()) == 9 * weights + 8 * 2 * 16  # 0.34 M, VGG16: 14.7 M
    teacher = TappedCNN(build_cnn("vgg16", {}), DEFAULT_TAPS["vgg16"]).eval()
    x = torch.rand(1, 3, 64, 64)
    assert [f.shape for f in net(x)] == [f.shape for f in teacher(x)]  # pool2-5: 128x16, 256x8, 512x4, 512x2
    with pytest.raises(ValueError, match="pool2-5"):
        build_cloner("vgg16", ["features.4"], [], 64)


@pytest.mark.parametrize("arch,relu_out", [("resnet18", True), ("efficientnet_lite0", False)])
def test_substitute_teacher_cloner_matches_taps(arch, relu_out):
    if arch.startswith("efficientnet"):
        pytest.importorskip("efficientnet_lite_pytorch", reason="optional extra adrepro[lite]")
    teacher = TappedCNN(build_cnn(arch, {}), DEFAULT_TAPS[arch]).eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        shapes = [tuple(f.shape[1:]) for f in teacher(x)]
    net = build_cloner(arch, DEFAULT_TAPS[arch], shapes, 64)
    assert [tuple(f.shape[1:]) for f in net(x)] == shapes
    for block in net.blocks:  # (16 BN ReLU) (16 BN ReLU) (C_i [ReLU]) pool
        convs = [m for m in block if isinstance(m, nn.Conv2d)]
        assert [c.out_channels for c in convs][:2] == [16, 16]
        assert isinstance(block[-2], nn.ReLU) == relu_out
    assert sum(p.numel() for p in net.parameters()) < sum(p.numel() for p in teacher.parameters()) / 3
    with pytest.raises(ValueError, match="no cloner rule"):
        build_cloner("alexnet", ["x"], [(8, 2, 2)], 64)


def test_cnn_cls_is_global_average_of_last_tap():
    last = torch.arange(8, dtype=torch.float32).reshape(1, 2, 2, 2)
    assert torch.equal(cnn_cls([torch.zeros(1, 1, 4, 4), last]), torch.tensor([[1.5, 5.5]]))


def test_default_taps_exist_in_torchvision_backbones():
    with torch.device("meta"):
        vgg = build_cnn("vgg16", {})
        resnet = build_cnn("resnet18", {})
    mods = dict(vgg.named_modules())
    assert all(isinstance(mods[t], torch.nn.MaxPool2d) for t in DEFAULT_TAPS["vgg16"])
    assert set(DEFAULT_TAPS["resnet18"]) <= set(dict(resnet.named_modules()))


def test_tapped_cnn_shapes_and_bad_tap():
    net = build_cnn("tiny_resnet", {"widths": [4, 8, 8, 8]})
    feats = TappedCNN(net, net.default_taps)(torch.rand(2, 3, 16, 16))
    assert [tuple(f.shape) for f in feats] == [(2, 4, 16, 16), (2, 8, 8, 8), (2, 8, 4, 4), (2, 8, 2, 2)]
    with pytest.raises(ValueError, match="nope"):
        TappedCNN(net, ["nope"])
    with pytest.raises(ValueError, match="unknown teacher arch"):
        build_cnn("alexnet", {})


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v.method == "kd_cnn"], ids=lambda v: v.id)
def test_every_registry_variant_fits_and_predicts(variant, teachers, tmp_path):
    m, summary = _fit(teachers[variant.options["backbone"]], tmp_path, **variant.options)
    assert summary["steps"] == 3 and summary["arch"] == TINY[variant.options["backbone"]][0]
    assert summary["anchor_images_seen"] == (12 if variant.options["anchor"] else 0)
    scores, maps = m.predict(torch.rand(5, 3, 20, 20))
    assert scores.shape == (5,) and maps.shape == (5, 20, 20) and torch.isfinite(scores).all()
    m2 = KDCNN(m.cfg, teachers[variant.options["backbone"]])
    m2.load_state_dict(m.state_dict())
    x = torch.rand(2, 3, 16, 16)
    assert torch.equal(m2.predict(x)[0], m.predict(x)[0])


def test_anchor_adds_eq7_score(teachers, tmp_path):
    m, _ = _fit(teachers["vgg16"], tmp_path, anchor=True)
    x = torch.rand(3, 3, 16, 16)
    with_anchor = m.predict(x)[0]
    m.score_anchor = False
    without = m.predict(x)[0]
    with torch.no_grad():
        xn = m._prep(x)
        tf, sf = m.teacher_net(xn), m.student(xn)
    s_a = (cnn_cls(tf) - m.anchors.anchor).norm(dim=1) + (cnn_cls(sf) - m.anchors.anchor).norm(dim=1)
    assert torch.allclose(with_anchor - without, s_a, atol=1e-5)
    assert not math.isclose(float(s_a.sum()), 0.0)


def test_determinism_and_resume_bit_identical(teachers, tmp_path):
    backbone = "resnet18"  # batch norm in the student: running statistics must resume too
    t = teachers[backbone]
    ref, _ = _fit(t, tmp_path / "ref", steps=4, backbone=backbone)
    again, _ = _fit(t, tmp_path / "again", steps=4, backbone=backbone)
    with pytest.raises(Interrupted):
        _fit(t, tmp_path / "run", steps=4, stop_after=3, backbone=backbone)
    resumed, summary = _fit(t, tmp_path / "run", steps=4, backbone=backbone)
    assert summary["steps_this_call"] == 2
    for other in (again, resumed):
        for (k, v), w in zip(ref.state_dict()["student"].items(), other.state_dict()["student"].values()):
            assert torch.equal(v, w), k
        assert torch.equal(ref.anchors.anchor, other.anchors.anchor)


def test_benchmark_predict(benchmark, teachers, tmp_path):
    m, _ = _fit(teachers["resnet18"], tmp_path, steps=1, backbone="resnet18")
    scores, maps = benchmark(m.predict, torch.rand(16, 3, 16, 16))
    assert scores.shape == (16,) and maps.shape == (16, 16, 16)


def test_paper_b_trains_on_all_of_mvtec_train_good(tmp_path):
    """The 10 % hold-out of MVTec AD train/good is EfficientAD's quantile set: paper B's families (cfg
    ``val_fraction: 0.0`` in params.yaml) train on every train/good image; counted on the generated MVTec layout."""
    from adrepro.config import load_params
    from adrepro.datasets.registry import load_splits
    from adrepro.registry import experiments

    params = load_params()
    params = {**params, "paths": {**params["paths"], "data_root": str(tmp_path)}}
    held = load_splits("synth_mvtec", "tiles", 32, 0, params)  # datasets.val_fraction default: 10 %
    total = held.info["train_good_total"]
    assert total >= 10 and len(held.train) + len(held.val) == total and len(held.val) == round(0.1 * total)
    for exp in experiments(params, "smoke"):
        if exp.protocol != "mvtec_ad":
            continue
        vf = exp.method_config(params).get("val_fraction")
        assert vf == (0.0 if exp.method in ("fcd_vit", "kd_cnn") else None), exp.id
    full = load_splits("synth_mvtec", "tiles", 32, 0, params, val_fraction=0.0)
    assert full.val is None and len(full.train) == total
    assert {full.train.records[i].source for i in range(total)} == \
        {r.source for r in held.train.records} | {r.source for r in held.val.records}
