"""KDCNN: paper B's CNN backbone ablation (section 4.3, Figs 3 and 5) as an adrepro ``Method``.

MKDAD-style multi-layer distillation from a pretrained CNN teacher into a randomly initialised student of the
same architecture (paper B: "学生网络同样采取随机权重"), optionally with L_anchor (eq. 2) on a CNN "cls"
feature (``cnn_cls``); the score is the MKDAD loss per image, plus S_A (eq. 7) with the anchor.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from adrepro.training import seed_everything

from ..base import FitContext, Teacher
from ..fcd_vit.method import StudentAnchorMethod, sgd_distill, teacher_file
from ..fcd_vit.model import AnchorBank, normalisation
from .losses import anchor_loss, anchor_score, cnn_cls, mkdad_loss
from .model import TappedCNN, build_cnn, default_taps


class KDCNN(StudentAnchorMethod):
    family = "kd_cnn"

    def __init__(self, cfg: dict[str, Any], teacher: Teacher | None):
        super().__init__(cfg, teacher)
        self.image_size = int(cfg.get("image_size", 224))
        self.backbone = str(cfg.get("backbone", "vgg16"))
        self.use_anchor = bool(cfg.get("anchor", False))
        self.score_anchor = bool(cfg.get("score_anchor", self.use_anchor))
        self.lam = float(cfg.get("lambda", 1.0))
        self.lam_dir = float(cfg.get("lambda_dir", 0.5))
        self.teacher_net = self.student = self.anchors = None

    def _build(self) -> None:
        tf = teacher_file(self.teacher, self.family)
        arch, kwargs = tf["arch"], dict(tf["kwargs"])
        net_t = build_cnn(arch, kwargs)
        net_t.load_state_dict(tf["state_dict"])
        taps = list(self.cfg.get("taps") or tf.get("taps") or default_taps(arch, net_t))
        self.teacher_net = TappedCNN(net_t, taps).eval().requires_grad_(False)
        self.student = TappedCNN(build_cnn(arch, kwargs), taps)
        with torch.no_grad():
            dim = self.teacher_net(torch.zeros(1, 3, self.image_size, self.image_size))[-1].shape[1]
        momentum = self.cfg.get("anchor_momentum")
        self.anchors = AnchorBank(1, dim, None if momentum is None else float(momentum))
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

    def losses(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            tf = self.teacher_net(x)
        sf = self.student(x)
        l_kd = mkdad_loss(tf, sf, self.lam_dir)
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
        lr, bs = float(self.cfg.get("lr", 0.001)), int(self.cfg.get("batch_size", 128))  # 4.3: same for all data
        steps = int(self.cfg.get("steps", 1000))
        warmup = int(self.cfg.get("warmup_steps", 0))
        grad_clip = float(self.cfg.get("grad_clip", 0.0) or 0.0)
        ran = sgd_distill(self, "kd_cnn", train, ctx, generator, lr, bs, steps, warmup, grad_clip)
        self.student.eval()
        return {"steps": steps, "steps_this_call": ran, "lr": lr, "batch_size": bs, "backbone": self.backbone,
                "arch": self.arch, "taps": ",".join(self.taps), "anchor": self.use_anchor,
                "anchor_images_seen": int(self.anchors.count)}

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Score: MKDAD loss per image (+ S_A, eq. 7, with the anchor). Map: per-pixel squared difference
        averaged over channels, summed over taps after bilinear upsampling to the input size."""
        if self.student is None:
            raise RuntimeError("kd_cnn: predict() before fit() or load_state_dict()")
        self.student.eval()
        x = self._prep(images)
        tf, sf = self.teacher_net(x), self.student(x)
        score = mkdad_loss(tf, sf, self.lam_dir)
        if self.score_anchor:
            score = score + anchor_score(cnn_cls(tf)[:, None], cnn_cls(sf)[:, None], self.anchors.anchor)
        size = tuple(images.shape[-2:])
        maps = sum(F.interpolate((s - t).pow(2).mean(1, keepdim=True), size=size, mode="bilinear", align_corners=False)
                   for t, s in zip(tf, sf))[:, 0]
        return score.float().cpu(), maps.float().cpu()

    def state_dict(self) -> dict[str, Any]:
        return {"student": self.student.state_dict(), "anchors": self.anchors.state_dict(),
                "teacher_id": getattr(self.teacher, "id", None), "taps": self.taps}

