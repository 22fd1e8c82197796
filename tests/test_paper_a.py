"""Paper A (dual autoencoders): SRM/CRM/SFM against their equations, the CSF loss (eqs 15-17) and eq 18 on
hand-made tensors, gradients through the full method, and a tiny fit+predict of every registry variant."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics.pairwise import cosine_similarity

from adrepro.methods.base import FitContext, Teacher
from adrepro.methods.efficientad import losses as L
from adrepro.methods.efficientad.method import EfficientAD
from adrepro.methods.efficientad.model import IMAGENET_MEAN, IMAGENET_STD, EfficientADAutoencoder
from adrepro.methods.efficientad.modules import ChannelReunionModule, SelectiveFusionModule, SpatialReunionModule
from adrepro.methods.efficientad.pdn import build_pdn
from adrepro.registry import VARIANTS

sys.path.insert(0, str(Path(__file__).parent))
from conftest import TinyDataset  # noqa: E402

PAPER_A = [v for v in VARIANTS if v.method == "efficientad"]




def _teacher(path) -> Teacher:
    torch.manual_seed(0)
    net = build_pdn("S", 16, 0.125)
    from adrepro.methods.teachers.provision import save_teacher_file  # records state_sha256 (checked on load)

    save_teacher_file(path, "pdn_s", {"out_channels": 16, "width": 0.125}, net.state_dict(), {})
    return Teacher("random_pdn", path)


def _fit(tmp_path, steps=2, **options):
    cfg = dict(image_size=32, steps=steps, pdn_width=0.125, ae_latent=8, checkpoint_every=10, seed=0, **options)
    method = EfficientAD(cfg, _teacher(tmp_path / "teacher.pt"))
    method.fit(TinyDataset(32, n=3, seed=1), TinyDataset(32, n=2, seed=2),
               FitContext("t", tmp_path / "ckpt", 0, extra={"penalty": TinyDataset(32, n=2, seed=3)}))
    return method


# ---- SRM (eqs 1-7) ----
def test_srm_shape_and_eq6_eq7_with_uniform_logits():
    srm = SpatialReunionModule(6, pool=4)
    x = torch.randn(2, 6, 8, 10)
    assert srm(x).shape == x.shape
    assert srm.position_logits(x).shape == (2, 1, 8, 10)  # F_1 has one channel: reshape [B,1,HW,1]
    torch.nn.init.zeros_(srm.conv_f.weight)
    torch.nn.init.zeros_(srm.conv_f.bias)
    # constant F_1 -> softmax weights 1/HW -> X_1 = spatial mean of I (eq 6), O_1 = I + X_1 (eq 7)
    assert torch.allclose(srm(x), x + x.mean(dim=(2, 3), keepdim=True), atol=1e-6)
    srm.softmax = False  # literal eq 6 without softmax: X_1 = sum over positions of F_1 * I = 0 here
    assert torch.allclose(srm(x), x)


def test_srm_eqs_1_to_5_by_hand():
    torch.manual_seed(1)
    srm = SpatialReunionModule(3, pool=2)
    x = torch.randn(1, 3, 4, 4)
    d = torch.nn.functional.avg_pool2d(x, 2)  # eq 1
    u = torch.nn.functional.interpolate(srm.conv_down(d), size=(4, 4), mode="bilinear", align_corners=False)  # eq 2
    f1 = srm.conv_f(srm.conv_a(x) * (1 / (1 + torch.exp(-(u + x)))))  # eqs 3-5
    w = torch.softmax(f1.flatten(), 0)
    x1 = (x.flatten(2) * w).sum(-1)  # eq 6
    assert torch.allclose(srm(x), x + x1[..., None, None], atol=1e-6)  # eq 7


# ---- CRM (eqs 8-10) ----
def test_crm_shape_weights_and_eqs_8_to_10_by_hand():
    torch.manual_seed(2)
    crm = ChannelReunionModule(8, reduction=4)
    x = torch.randn(2, 8, 5, 5)
    w = crm.channel_weights(x)
    assert w.shape == (2, 8) and bool(((w > 0) & (w < 1)).all())
    a2 = crm.attn(x).flatten(2).softmax(-1)  # eq 8 (softmax over HW)
    e2 = (x.flatten(2) * a2).sum(-1)  # eq 9
    x2 = torch.sigmoid(crm.fc(e2))  # eq 10
    assert torch.allclose(w, x2, atol=1e-6)
    assert torch.allclose(crm(x), x * x2[..., None, None], atol=1e-6)
    crm.residual = True
    assert torch.allclose(crm(x), x + x * x2[..., None, None], atol=1e-6)


def test_srm_is_2_4_times_an_autoencoder():
    """Parameter counts from the layer shapes (docs/deviations.md): SRM on 384 channels vs EfficientAD's AE."""
    def n(module):
        return sum(p.numel() for p in module.parameters())

    conv = lambda cin, cout, k: cin * cout * k * k + cout  # noqa: E731
    srm = 2 * conv(384, 384, 3) + conv(384, 1, 3)  # eqs 2, 3 and eq 4's one-channel conv
    ae = (conv(3, 32, 4) + conv(32, 32, 4) + conv(32, 64, 4) + 2 * conv(64, 64, 4) + conv(64, 64, 8)  # encoder
          + 6 * conv(64, 64, 4) + conv(64, 64, 3) + conv(64, 384, 3))  # decoder
    assert n(SpatialReunionModule(384)) == srm == 2_658_433
    assert n(EfficientADAutoencoder(384, 256, 64)) == ae == 1_096_320
    assert round(srm / ae, 1) == 2.4
    # CRM at 64 channels, C/4 = 16: eq 8's 1x1 convs 64->16->1, eq 10's FCs 64->16->64
    assert n(ChannelReunionModule(64)) == conv(64, 16, 1) + conv(16, 1, 1) + (64 * 16 + 16) + (16 * 64 + 64) == 3_185
    assert n(SelectiveFusionModule(384)) == (384 * 32 + 32) + 2 * (32 * 384 + 384) == 37_664


# ---- SFM (Fig. 4) ----
def test_sfm_branch_weights_sum_to_one_per_channel():
    torch.manual_seed(3)
    sfm = SelectiveFusionModule(16)
    o1, o2 = torch.randn(2, 16, 6, 6), torch.randn(2, 16, 6, 6)
    n1, n2 = sfm.branch_weights(o1, o2)
    assert n1.shape == n2.shape == (2, 16, 1, 1)
    assert torch.allclose(n1 + n2, torch.ones_like(n1))
    y1, y2 = sfm(o1, o2)
    assert y1.shape == y2.shape == o1.shape
    assert torch.allclose(y1, n1 * o1) and torch.allclose(y2, n2 * o2)
    # the weights depend on the sum M = O_1 + O_2 only (global average pool of M)
    n1b, _ = sfm.branch_weights(o1 + 1.0, o2 - 1.0)
    assert torch.allclose(n1, n1b, atol=1e-6)


# ---- losses (eqs 15-18) ----
def test_csf_loss_by_hand():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]]).T.reshape(1, 2, 1, 2)  # positions (1,0) and (0,2)
    s = torch.tensor([[0.0, 1.0], [0.0, 1.0]]).T.reshape(1, 2, 1, 2)  # positions (0,1) and (0,1)
    # eq 15: channel-mean squared distances 1 and 0.5 -> 0.75; eq 16: 1-cos = 1 and 0 -> 0.5
    assert L.sa_dis_loss(a, s).item() == pytest.approx(0.75)
    assert L.sa_cos_loss(a, s).item() == pytest.approx(0.5)
    assert L.csf_loss(a, s, lam=0.5).item() == pytest.approx(0.75 + 0.5 * 0.5)  # eq 17
    assert L.csf_loss(a, s, lam=0.5, reduction="sum").item() == pytest.approx(1.5 + 0.25)


def test_cosine_term_matches_sklearn():
    g = torch.Generator().manual_seed(4)
    a, s = torch.randn(2, 7, 3, 4, generator=g), torch.randn(2, 7, 3, 4, generator=g)
    va = a.permute(0, 2, 3, 1).reshape(-1, 7).double().numpy()
    vs = s.permute(0, 2, 3, 1).reshape(-1, 7).double().numpy()
    expected = np.mean(1 - np.diag(cosine_similarity(va, vs)))
    assert L.sa_cos_loss(a, s).item() == pytest.approx(expected, rel=1e-5)


def test_eq18_and_eq19_are_sums():
    t = torch.tensor
    assert L.ae_loss([(t(1.0), t(2.0)), (t(3.0), t(4.0))]).item() == 10.0
    assert L.ae_loss([(t(1.0), t(2.0))]).item() == 3.0
    assert L.total_loss(t(1.5), t(10.0)).item() == 11.5
    with pytest.raises(ValueError):
        L.ae_loss([])


# ---- the full method ----
def test_gradients_reach_every_module_of_the_full_method(tmp_path):
    method = _fit(tmp_path, steps=1, dual_ae=True, srm=True, crm=True, sfm=True, csf=True)
    m = method.model
    assert m.aes[0].srm is not None and m.aes[1].crm is not None and m.sfm is not None
    for name, p in m.named_parameters():
        if name.startswith("teacher."):
            assert p.grad is None and not p.requires_grad
        else:
            assert p.grad is not None and bool(p.grad.abs().sum() > 0), name


def test_variant_structure(tmp_path):
    t = _teacher(tmp_path / "t.pt")
    base = dict(image_size=32, pdn_width=0.125, ae_latent=8)

    def model(**o):
        return EfficientAD({**base, **o}, t).model

    e5 = model(dual_ae=True, srm=True)
    assert e5.map_names == ["loc", "gol_srm", "gol_crm"]
    assert e5.aes[0].srm is not None and e5.aes[1].srm is None and e5.aes[1].crm is None
    serial = model(srm=True, crm=True, serial=True)
    assert len(serial.aes) == 1 and serial.aes[0].crm is not None and serial.aes[0].srm is not None
    assert serial.map_weights.tolist() == [0.5, 0.5]
    assert model(dual_ae=True).map_weights.tolist() == [0.5, 0.25, 0.25]
    assert model(dual_ae=True, map_weight_local=1 / 3).map_weights.tolist() == pytest.approx([1 / 3] * 3)
    medium = model(size="M")  # EfficientAD-M student (Table 1 alternative baseline)
    assert sum(isinstance(x, torch.nn.Conv2d) for x in medium.student) == 6
    assert (medium.student[-3].out_channels, medium.student[-1].in_channels, medium.student[-1].out_channels) == (32, 32, 32)
    with pytest.raises(ValueError, match="sfm"):
        model(sfm=True)
    with pytest.raises(ValueError, match="serial"):
        model(dual_ae=True, serial=True)


@pytest.mark.parametrize("variant", PAPER_A, ids=[v.id for v in PAPER_A])
def test_every_registry_variant_fits_and_predicts(tmp_path, variant):
    method = _fit(tmp_path, **variant.options)
    scores, maps = method.predict(torch.rand(2, 3, 32, 32))
    assert scores.shape == (2,) and maps.shape == (2, 32, 32)
    assert bool(torch.isfinite(maps).all())
    assert len(method.model.aes) == (2 if variant.options["dual_ae"] else 1)


# ---- SFM placement: sfm_in_ta ----
def _sfm_losses(tmp_path, sfm_in_ta: bool):
    """training_losses of the full dual-AE method (no dropout, CSF off) on fixed images, plus the model."""
    cfg = dict(image_size=32, pdn_width=0.125, ae_latent=8, ae_dropout=0.0, seed=0, dual_ae=True, srm=True, crm=True,
               sfm=True, sfm_in_ta=sfm_in_ta)
    method = EfficientAD(cfg, _teacher(tmp_path / "teacher.pt"))
    m, g = method.model, torch.Generator().manual_seed(1)
    m.teacher_mean.copy_(0.1 * torch.randn(1, 16, 1, 1, generator=g))
    m.teacher_std.copy_(0.5 + torch.rand(1, 16, 1, 1, generator=g))
    img, aug, pen = (torch.rand(1, 3, 32, 32, generator=g) for _ in range(3))
    return method, method.training_losses(img, aug, pen), aug


@pytest.mark.parametrize("sfm_in_ta", [False, True])
def test_sfm_in_ta_decides_what_l_ta_compares_with_the_teacher(tmp_path, sfm_in_ta):
    method, out, aug = _sfm_losses(tmp_path, sfm_in_ta)
    m = method.model
    with torch.no_grad():
        x = (aug - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        t = (m.teacher(x) - m.teacher_mean) / m.teacher_std
        s2 = m.student(x)[:, 16:]  # S'' on the augmented image
        raw = [m.aes[0](x), m.aes[1](x)]  # A^SRM, A^CRM
        n1, n2 = m.sfm.branch_weights(raw[0], raw[1])
        fused = [n1 * raw[0], n2 * raw[1]]  # F^SRM, F^CRM (Fig. 4)
    ta_target = fused if sfm_in_ta else raw
    for k in range(2):
        assert out["ta"][k].item() == pytest.approx(((t - ta_target[k]) ** 2).mean().item(), rel=1e-5)  # eq 14
        assert out["sa"][k].item() == pytest.approx(((fused[k] - s2) ** 2).mean().item(), rel=1e-5)  # eq 15
        other = raw if sfm_in_ta else fused
        assert abs(out["ta"][k].item() - ((t - other[k]) ** 2).mean().item()) > 1e-4  # the readings differ
    # gradients: L_TA reaches the SFM only when sfm_in_ta; L_SA always does
    sfm_params = list(m.sfm.parameters())
    g_ta = torch.autograd.grad(sum(out["ta"]), sfm_params, allow_unused=True, retain_graph=True)
    g_sa = torch.autograd.grad(sum(out["sa"]), sfm_params, allow_unused=True)
    if sfm_in_ta:
        assert any(g is not None and bool(g.abs().sum() > 0) for g in g_ta)
    else:
        assert all(g is None for g in g_ta)
    assert all(g is not None for g in g_sa) and any(bool(g.abs().sum() > 0) for g in g_sa)


def test_sfm_in_ta_is_recorded(tmp_path):
    method = _fit(tmp_path, steps=1, dual_ae=True, srm=True, crm=True, sfm=True)
    assert method.summary["sfm_in_ta"] is False
