"""Per-experiment figures and plot data, written by the `evaluate` stage into ``plots/<profile>/<exp>/``.

- ``roc_curve.png`` and ``roc.csv`` (``fpr,tpr``; collinear points dropped): the image-level ROC curve.
- ``score_hist.png``: score histograms of the good and the defective test images.
- ``anomaly_maps.png``: the extremes of the test set with their anomaly maps, labelled with type and score:
  the most missed anomalies (lowest-scored defective), the hardest normals (highest-scored good) and the
  best-detected anomalies (highest-scored defective). Only these few images are predicted again.
- ``train_curve.csv`` (``step,<term>...``): the training losses of ``train.json``'s history, one row per logged step.

The CSV files are the data of the DVC ``plots`` definitions (``adrepro/dvcgen.py``): ``dvc plots show`` /
``dvc plots diff``. Report-level charts are ``adrepro/figures.py``'s (from result files only).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .metrics import roc_curve  # noqa: E402

DPI = 80
ROC_PNG, ROC_CSV, HIST_PNG, MONTAGE_PNG, TRAIN_CSV = (
    "roc_curve.png", "roc.csv", "score_hist.png", "anomaly_maps.png", "train_curve.csv")
PER_GROUP = 3  # images per montage group


def _write_csv(path: Path, header: Sequence[str], rows: list[Sequence[Any]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)


def roc_points(labels: Sequence[int], scores: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """The ROC curve without the points that lie on a straight segment between their neighbours (same area)."""
    fpr, tpr = roc_curve(labels, scores)
    if len(fpr) > 2:  # on the integer counts behind the rates: exact, unlike float differences
        y = np.asarray(labels).astype(bool)
        fps, tps = np.rint(fpr * max((~y).sum(), 1)), np.rint(tpr * max(y.sum(), 1))
        bend = np.r_[True, (np.diff(fps, 2) != 0) | (np.diff(tps, 2) != 0), True]
        fpr, tpr = fpr[bend], tpr[bend]
    return fpr, tpr


def write_roc(out: Path, labels: Sequence[int], scores: Sequence[float], title: str) -> None:
    fpr, tpr = roc_points(labels, scores)
    _write_csv(out / ROC_CSV, ("fpr", "tpr"), [(repr(float(a)), repr(float(b))) for a, b in zip(fpr, tpr)])
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot(fpr, tpr, lw=1.5)
    ax.plot([0, 1], [0, 1], "k--", lw=0.5)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title)
    ax.title.set_fontsize(8)
    fig.tight_layout()
    fig.savefig(out / ROC_PNG, dpi=DPI)
    plt.close(fig)


def write_histogram(out: Path, labels: Sequence[int], scores: Sequence[float], title: str) -> None:
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(bool)
    bins = np.histogram_bin_edges(s, bins=30)
    fig, ax = plt.subplots(figsize=(5, 3))
    for sel, name, color in ((~y, "good", "tab:blue"), (y, "defective", "tab:red")):
        if sel.any():
            ax.hist(s[sel], bins=bins, density=True, alpha=0.55, color=color, label=f"{name} (n={int(sel.sum())})")
    ax.set(xlabel="anomaly score", ylabel="density (area 1 per group)", title=title)
    ax.title.set_fontsize(8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / HIST_PNG, dpi=DPI)
    plt.close(fig)


def extremes(labels: Sequence[int], scores: Sequence[float], k: int = PER_GROUP) -> list[tuple[str, int]]:
    """(group, test index) of the montage: most missed anomalies, hardest normals, best-detected anomalies."""
    s = np.asarray(scores, dtype=np.float64)
    anom = [i for i in np.argsort(s, kind="stable") if labels[i] == 1]
    good = [i for i in np.argsort(-s, kind="stable") if labels[i] == 0]
    missed = anom[:k]
    best = [i for i in anom[::-1] if i not in missed][:k]
    return ([("most missed", int(i)) for i in missed] + [("hardest normal", int(i)) for i in good[:k]]
            + [("best detected", int(i)) for i in best])


def write_montage(out: Path, method: Any, dataset: Any, labels: Sequence[int], scores: Sequence[float],
                  types: Sequence[str], test_maps: Sequence[Any] = ()) -> None:
    """Image over anomaly map of the extremes; ``test_maps`` (one per test image, as evaluation kept them for
    data with masks) are reused, otherwise only the picked images are predicted again."""
    from .datasets.base import collate

    picks = extremes(labels, scores)
    if not picks:
        return
    images, _, _, _ = collate([dataset[i] for _, i in picks])
    if len(test_maps) == len(scores):
        maps = [test_maps[i] for _, i in picks]
    else:
        maps = method.predict(images)[1]
    rows = 2 if maps is not None else 1
    fig, axes = plt.subplots(rows, len(picks), figsize=(1.5 * len(picks), 1.7 * rows + 0.3), squeeze=False)
    for j, (group, i) in enumerate(picks):
        axes[0, j].imshow(images[j].permute(1, 2, 0).clamp(0, 1).numpy())
        axes[0, j].set_title(f"{group}\n{types[i][:20]}\n{scores[i]:.3g}", fontsize=6)
        if maps is not None:
            axes[1, j].imshow(maps[j].float().numpy(), cmap="jet")
        for ax in axes[:, j]:
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(out / MONTAGE_PNG, dpi=DPI)
    plt.close(fig)


def write_train_curve(out: Path, history: Sequence[Sequence[Any]]) -> None:
    """``train.json`` history ``[name, step, value]`` (names ``train.<term>``) as one wide row per step."""
    by_step: dict[int, dict[str, float]] = {}
    for name, step, value in history:
        by_step.setdefault(int(step), {})[str(name).removeprefix("train.")] = float(value)
    terms = sorted({t for row in by_step.values() for t in row}, key=lambda t: (t != "loss", t))
    _write_csv(out / TRAIN_CSV, ("step", *terms),
               [(step, *(repr(row[t]) if t in row else "" for t in terms)) for step, row in sorted(by_step.items())])
