"""Per-image scores beside each result (``results/<profile>/<exp>/scores.csv.gz``), the evaluated test subset,
and the ``scale`` record of a result.

``scores.csv.gz``: gzipped CSV with header ``image,label,anomaly_type,score``, one row per evaluated test image
in evaluation order. ``image`` is the file's path relative to the dataset root (``data.root`` in metrics.json) or,
for array data sets, ``<dataset>/<split>#<index>`` (the index into that split's array). Every image AUROC of
metrics.json can be recomputed from it with scikit-learn (``tests/test_report.py`` does)::

    df = pandas.read_csv("scores.csv.gz"); roc_auc_score(df.label, df.score)               # auroc.image
    sel = df.anomaly_type.isin(["good", "logical_anomalies"]); roc_auc_score(df.label[sel], df.score[sel])
"""

from __future__ import annotations

import copy
import csv
import gzip
import io
import os
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

SCORES_FILE = "scores.csv.gz"
FIELDS = ("image", "label", "anomaly_type", "score")
SUBSET_SEED = 0  # the same test subset for every seed and variant, so their AUROCs are paired
# profile method keys that scale a run down from the paper's settings (recorded in every result's `scale`)
SCALE_KEYS = ("image_size", "steps", "batch_size", "lr", "pdn_width", "out_channels", "ae_latent")
_ARRAY_REF = re.compile(r"^(\w+)\[(\d+)\]$")


def image_ref(meta: dict[str, Any], dataset: str, root: str | Path | None) -> str:
    """The image's name in scores.csv.gz: path relative to ``root``, or ``<dataset>/<split>#<index>``."""
    path = str(meta.get("path", ""))
    m = _ARRAY_REF.match(path)
    if m:
        return f"{dataset}/{m.group(1)}#{m.group(2)}"
    if root and os.path.isabs(path):
        try:
            return Path(path).relative_to(root).as_posix()
        except ValueError:
            raise ValueError(f"test image {path} lies outside the dataset root {root}") from None
    if not path:
        raise ValueError(f"test item of {dataset} has no meta['path']")
    return path


def write_scores(path: Path, images: Sequence[str], labels: Sequence[int], types: Sequence[str],
                 scores: Sequence[float]) -> None:
    """Write scores.csv.gz atomically; scores at full float precision (``repr``), gzip without a timestamp."""
    if not len(images) == len(labels) == len(types) == len(scores):
        raise ValueError(f"{path}: {len(images)} images, {len(labels)} labels, {len(types)} types, "
                         f"{len(scores)} scores (one each per test image)")
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(FIELDS)
    for row in zip(images, labels, types, scores):
        w.writerow([row[0], int(row[1]), row[2], repr(float(row[3]))])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz:
        gz.write(buf.getvalue().encode("utf-8"))
    os.replace(tmp, path)


def read_scores(path: Path) -> list[dict[str, Any]]:
    with gzip.open(path, "rt", encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        if tuple(reader.fieldnames or ()) != FIELDS:
            raise ValueError(f"{path}: header {reader.fieldnames}, expected {list(FIELDS)}")
        return [{"image": r["image"], "label": int(r["label"]), "anomaly_type": r["anomaly_type"],
                 "score": float(r["score"])} for r in reader]


def test_subset(dataset: Any, n: int | None, seed: int = SUBSET_SEED) -> Any:
    """At most ``n`` test items, stratified by anomaly type (each type keeps its share, at least one item),
    drawn with a fixed seed; the dataset itself when ``n`` is None or not smaller. Needs ``dataset.records``."""
    if n is None or n >= len(dataset.records):
        return dataset
    types = np.array([r.meta["anomaly_type"] for r in dataset.records])
    rng = np.random.default_rng(seed)
    keep: list[int] = []
    for t in sorted(set(types)):
        idx = np.flatnonzero(types == t)
        k = max(1, int(round(n * len(idx) / len(types))))
        keep += rng.choice(idx, min(k, len(idx)), replace=False).tolist()
    sub = copy.copy(dataset)
    sub.records = [dataset.records[i] for i in sorted(keep)]
    sub._cache, sub._cache_bytes = {}, 0
    return sub


def scale_record(cfg: dict[str, Any], prof: dict[str, Any], protocol: str, n_test: int, n_test_full: int,
                 teacher: dict[str, Any] | None) -> dict[str, Any]:
    """Every reduction from the papers' settings this result ran with (shown beside its numbers in the report):
    the family's scale keys, the test subset, and a distilled teacher's distillation settings (its provenance)."""
    out: dict[str, Any] = {k: cfg[k] for k in SCALE_KEYS if k in cfg}
    spec = (prof.get("protocols") or {}).get(protocol) or {}
    out["test_subset"] = spec.get("test_subset")
    out["n_test"], out["n_test_full"] = n_test, n_test_full
    distill = (teacher or {}).get("distill")
    if distill:
        out["teacher_distill"] = {k: distill.get(k) for k in ("steps", "image_size", "batch_size", "lr")}
    out["torch_threads"] = prof.get("torch_threads", 0)
    return out


def scale_text(scale: dict[str, Any] | None) -> str:
    """One line for the report: "128 px · 200 steps · width 0.5 · test 2000/10000"."""
    if not scale:
        return "?"
    parts = []
    if "image_size" in scale:
        parts.append(f"{scale['image_size']} px")
    if "steps" in scale:
        parts.append(f"{scale['steps']} steps")
    if "batch_size" in scale:
        parts.append(f"batch {scale['batch_size']}")
    if "lr" in scale:
        parts.append(f"lr {scale['lr']:g}")
    if "pdn_width" in scale:
        parts.append(f"width {scale['pdn_width']}")
    if "out_channels" in scale:
        parts.append(f"{scale['out_channels']} ch")
    if scale.get("n_test_full"):
        parts.append(f"test {scale.get('n_test')}/{scale['n_test_full']}")
    if scale.get("teacher_distill"):
        parts.append(f"teacher distil {scale['teacher_distill'].get('steps')} steps")
    return " · ".join(parts)
