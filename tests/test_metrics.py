import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from adrepro.metrics import image_aurocs, pixel_auroc


def test_logical_and_structural_are_each_against_good_only():
    types = ["good"] * 4 + ["logical_anomalies"] * 3 + ["structural_anomalies"] * 3
    labels = [0] * 4 + [1] * 6
    scores = [0.1, 0.4, 0.35, 0.8, 0.3, 0.9, 0.5, 0.95, 0.05, 0.6]
    out = image_aurocs(scores, labels, types)
    assert out["image"] == pytest.approx(roc_auc_score(labels, scores))
    assert out["logical"] == pytest.approx(roc_auc_score([0] * 4 + [1] * 3, scores[:7]))
    assert out["structural"] == pytest.approx(roc_auc_score([0] * 4 + [1] * 3, scores[:4] + scores[7:]))
    assert out["mean_ls"] == pytest.approx((out["logical"] + out["structural"]) / 2)


def test_one_class_sets_have_only_image_auroc():
    out = image_aurocs([0.2, 0.9, 0.4], [0, 1, 1], ["3", "5", "7"])
    assert out["logical"] is None and out["structural"] is None and out["mean_ls"] is None
    assert out["image"] == pytest.approx(1.0)


def test_single_class_gives_none_not_a_crash():
    assert image_aurocs([0.1, 0.2], [0, 0], ["good", "good"])["image"] is None


def test_pixel_auroc_matches_sklearn_after_resize():
    g = torch.Generator().manual_seed(0)
    maps = [torch.rand(8, 8, generator=g) for _ in range(3)]
    masks = [(torch.rand(8, 8, generator=g) > 0.7).float() for _ in range(3)]
    expect = roc_auc_score(np.concatenate([m.flatten().numpy() for m in masks]),
                           np.concatenate([m.flatten().numpy() for m in maps]))
    assert pixel_auroc(maps, masks) == pytest.approx(expect)
    small = [torch.nn.functional.avg_pool2d(m[None, None], 2)[0, 0] for m in maps]
    assert 0.0 <= pixel_auroc(small, masks) <= 1.0


def test_auroc_with_ties_and_roc_curve_match_sklearn():
    from sklearn.metrics import roc_curve as sk_roc

    from adrepro.metrics import _auroc, roc_curve

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    s = np.round(rng.normal(y * 0.7, 1.0), 1)  # many ties
    assert _auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    fpr, tpr = roc_curve(y, s)
    sk_fpr, sk_tpr, _ = sk_roc(y, s, drop_intermediate=False)
    assert np.allclose(fpr, sk_fpr) and np.allclose(tpr, sk_tpr)
