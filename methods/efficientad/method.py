"""EfficientAD as published (Batzner et al., WACV 2024, Algorithm 1) with paper A's variants as options.

cfg keys (params.yaml ``profiles.*.methods.efficientad`` + registry options), defaults in ``DEFAULTS``.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from adrepro.training import config_hash, run_loop, seed_everything

from ..base import FitContext, Method, Teacher
from . import losses as L
from .model import EfficientADModel, build_branches, pdn_output_size
from .pdn import build_pdn
from .trainer import SAMPLING, GraphedForward, Trainer, compile_mode, hard_loss_nosync
from .trainer import ImageSampler, _image  # noqa: F401  (re-exported: tests, group.py)

DEFAULTS: dict[str, Any] = {
    # registry variant options
    "size": "S", "dual_ae": False, "srm": False, "crm": False, "sfm": False, "csf": False, "serial": False,
    # EfficientAD (paper values)
    "image_size": 256, "steps": 70000, "pdn_width": 1.0, "ae_latent": 64, "ae_dropout": 0.2,
    "p_hard": 0.999, "lr": 1e-4, "weight_decay": 1e-5, "lr_decay_at": 0.95,
    "sampling": "shuffle",  # training images: "shuffle" (a new permutation each epoch) | "replacement" (iid draws)
    "q_a": 0.9, "q_b": 0.995, "map_weight_local": 0.5,
    # paper A
    "lambda_csf": 0.5, "csf_reduction": "mean", "srm_at": "output", "srm_pool": 4, "crm_at": 3,
    "crm_reduction": 4, "crm_residual": False, "attn_softmax": True,
    "sfm_in_ta": False,  # SFM outputs in L_TA too (False: the SFM feeds only the student-AE part, sec. 1.4)
    # harness; ``disable`` switches real components off (regression-gate checks): "student_training" drops L_DIS
    "checkpoint_every": 1000, "eval_batch_size": 8, "disable": [],
    # speed (issue 11). penalty_prefetch leaves every number bit-identical; the others are off by default and change
    # float rounding (teacher_cache_mb, channels_last, compile, cuda_graphs) or precision (inference_dtype, tf32).
    "penalty_prefetch": 16,  # penalty images decoded this many steps ahead in a background thread (0: per step, inline)
    "teacher_cache_mb": 0,  # teacher outputs on the training images computed once if they fit in this many MB (0: off)
    "channels_last": False,  # NHWC memory format for networks and inputs (oneDNN / cuDNN)
    "inference_dtype": "fp32",  # predict under autocast: fp32 (none; a caller's autocast still applies) | fp16 | bf16
    "tf32": "default",  # CUDA TF32 for convolutions and matmuls: default (torch's: cuDNN on, matmul off) | on | off
    "compile": "off",  # torch.compile the training losses and inference: off | default | reduce-overhead | max-autotune
    "cuda_graphs": False,  # CUDA: capture the fixed-shape training step and inference as CUDA graphs (no-op on CPU)
}
DISABLEABLE = ("student_training",)
CHOICES = {"size": ("S", "M"), "sampling": SAMPLING, "csf_reduction": ("mean", "sum"), "srm_at": ("output", "last_hidden"),
           "inference_dtype": ("fp32", "fp16", "bf16"), "tf32": ("default", "on", "off"),
           "compile": ("off", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")}
_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
SPEED_KEYS = ("penalty_prefetch", "teacher_cache_mb", "channels_last", "inference_dtype", "tf32", "compile", "cuda_graphs")

_ARCHS = {"pdn_s": "S", "pdn_m": "M"}


def _load_teacher(teacher: Teacher | None) -> tuple[nn.Module, dict[str, Any]]:
    """Build the frozen PDN teacher from a file {"arch": "pdn_s"|"pdn_m", "kwargs": {out_channels, width},
    "state_dict", "provenance"}, weights checked against the recorded ``state_sha256`` (``read_teacher_file``)."""
    if teacher is None or teacher.path is None:
        raise ValueError("efficientad: needs a PDN teacher weight file (Teacher.path is None; params.yaml teachers.pdn)")
    from ..teachers.provision import read_teacher_file

    path = Path(teacher.path)
    blob = read_teacher_file(path)  # missing, unreadable or edited file: an error naming it
    if blob["arch"] not in _ARCHS:
        raise ValueError(f"efficientad: teacher file {path} has arch {blob['arch']!r}; expected one of {sorted(_ARCHS)}")
    kwargs = dict(blob["kwargs"])
    net = build_pdn(_ARCHS[blob["arch"]], **kwargs)
    net.load_state_dict(blob["state_dict"])
    net.eval().requires_grad_(False)
    info = {"id": teacher.id, "arch": blob["arch"], **kwargs, "provenance": dict(blob.get("provenance", {}))}
    return net, info


def quantile_source(val: Dataset | None, ctx: FitContext, n_train: int) -> str:
    """The images the map quantiles come from, exactly as the data split made them (``val_source`` of the
    split info, e.g. "validation/good (54 images)", "hold-out of train/good (10%, 21 images)")."""
    if val is None:
        return f"train/good ({n_train} training images; no validation set)"
    return ctx.extra.get("val_source") or f"validation set ({len(val)} images)"


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
        if self.opt["sampling"] not in SAMPLING:
            raise ValueError(f"efficientad: option 'sampling' must be one of {list(SAMPLING)}, got {self.opt['sampling']!r}")
        if self.opt["size"] not in ("S", "M"):
            raise ValueError(f"efficientad: option 'size' must be 'S' or 'M', got {self.opt['size']!r}")
        for key, choices in CHOICES.items():
            if self.opt[key] not in choices:
                raise ValueError(f"efficientad: option '{key}' must be one of {list(choices)}, got {self.opt[key]!r}")
        for key in ("penalty_prefetch", "teacher_cache_mb"):
            if int(self.opt[key]) < 0:
                raise ValueError(f"efficientad: option '{key}' must be >= 0, got {self.opt[key]!r}")
        if self.opt["cuda_graphs"] and self.opt["compile"] in ("reduce-overhead", "max-autotune"):
            raise ValueError(f"efficientad: compile={self.opt['compile']!r} already captures CUDA graphs; "
                             "set cuda_graphs: false (or compile: default)")
        self._infer_cache: dict[Any, Any] = {}
        self.teacher_net, self.teacher_info = _load_teacher(teacher)
        self.out_channels = int(self.teacher_info["out_channels"])
        if "out_channels" in cfg and int(cfg["out_channels"]) != self.out_channels:
            raise ValueError(f"efficientad: params.yaml out_channels={cfg['out_channels']} but teacher file "
                             f"{teacher.path} has out_channels={self.out_channels}")
        self.summary: dict[str, Any] = {}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(cfg.get("seed", 0)))
            self.model = self._place(self._build())
        self.model.eval()

    # ---- speed options (DEFAULTS "speed") ----
    def _place(self, model: EfficientADModel) -> EfficientADModel:
        """The model on the device, in the configured memory format; forgets compiled / captured inference."""
        self._infer_cache = {}
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.opt["channels_last"] else model

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.opt["channels_last"] and x.dim() == 4 else x

    def _graphs(self) -> bool:
        return bool(self.opt["cuda_graphs"]) and self.device.type == "cuda"

    def _nosync(self) -> bool:
        """Use the sync-free hard loss: on CUDA (a host sync per step stalls the GPU) and under compile / capture."""
        return self.device.type == "cuda" or self.opt["compile"] != "off" or self._graphs()

    @contextlib.contextmanager
    def _backend(self) -> Iterator[None]:
        """TF32 flags for the duration of training / inference on CUDA (``tf32``), restored afterwards."""
        if self.device.type != "cuda" or self.opt["tf32"] == "default":
            yield
            return
        old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = self.opt["tf32"] == "on"
        try:
            yield
        finally:
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old

    def _autocast(self) -> contextlib.AbstractContextManager:
        """``inference_dtype``: autocast for predict (fp32: none added, so a caller's autocast still applies)."""
        if self.opt["inference_dtype"] == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=_DTYPES[self.opt["inference_dtype"]])

    def speed_options(self) -> dict[str, Any]:
        """The speed options that differ from their defaults (recorded in the summary when any does)."""
        return {k: self.opt[k] for k in SPEED_KEYS if self.opt[k] != DEFAULTS[k]}

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
    def _teacher_statistics(self, images: torch.Tensor) -> torch.Tensor | None:
        """Channel mean/std of the teacher's outputs over the training images (EfficientAD). Returns those outputs,
        normalised (what ``teacher_features`` gives for each image), when they fit in ``teacher_cache_mb``."""
        m, bs = self.model, int(self.opt["eval_batch_size"])
        per_image = 4 * self.out_channels * pdn_output_size(m.teacher, int(self.opt["image_size"])) ** 2
        keep = len(images) * per_image <= int(self.opt["teacher_cache_mb"]) * 2**20
        total, total_sq, n, outputs = 0.0, 0.0, 0, []
        for i in range(0, len(images), bs):
            y = m.teacher(m.normalise_input(self._layout(images[i:i + bs].to(self.device))))
            if keep:
                outputs.append(y)
            y = y.double()
            total = total + y.sum(dim=(0, 2, 3))
            total_sq = total_sq + (y**2).sum(dim=(0, 2, 3))
            n += y.shape[0] * y.shape[2] * y.shape[3]
        mean = total / n
        std = (total_sq / n - mean**2).clamp_min(1e-12).sqrt()
        m.teacher_mean.copy_(mean.float().view(1, -1, 1, 1))
        m.teacher_std.copy_(std.float().view(1, -1, 1, 1))
        return (torch.cat(outputs) - m.teacher_mean) / m.teacher_std if keep else None

    @torch.no_grad()
    def _map_quantiles(self, images: torch.Tensor) -> None:
        """q_a / q_b quantiles of each unnormalised map over all pixels of the given (validation) images."""
        m, bs = self.model, int(self.opt["eval_batch_size"])
        raw = torch.cat([m.raw_maps(m.normalise_input(self._layout(images[i:i + bs].to(self.device)))).float().cpu()
                         for i in range(0, len(images), bs)])
        for k in range(raw.shape[1]):
            qa, qb = np.quantile(raw[:, k].double().numpy().ravel(), [self.opt["q_a"], self.opt["q_b"]])
            m.quantiles[k, 0] = float(qa)
            m.quantiles[k, 1] = float(max(qb, qa + 1e-12))

    @torch.no_grad()
    def trainer(self, images: torch.Tensor, penalty: Dataset | None, generator: torch.Generator, seed: int,
                steps: int) -> Trainer:
        """The training step of ``fit`` for a model whose teacher statistics are set (``adrepro bench``): ``images``
        [N,3,s,s] in [0,1] (moved to the device once), ``penalty`` a dataset or None; the teacher's outputs on the
        images are kept when ``teacher_cache_mb`` > 0 (whatever their size)."""
        m, images = self.model, self._layout(images.to(self.device))
        cache = m.teacher_features(m.normalise_input(images)) if int(self.opt["teacher_cache_mb"]) else None
        return Trainer(self, images, penalty, generator, seed, steps, cache=cache)

    def fit(self, train: Dataset, val: Dataset | None, ctx: FitContext) -> dict[str, Any]:
        o = self.opt
        steps = int(o["steps"])
        generator = seed_everything(ctx.seed)
        self.model = m = self._place(self._build())
        with self._backend():
            images = self._layout(self._load_images(train).to(self.device))  # on the device once
            cache = self._teacher_statistics(images)
            penalty = ctx.extra.get("penalty")
            trainer = Trainer(self, images, penalty, generator, ctx.seed, steps, cache=cache)
            hashed = {k: v for k, v in o.items() if k != "penalty_prefetch"  # same numbers at any depth
                      and (k not in SPEED_KEYS or v != DEFAULTS[k])}  # default speed options: the hash of before
            chash = config_hash({**hashed, "seed": ctx.seed, "teacher": self.teacher_info, "n_train": len(images),
                                 "penalty": None if penalty is None else len(penalty)})
            m.train()
            try:
                run_loop(total_steps=steps, step_fn=trainer, state=trainer.state(), work_dir=Path(ctx.work_dir),
                         cfg_hash=chash, generator=generator, checkpoint_every=int(o["checkpoint_every"]),
                         log_metric=ctx.log_metric, desc=f"efficientad {ctx.exp_id}", stop_after=ctx.stop_after)
            finally:
                trainer.close()
            m.eval()
            del cache, trainer
            self._map_quantiles(self._load_images(val) if val is not None else images)
        return self.fit_summary(steps, penalty, quantile_source(val, ctx, len(images)))

    def fit_summary(self, steps: int, penalty: Any, quantiles_from: str) -> dict[str, Any]:
        """The summary a finished training records (metrics.json, MLflow); also used by run groups (group.py)."""
        m, o = self.model, self.opt
        self.summary = {
            "steps": steps,
            "penalty": "off (no penalty images)" if penalty is None else f"on ({len(penalty)} images)",
            "teacher_norm": "train mean/std",
            "quantiles_from": quantiles_from,
            "teacher": {k: v for k, v in self.teacher_info.items() if k != "provenance"},
            "maps": dict(zip(m.map_names, m.map_weights.tolist())),
            "disabled": list(o["disable"]),
            "sampling": str(o["sampling"]),
        }
        if m.sfm is not None:
            self.summary["sfm_in_ta"] = bool(o["sfm_in_ta"])
        if self.speed_options():
            self.summary["speed"] = self.speed_options()
        return self.summary

    def _student(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(S' on rows 0, 2, ... of ``x``: the training and the penalty image; S'' on row 1: the augmented one).
        The student's last conv computes only the output half each image's loss uses (half of PDN-S's largest
        layer, forward and backward); bit-identical to slicing its full output."""
        st, c = self.model.student, self.out_channels
        layers = list(st) if isinstance(st, nn.Sequential) else []
        last = layers[-1] if layers else None
        if not isinstance(last, nn.Conv2d) or last.groups != 1:
            y = st(x)
            return y[0::2, :c], y[1:2, c:]
        h = x
        for layer in layers[:-1]:
            h = layer(h)
        w, b = last.weight, last.bias

        def conv(rows: torch.Tensor, sl: slice) -> torch.Tensor:
            return F.conv2d(rows, w[sl], None if b is None else b[sl], last.stride, last.padding, last.dilation)

        return conv(h[0::2], slice(0, c)), conv(h[1:2], slice(c, None))

    def training_losses(self, img: torch.Tensor, aug: torch.Tensor, pen: torch.Tensor | None,
                        t_img: torch.Tensor | None = None) -> dict[str, Any]:
        """One training step's losses (eqs 12-19; EfficientAD's Algorithm 1) on [0,1] images at ``image_size``:
        the training image ``img`` [1,3,s,s], its AE augmentation ``aug`` (seen by every AE, by S'' and by
        the teacher) and a penalty image ``pen`` (None: no penalty); ``t_img``: the teacher's normalised output
        on ``img`` if already known (it is fixed: the teacher is frozen). Returns the scalar terms and, per AE,
        ``ta`` (L_TA^k) and ``sa`` (L_SA^k). L_TA compares the teacher with the raw AE output, or with the
        SFM output when ``sfm_in_ta``; L_SA and the maps always use the SFM output."""
        m, o = self.model, self.opt
        batch = [img, aug] + ([pen] if pen is not None else [])
        x = self._layout(m.normalise_input(torch.cat(batch)))
        if t_img is None:
            t = m.teacher_features(x[:2])
            t_img, t_aug = t[:1], t[1:2]
        else:
            t_aug = m.teacher_features(x[1:2])
        s1, s2 = self._student(x)  # one batch: PDNs have no batch-dependent layers
        hard = hard_loss_nosync if self._nosync() else L.hard_loss
        l_hard = hard(t_img, s1[:1], float(o["p_hard"]))
        l_pen = L.penalty_loss(s1[1:2]) if pen is not None else torch.zeros((), device=x.device)  # eq 12
        l_dis = L.distillation_loss(l_hard, l_pen)  # eq 13
        if "student_training" in o["disable"]:
            l_dis = l_dis.detach() * 0.0
        raw, fused = m.ae_branches(x[1:2])  # S'' (s2) and the AEs on the augmented image
        ta, sa = [], []
        for a_ta, a_sa in zip(fused if o["sfm_in_ta"] else raw, fused):
            sa.append(L.csf_loss(a_sa, s2, float(o["lambda_csf"]), str(o["csf_reduction"])) if o["csf"]
                      else L.sa_dis_loss(a_sa, s2))  # eq 17 (CSF) or eq 15
            ta.append(L.ta_loss(t_aug, a_ta))  # eq 14
        l_ae = L.ae_loss(zip(ta, sa))  # eq 18
        return {"hard": l_hard, "penalty": l_pen, "dis": l_dis, "ta": ta, "sa": sa, "ae": l_ae,
                "total": L.total_loss(l_dis, l_ae)}  # eq 19

    # ---- inference ----
    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.model.eval()
        x = self._layout(images.to(self.device, non_blocking=True).float())
        with self._backend(), self._autocast():
            scores, maps = self._forward(x)
        return scores.float().cpu(), maps.float().cpu()

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's forward: eager, compiled (``compile``) or a CUDA graph per input shape (``cuda_graphs``)."""
        if self._graphs():
            key = ("graph", tuple(x.shape), x.stride(), torch.is_autocast_enabled("cuda"),
                   torch.get_autocast_dtype("cuda"), torch.backends.cudnn.allow_tf32)
            if key not in self._infer_cache:
                self._infer_cache[key] = GraphedForward(self.model, x)
            return self._infer_cache[key](x)
        if self.opt["compile"] != "off":
            if "compiled" not in self._infer_cache:
                self._infer_cache["compiled"] = torch.compile(self.model, mode=compile_mode(self.opt["compile"]),
                                                              dynamic=False)
            scores, maps = self._infer_cache["compiled"](x)
            return scores.clone(), maps.clone()  # cudagraph-backed outputs are overwritten by the next call
        return self.model(x)

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
