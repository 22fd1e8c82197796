"""AUROC by anomaly type (image level) and pixel AUROC, dataset-agnostic via item meta.

AUROC is the Mann-Whitney statistic with average ranks for ties (identical to scikit-learn's
``roc_auc_score``, checked in tests/test_metrics.py) without importing scikit-learn in every stage."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

LOGICAL, STRUCTURAL, GOOD = "logical_anomalies", "structural_anomalies", "good"


def _auroc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    labels = np.asarray(labels).astype(bool)
    if labels.size == 0 or labels.all() or not labels.any():
        return None
    _, inverse, counts = np.unique(np.asarray(scores, dtype=np.float64), return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    ranks = (ends - (counts - 1) / 2.0)[inverse]  # 1-based average ranks
    n1, n0 = int(labels.sum()), int((~labels).sum())
    return float((ranks[labels].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


def roc_curve(labels: Sequence[int], scores: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rates, true positive rates), one point per distinct score threshold, from (0, 0)."""
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(bool)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.where(np.diff(s))[0], len(s) - 1]
    tps = np.cumsum(y)[last]
    fps = last + 1 - tps
    return np.r_[0.0, fps / max(fps[-1], 1)], np.r_[0.0, tps / max(tps[-1], 1)]


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


def per_type_aurocs(scores: Sequence[float], labels: Sequence[int], types: Sequence[str]) -> dict[str, float | None]:
    """Image AUROC of each anomaly type against the good test images only (MVTec AD defects, LOCO's two kinds);
    ``{}`` when the test set has no good images. None for a type whose AUROC is undefined."""
    s, y, t = np.asarray(scores, dtype=np.float64), np.asarray(labels), np.asarray(types)
    if not (t == GOOD).any():
        return {}
    return {str(kind): _auroc(y[(t == GOOD) | (t == kind)], s[(t == GOOD) | (t == kind)])
            for kind in sorted(set(t.tolist()) - {GOOD})}


def per_type_pixel_aurocs(maps: list[torch.Tensor], masks: list[torch.Tensor], types: Sequence[str]
                          ) -> dict[str, float | None]:
    """Pixel AUROC of each anomaly type: every pixel of the good test images and of that type's images
    (``maps``/``masks``/``types`` aligned, one per test image); ``{}`` without maps or good images."""
    if not maps or len(maps) != len(types) or GOOD not in types:
        return {}
    good = [i for i, k in enumerate(types) if k == GOOD]
    out: dict[str, float | None] = {}
    for kind in sorted(set(types) - {GOOD}):
        sel = good + [i for i, k in enumerate(types) if k == kind]
        out[kind] = pixel_auroc([maps[i] for i in sel], [masks[i] for i in sel])
    return out
