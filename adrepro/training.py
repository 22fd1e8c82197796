"""A resumable, seeded training loop shared by every method family.

All randomness of a run must come from the torch global RNG (dropout, augmentation) and from the
``generator`` passed in (data order, penalty images); both are checkpointed with the weights and
optimiser states, so a run killed at any step and resumed ends bit-identical to an uninterrupted one.
The logged loss curve is checkpointed too, so a resumed run reports its whole history.

A non-finite loss term (or non-finite weights at a checkpoint) stops the run with ``NonFiniteError``
naming the step, the loss terms and the likely knob; nothing non-finite is ever checkpointed.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import sys
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch
from tqdm.auto import tqdm


class Interrupted(RuntimeError):
    """Raised by ``run_loop`` when ``stop_after`` steps have run (simulates a kill in tests)."""


class NonFiniteError(FloatingPointError):
    """A loss term, weight or score became NaN/inf. ``step`` is the first bad step (None at evaluation)."""

    def __init__(self, message: str, step: int | None = None, losses: Mapping[str, float] | None = None):
        super().__init__(message)
        self.step, self.losses = step, dict(losses or {})


_KNOB: ContextVar[str] = ContextVar("adrepro_knob", default="")


@contextmanager
def knob_hint(knob: str) -> Iterator[None]:
    """Name the params.yaml key most likely behind a non-finite loss (e.g. ``methods.kd_cnn.lr = 1e30``)
    for every ``run_loop`` inside the block that is not given its own ``knob``."""
    token = _KNOB.set(knob)
    try:
        yield
    finally:
        _KNOB.reset(token)


def _terms(losses: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={float(v):.4g}" for k, v in losses.items())


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; make CPU kernels deterministic; return a data-order generator."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def config_hash(cfg: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:16]


def save_atomic(obj: Any, path: Path) -> None:
    """torch.save to a temporary file, then rename: a crash never leaves a half-written file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _first_nonfinite(window: list[tuple[int, Mapping[str, Any]]]) -> tuple[int, Mapping[str, Any]] | None:
    """The first (step, losses) of ``window`` with a non-finite term. Python floats are checked directly;
    tensors are reduced on their device and read with one host sync for the whole window."""
    floats_ok = all(math.isfinite(v) for _, losses in window for v in losses.values() if not isinstance(v, torch.Tensor))
    tensors = [v for _, losses in window for v in losses.values() if isinstance(v, torch.Tensor)]
    if floats_ok and (not tensors or bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())):
        return None
    return next((sl for sl in window if not all(math.isfinite(float(v)) for v in sl[1].values())), None)


def _nonfinite_weights(state: Mapping[str, Any]) -> list[str]:
    """Names of the modules in ``state`` holding a non-finite parameter or buffer (one sync per module)."""
    bad = []
    for name, obj in state.items():
        if isinstance(obj, torch.nn.Module):
            tensors = [t for t in (*obj.parameters(), *obj.buffers()) if t.is_floating_point()]
            if tensors and not bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all()):
                bad.append(name)
    return bad


def run_loop(
    *,
    total_steps: int,
    step_fn: Callable[[int], Mapping[str, float]],
    state: Mapping[str, Any],
    work_dir: Path,
    cfg_hash: str,
    generator: torch.Generator,
    checkpoint_every: int,
    log_metric: Callable[[str, float, int], None] = lambda n, v, s: None,
    log_every: int = 10,
    desc: str = "train",
    stop_after: int | None = None,
    knob: str = "",
) -> int:
    """Run ``step_fn(step)`` for steps [resume_step, total_steps). ``state`` maps names to objects with
    ``state_dict``/``load_state_dict`` (modules, optimisers, schedulers). Returns the number of steps run
    in this call. The checkpoint ``work_dir/last.pt`` is only reused when ``cfg_hash`` matches; on resume
    the curve logged before the checkpoint is replayed through ``log_metric``.

    ``step_fn`` returns its loss terms as python floats (checked at once) or 0-d tensors (checked every
    ``log_every`` steps and before each checkpoint without a per-step host sync; the error still names the
    first bad step). ``knob`` (default: the enclosing ``knob_hint``) is named in the error."""
    work_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = work_dir / "last.pt"
    start = 0
    saved: list[int | None] = [None]  # step of the checkpoint on disk that this run may resume from
    logged: list[tuple[str, float, int]] = []
    if ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        if ckpt.get("cfg_hash") == cfg_hash:
            for name, obj in state.items():
                obj.load_state_dict(ckpt["states"][name])
            torch.set_rng_state(ckpt["torch_rng"])
            generator.set_state(ckpt["generator"])
            np.random.set_state(ckpt["numpy_rng"])
            random.setstate(ckpt["python_rng"])
            if torch.cuda.is_available() and ckpt.get("cuda_rng") is not None:
                torch.cuda.set_rng_state_all(ckpt["cuda_rng"])
            start = saved[0] = int(ckpt["step"])
            logged = [tuple(p) for p in ckpt.get("history", [])]
            for name, value, step in logged:
                log_metric(name, value, step)
            print(f"[{desc}] resuming from step {start}/{total_steps} ({ckpt_path})", file=sys.stderr)
        else:
            print(f"[{desc}] ignoring checkpoint with other config ({ckpt_path})", file=sys.stderr)

    def fail(what: str, step: int, losses: Mapping[str, Any]) -> NonFiniteError:
        bar.close()
        kept = f"checkpoint {ckpt_path} (step {saved[0]}) kept" if saved[0] is not None else "nothing checkpointed"
        return NonFiniteError(
            f"[{desc}] non-finite {what} at step {step} of {total_steps}: {_terms(losses)}; "
            f"likely knob: {knob or _KNOB.get() or 'the learning rate `lr` of this method'} (lower it, or clip "
            f"gradients); "
            f"{kept}", step, {k: float(v) for k, v in losses.items()})

    def check(window: list[tuple[int, Mapping[str, Any]]]) -> None:
        bad = _first_nonfinite(window)
        if bad is not None:
            raise fail("loss", *bad)

    def save(step: int) -> None:
        save_atomic(
            {
                "step": step,
                "cfg_hash": cfg_hash,
                "states": {name: obj.state_dict() for name, obj in state.items()},
                "torch_rng": torch.get_rng_state(),
                "generator": generator.get_state(),
                "numpy_rng": np.random.get_state(),
                "python_rng": random.getstate(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                "history": list(logged),
            },
            ckpt_path,
        )
        saved[0] = step

    ran = 0
    bar = tqdm(range(start, total_steps), initial=start, total=total_steps, desc=desc, mininterval=2.0,
               disable=total_steps == 0, file=sys.stderr, dynamic_ncols=True)
    window: list[tuple[int, Mapping[str, Any]]] = []  # steps whose tensor losses are not checked yet
    for step in bar:
        if stop_after is not None and ran >= stop_after:
            bar.close()
            raise Interrupted(f"stopped after {ran} steps at step {step}")
        losses = step_fn(step)
        ran += 1
        window.append((step, {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in losses.items()}))
        is_log = step % log_every == 0 or step + 1 == total_steps
        is_ckpt = (step + 1) % checkpoint_every == 0 or step + 1 == total_steps
        if is_log or is_ckpt or not any(isinstance(v, torch.Tensor) for v in losses.values()):
            check(window)
            window = []
        if is_log:
            for name, value in losses.items():
                log_metric(f"train/{name}", float(value), step)
                logged.append((f"train/{name}", float(value), step))
            bar.set_postfix({k: f"{float(v):.4g}" for k, v in losses.items()}, refresh=False)
        if is_ckpt:
            bad = _nonfinite_weights(state)
            if bad:
                raise fail(f"weights ({', '.join(bad)})", step, losses)
            save(step + 1)
    bar.close()
    return ran
