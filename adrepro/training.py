"""A resumable, seeded training loop shared by every method family.

All randomness of a run must come from the torch global RNG (dropout, augmentation) and from the
``generator`` passed in (data order, penalty images); both are checkpointed with the weights and
optimiser states, so a run killed at any step and resumed ends bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from tqdm.auto import tqdm


class Interrupted(RuntimeError):
    """Raised by ``run_loop`` when ``stop_after`` steps have run (simulates a kill in tests)."""


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


def _save_atomic(obj: Any, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


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
) -> int:
    """Run ``step_fn(step)`` for steps [resume_step, total_steps). ``state`` maps names to objects with
    ``state_dict``/``load_state_dict`` (modules, optimisers, schedulers). Returns the number of steps run
    in this call. The checkpoint ``work_dir/last.pt`` is only reused when ``cfg_hash`` matches."""
    work_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = work_dir / "last.pt"
    start = 0
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
            start = int(ckpt["step"])
            print(f"[{desc}] resuming from step {start}/{total_steps} ({ckpt_path})", file=sys.stderr)
        else:
            print(f"[{desc}] ignoring checkpoint with other config ({ckpt_path})", file=sys.stderr)

    def save(step: int) -> None:
        _save_atomic(
            {
                "step": step,
                "cfg_hash": cfg_hash,
                "states": {name: obj.state_dict() for name, obj in state.items()},
                "torch_rng": torch.get_rng_state(),
                "generator": generator.get_state(),
                "numpy_rng": np.random.get_state(),
                "python_rng": random.getstate(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            },
            ckpt_path,
        )

    ran = 0
    bar = tqdm(range(start, total_steps), initial=start, total=total_steps, desc=desc, mininterval=2.0,
               disable=total_steps == 0, file=sys.stderr, dynamic_ncols=True)
    for step in bar:
        if stop_after is not None and ran >= stop_after:
            bar.close()
            raise Interrupted(f"stopped after {ran} steps at step {step}")
        losses = step_fn(step)
        ran += 1
        if step % log_every == 0 or step + 1 == total_steps:
            for name, value in losses.items():
                log_metric(f"train/{name}", float(value), step)
            bar.set_postfix({k: f"{float(v):.4g}" for k, v in losses.items()}, refresh=False)
        if (step + 1) % checkpoint_every == 0 or step + 1 == total_steps:
            save(step + 1)
    bar.close()
    return ran
