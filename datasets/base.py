"""The dataset contract (ARCHITECTURE.md "Dataset").

Every loader returns items ``(image, label, mask, meta)``:
  image  float tensor [3,H,W] in [0,1] (grey repeated to 3 channels), resized to the requested size
  label  int, 0 normal / 1 anomalous
  mask   float tensor [H,W] in {0,1} at the image's size, or None when the item has no mask
  meta   dict: split ("train"|"val"|"test"), anomaly_type ("good", "logical_anomalies",
         "structural_anomalies", a defect name or a class name), category, path
so evaluation can group AUROC by anomaly type without knowing the dataset.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import Dataset


class DataError(RuntimeError):
    """Malformed or missing data; the message names the path and what was expected."""


@dataclass
class Splits:
    train: Dataset
    val: Dataset | None  # normal images for map normalisation (EfficientAD quantiles), or None
    test: Dataset
    info: dict[str, Any] = field(default_factory=dict)  # source, protocol, official (bool), root, counts, notes


def collate(items: list[tuple]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, list[dict]]:
    """Stack items; masks become a tensor only when every item has one (else None)."""
    images = torch.stack([it[0] for it in items])
    labels = torch.tensor([int(it[1]) for it in items])
    masks = [it[2] for it in items]
    mask_t = torch.stack(masks) if all(m is not None for m in masks) else None
    return images, labels, mask_t, [it[3] for it in items]
