"""FCDViT: paper B's ViT feature-constrained distillation (sections 3.2-3.5, 4.1) as an adrepro ``Method``.

cfg keys (params.yaml ``methods.fcd_vit`` + profile + registry options), defaults in ``DEFAULTS``. The helpers
``EpochSampler``, ``warmup_scheduler``, ``load_images``, ``distill_loop``, ``resolve_cfg`` and ``teacher_file``
are shared with ``adrepro.methods.kd_cnn`` (the backbone ablation of the same paper).
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from adrepro.training import config_hash, run_loop, seed_everything

from ..base import FitContext, Method, Teacher
from .losses import (anchor_loss, anchor_score, anomaly_score, distill_loss, feature_diff_score, gram_loss, token_diff,
                     total_loss)
from .model import AnchorBank, build_vit, load_teacher_file, normalisation, vit_block_outputs

GROUPC = (3, 6, 9, 11)  # section 4.1

CHOICES = {"distill_l2": ("norm", "mse"), "gram_mode": ("channel", "token"), "optimizer": ("sgd", "adam"),
           "lr_schedule": ("constant", "cosine")}  # allowed values, read by the params.yaml schema
DEFAULTS: dict[str, Any] = {
    # registry variant options (Fig. 4 loss ablation, Fig. 7 position strategies); score_anchor null = anchor
    "distill": True, "gram": True, "anchor": True, "score_anchor": None, "pos_strategy": 2,
    # paper B sections 3 and 4.1 (readings: docs/deviations.md); anchor_layers null = [last of groupc]
    "image_size": 224, "groupc": list(GROUPC), "anchor_layers": None, "anchor_momentum": None, "lambda": 1.0,
    "top_k": 20, "distill_l2": "norm", "gram_mode": "channel", "gram_normalize": True, "gram_pairs": "consecutive",
    "final_norm": False,
    # optimiser: 4.1 gives SGD, lr, batch and "Warmup"; the rest is the common ViT fine-tuning recipe
    "steps": 1000, "lr": 0.1, "batch_size": 32, "lr_mvtec": None, "batch_size_mvtec": None, "optimizer": "sgd",
    "momentum": 0.9, "weight_decay": 0.0, "warmup_steps": None, "lr_schedule": "cosine", "grad_clip": 1.0,
    # share of MVTec AD train/good held out as validation (read by the train/evaluate stages' load_splits)
    "val_fraction": 0.0,
    "checkpoint_every": 1000,
}
HARNESS_KEYS = frozenset({"seed", "device", "protocol"})


def resolve_cfg(family: str, cfg: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """``defaults`` overlaid with ``cfg``; an unknown key is an error naming where keys come from."""
    unknown = sorted(set(cfg) - set(defaults) - HARNESS_KEYS)
    if unknown:
        raise ValueError(f"{family}: unknown config key(s) {unknown} (params.yaml methods.{family}, "
                         f"profiles.<p>.methods.{family} or registry options); known: {sorted(defaults)}")
    return {**defaults, **cfg}


class EpochSampler:
    """Data order: a fresh ``randperm`` of the training set (from the run's generator) per epoch; batches may
    straddle epochs. Its state (current permutation, position) is checkpointed, so resuming is bit-identical."""

    def __init__(self, n: int, generator: torch.Generator):
        if n <= 0:
            raise ValueError("training set is empty: nothing to distil on")
        self.n, self.generator = n, generator
        self.perm = torch.empty(0, dtype=torch.long)
        self.pos = 0

    def next(self, batch_size: int) -> list[int]:
        out: list[int] = []
        while len(out) < batch_size:
            if self.pos >= len(self.perm):
                self.perm, self.pos = torch.randperm(self.n, generator=self.generator), 0
            take = self.perm[self.pos : self.pos + batch_size - len(out)]
            self.pos += len(take)
            out.extend(int(i) for i in take)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"perm": self.perm.clone(), "pos": self.pos}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.perm, self.pos = state["perm"].clone(), int(state["pos"])


def warmup_scheduler(opt: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
                     schedule: str = "cosine") -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from lr/warmup to lr over ``warmup_steps``, then cosine decay to 0 or constant."""
    if schedule not in ("constant", "cosine"):
        raise ValueError(f"cfg 'lr_schedule' must be 'constant' or 'cosine', got {schedule!r}")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * (step - warmup_steps) / max(1, total_steps - warmup_steps)))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def make_optimizer(params: list[torch.nn.Parameter], cfg: dict[str, Any], lr: float) -> torch.optim.Optimizer:
    """cfg ``optimizer``: ``sgd`` (with ``momentum``, ``weight_decay``) or ``adam`` (with ``weight_decay``)."""
    name, wd = str(cfg["optimizer"]), float(cfg["weight_decay"] or 0.0)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=float(cfg["momentum"] or 0.0), weight_decay=wd)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    raise ValueError(f"cfg 'optimizer' must be 'sgd' or 'adam', got {name!r}")


def load_images(data: Dataset, indices: list[int]) -> torch.Tensor:
    """Stack the images of dataset items ``(image, label, mask, meta)`` by direct indexing."""
    return torch.stack([data[i][0] for i in indices])


def distill_loop(method: Any, family: str, train: Dataset, ctx: FitContext, generator: torch.Generator, lr: float,
                 bs: int, steps: int, warmup: int, grad_clip: float) -> int:
    """Optimiser (cfg ``optimizer``), warm-up + ``lr_schedule`` and clipping around ``method.losses`` on the
    student, driven by the resumable loop; shared by FCDViT and KDCNN. Returns the steps run in this call."""
    params = [p for p in method.student.parameters() if p.requires_grad]
    opt = make_optimizer(params, method.cfg, lr)
    sched = warmup_scheduler(opt, warmup, steps, str(method.cfg["lr_schedule"]))
    sampler = EpochSampler(len(train), generator)
    method.student.train()

    def step_fn(step: int) -> dict[str, float]:
        out = method.losses(method._prep(load_images(train, sampler.next(bs))))
        if not torch.isfinite(out["loss"]):
            raise FloatingPointError(f"{family} {ctx.exp_id}: loss {out['loss'].item()} at step {step}; "
                                     f"lower cfg 'lr' ({lr}) or set cfg 'grad_clip' ({grad_clip})")
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        opt.step()
        sched.step()
        return {**{k: v.item() for k, v in out.items()}, "lr": opt.param_groups[0]["lr"]}

    teacher_key = method.teacher.provenance.get("sha256") or method.teacher.id
    return run_loop(total_steps=steps, step_fn=step_fn,
                    state={"student": method.student, "anchors": method.anchors, "optimizer": opt,
                           "scheduler": sched, "sampler": sampler},
                    work_dir=ctx.work_dir, cfg_hash=config_hash({**method.cfg, "teacher": teacher_key}),
                    generator=generator, checkpoint_every=int(method.cfg["checkpoint_every"]),
                    log_metric=ctx.log_metric, desc=f"{family} {ctx.exp_id}", stop_after=ctx.stop_after)


def resolve_lr_batch(cfg: dict[str, Any]) -> tuple[float, int]:
    """Paper B 4.1: MVTec AD uses its own lr/batch (cfg ``lr_mvtec``/``batch_size_mvtec`` where not null)."""
    lr, bs = float(cfg["lr"]), int(cfg["batch_size"])
    if cfg.get("protocol") == "mvtec_ad":
        lr = lr if cfg.get("lr_mvtec") is None else float(cfg["lr_mvtec"])
        bs = bs if cfg.get("batch_size_mvtec") is None else int(cfg["batch_size_mvtec"])
    return lr, bs


def teacher_file(teacher: Teacher | None, family: str) -> dict[str, Any]:
    if teacher is None or teacher.path is None:
        raise ValueError(f"{family}: needs a provisioned teacher file (Teacher.path); got {teacher!r}")
    return load_teacher_file(teacher.path)


class StudentAnchorMethod(Method):
    """Shared by paper B's families: a student distilled from a frozen teacher, plus an anchor bank.
    Subclasses implement ``predict_with_parts``; ``predict`` drops the parts."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.student is None:
            self._build()
        self.student.load_state_dict(state["student"])
        self.anchors.load_state_dict(state["anchors"])
        self.student.eval()

    def inference_modules(self) -> list[torch.nn.Module]:
        return [self.teacher_net, self.student]

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        scores, maps, _ = self.predict_with_parts(images)
        return scores, maps


class FCDViT(StudentAnchorMethod):
    """Teacher and student: the same timm ViT; teacher pretrained and frozen, student random (seeded)."""

    family = "fcd_vit"

    def __init__(self, cfg: dict[str, Any], teacher: Teacher | None):
        cfg = resolve_cfg(self.family, cfg, DEFAULTS)
        super().__init__(cfg, teacher)
        self.image_size = int(cfg["image_size"])
        self.groupc = [int(c) for c in cfg["groupc"]]
        self.anchor_layers = [int(c) for c in (cfg["anchor_layers"] or [self.groupc[-1]])]
        self.use_distill, self.use_gram, self.use_anchor = bool(cfg["distill"]), bool(cfg["gram"]), bool(cfg["anchor"])
        self.score_anchor = bool(self.use_anchor if cfg["score_anchor"] is None else cfg["score_anchor"])
        self.pos_strategy = int(cfg["pos_strategy"])
        if self.pos_strategy not in (1, 2):
            raise ValueError(f"fcd_vit: cfg 'pos_strategy' must be 1 or 2, got {self.pos_strategy}")
        self.lam, self.top_k = float(cfg["lambda"]), int(cfg["top_k"])
        self.distill_l2, self.final_norm = str(cfg["distill_l2"]), bool(cfg["final_norm"])
        self.gram_mode, self.gram_normalize = str(cfg["gram_mode"]), bool(cfg["gram_normalize"])
        self.gram_pairs = self._gram_pairs(cfg["gram_pairs"])
        self.layers = sorted(set(self.groupc) | set(self.anchor_layers) | {c for p in self.gram_pairs for c in p})
        self.teacher_net = self.student = self.anchors = None

    def _gram_pairs(self, spec: Any) -> list[tuple[int, int]]:
        if spec == "consecutive":
            return list(zip(self.groupc[:-1], self.groupc[1:]))
        if spec == "all":
            return list(itertools.combinations(self.groupc, 2))
        if isinstance(spec, (list, tuple)) and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in spec):
            return [(int(a), int(b)) for a, b in spec]
        raise ValueError(f"fcd_vit: cfg 'gram_pairs' must be 'consecutive', 'all' or a list of [c1, c2], got {spec!r}")

    # ---- models ----
    def _build(self) -> None:
        """Teacher from its file; student a random copy (torch global RNG); anchors zero."""
        tf = teacher_file(self.teacher, self.family)
        if tf["arch"] != "vit":
            raise ValueError(f"{self.teacher.path}: fcd_vit needs a teacher with arch 'vit', got {tf['arch']!r}")
        self.teacher_net = build_vit(tf["kwargs"], self.image_size, tf["state_dict"]).eval().requires_grad_(False)
        self.student = build_vit(tf["kwargs"], self.image_size)
        if self.pos_strategy == 2:  # section 4.3 strategy (2): teacher's position embedding, frozen
            self.student.pos_embed.data.copy_(self.teacher_net.pos_embed.data)
            self.student.pos_embed.requires_grad_(False)
        momentum = self.cfg["anchor_momentum"]
        self.anchors = AnchorBank(len(self.anchor_layers), self.teacher_net.embed_dim,
                                  None if momentum is None else float(momentum))
        self.mean, self.std = normalisation(tf["provenance"])
        for m in (self.teacher_net, self.student, self.anchors):
            m.to(self.device)
        self.mean, self.std = self.mean.to(self.device), self.std.to(self.device)

    def _prep(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.device, torch.float32)
        if tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        return (x - self.mean) / self.std

    def _feats(self, vit: torch.nn.Module, x: torch.Tensor) -> dict[int, torch.Tensor]:
        return vit_block_outputs(vit, x, self.layers, self.final_norm)

    def _cls(self, feats: dict[int, torch.Tensor]) -> torch.Tensor:
        return torch.stack([feats[c][:, 0] for c in self.anchor_layers], dim=1)  # [B, L, D]

    def losses(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Eqs. (1)-(6) on a normalised batch; updates the anchor moving average when it is used."""
        with torch.no_grad():
            tf = self._feats(self.teacher_net, x)
        sf = self._feats(self.student, x)
        zero = x.new_zeros(x.shape[0])
        l_distill = distill_loss([tf[c] for c in self.groupc], [sf[c] for c in self.groupc], self.distill_l2) \
            if self.use_distill else zero
        l_gram = gram_loss(tf, sf, self.gram_pairs, self.gram_mode, self.gram_normalize) if self.use_gram else zero
        if self.use_anchor or self.score_anchor:
            self.anchors.update(self._cls(tf))
        l_anchor = anchor_loss(self._cls(sf), self.anchors.anchor) if self.use_anchor else zero
        loss = total_loss(l_distill, l_anchor, l_gram, self.lam).mean()
        return {"loss": loss, "distill": l_distill.mean(), "gram": l_gram.mean(), "anchor": l_anchor.mean()}

    # ---- Method API ----
    def fit(self, train: Dataset, val: Dataset | None, ctx: FitContext) -> dict[str, Any]:
        generator = seed_everything(ctx.seed)
        self._build()
        lr, bs = resolve_lr_batch(self.cfg)
        steps = int(self.cfg["steps"])
        warmup = int(steps // 20 if self.cfg["warmup_steps"] is None else self.cfg["warmup_steps"])
        grad_clip = float(self.cfg["grad_clip"] or 0.0)
        ran = distill_loop(self, self.family, train, ctx, generator, lr, bs, steps, warmup, grad_clip)
        self.student.eval()
        flags = (("distill", self.use_distill), ("gram", self.use_gram), ("anchor", self.use_anchor))
        return {"steps": steps, "steps_this_call": ran, "lr": lr, "batch_size": bs, "warmup_steps": warmup,
                "grad_clip": grad_clip, "optimizer": self.cfg["optimizer"], "lr_schedule": self.cfg["lr_schedule"],
                "pos_strategy": self.pos_strategy, "loss_terms": "+".join(n for n, on in flags if on),
                "gram_mode": self.gram_mode, "final_norm": self.final_norm, "train_images": len(train),
                "anchor_images_seen": int(self.anchors.count)}

    @torch.no_grad()
    def predict_with_parts(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Score = S_D + S_A (eqs. 7-10; S_A only with ``score_anchor``); map: sum over groupc of Diff_c,p
        (eq. 8) on the patch grid, bilinearly upsampled to the input size. Parts [B]: ``s_d`` (eq. 9) and, with
        the anchor, eq. 7's two terms ``s_a_teacher`` = ||T phi_c^cls - anchor||, ``s_a_student`` = ||S ... ||."""
        if self.student is None:
            raise RuntimeError("fcd_vit: predict() before fit() or load_state_dict()")
        self.student.eval()
        x = self._prep(images)
        tf, sf = self._feats(self.teacher_net, x), self._feats(self.student, x)
        npt = self.student.num_prefix_tokens
        t_g, s_g = [tf[c] for c in self.groupc], [sf[c] for c in self.groupc]
        parts = {"s_d": feature_diff_score(t_g, s_g, self.top_k, npt)}
        score = parts["s_d"]
        if self.score_anchor:
            parts["s_a_teacher"] = anchor_loss(self._cls(tf), self.anchors.anchor)
            parts["s_a_student"] = anchor_loss(self._cls(sf), self.anchors.anchor)
            score = anomaly_score(score, anchor_score(self._cls(tf), self._cls(sf), self.anchors.anchor))
        patch = sum(token_diff(t, s)[:, npt:] for t, s in zip(t_g, s_g))
        gh, gw = self.student.patch_embed.grid_size
        maps = F.interpolate(patch.reshape(-1, 1, gh, gw), size=tuple(images.shape[-2:]), mode="bilinear",
                             align_corners=False)[:, 0]
        return score.float().cpu(), maps.float().cpu(), {k: v.float().cpu() for k, v in parts.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"student": self.student.state_dict(), "anchors": self.anchors.state_dict(),
                "teacher_id": getattr(self.teacher, "id", None), "pos_strategy": self.pos_strategy}
