"""MLflow logging: one run per experiment.

`train` and `evaluate` write their run record to disk (``models/<profile>/<exp>/train.json``: params, tags,
loss history; ``results/<profile>/<exp>/metrics.json``; figures in ``plots/<profile>/<exp>/``), and the
`track` stage logs every finished experiment to MLflow in one process (importing MLflow once instead of
twice per experiment keeps the smoke pipeline inside its time budget). A stage that raises logs its run
at once with status FAILED, so failed runs are never lost.

The store is MLflow's default for the installed version (MLflow 3: ``sqlite:///mlflow.db`` in the project
root, where every stage runs), so a bare ``mlflow ui`` there shows the runs. ``MLFLOW_TRACKING_URI``
overrides it.
"""

from __future__ import annotations

import hashlib
import json
import platform
import traceback
from pathlib import Path
from typing import Any

import torch

from .registry import Experiment
from .results import git_sha

RECORD_TAG = "adrepro.record"


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = str(v)[:500]
    return out


def run_tags(exp: Experiment, teacher: dict[str, Any] | None, device: str) -> dict[str, str]:
    teacher = teacher or {}
    return {
        "experiment": exp.id, "variant": exp.variant.id, "method": exp.method, "paper": exp.variant.paper,
        "profile": exp.profile, "protocol": exp.protocol, "dataset": exp.dataset, "category": exp.category,
        "seed": str(exp.seed), "git_sha": git_sha(),
        "teacher.id": str(teacher.get("id", exp.teacher_id)), "teacher.source": str(teacher.get("source")),
        "teacher.sha256": str(teacher.get("sha256")), "teacher.paper_teacher": str(teacher.get("paper_teacher")),
        "device": device, "torch": torch.__version__, "cuda": str(torch.version.cuda),
        "python": platform.python_version(),
    }


class History:
    """Collects training curves (``log_metric(name, value, step)``) for the run record."""

    def __init__(self) -> None:
        self.points: list[tuple[str, int, float]] = []

    def log_metric(self, name: str, value: float, step: int) -> None:
        self.points.append((name.replace("/", "."), int(step), float(value)))


def _log_run(mlflow: Any, exp: Experiment, tags: dict[str, str], params: dict[str, Any],
             history: list, metrics: dict[str, Any], artifacts: list[Path], json_artifacts: dict[str, Any],
             status: str) -> str:
    from mlflow.entities import Metric, Param, RunTag

    mlflow.set_experiment(f"adrepro-{exp.profile}")
    with mlflow.start_run(run_name=exp.id) as run:
        client = mlflow.MlflowClient()
        flat = _flatten(params)
        client.log_batch(run.info.run_id,
                         params=[Param(k, v) for k, v in flat.items()],
                         tags=[RunTag(k, v) for k, v in tags.items()])
        ms = [Metric(n, v, 0, s) for n, s, v in history]
        ms += [Metric(k, float(v), 0, 0) for k, v in metrics.items() if isinstance(v, (int, float))]
        for i in range(0, len(ms), 1000):
            client.log_batch(run.info.run_id, metrics=ms[i:i + 1000])
        for path in artifacts:
            if path.is_file():
                mlflow.log_artifact(str(path))
        for name, data in json_artifacts.items():
            mlflow.log_dict(data, name)
        mlflow.end_run(status=status)
        return run.info.run_id


def log_failed(exp: Experiment, stage: str, tags: dict[str, str], params: dict[str, Any], history: History | None,
               error: BaseException) -> None:
    """Log the run now, status FAILED, with what it had (params, tags, curves so far, the traceback)."""
    try:
        import mlflow

        text = "".join(traceback.format_exception(error))
        _log_run(mlflow, exp, {**tags, "failed_stage": stage, "error": str(error)[:500]}, params,
                 history.points if history else [], {}, [], {"error.txt.json": {"stage": stage, "traceback": text}},
                 "FAILED")
    except Exception as exc:  # never hide the original error behind a tracking problem
        print(f"warning: could not log the failed run to MLflow: {exc}")


def record_hash(*parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def sync(experiments: list[Experiment], model_dir: Any, metrics_path: Any, plots_dir: Any) -> tuple[int, int]:
    """Log every experiment whose train record and metrics exist and that MLflow does not hold yet
    (matched by a hash of the record). Returns (logged, already there)."""
    import mlflow

    logged = present = 0
    for exp in experiments:
        mfile = metrics_path(exp.profile, exp.id)
        tfile = model_dir(exp.profile, exp.id) / "train.json"
        if not mfile.is_file():
            continue
        metrics = json.loads(mfile.read_text())
        train = json.loads(tfile.read_text()) if tfile.is_file() else {}
        digest = record_hash(train, metrics)
        mlflow.set_experiment(f"adrepro-{exp.profile}")
        found = mlflow.search_runs(filter_string=f"tags.`{RECORD_TAG}` = '{digest}' and attributes.status = 'FINISHED'",
                                   max_results=1, output_format="list")
        if found:
            present += 1
            continue
        tags = {**train.get("tags", {}), RECORD_TAG: digest, "status": metrics.get("status", "ok")}
        if not train:
            tags.update(experiment=exp.id, profile=exp.profile, variant=exp.variant.id)
        flat_metrics = {f"auroc.{k}": v for k, v in metrics.get("auroc", {}).items()}
        flat_metrics.update({k: v for k, v in (("train.wall_s", train.get("summary", {}).get("wall_s")),
                                                  ("steps", metrics.get("steps"))) if isinstance(v, (int, float))})
        plots = plots_dir(exp.profile, exp.id)
        _log_run(mlflow, exp, tags, train.get("params", {}), [tuple(p) for p in train.get("history", [])],
                 flat_metrics, sorted(plots.glob("*.png")) if plots.is_dir() else [],
                 {"metrics.json": metrics, "resolved_config.json": train.get("resolved_config", {})}, "FINISHED")
        logged += 1
    return logged, present
