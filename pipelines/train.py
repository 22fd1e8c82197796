"""Stage `train@<exp>`: fit one experiment (resumable) and save weights + normalisation statistics."""

from __future__ import annotations

import shutil
import time
from typing import Any

import torch

from adrepro.datasets.registry import load_splits
from adrepro.methods.base import FitContext, build_method
from adrepro.results import write_json
from adrepro.tracking import run_tags, save_config_artifact, tracked_run
from adrepro.training import config_hash

from .common import load_experiment, load_teacher, model_dir, not_runnable_reason, profile_of, scratch_dir


def run(exp_id: str, stop_after: int | None = None) -> dict[str, Any]:
    params, exp, cfg = load_experiment(exp_id)
    out = model_dir(exp.profile, exp.id)
    reason = not_runnable_reason(exp)
    if reason:
        raise SystemExit(f"error: {exp.id}: {reason}; `adrepro evaluate {exp.id}` records it")
    teacher = load_teacher(params, exp)
    splits = load_splits(exp.dataset, exp.category, cfg["image_size"], exp.seed, params)
    extra: dict[str, Any] = {}
    if exp.method == "efficientad":
        from adrepro.methods.teachers import penalty_images

        extra["penalty"], extra["penalty_info"] = penalty_images(
            profile_of(params, exp).get("penalty_images", "synthetic"), params, cfg["image_size"], exp.seed)
    method = build_method(exp.method, cfg, teacher)
    work = scratch_dir(exp.profile, exp.id)
    tags = run_tags(exp, teacher.provenance if teacher else None, str(method.device))
    t0 = time.perf_counter()
    with tracked_run(exp, tags) as tracker:
        tracker.log_params({"cfg": cfg, "data": {k: v for k, v in splits.info.items() if k != "counts"},
                            "penalty": extra.get("penalty_info", {})})
        save_config_artifact(tracker, {"experiment": exp.id, "cfg": cfg, "data": splits.info,
                                       "teacher": teacher.provenance if teacher else None})
        ctx = FitContext(exp_id=exp.id, work_dir=work, seed=exp.seed, log_metric=tracker.log_metric,
                         stop_after=stop_after, extra=extra)
        summary = method.fit(splits.train, splits.val, ctx)
        summary = {**summary, "wall_s": round(time.perf_counter() - t0, 2), "cfg_hash": config_hash(cfg)}
        if "penalty_info" in extra:
            summary["penalty_source"] = extra["penalty_info"]
        out.mkdir(parents=True, exist_ok=True)
        torch.save({"state": method.state_dict(), "cfg": cfg, "teacher": teacher.provenance if teacher else None,
                    "data": splits.info, "summary": summary}, out / "model.pt")
        write_json(out / "train.json", {"experiment": exp.id, "summary": summary, "mlflow_run_id": tracker.run_id})
        tracker.log_metrics({"train.wall_s": summary["wall_s"]})
    shutil.rmtree(work, ignore_errors=True)
    return summary


def main(args: Any) -> None:
    run(args.experiment)
