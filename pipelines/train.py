"""Stage `train@<exp>`: fit one experiment (resumable) and save weights + normalisation statistics."""

from __future__ import annotations

import shutil
import time
from typing import Any

import torch

from adrepro.datasets.registry import load_splits
from adrepro.methods.base import FitContext, build_method
from adrepro.results import write_json
from adrepro.tracking import History, log_failed, run_tags
from adrepro.training import config_hash

from .common import load_experiment, load_teacher, model_dir, not_runnable_reason, profile_of, scratch_dir


def run(exp_id: str, stop_after: int | None = None) -> dict[str, Any]:
    params, exp, cfg = load_experiment(exp_id)
    reason = not_runnable_reason(exp)
    if reason:
        raise SystemExit(f"error: {exp.id}: {reason}; `adrepro evaluate {exp.id}` records it")
    teacher = load_teacher(params, exp)
    prov = teacher.provenance if teacher else None
    tags = run_tags(exp, prov, str(torch.device(cfg.get("device", "cpu")) if torch.cuda.is_available() else "cpu"))
    history = History()
    record: dict[str, Any] = {"cfg": cfg}
    try:
        splits = load_splits(exp.dataset, exp.category, cfg["image_size"], exp.seed, params)
        extra: dict[str, Any] = {}
        if exp.method == "efficientad":
            from adrepro.methods.teachers import penalty_images

            extra["penalty"], extra["penalty_info"] = penalty_images(
                profile_of(params, exp).get("penalty_images", "synthetic"), params, cfg["image_size"], exp.seed)
        record.update(data={k: v for k, v in splits.info.items() if k != "counts"}, penalty=extra.get("penalty_info", {}))
        method = build_method(exp.method, cfg, teacher)
        t0 = time.perf_counter()
        ctx = FitContext(exp_id=exp.id, work_dir=scratch_dir(exp.profile, exp.id), seed=exp.seed,
                         log_metric=history.log_metric, stop_after=stop_after, extra=extra)
        summary = method.fit(splits.train, splits.val, ctx)
        summary = {**summary, "wall_s": round(time.perf_counter() - t0, 2), "cfg_hash": config_hash(cfg)}
        if "penalty_info" in extra:
            summary["penalty_source"] = extra["penalty_info"]
        out = model_dir(exp.profile, exp.id)
        out.mkdir(parents=True, exist_ok=True)
        torch.save({"state": method.state_dict(), "cfg": cfg, "teacher": prov, "data": splits.info, "summary": summary},
                   out / "model.pt")
        write_json(out / "train.json", {"experiment": exp.id, "summary": summary, "params": record, "tags": tags,
                                        "history": history.points,
                                        "resolved_config": {"cfg": cfg, "data": splits.info, "teacher": prov}})
    except BaseException as exc:
        log_failed(exp, "train", tags, record, history, exc)
        raise
    shutil.rmtree(scratch_dir(exp.profile, exp.id), ignore_errors=True)
    return summary


def main(args: Any) -> None:
    run(args.experiment)
