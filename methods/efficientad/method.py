"""EfficientAD as published (Batzner et al., WACV 2024, Algorithm 1) with paper A's variants as options.

cfg keys (params.yaml ``profiles.*.methods.efficientad`` + registry options), defaults in ``DEFAULTS``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from adrepro.training import config_hash, run_loop, seed_everything

from ..base import FitContext, Method, Teacher
from . import losses as L
from .model import EfficientADModel, augment_ae_input, build_branches, pdn_output_size
from .pdn import build_pdn

DEFAULTS: dict[str, Any] = {
    # registry variant options
    "size": "S", "dual_ae": False, "srm": False, "crm": False, "sfm": False, "csf": False, "serial": False,
    # EfficientAD (paper values)
    "image_size": 256, "steps": 70000, "pdn_width": 1.0, "ae_latent": 64, "ae_dropout": 0.2,
    "p_hard": 0.999, "lr": 1e-4, "weight_decay": 1e-5, "lr_decay_at": 0.95,
    "q_a": 0.9, "q_b": 0.995, "map_weight_local": 0.5,
    # paper A
    "lambda_csf": 0.5, "csf_reduction": "mean", "srm_at": "output", "srm_pool": 4, "crm_at": 3,
    "crm_reduction": 4, "crm_residual": False, "attn_softmax": True,
    # harness; ``disable`` switches real components off (regression-gate checks): "student_training" drops L_DIS
    "checkpoint_every": 1000, "eval_batch_size": 8, "disable": [],
}
DISABLEABLE = ("student_training",)

_ARCHS = {"pdn_s": "S", "pdn_m": "M"}


def _load_teacher(teacher: Teacher | None) -> tuple[nn.Module, dict[str, Any]]:
    """Build the frozen PDN teacher from a file {"arch": "pdn_s"|"pdn_m", "kwargs": {out_channels, width},
    "state_dict", "provenance"} (loadable with ``weights_only=True``)."""
    if teacher is None or teacher.path is None:
        raise ValueError("efficientad: needs a PDN teacher weight file (Teacher.path is None; params.yaml teachers.pdn)")
    path = Path(teacher.path)
    if not path.is_file():
        raise FileNotFoundError(f"efficientad: teacher file {path} not found (teacher '{teacher.id}')")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    missing = [k for k in ("arch", "kwargs", "state_dict") if not isinstance(blob, dict) or k not in blob]
    if missing:
        raise ValueError(f"efficientad: teacher file {path} lacks key(s) {missing}")
    if blob["arch"] not in _ARCHS:
        raise ValueError(f"efficientad: teacher file {path} has arch {blob['arch']!r}; expected one of {sorted(_ARCHS)}")
    kwargs = dict(blob["kwargs"])
    net = build_pdn(_ARCHS[blob["arch"]], **kwargs)
    net.load_state_dict(blob["state_dict"])
    net.eval().requires_grad_(False)
    info = {"id": teacher.id, "arch": blob["arch"], **kwargs, "provenance": dict(blob.get("provenance", {}))}
    return net, info


def _image(item: Any) -> torch.Tensor:
    return item[0] if isinstance(item, (tuple, list)) else item


class EfficientAD(Method):
    family = "efficientad"

    def __init__(self, cfg: dict[str, Any], teacher: Teacher | None):
        super().__init__(cfg, teacher)
        unknown = sorted(set(cfg) - set(DEFAULTS) - {"out_channels", "seed", "device", "protocol"})
        if unknown:
            raise ValueError(f"efficientad: unknown config key(s) {unknown} (params.yaml methods.efficientad / registry options)")
        self.opt = {k: cfg.get(k, v) for k, v in DEFAULTS.items()}
        bad = sorted(set(self.opt["disable"]) - set(DISABLEABLE))
        if bad:
            raise ValueError(f"efficientad: 'disable' has unknown component(s) {bad} (known: {list(DISABLEABLE)})")
        if self.opt["size"] not in ("S", "M"):
            raise ValueError(f"efficientad: option 'size' must be 'S' or 'M', got {self.opt['size']!r}")
        self.teacher_net, self.teacher_info = _load_teacher(teacher)
        self.out_channels = int(self.teacher_info["out_channels"])
        if "out_channels" in cfg and int(cfg["out_channels"]) != self.out_channels:
            raise ValueError(f"efficientad: params.yaml out_channels={cfg['out_channels']} but teacher file "
                             f"{teacher.path} has out_channels={self.out_channels}")
        self.summary: dict[str, Any] = {}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(cfg.get("seed", 0)))
            self.model = self._build().to(self.device)
        self.model.eval()

    def _build(self) -> EfficientADModel:
        o, c, s = self.opt, self.out_channels, int(self.opt["image_size"])
        student = build_pdn(o["size"], 2 * c, float(o["pdn_width"]))
        out_size = pdn_output_size(self.teacher_net, s)
        if pdn_output_size(student, s) != out_size:
            raise ValueError(f"efficientad: student PDN-{o['size']} and teacher {self.teacher_info['arch']} output sizes differ")
        aes, names, sfm = build_branches(
            o, c, s, out_size, int(o["ae_latent"]), float(o["ae_dropout"]),
            srm_kw={"pool": int(o["srm_pool"]), "softmax": bool(o["attn_softmax"])},
            crm_kw={"reduction": int(o["crm_reduction"]), "softmax": bool(o["attn_softmax"]), "residual": bool(o["crm_residual"])},
            crm_at=int(o["crm_at"]), srm_at=str(o["srm_at"]))
        w_loc = float(o["map_weight_local"])
        weights = [w_loc] + [(1.0 - w_loc) / len(aes)] * len(aes)
        return EfficientADModel(self.teacher_net, student, aes, sfm, c, s, ["loc"] + names, weights)

    # ---- training ----
    def _load_images(self, ds: Dataset) -> torch.Tensor:
        imgs = [self.model.resize(_image(ds[i])[None].float()) for i in range(len(ds))]
        if not imgs:
            raise ValueError("efficientad: empty image set")
        return torch.cat(imgs)

    @torch.no_grad()
    def _teacher_statistics(self, images: torch.Tensor) -> None:
        """Channel mean/std of the teacher's outputs over the training images (EfficientAD)."""
        m, bs = self.model, int(self.opt["eval_batch_size"])
        total, total_sq, n = 0.0, 0.0, 0
        for i in range(0, len(images), bs):
            y = m.teacher(m.normalise_input(images[i:i + bs].to(self.device))).double()
            total = total + y.sum(dim=(0, 2, 3))
            total_sq = total_sq + (y**2).sum(dim=(0, 2, 3))
            n += y.shape[0] * y.shape[2] * y.shape[3]
        mean = total / n
        std = (total_sq / n - mean**2).clamp_min(1e-12).sqrt()
        m.teacher_mean.copy_(mean.float().view(1, -1, 1, 1))
        m.teacher_std.copy_(std.float().view(1, -1, 1, 1))

    @torch.no_grad()
    def _map_quantiles(self, images: torch.Tensor) -> None:
        """q_a / q_b quantiles of each unnormalised map over all pixels of the given (validation) images."""
        m, bs = self.model, int(self.opt["eval_batch_size"])
        raw = torch.cat([m.raw_maps(m.normalise_input(images[i:i + bs].to(self.device))).cpu()
                         for i in range(0, len(images), bs)])
        for k in range(raw.shape[1]):
            qa, qb = np.quantile(raw[:, k].double().numpy().ravel(), [self.opt["q_a"], self.opt["q_b"]])
            m.quantiles[k, 0] = float(qa)
            m.quantiles[k, 1] = float(max(qb, qa + 1e-12))

    def fit(self, train: Dataset, val: Dataset | None, ctx: FitContext) -> dict[str, Any]:
        o, c = self.opt, self.out_channels
        steps = int(o["steps"])
        generator = seed_everything(ctx.seed)
        self.model = m = self._build().to(self.device)
        images = self._load_images(train)
        self._teacher_statistics(images)
        penalty = ctx.extra.get("penalty")
        trainable = [p for name, p in m.named_parameters() if not name.startswith("teacher.")]
        opt = torch.optim.Adam(trainable, lr=float(o["lr"]), weight_decay=float(o["weight_decay"]))
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, int(float(o["lr_decay_at"]) * steps)), gamma=0.1)
        state: dict[str, Any] = {"student": m.student, "aes": m.aes, "optimizer": opt, "scheduler": sched}
        if m.sfm is not None:
            state["sfm"] = m.sfm
        chash = config_hash({**o, "seed": ctx.seed, "teacher": self.teacher_info, "n_train": len(images),
                             "penalty": None if penalty is None else len(penalty)})

        def step_fn(step: int) -> dict[str, float]:
            i = int(torch.randint(len(images), (1,), generator=generator))
            img = images[i:i + 1].to(self.device)
            batch = [img, augment_ae_input(img, generator)]
            if penalty is not None:
                j = int(torch.randint(len(penalty), (1,), generator=generator))
                p = _image(penalty[j]).float()[None]
                batch.append(m.resize(p.expand(-1, 3, -1, -1) if p.shape[1] == 1 else p).to(self.device))
            x = m.normalise_input(torch.cat(batch))
            t = m.teacher_features(x[:2])
            y = m.student(x)
            l_hard = L.hard_loss(t[:1], y[:1, :c], float(o["p_hard"]))
            l_pen = L.penalty_loss(y[2:3, :c]) if penalty is not None else torch.zeros((), device=self.device)
            l_dis = L.distillation_loss(l_hard, l_pen)  # eq 13
            if "student_training" in o["disable"]:
                l_dis = l_dis.detach() * 0.0
            s2 = y[1:2, c:]  # S'' on the augmented image
            terms = []
            for a in m.ae_outputs(x[1:2]):
                l_sa = (L.csf_loss(a, s2, float(o["lambda_csf"]), str(o["csf_reduction"])) if o["csf"]
                        else L.sa_dis_loss(a, s2))
                terms.append((L.ta_loss(t[1:2], a), l_sa))
            l_ae = L.ae_loss(terms)  # eq 18
            loss = L.total_loss(l_dis, l_ae)  # eq 19
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            return {"loss": loss.item(), "hard": l_hard.item(), "penalty": l_pen.item(), "ae": l_ae.item()}

        m.train()
        run_loop(total_steps=steps, step_fn=step_fn, state=state, work_dir=Path(ctx.work_dir), cfg_hash=chash,
                 generator=generator, checkpoint_every=int(o["checkpoint_every"]), log_metric=ctx.log_metric,
                 desc=f"efficientad {ctx.exp_id}", stop_after=ctx.stop_after)
        m.eval()
        self._map_quantiles(self._load_images(val) if val is not None else images)
        self.summary = {
            "steps": steps,
            "penalty": "off (no penalty images)" if penalty is None else f"on ({len(penalty)} images)",
            "teacher_norm": "train mean/std",
            "quantiles_from": "validation/good" if val is not None else "train (no validation set)",
            "teacher": {k: v for k, v in self.teacher_info.items() if k != "provenance"},
            "maps": dict(zip(m.map_names, m.map_weights.tolist())),
            "disabled": list(o["disable"]),
        }
        return self.summary

    # ---- inference ----
    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.model.eval()
        scores, maps = self.model(images.to(self.device).float())
        return scores.cpu(), maps.cpu()

    def state_dict(self) -> dict[str, Any]:
        return {"family": self.family, "options": dict(self.opt), "model": self.model.state_dict(), "summary": self.summary}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("family") != self.family:
            raise ValueError(f"efficientad: state is for family {state.get('family')!r}")
        self.model.load_state_dict(state["model"])
        self.summary = dict(state.get("summary", {}))
        self.model.eval()

    def inference_modules(self) -> list[nn.Module]:
        return [self.model]
