"""KDCNN: paper B's CNN backbone ablation (section 4.3, Figs 3 and 5) as an adrepro ``Method``.

Multi-layer distillation from a pretrained CNN teacher into a randomly initialised student, optionally with
L_anchor (eq. 2) on a CNN "cls" feature (``cnn_cls``); the score is the distillation discrepancy per image,
plus S_A (eq. 7) with the anchor. Two presets (cfg ``preset``; any cfg key overrides its preset's value):

- ``mkdad``: MKDAD as published (Salehi et al. 2021): the smaller BatchNorm "cloner" student, loss
  sum(1 - cos) + lambda * sum(MSE) on pool2-5 with lambda 0.01 (one-class sets) / 0.5 (MVTec AD), score on the
  last three taps (pool3-5), Adam lr 1e-3, batch 128. Other teachers (ResNet18, EfficientNet-Lite): a cloner
  with one block per tap (``model.build_cloner``), scored on the last three taps.
- ``same_arch``: paper B 4.3 read literally: a student of the teacher's architecture ("学生网络同样采取随机权重"),
  plain SGD lr 1e-3, MSE + 0.5 * (1 - cos) on and scored over all taps.

cfg keys (params.yaml ``methods.kd_cnn`` / profiles / registry options) and their defaults: ``DEFAULTS``
(adrepro/schema.py builds the params.yaml schema from it: add new keys there).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from adrepro.training import seed_everything

from ..base import FitContext, Teacher
from ..fcd_vit.method import StudentAnchorMethod, distill_loop, resolve_cfg, teacher_file
from ..fcd_vit.model import AnchorBank, normalisation
from .losses import anchor_loss, anchor_score, cnn_cls, mkdad_loss
from .model import TappedCNN, build_cloner, build_cnn, default_taps

_COMMON = {"momentum": 0.0, "weight_decay": 0.0, "warmup_steps": 0, "lr_schedule": "constant", "grad_clip": 0.0,
           "lr": 1e-3, "batch_size": 128}
PRESETS: dict[str, dict[str, Any]] = {
    "mkdad": {**_COMMON, "student": "cloner", "optimizer": "adam", "lambda_dir": 1.0, "lambda_mse": 0.01,
              "lambda_mse_mvtec": 0.5, "score_last": 3},
    "same_arch": {**_COMMON, "student": "same_arch", "optimizer": "sgd", "lambda_dir": 0.5, "lambda_mse": 1.0,
                  "lambda_mse_mvtec": 1.0, "score_last": 0},
}
CHOICES = {"preset": tuple(PRESETS), "student": ("cloner", "same_arch"), "optimizer": ("sgd", "adam"),
           "lr_schedule": ("constant", "cosine")}  # allowed values, read by the params.yaml schema
# score_anchor None = anchor; taps None = the architecture's defaults; anchor_momentum None = running mean;
# score_last: score on the last n taps (0 = all); lambda_mse_mvtec: lambda_mse when the protocol is mvtec_ad
DEFAULTS: dict[str, Any] = {
    "preset": "mkdad", "backbone": "vgg16", "anchor": False, "score_anchor": None,  # registry options
    "image_size": 224, "steps": 1000, "taps": None, "lambda": 1.0, "anchor_momentum": None,
    **PRESETS["mkdad"], "val_fraction": 0.0, "checkpoint_every": 1000,
}


def kd_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """``DEFAULTS``, then the values of cfg ``preset``, then cfg itself."""
    preset = cfg.get("preset", DEFAULTS["preset"])
    if preset not in PRESETS:
        raise ValueError(f"kd_cnn: cfg 'preset' must be one of {sorted(PRESETS)}, got {preset!r}")
    resolved = resolve_cfg("kd_cnn", cfg, DEFAULTS)
    return {**resolved, **PRESETS[preset], **cfg}


class KDCNN(StudentAnchorMethod):
    family = "kd_cnn"

    def __init__(self, cfg: dict[str, Any], teacher: Teacher | None):
        cfg = kd_config(cfg)
        super().__init__(cfg, teacher)
        self.image_size = int(cfg["image_size"])
        self.backbone = str(cfg["backbone"])
        self.use_anchor = bool(cfg["anchor"])
        self.score_anchor = bool(self.use_anchor if cfg["score_anchor"] is None else cfg["score_anchor"])
        self.lam = float(cfg["lambda"])
        self.lam_dir = float(cfg["lambda_dir"])
        self.lam_mse = float(cfg["lambda_mse_mvtec"] if cfg.get("protocol") == "mvtec_ad" else cfg["lambda_mse"])
        self.score_last = int(cfg["score_last"])
        if cfg["student"] not in ("cloner", "same_arch"):
            raise ValueError(f"kd_cnn: cfg 'student' must be 'cloner' or 'same_arch', got {cfg['student']!r}")
        self.teacher_net = self.student = self.anchors = None

    def _build(self) -> None:
        tf = teacher_file(self.teacher, self.family)
        arch, kwargs = tf["arch"], dict(tf["kwargs"])
        net_t = build_cnn(arch, kwargs)
        net_t.load_state_dict(tf["state_dict"])
        taps = list(self.cfg["taps"] or tf.get("taps") or default_taps(arch, net_t))
        self.teacher_net = TappedCNN(net_t, taps).eval().requires_grad_(False)
        with torch.no_grad():
            shapes = [tuple(f.shape[1:]) for f in self.teacher_net(torch.zeros(1, 3, self.image_size, self.image_size))]
        if self.cfg["student"] == "cloner":
            self.student = build_cloner(arch, taps, shapes, self.image_size)
        else:
            self.student = TappedCNN(build_cnn(arch, kwargs), taps)
        if not 0 <= self.score_last <= len(taps):
            raise ValueError(f"kd_cnn: cfg 'score_last' must be in [0, {len(taps)}] (0 = all taps), "
                             f"got {self.score_last}")
        momentum = self.cfg["anchor_momentum"]
        self.anchors = AnchorBank(1, shapes[-1][0], None if momentum is None else float(momentum))
        self.arch, self.taps = arch, taps
        mean, std = normalisation(tf["provenance"])
        for m in (self.teacher_net, self.student, self.anchors):
            m.to(self.device)
        self.mean, self.std = mean.to(self.device), std.to(self.device)

    def _prep(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.device, torch.float32)
        if tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        return (x - self.mean) / self.std

    def _scored(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        return feats[-self.score_last:] if self.score_last else feats

    def losses(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            tf = self.teacher_net(x)
        sf = self.student(x)
        l_kd = mkdad_loss(tf, sf, self.lam_mse, self.lam_dir)
        l_anchor = x.new_zeros(x.shape[0])
        if self.use_anchor or self.score_anchor:
            self.anchors.update(cnn_cls(tf)[:, None])
        if self.use_anchor:
            l_anchor = anchor_loss(cnn_cls(sf)[:, None], self.anchors.anchor)
        loss = (l_kd + self.lam * l_anchor).mean()
        return {"loss": loss, "distill": l_kd.mean(), "anchor": l_anchor.mean()}

    def fit(self, train: Dataset, val: Dataset | None, ctx: FitContext) -> dict[str, Any]:
        generator = seed_everything(ctx.seed)
        self._build()
        lr, bs = float(self.cfg["lr"]), int(self.cfg["batch_size"])  # 4.3: one setting for all data
        steps, warmup = int(self.cfg["steps"]), int(self.cfg["warmup_steps"] or 0)
        grad_clip = float(self.cfg["grad_clip"] or 0.0)
        ran = distill_loop(self, self.family, train, ctx, generator, lr, bs, steps, warmup, grad_clip)
        self.student.eval()
        return {"steps": steps, "steps_this_call": ran, "lr": lr, "batch_size": bs, "backbone": self.backbone,
                "preset": self.cfg["preset"], "student": self.cfg["student"], "optimizer": self.cfg["optimizer"],
                "student_params": sum(p.numel() for p in self.student.parameters()), "lambda_mse": self.lam_mse,
                "arch": self.arch, "taps": ",".join(self.taps), "score_taps": ",".join(self._scored(self.taps)),
                "anchor": self.use_anchor, "train_images": len(train), "anchor_images_seen": int(self.anchors.count)}

    @torch.no_grad()
    def predict_with_parts(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Score: the distillation loss over the scoring taps (MKDAD's score; part ``s_d``), + S_A (eq. 7) with the
        anchor (parts ``s_a_teacher``, ``s_a_student``). Map: per-pixel squared difference averaged over channels,
        summed over the scoring taps after bilinear upsampling to the input size."""
        if self.student is None:
            raise RuntimeError("kd_cnn: predict() before fit() or load_state_dict()")
        self.student.eval()
        x = self._prep(images)
        tf, sf = self.teacher_net(x), self.student(x)
        parts = {"s_d": mkdad_loss(self._scored(tf), self._scored(sf), self.lam_mse, self.lam_dir)}
        score = parts["s_d"]
        if self.score_anchor:
            t_cls, s_cls = cnn_cls(tf)[:, None], cnn_cls(sf)[:, None]
            parts["s_a_teacher"] = anchor_loss(t_cls, self.anchors.anchor)
            parts["s_a_student"] = anchor_loss(s_cls, self.anchors.anchor)
            score = score + anchor_score(t_cls, s_cls, self.anchors.anchor)
        size = tuple(images.shape[-2:])
        maps = sum(F.interpolate((s - t).pow(2).mean(1, keepdim=True), size=size, mode="bilinear", align_corners=False)
                   for t, s in zip(self._scored(tf), self._scored(sf)))[:, 0]
        return score.float().cpu(), maps.float().cpu(), {k: v.float().cpu() for k, v in parts.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"student": self.student.state_dict(), "anchors": self.anchors.state_dict(),
                "teacher_id": getattr(self.teacher, "id", None), "taps": self.taps, "student_kind": self.cfg["student"]}
