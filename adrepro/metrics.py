"""AUROC by anomaly type (image level) and pixel AUROC, dataset-agnostic via item meta."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

LOGICAL, STRUCTURAL, GOOD = "logical_anomalies", "structural_anomalies", "good"


def _auroc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    if labels.size == 0 or labels.min() == labels.max():
        return None
    return float(roc_auc_score(labels, scores))


def image_aurocs(scores: Sequence[float], labels: Sequence[int], types: Sequence[str]) -> dict[str, float | None]:
    """``image``: all test images. For MVTec LOCO (types contain logical/structural): ``logical`` and
    ``structural`` each against the good test images only, and ``mean_ls`` their mean (paper A, Table 1)."""
    s, y, t = np.asarray(scores, dtype=np.float64), np.asarray(labels), np.asarray(types)
    out: dict[str, float | None] = {"image": _auroc(y, s), "logical": None, "structural": None, "mean_ls": None}
    for key, kind in (("logical", LOGICAL), ("structural", STRUCTURAL)):
        sel = (t == GOOD) | (t == kind)
        if (t == kind).any():
            out[key] = _auroc(y[sel], s[sel])
    if out["logical"] is not None and out["structural"] is not None:
        out["mean_ls"] = (out["logical"] + out["structural"]) / 2
    return out


def pixel_auroc(maps: list[torch.Tensor], masks: list[torch.Tensor]) -> float | None:
    """Pixel AUROC over every test pixel; maps are resized (bilinear) to their mask's size."""
    if not maps:
        return None
    ys, ss = [], []
    for m, g in zip(maps, masks):
        if m.shape[-2:] != g.shape[-2:]:
            m = F.interpolate(m[None, None].float(), size=g.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
        ys.append((g > 0.5).flatten().numpy())
        ss.append(m.flatten().float().numpy())
    return _auroc(np.concatenate(ys).astype(np.int64), np.concatenate(ss))
