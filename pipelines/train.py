"""Stage `train@<exp>`: fit one experiment (resumable) and save weights + normalisation statistics."""

from __future__ import annotations

import shutil
import sys
import time
from typing import Any

from adrepro.config import PARAMS_FILE, ConfigError, check_device, determinism_mode
from adrepro.datasets.registry import load_splits
from adrepro.methods.base import FitContext, build_method
from adrepro.results import identity, metrics_path, write_failed, write_json
from adrepro.tracking import History, clean_exit, live_run, log_failed, run_tags
from adrepro.training import Interrupted, NonFiniteError, config_hash, knob_hint, save_atomic

from .common import load_experiment, load_teacher, model_dir, not_runnable_reason, profile_of, scratch_dir

EXPLICIT_NO_PENALTY = "none (explicit)"


def resolve_penalty(params: dict[str, Any], exp: Any, cfg: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """EfficientAD's penalty images (``profiles.<p>.penalty_images``), before any work: unavailable ones refuse the
    run naming the key to set; ``none`` is an explicit opt-out, flagged in train.json and metrics.json."""
    key = f"profiles.{exp.profile}.penalty_images"
    kind = profile_of(params, exp).get("penalty_images")
    if kind == "none":
        return None, {"kind": "none", "explicit": True, "reason": f"{key}: none in params.yaml"}
    from adrepro.methods.teachers import penalty_images

    images, info = penalty_images(kind, params, cfg["image_size"], exp.seed)
    if images is None:
        raise ConfigError(f"{PARAMS_FILE}: {key} is '{kind}' but those images are not available: {info.get('reason')}. "
                          f"Provide them, or set {key}: none to train without the penalty (flagged in the results)")
    return images, info


def lr_knob(params: dict[str, Any], exp: Any, cfg: dict[str, Any]) -> str:
    """The params.yaml key of this run's learning rate, the usual cause of a non-finite loss."""
    key = "lr_mvtec" if cfg.get("protocol") == "mvtec_ad" and cfg.get("lr_mvtec") is not None else "lr"
    prof = (params["profiles"][exp.profile].get("methods") or {}).get(exp.method) or {}
    where = f"profiles.{exp.profile}.methods.{exp.method}" if key in prof else f"methods.{exp.method}"
    return f"{where}.{key} = {cfg.get(key)} in params.yaml"


def record_failure(exp: Any, stage: str, error: BaseException) -> None:
    """Mark the experiment's metrics.json FAILED (results.write_failed); never hides ``error``."""
    try:
        write_failed(metrics_path(exp.profile, exp.id), identity(exp), stage, error)
    except OSError as exc:
        print(f"warning: could not mark {metrics_path(exp.profile, exp.id)} FAILED: {exc}", file=sys.stderr)


def run(exp_id: str, stop_after: int | None = None) -> dict[str, Any]:
    params, exp, cfg = load_experiment(exp_id)
    reason = not_runnable_reason(exp)
    if reason:
        raise SystemExit(f"error: {exp.id}: {reason}; `adrepro evaluate {exp.id}` records it")
    check_device(cfg.get("device", "cpu"), f"profiles.{exp.profile}.device")
    penalty = resolve_penalty(params, exp, cfg) if exp.method == "efficientad" else None
    try:
        teacher = load_teacher(params, exp)
    except Exception as exc:  # a missing, tampered or unreadable teacher: recorded like any failed training
        log_failed(exp, "train", run_tags(exp, None, str(cfg.get("device", "cpu"))), {"cfg": cfg}, None, exc)
        record_failure(exp, "train", exc)
        raise
    prov = teacher.provenance if teacher else None
    tags = run_tags(exp, prov, str(cfg.get("device", "cpu")))  # check_device: no silent CPU fallback
    record: dict[str, Any] = {"cfg": cfg}
    history = History(live_run(exp, tags, record, profile_of(params, exp)))  # RUNNING in MLflow as it trains
    try:
        splits = load_splits(exp.dataset, exp.category, cfg["image_size"], exp.seed, params,
                             val_fraction=cfg.get("val_fraction"))  # paper B: its own (0: all of train/good)
        extra: dict[str, Any] = {"val_source": splits.info.get("val_source")}
        if penalty is not None:
            extra["penalty"], extra["penalty_info"] = penalty
        record.update(data={k: v for k, v in splits.info.items() if k != "counts"}, penalty=extra.get("penalty_info", {}))
        method = build_method(exp.method, cfg, teacher)
        t0 = time.perf_counter()
        ctx = FitContext(exp_id=exp.id, work_dir=scratch_dir(exp.profile, exp.id), seed=exp.seed,
                         log_metric=history.log_metric, stop_after=stop_after, extra=extra)
        with knob_hint(lr_knob(params, exp, cfg)):
            summary = method.fit(splits.train, splits.val, ctx)
        summary = {**summary, "wall_s": round(time.perf_counter() - t0, 2), "cfg_hash": config_hash(cfg)}
        if "penalty_info" in extra:
            summary["penalty_source"] = extra["penalty_info"]
            if extra["penalty_info"].get("explicit"):
                summary["penalty"] = EXPLICIT_NO_PENALTY
        summary["determinism"] = determinism_mode(cfg.get("device", "cpu"))
        out = model_dir(exp.profile, exp.id)
        out.mkdir(parents=True, exist_ok=True)
        save_atomic({"state": method.state_dict(), "cfg": cfg, "teacher": prov, "data": splits.info,
                     "summary": summary}, out / "model.pt")
        live = history.live.close() if history.live else None
        write_json(out / "train.json", {"experiment": exp.id, "summary": summary, "params": record, "tags": tags,
                                        "history": history.points, **({"mlflow_live": live} if live else {}),
                                        "resolved_config": {"cfg": cfg, "data": splits.info, "teacher": prov}})
    except BaseException as exc:
        err = exc
        if isinstance(exc, FloatingPointError) and not isinstance(exc, NonFiniteError):  # a method's own check
            err = NonFiniteError(f"{exc}; likely knob: {lr_knob(params, exp, cfg)}")
        log_failed(exp, "train", tags, record, history, err)
        if not isinstance(exc, Interrupted):  # Interrupted simulates a kill, which records nothing
            record_failure(exp, "train", err)
        if err is not exc:
            raise err from exc
        raise
    shutil.rmtree(scratch_dir(exp.profile, exp.id), ignore_errors=True)
    return summary


def main(args: Any) -> None:
    with clean_exit():
        run(args.experiment)
