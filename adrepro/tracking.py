"""MLflow logging: one run per experiment, opened by `train` and continued by `evaluate`.

The tracking store is MLflow's default for the installed version (MLflow 3: ``sqlite:///mlflow.db`` in the
repository root, where every stage runs), so a bare ``mlflow ui`` in the repository root shows the runs.
A run that raises ends as FAILED, never lost. Set ``MLFLOW_TRACKING_URI`` to log elsewhere.
"""

from __future__ import annotations

import contextlib
import json
import platform
import tempfile
from pathlib import Path
from typing import Any, Iterator

import torch

from .registry import Experiment
from .results import git_sha


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
        "python": platform.python_version(), "mlflow.runName": exp.id,
    }


class Tracker:
    """Thin wrapper so the stages never touch MLflow directly (and tests can swap the store)."""

    def __init__(self, run: Any, mlflow: Any):
        self.run, self._mlflow = run, mlflow
        self.run_id = run.info.run_id

    def log_params(self, params: dict[str, Any]) -> None:
        flat = _flatten(params)
        existing = self._mlflow.get_run(self.run_id).data.params
        new = {k: v for k, v in flat.items() if k not in existing}
        if new:
            self._mlflow.log_params(new)

    def log_metric(self, name: str, value: float, step: int | None = None) -> None:
        self._mlflow.log_metric(name.replace("/", "."), float(value), step=step)

    def log_metrics(self, metrics: dict[str, float | None], prefix: str = "") -> None:
        clean = {f"{prefix}{k}": float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        if clean:
            self._mlflow.log_metrics(clean)

    def log_json(self, data: dict[str, Any], name: str) -> None:
        self._mlflow.log_dict(data, name)

    def log_figure(self, fig: Any, name: str) -> None:
        self._mlflow.log_figure(fig, name)

    def log_file(self, path: Path) -> None:
        self._mlflow.log_artifact(str(path))


@contextlib.contextmanager
def tracked_run(exp: Experiment, tags: dict[str, str], run_id: str | None = None) -> Iterator[Tracker]:
    """Open (or continue) the experiment's MLflow run; FAILED on exception, FINISHED otherwise."""
    import mlflow

    mlflow.set_experiment(f"adrepro-{exp.profile}")
    run = None
    if run_id:
        try:
            mlflow.get_run(run_id)
            run = mlflow.start_run(run_id=run_id)
        except Exception:  # run from another store (fresh mlflow.db): start a new one
            run = None
    if run is None:
        run = mlflow.start_run(run_name=exp.id)
    mlflow.set_tags(tags)
    try:
        yield Tracker(run, mlflow)
    except BaseException:
        mlflow.end_run(status="FAILED")
        raise
    mlflow.end_run(status="FINISHED")


def save_config_artifact(tracker: Tracker, cfg: dict[str, Any]) -> None:
    tracker.log_json(json.loads(json.dumps(cfg, default=str)), "resolved_config.json")


def tmpdir() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="adrepro-")
