"""Paper B backbone ablation (kd_cnn): MKDAD loss and CNN "cls" on hand-made tensors, feature taps,
every kd_cnn registry variant end to end with tiny teachers, seeded determinism and kill+resume."""

from __future__ import annotations

import math

import pytest
import torch

from adrepro.methods.base import FitContext, Teacher
from adrepro.methods.kd_cnn.losses import cnn_cls, mkdad_loss
from adrepro.methods.kd_cnn.method import KDCNN
from adrepro.methods.kd_cnn.model import DEFAULT_TAPS, TappedCNN, build_cnn
from adrepro.registry import VARIANTS
from adrepro.training import Interrupted

TINY = {"vgg16": ("tiny_vgg", {"widths": [4, 8, 8, 8]}), "resnet18": ("tiny_resnet", {"widths": [4, 8, 8, 8]})}




@pytest.fixture(scope="module")
def teachers(tmp_path_factory) -> dict[str, Teacher]:
    root = tmp_path_factory.mktemp("teachers")
    out = {}
    for backbone, (arch, kwargs) in TINY.items():
        torch.manual_seed(5)
        path = root / f"{arch}.pt"
        torch.save({"arch": arch, "kwargs": kwargs, "state_dict": build_cnn(arch, kwargs).state_dict(),
                    "provenance": {"id": f"random_{arch}"}}, path)
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


def test_mkdad_loss_hand_computed():
    t = [torch.tensor([[[[1.0, 0.0]]]]), torch.tensor([[[[2.0]], [[0.0]]]])]  # [1,1,1,2] and [1,2,1,1]
    s = [torch.tensor([[[[0.0, 1.0]]]]), torch.tensor([[[[4.0]], [[0.0]]]])]
    # tap 1: mse 1, cos 0 -> 1 + lam; tap 2: mse (4 + 0) / 2 = 2, cos 1 -> 2
    assert torch.allclose(mkdad_loss(t, s, lam_dir=0.5), torch.tensor([1.0 + 0.5 + 2.0]))
    assert torch.allclose(mkdad_loss(t, t), torch.zeros(1), atol=1e-6)


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
