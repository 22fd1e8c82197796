"""Run groups: K EfficientAD runs that share an architecture and training options (seeds, categories), trained
in one process as one batched computation (docs/deviations.md "Run groups").

The K runs' trainable tensors are stacked ([K, ...]) and each step is one ``torch.func.vmap`` of the runs'
own ``EfficientAD.training_losses`` (through ``functional_call``) and one backward of the summed loss. Adam
and StepLR are elementwise, so one Adam over the stacked tensors equals K Adams. Every run keeps its own data,
sampler, augmentation/penalty generator, dropout generator, teacher statistics, quantiles and summary.

On CPU a group ends with the weights of the K runs trained alone by ``EfficientAD.fit`` up to float rounding
(batched kernels sum in another order; tests/test_run_groups.py): every random draw is the solo run's. The
solo path draws its dropout masks from the torch global RNG after building the model; each run's dropout
generator starts from that state and draws the masks as ``F.dropout`` does on CPU (an ``empty_like`` of the
input, ``bernoulli_(1 - p)``, divided by ``1 - p``). On CUDA (fused dropout kernel) the runs are seeded but
their masks are not the solo runs'. Not supported: ``compile``, ``cuda_graphs``; ``penalty_prefetch`` is not
used (penalty images are prepared inline, with the same numbers).
"""

from __future__ import annotations

import copy
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap
from torch.utils.data import Dataset

from adrepro.training import config_hash, run_loop, seed_everything

from ..base import FitContext, Teacher
from .method import EfficientAD, ImageSampler, _image, quantile_source
from .model import augment_ae_input

PER_RUN = ("q_a", "q_b", "map_weight_local", "eval_batch_size")  # options that may differ inside a group
_SEP = "@"  # loss names in run_loop: "<term>@<run index>"


class _MaskedDropout(nn.Module):
    """Stands in for an ``nn.Dropout`` of the group's template model: multiplies by this step's mask."""

    def __init__(self) -> None:
        super().__init__()
        self.mask: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.mask is None else x * self.mask


@torch.library.custom_op("adrepro::group_conv2d", mutates_args=())
def _group_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: list[int],
                  padding: list[int], dilation: list[int], groups: int) -> torch.Tensor:
    return F.conv2d(x, weight, bias, stride, padding, dilation, groups)


def _group_conv2d_vmap(info, in_dims, x, weight, bias, stride, padding, dilation, groups):
    """K runs' convolutions: one grouped convolution (runs as groups), or, for layer shapes where the grouped
    kernel sums in another order than a single run's (fewer than 8 input or output channels per group: the
    3-channel image input, SRM's 1-channel logit; oneDNN on CPU), one convolution per run."""
    xd, wd, bd = in_dims[:3]
    k = info.batch_size
    x = x.movedim(xd, 0) if xd is not None else x.expand(k, *x.shape)
    if wd is None and bd is None:  # shared weights (the teacher): the runs are more images of one batch
        return F.conv2d(x.flatten(0, 1), weight, bias, stride, padding, dilation, groups).unflatten(0, (k, -1)), 0
    weight = weight.movedim(wd, 0) if wd is not None else weight.expand(k, *weight.shape)
    if bias is not None:
        bias = bias.movedim(bd, 0) if bd is not None else bias.expand(k, *bias.shape)
    if min(weight.shape[1] // groups, weight.shape[2]) < 8:
        return torch.stack([F.conv2d(x[i], weight[i], None if bias is None else bias[i], stride, padding, dilation,
                                     groups) for i in range(k)]), 0
    out = F.conv2d(x.movedim(0, 1).flatten(1, 2), weight.flatten(0, 1), None if bias is None else bias.flatten(),
                   stride, padding, dilation, groups * k)
    return out.unflatten(1, (k, -1)).movedim(1, 0), 0


torch.library.register_vmap("adrepro::group_conv2d", _group_conv2d_vmap)


class _GroupConv2d(nn.Conv2d):
    """``nn.Conv2d`` of the group's template, batched over the runs by ``_group_conv2d_vmap``."""

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self.padding_mode != "zeros" or isinstance(self.padding, str):
            raise ValueError(f"run group: unsupported convolution padding {self.padding!r} / {self.padding_mode!r}")
        return _group_conv2d(x, weight, bias, list(self.stride), list(self.padding), list(self.dilation), self.groups)


class StackedParameters(nn.Module):
    """The group's trainable tensors, one [K, ...] parameter per model parameter ("." in names -> "/")."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        super().__init__()
        self.names = list(tensors)
        for name, t in tensors.items():
            self.register_parameter(name.replace(".", "/"), nn.Parameter(t.detach().clone()))

    def as_dict(self) -> dict[str, torch.Tensor]:
        return {name: self._parameters[name.replace(".", "/")] for name in self.names}


class _Generators:
    """Every run's data and dropout generators, as one checkpointable state."""

    def __init__(self, generators: list[torch.Generator]):
        self.generators = generators

    def state_dict(self) -> dict[str, Any]:
        return {"states": [g.get_state() for g in self.generators]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["states"]) != len(self.generators):
            raise ValueError(f"run group: checkpoint holds {len(state['states'])} generators, "
                             f"expected {len(self.generators)}")
        for g, s in zip(self.generators, state["states"]):
            g.set_state(s)


class _Losses(nn.Module):
    """``training_losses`` of a template run as a module forward, so ``functional_call`` swaps in one run's tensors."""

    def __init__(self, method: EfficientAD, template: nn.Module):
        super().__init__()
        self.model = template
        self._view = copy.copy(method)
        self._view.model = template

    def forward(self, img: torch.Tensor, aug: torch.Tensor, pen: torch.Tensor | None,
                t_img: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        out = self._view.training_losses(img, aug, pen, t_img)
        return out["total"], out["hard"], out["penalty"], out["ae"]


@dataclass
class _Run:
    method: EfficientAD
    val: Dataset | None
    ctx: FitContext
    generator: torch.Generator
    dropout: torch.Generator
    images: torch.Tensor
    cache: torch.Tensor | None
    penalty: Any
    sampler: ImageSampler
    chash: str


class RunGroup:
    """Trains K already-constructed ``EfficientAD`` methods as one batched computation."""

    def __init__(self, methods: list[EfficientAD]):
        if not methods or not all(isinstance(m, EfficientAD) for m in methods):
            raise ValueError("run group: needs one or more EfficientAD methods")
        first = methods[0]
        for i, m in enumerate(methods[1:], start=1):
            diff = sorted(k for k in first.opt if k not in PER_RUN and first.opt[k] != m.opt[k])
            if diff:
                raise ValueError(f"run group: run {i} differs from run 0 in option(s) {diff}; only {list(PER_RUN)} "
                                 f"may differ inside a group (params.yaml methods.efficientad / registry options)")
            if m.device != first.device or m.out_channels != first.out_channels:
                raise ValueError(f"run group: run {i} has device {m.device} / out_channels {m.out_channels}, run 0 "
                                 f"{first.device} / {first.out_channels}")
        if first.opt["compile"] != "off" or first.opt["cuda_graphs"]:
            raise ValueError("run group: options 'compile' and 'cuda_graphs' are not supported in run groups "
                             "(params.yaml methods.efficientad); set compile: off, cuda_graphs: false")
        self.methods = methods
        self.runs: list[_Run] = []

    # ---- set-up (as EfficientAD.fit, run by run) ----
    def prepare(self, runs: list[tuple[Dataset, Dataset | None, FitContext]]) -> None:
        """Each run's model, generators, images and teacher statistics as its ``EfficientAD.fit`` makes them;
        then the stacked weights, the template model and the optimiser."""
        if len(runs) != len(self.methods):
            raise ValueError(f"run group: {len(self.methods)} methods but {len(runs)} (train, val, ctx) runs")
        self.runs = []
        for method, (train, val, ctx) in zip(self.methods, runs):
            o, dev = method.opt, method.device
            generator = seed_everything(ctx.seed)
            method.model = method._place(method._build())
            dropout = torch.Generator(device=dev)
            if dev.type == "cpu":
                dropout.set_state(torch.get_rng_state())  # where the solo run's dropout draws start
            else:
                dropout.manual_seed(ctx.seed)
            images = method._layout(method._load_images(train).to(dev))
            cache = method._teacher_statistics(images)  # the teacher's outputs on the images, if solo keeps them
            penalty = ctx.extra.get("penalty")
            chash = config_hash({**o, "seed": ctx.seed, "teacher": method.teacher_info, "n_train": len(images),
                                 "penalty": None if penalty is None else len(penalty)})
            sampler = ImageSampler(len(images), str(o["sampling"]), ctx.seed, generator)
            self.runs.append(_Run(method, val, ctx, generator, dropout, images, cache, penalty, sampler, chash))
        if len({r.penalty is None for r in self.runs}) > 1:
            raise ValueError("run group: either every run has penalty images or none (profiles.<p>.penalty_images)")
        if len({r.cache is None for r in self.runs}) > 1:
            raise ValueError("run group: the teacher outputs fit in teacher_cache_mb for some runs only; raise "
                             "methods.efficientad.teacher_cache_mb or group runs with as many training images")
        self._stack()

    def _stack(self) -> None:
        models = [r.method.model for r in self.runs]
        trainable = [n for n, _ in models[0].named_parameters() if not n.startswith("teacher.")]
        self.params = StackedParameters({n: torch.stack([m.get_parameter(n) for m in models]) for n in trainable})
        fixed = {n: [dict(m.named_parameters())[n] if n.startswith("teacher.") else m.get_buffer(n) for m in models]
                 for n in [n for n, _ in models[0].named_parameters() if n.startswith("teacher.")]
                 + [n for n, _ in models[0].named_buffers()]}
        same = {n for n, ts in fixed.items() if all(torch.equal(ts[0], t) for t in ts[1:])}
        self.shared = {f"model.{n}": ts[0].detach() for n, ts in fixed.items() if n in same}
        self.batched = {f"model.{n}": torch.stack(ts).detach() for n, ts in fixed.items() if n not in same}
        template = copy.deepcopy(models[0]).train()
        self.slots = self._replace_dropout(template)
        for mod in template.modules():
            if type(mod) is nn.Conv2d:
                mod.__class__ = _GroupConv2d
        self.losses = _Losses(self.runs[0].method, template)
        o = self.runs[0].method.opt
        steps = int(o["steps"])
        self.optimizer = torch.optim.Adam(self.params.parameters(), lr=float(o["lr"]),
                                          weight_decay=float(o["weight_decay"]))
        self.scheduler = torch.optim.lr_scheduler.StepLR(
            self.optimizer, step_size=max(1, int(float(o["lr_decay_at"]) * steps)), gamma=0.1)

    def _replace_dropout(self, template: nn.Module) -> list[tuple[_MaskedDropout, torch.Tensor, float]]:
        """Swap each ``nn.Dropout`` for a mask slot, in the order one training step calls them; keep a tensor
        laid out as each one's input (what ``F.dropout`` draws its mask into)."""
        calls: list[tuple[nn.Dropout, torch.Tensor]] = []
        hooks = [mod.register_forward_pre_hook(lambda mod, args: calls.append((mod, torch.empty_like(args[0]))))
                 for mod in template.modules() if isinstance(mod, nn.Dropout)]
        method = self.runs[0].method
        s = int(method.opt["image_size"])
        with torch.no_grad():  # training_losses' AE input: one image, in the configured layout
            template.eval().ae_branches(method._layout(torch.zeros(1, 3, s, s, device=method.device)))
        template.train()
        for h in hooks:
            h.remove()
        names = {mod: name for name, mod in template.named_modules()}
        slots = []
        for mod, like in calls:
            if not 0.0 <= mod.p < 1.0:
                raise ValueError(f"run group: dropout p={mod.p} (ae_dropout) must be in [0, 1)")
            parent, _, attr = names[mod].rpartition(".")
            slot = _MaskedDropout()
            setattr(template.get_submodule(parent), attr, slot)
            if mod.p > 0:  # F.dropout with p = 0 is the identity and draws nothing
                slots.append((slot, like, float(mod.p)))
        return slots

    # ---- one batched step ----
    def _masks(self, generator: torch.Generator) -> list[torch.Tensor]:
        return [torch.empty_like(like).bernoulli_(1 - p, generator=generator).div_(1 - p) for _, like, p in self.slots]

    def _inputs(self, run: _Run, step: int) -> tuple[torch.Tensor | None, ...]:
        """The run's image, its AE augmentation, a penalty image (drawn as ``EfficientAD.fit`` draws them) and the
        teacher's cached output on the image."""
        m, dev = run.method.model, run.method.device
        i = run.sampler.index(step)
        img = run.images[i:i + 1]
        aug = augment_ae_input(img, run.generator)
        t_img = None if run.cache is None else run.cache[i:i + 1]
        if run.penalty is None:
            return img, aug, None, t_img
        j = int(torch.randint(len(run.penalty), (1,), generator=run.generator))
        p = _image(run.penalty[j]).float()[None]
        return img, aug, m.resize(p.expand(-1, 3, -1, -1) if p.shape[1] == 1 else p).to(dev), t_img

    def _one(self, batched: dict, img: torch.Tensor, aug: torch.Tensor, pen: torch.Tensor | None,
             t_img: torch.Tensor | None, masks: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        for (slot, _, _), mask in zip(self.slots, masks):
            slot.mask = mask
        try:
            return functional_call(self.losses, {**batched, **self.shared}, (img, aug, pen, t_img))
        finally:
            for slot, _, _ in self.slots:
                slot.mask = None

    def step(self, step: int) -> dict[str, torch.Tensor]:
        inputs = [self._inputs(r, step) for r in self.runs]
        masks = [self._masks(r.dropout) for r in self.runs]
        img, aug, pen, t_img = (None if inputs[0][k] is None else torch.stack([x[k] for x in inputs]) for k in range(4))
        mask = [torch.stack(ms) for ms in zip(*masks)]
        batched = {**{f"model.{n}": p for n, p in self.params.as_dict().items()}, **self.batched}
        with warnings.catch_warnings():  # vmap computes the hard loss's quantile run by run (no batching rule)
            warnings.filterwarnings("ignore", "There is a performance drop", UserWarning)
            dims = (0, 0, 0, None if pen is None else 0, None if t_img is None else 0, 0)
            total, hard, penalty, ae = vmap(self._one, in_dims=dims)(batched, img, aug, pen, t_img, mask)
        self.optimizer.zero_grad(set_to_none=True)
        total.sum().backward()  # the runs' losses are independent: each run's gradient is its own
        self.optimizer.step()
        self.scheduler.step()
        return {f"{name}{_SEP}{k}": v[k].detach() for name, v in (("loss", total), ("hard", hard), ("penalty", penalty),
                                                         ("ae", ae)) for k in range(len(self.runs))}

    # ---- the whole fit ----
    def fit(self, runs: list[tuple[Dataset, Dataset | None, FitContext]], work_dir: Path,
            stop_after: int | None = None) -> list[dict[str, Any]]:
        """Train the group (resumable from ``work_dir/last.pt``); set each method's model and summary as its
        ``EfficientAD.fit`` would, and return the K summaries."""
        with self.methods[0]._backend():  # the runs' TF32 setting (CUDA)
            return self._fit(runs, Path(work_dir), stop_after)

    def _fit(self, runs: list[tuple[Dataset, Dataset | None, FitContext]], work_dir: Path,
             stop_after: int | None) -> list[dict[str, Any]]:
        self.prepare(runs)
        o, steps = self.runs[0].method.opt, int(self.runs[0].method.opt["steps"])

        def log_metric(name: str, value: float, step: int) -> None:
            term, _, k = name.rpartition(_SEP)
            self.runs[int(k)].ctx.log_metric(term, value, step)

        state = {"params": self.params, "optimizer": self.optimizer, "scheduler": self.scheduler,
                 "generators": _Generators([g for r in self.runs for g in (r.generator, r.dropout)])}
        run_loop(total_steps=steps, step_fn=self.step, state=state, work_dir=work_dir,
                 cfg_hash=config_hash({"group": [r.chash for r in self.runs]}), generator=self.runs[0].generator,
                 checkpoint_every=int(o["checkpoint_every"]), log_metric=log_metric,
                 desc=f"efficientad group {','.join(r.ctx.exp_id for r in self.runs)}", stop_after=stop_after)
        return [self._finish(k, steps) for k in range(len(self.runs))]

    def _finish(self, k: int, steps: int) -> dict[str, Any]:
        """Run k's weights back into its model, then its quantiles and summary (as ``EfficientAD.fit``)."""
        run = self.runs[k]
        method, m = run.method, run.method.model
        with torch.no_grad():
            for name, p in self.params.as_dict().items():
                m.get_parameter(name).copy_(p[k])
        m.eval()
        method._map_quantiles(method._load_images(run.val) if run.val is not None else run.images)
        return method.fit_summary(steps, run.penalty, quantile_source(run.val, run.ctx, len(run.images)))


def group_steps_per_second(k: int, image_size: int = 64, steps: int = 20, warmup: int = 3, pdn_width: float = 0.25,
                           out_channels: int = 32, threads: int = 1, device: str = "cpu") -> float:
    """Aggregate training steps/s (K runs x steps / s) of a group of ``k`` random-weight EfficientAD-S runs
    with penalty images, timed over ``steps`` batched steps after ``warmup``."""
    from ..teachers.provision import save_teacher_file
    from .pdn import build_pdn

    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "teacher.pt"
            save_teacher_file(path, "pdn_s", {"out_channels": out_channels, "width": pdn_width},
                              build_pdn("S", out_channels, pdn_width).state_dict(), {"id": "random_pdn"})
            cfg = {"image_size": image_size, "steps": warmup + steps, "pdn_width": pdn_width, "device": device}
            methods = [EfficientAD({**cfg, "seed": i}, Teacher("random_pdn", path)) for i in range(k)]
            images = [torch.rand(8, 3, image_size, image_size, generator=torch.Generator().manual_seed(i))
                      for i in range(k + 1)]
            group = RunGroup(methods)
            group.prepare([(images[i], None, FitContext(f"bench{i}", Path(tmp) / f"r{i}", seed=i,
                                                        extra={"penalty": images[k]})) for i in range(k)])
            sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
            for s in range(warmup):
                group.step(s)
            sync()
            t0 = time.perf_counter()
            for s in range(warmup, warmup + steps):
                group.step(s)
            sync()
            return k * steps / (time.perf_counter() - t0)
    finally:
        torch.set_num_threads(old_threads)
