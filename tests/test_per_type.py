"""Per-defect-type AUROCs (image and pixel) against scikit-learn on hand-made scores, and their MLflow names."""

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from adrepro.metrics import per_type_aurocs, per_type_pixel_aurocs
from adrepro.tracking import numeric_metrics

TYPES = ["good"] * 5 + ["crack"] * 3 + ["stain"] * 4 + ["good"]
SCORES = [0.1, 0.4, 0.35, 0.2, 0.9, 0.8, 0.3, 0.95, 0.5, 0.5, 0.05, 0.6, 0.4]  # ties across types on purpose


def test_image_auroc_per_type_matches_sklearn_on_good_plus_that_type():
    labels = [0 if t == "good" else 1 for t in TYPES]
    got = per_type_aurocs(SCORES, labels, TYPES)
    assert sorted(got) == ["crack", "stain"]
    for kind in ("crack", "stain"):
        sel = [i for i, t in enumerate(TYPES) if t in ("good", kind)]
        want = roc_auc_score([labels[i] for i in sel], [SCORES[i] for i in sel])
        assert got[kind] == pytest.approx(want, abs=1e-12)
    # the other type's images must not enter: adding a perfectly separated third type leaves crack unchanged
    more = per_type_aurocs(SCORES + [9.0], labels + [1], TYPES + ["hole"])
    assert more["crack"] == got["crack"] and more["hole"] == 1.0


def test_no_good_images_no_per_type():
    assert per_type_aurocs([0.1, 0.2], [1, 1], ["crack", "stain"]) == {}


def test_pixel_auroc_per_type_matches_sklearn_over_good_and_type_pixels():
    g = torch.Generator().manual_seed(0)
    types = ["good", "good", "crack", "crack", "stain"]
    maps = [torch.rand(4, 4, generator=g) for _ in types]
    masks = [torch.zeros(4, 4) for _ in types]
    masks[2][1:3, 1:3] = 1
    masks[3][0, :] = 1
    masks[4][3, 3] = 1
    maps[4][3, 3] = 2.0  # stain perfectly found
    got = per_type_pixel_aurocs(maps, masks, types)
    for kind in ("crack", "stain"):
        sel = [i for i, t in enumerate(types) if t in ("good", kind)]
        y = np.concatenate([masks[i].flatten().numpy() for i in sel])
        s = np.concatenate([maps[i].flatten().numpy() for i in sel])
        assert got[kind] == pytest.approx(roc_auc_score(y, s), abs=1e-7)
    assert got["stain"] == 1.0
    assert per_type_pixel_aurocs([], [], types) == {}


def test_per_type_results_reach_mlflow_as_flat_metrics():
    flat = numeric_metrics({"auroc": {"image": 0.7, "pixel": None, "per_type": {"crack": 0.6, "stain": None},
                                      "pixel_per_type": {"crack": 0.8}}})
    assert flat == {"auroc.image": 0.7, "auroc.per_type.crack": 0.6, "auroc.pixel_per_type.crack": 0.8}
