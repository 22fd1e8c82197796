"""Conformance: our EfficientAD-S and -M against anomalib 2.7's ``EfficientAdModel`` (the reference).

anomalib's model is built with ``padding=True`` (our padded PDNs, EfficientAD Table 6) and ``pad_maps=False``; OUR
weights and statistics are loaded into it through an explicit key map, then teacher/student/AE outputs, the anomaly
map, the image score and one training step's losses (same batch, penalty image and augmentation) must agree within
1e-5. 256 px and 384 channels (anomalib's encoder needs 256 px input), one image, one torch thread.
"""

from __future__ import annotations

import pytest
import torch

from adrepro.bench import key_map as _key_map  # shared with `adrepro bench`
from adrepro.bench import our_efficientad as _ours
from adrepro.bench import to_reference as _to_reference
from adrepro.methods.efficientad.model import adjust_colour, augment_ae_input

SIZE, C = 256, 384
TOL = dict(rtol=0, atol=1e-5)
# teacher + student + AE parameters; anomalib's model.parameters() adds its mean/std (2 x 384) and 4 quantiles
EXPECTED = {"S": 8_057_856, "M": 20_738_432}
ANOMALIB_TOTAL = {"S": 8_058_628, "M": 20_739_204}
STATS = 2 * C + 4

@pytest.fixture(scope="module")
def reference():
    """anomalib's torch model module (skip here, at test setup, so ADREPRO_REQUIRE_EXTRAS=1 turns it into a failure)."""
    pytest.importorskip("anomalib", reason="pip install -e .[conformance]")
    from anomalib.models.image.efficient_ad import torch_model

    return torch_model


@pytest.fixture(scope="module", params=["S", "M"])
def pair(request, reference, tmp_path_factory):
    """(size, our method, anomalib's model with our weights loaded)."""
    size = request.param
    ours = _ours(tmp_path_factory.mktemp(f"conf_{size}"), size)
    ref_size = reference.EfficientAdModelSize.S if size == "S" else reference.EfficientAdModelSize.M
    ref = reference.EfficientAdModel(teacher_out_channels=C, model_size=ref_size, padding=True, pad_maps=False)
    ref.load_state_dict(_to_reference(ours, size), strict=True)  # every reference tensor comes from ours
    assert set(_key_map(size)) == {k for k, _ in ours.model.named_parameters()}  # every parameter of ours is used
    return size, ours, ref


def _images(seed: int, n: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def test_parameter_counts_equal_efficientad(pair):
    size, ours, ref = pair
    m = ours.model
    n_ours = sum(p.numel() for net in (m.teacher, m.student, m.aes) for p in net.parameters())
    assert n_ours == EXPECTED[size]
    n_ref = sum(p.numel() for p in ref.parameters())
    n_stats = sum(p.numel() for p in ref.mean_std.parameters()) + sum(p.numel() for p in ref.quantiles.parameters())
    assert n_stats == STATS == 772
    assert n_ref == ANOMALIB_TOTAL[size] == n_ours + STATS


def _capture(modules: dict[str, torch.nn.Module], store: dict[str, torch.Tensor]) -> list:
    return [mod.register_forward_hook(lambda _m, _i, out, name=name: store.__setitem__(name, out.detach()))
            for name, mod in modules.items()]


def test_outputs_map_and_score_equal_reference(pair):
    """Each network's output as computed inside the two full forward passes (hooks), then map and score."""
    _, ours, ref = pair
    m = ours.model.eval()
    ref.eval()
    images = _images(3)
    got, want = {}, {}
    hooks = (_capture({"teacher": m.teacher, "student": m.student, "ae": m.aes[0]}, got)
             + _capture({"teacher": ref.teacher, "student": ref.student, "ae": ref.ae}, want))
    try:
        scores, maps = ours.predict(images)
        with torch.no_grad():
            out = ref(images)
    finally:
        for h in hooks:
            h.remove()
    assert set(got) == set(want) == {"teacher", "student", "ae"}
    for name in got:
        torch.testing.assert_close(got[name], want[name], **TOL, msg=name)
    assert want["student"].shape[1] == 2 * C and want["ae"].shape[-2:] == want["teacher"].shape[-2:]
    assert maps.shape == (1, SIZE, SIZE)
    assert float(maps.abs().max()) > 1e-2  # not a trivially zero map
    torch.testing.assert_close(maps, out.anomaly_map[:, 0], **TOL)
    torch.testing.assert_close(scores, out.pred_score.flatten(), **TOL)


def test_augmentation_equals_reference(reference):
    """Our adjust_colour(which, factor) equals anomalib's draw (torchvision brightness/contrast/saturation)."""
    img = _images(4)
    seen = set()
    for seed in range(40):
        torch.manual_seed(seed)  # anomalib draws the factor, then the transform, from the global RNG
        factor = torch.empty(1).uniform_(0.8, 1.2).item()
        which = int(torch.randint(0, 3, (1,)).item())
        torch.manual_seed(seed)
        expected = reference.EfficientAdModel.choose_random_aug_image(img)
        torch.testing.assert_close(adjust_colour(img, which, factor), expected, rtol=0, atol=1e-6)
        seen.add(which)
        if seen == {0, 1, 2}:
            break
    assert seen == {0, 1, 2}


def test_training_step_losses_and_gradients_equal_reference(pair, monkeypatch):
    size, ours, ref = pair
    img, pen = _images(5), _images(6)
    aug = augment_ae_input(img, torch.Generator().manual_seed(7))
    assert not torch.equal(aug, img)
    monkeypatch.setattr(ref, "choose_random_aug_image", lambda image: aug)  # both see the same augmented tensor
    ours.model.train()
    ref.train()
    for net in (ours.model, ref):
        net.zero_grad(set_to_none=True)
    torch.manual_seed(8)  # same dropout masks in both AEs (the only random op left in either step)
    out = ours.training_losses(img, aug, pen)
    torch.manual_seed(8)
    loss_st, loss_ae, loss_stae = ref(img, batch_imagenet=pen)
    torch.testing.assert_close(out["hard"] + out["penalty"], loss_st, **TOL)
    torch.testing.assert_close(out["ta"][0], loss_ae, **TOL)
    torch.testing.assert_close(out["sa"][0], loss_stae, **TOL)
    assert out["penalty"].item() > 0 and loss_ae.item() > 0
    if size == "M":  # one backward (S) keeps the file fast; the forward equalities above cover M
        return
    out["total"].backward()
    (loss_st + loss_ae + loss_stae).backward()
    ours_params, ref_params = dict(ours.model.named_parameters()), dict(ref.named_parameters())
    for key, ref_key in _key_map(size).items():
        if key.startswith("teacher."):
            continue
        g_ours, g_ref = ours_params[key].grad, ref_params[ref_key].grad
        scale = float(g_ref.abs().max())
        assert scale > 0, key
        # float32 sums over ~10^5 positions in another order (our one batch of 3 vs three forwards): 1e-3 of the
        # largest gradient; in float64 the two agree to ~1e-14
        torch.testing.assert_close(g_ours, g_ref, rtol=0, atol=1e-3 * scale, msg=key)
