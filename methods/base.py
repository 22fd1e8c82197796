"""The contract every method family implements (ARCHITECTURE.md "Method").

A family lives in ``methods/<family>/``: torch modules in ``model.py``, one loss function per paper
equation in ``losses.py``, and a ``Method`` subclass (``method.py``) whose ``fit`` drives
``adrepro.training.run_loop`` (the resumable loop; training loops stay outside the modules).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.data import Dataset


@dataclass
class Teacher:
    """A provisioned teacher/backbone: where the weights are and whether they are the paper's."""

    id: str
    path: Path | None  # weight file (None for sources loaded by name, e.g. random init)
    provenance: dict[str, Any] = field(default_factory=dict)  # id, source, sha256, paper_teacher, substitute_reason


@dataclass
class FitContext:
    exp_id: str
    work_dir: Path  # scratch for resumable checkpoints (.adrepro/ckpt/<profile>/<exp>/)
    seed: int
    log_metric: Callable[[str, float, int], None] = lambda name, value, step: None
    stop_after: int | None = None  # testing hook: stop (as if killed) after this many steps of this call
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. penalty image dataset


class Method(abc.ABC):
    """fit -> predict. ``predict`` returns image scores [B] and anomaly maps [B,H,W] (or None)."""

    family: str = ""

    def __init__(self, cfg: dict[str, Any], teacher: Teacher | None):
        self.cfg = cfg
        self.teacher = teacher
        from adrepro.config import check_device

        check_device(cfg.get("device", "cpu"), f"{self.family}: device")  # never a silent CPU fallback
        self.device = torch.device(cfg.get("device", "cpu"))

    @abc.abstractmethod
    def fit(self, train: Dataset, val: Dataset | None, ctx: FitContext) -> dict[str, Any]:
        """Train (resuming from ``ctx.work_dir`` if a matching checkpoint exists). Returns a summary dict
        (e.g. ``{"steps": n, "penalty": "on"|"off: reason"}``) recorded in metrics.json and MLflow."""

    @abc.abstractmethod
    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """images: float [B,3,H,W] in [0,1] on any device. Returns (scores[B], maps[B,h,w] or None) on CPU."""

    @abc.abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to predict: weights AND normalisation statistics (quantiles, anchors...)."""

    @abc.abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def inference_modules(self) -> list[torch.nn.Module]:
        """Modules used by ``predict`` (moved to device / set to eval / fp16 for latency)."""
        return []


_FAMILIES: dict[str, str] = {
    "efficientad": "adrepro.methods.efficientad.method:EfficientAD",
    "fcd_vit": "adrepro.methods.fcd_vit.method:FCDViT",
    "kd_cnn": "adrepro.methods.kd_cnn.method:KDCNN",
}


def build_method(family: str, cfg: dict[str, Any], teacher: Teacher | None) -> Method:
    import importlib

    if family not in _FAMILIES:
        raise KeyError(f"unknown method family '{family}' (known: {sorted(_FAMILIES)})")
    module, cls = _FAMILIES[family].split(":")
    return getattr(importlib.import_module(module), cls)(cfg, teacher)
