"""`adrepro train-group EXP [EXP ...]`: train EfficientAD experiments of the active profile that share an
architecture and training options (seeds, categories) as one run group (methods/efficientad/group.py), and
write each experiment's model dir and train.json as `adrepro train` does, so DVC and MLflow see K ordinary
experiments. Not a DVC stage; the smoke profile does not use run groups.
"""

from __future__ import annotations

import shutil
import time
from typing import Any

from adrepro.config import check_device, determinism_mode, load_params
from adrepro.datasets.registry import load_splits
from adrepro.methods.base import FitContext, build_method
from adrepro.results import write_json
from adrepro.tracking import History, clean_exit, live_run, log_failed, run_tags
from adrepro.training import Interrupted, config_hash, knob_hint, save_atomic

from .common import (SCRATCH_DIR, load_experiment, load_teacher, model_dir, not_runnable_reason, profile_of,
                     scratch_dir)
from .train import EXPLICIT_NO_PENALTY, lr_knob, record_failure, resolve_penalty


def _prepare(exp_id: str) -> dict[str, Any]:
    """One experiment's config, teacher, data, method and fit context, as `pipelines/train.py` builds them."""
    params, exp, cfg = load_experiment(exp_id)
    reason = not_runnable_reason(exp)
    if reason:
        raise SystemExit(f"error: {exp.id}: {reason}; `adrepro evaluate {exp.id}` records it")
    if exp.method != "efficientad":
        raise SystemExit(f"error: {exp.id}: run groups train EfficientAD experiments only (method {exp.method!r})")
    check_device(cfg.get("device", "cpu"), f"profiles.{exp.profile}.device")
    penalty = resolve_penalty(params, exp, cfg)
    teacher = load_teacher(params, exp)
    prov = teacher.provenance if teacher else None
    tags = run_tags(exp, prov, str(cfg.get("device", "cpu")))
    splits = load_splits(exp.dataset, exp.category, cfg["image_size"], exp.seed, params,
                         val_fraction=cfg.get("val_fraction"))
    extra = {"val_source": splits.info.get("val_source"), "penalty": penalty[0], "penalty_info": penalty[1]}
    record = {"cfg": cfg, "data": {k: v for k, v in splits.info.items() if k != "counts"}, "penalty": penalty[1]}
    history = History(live_run(exp, tags, record, profile_of(params, exp)))  # RUNNING in MLflow as it trains
    ctx = FitContext(exp_id=exp.id, work_dir=scratch_dir(exp.profile, exp.id), seed=exp.seed,
                     log_metric=history.log_metric, extra=extra)
    return {"params": params, "exp": exp, "cfg": cfg, "prov": prov, "history": history, "splits": splits,
            "record": record, "ctx": ctx, "tags": tags, "method": build_method(exp.method, cfg, teacher)}


def _write(r: dict[str, Any], summary: dict[str, Any], wall_s: float, group: list[str]) -> dict[str, Any]:
    exp, cfg, info = r["exp"], r["cfg"], r["ctx"].extra["penalty_info"]
    summary = {**summary, "wall_s": round(wall_s, 2), "cfg_hash": config_hash(cfg), "run_group": group,
               "penalty_source": info}
    if info.get("explicit"):
        summary["penalty"] = EXPLICIT_NO_PENALTY
    summary["determinism"] = determinism_mode(cfg.get("device", "cpu"))
    out = model_dir(exp.profile, exp.id)
    out.mkdir(parents=True, exist_ok=True)
    save_atomic({"state": r["method"].state_dict(), "cfg": cfg, "teacher": r["prov"], "data": r["splits"].info,
                 "summary": summary}, out / "model.pt")
    live = r["history"].live.close() if r["history"].live else None
    write_json(out / "train.json", {"experiment": exp.id, "summary": summary, "params": r["record"], "tags": r["tags"],
                                    "history": r["history"].points, **({"mlflow_live": live} if live else {}),
                                    "resolved_config": {"cfg": cfg, "data": r["splits"].info, "teacher": r["prov"]}})
    return summary


def run(exp_ids: list[str], stop_after: int | None = None) -> list[dict[str, Any]]:
    from adrepro.methods.efficientad.group import RunGroup

    profile = load_params()["profile"]
    if profile == "smoke":
        raise SystemExit("error: the smoke profile does not use run groups (its numbers are the CI gate's): "
                         "use `adrepro train EXP` or `dvc repro`")
    if len(set(exp_ids)) != len(exp_ids):
        raise SystemExit(f"error: train-group: experiment(s) given twice: {exp_ids}")
    runs = [_prepare(e) for e in exp_ids]
    ids = [r["exp"].id for r in runs]
    work_dir = SCRATCH_DIR / profile / f"group-{config_hash({'group': ids})}"
    try:
        t0 = time.perf_counter()
        with knob_hint(lr_knob(runs[0]["params"], runs[0]["exp"], runs[0]["cfg"])):
            summaries = RunGroup([r["method"] for r in runs]).fit(
                [(r["splits"].train, r["splits"].val, r["ctx"]) for r in runs], work_dir, stop_after=stop_after)
        wall = time.perf_counter() - t0
        out = [_write(r, s, wall, ids) for r, s in zip(runs, summaries)]
    except BaseException as exc:
        for r in runs:
            log_failed(r["exp"], "train", r["tags"], r["record"], r["history"], exc)
            if not isinstance(exc, Interrupted):  # Interrupted simulates a kill, which records nothing
                record_failure(r["exp"], "train", exc)
        raise
    shutil.rmtree(work_dir, ignore_errors=True)
    return out


def main(args: Any) -> None:
    with clean_exit():
        run(args.experiments)
