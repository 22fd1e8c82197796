"""MLflow logging: one run per experiment.

`train` and `evaluate` write their run record to disk (``models/<profile>/<exp>/train.json``: params, tags,
loss history; ``results/<profile>/<exp>/metrics.json``; figures in ``plots/<profile>/<exp>/``), and the
`track` stage logs every finished experiment to MLflow in one process (importing MLflow once instead of
twice per experiment keeps the smoke pipeline inside its time budget). A stage that raises logs its run
at once with status FAILED (error, traceback and config), so failed runs are never lost: `train`/`evaluate`
through ``log_failed``, the `data`, `teacher` and `latency` stages through ``failed_stage``.

Live runs: in a profile with ``mlflow_live: true`` the `train` stage opens the experiment's run at once (status
RUNNING, tag ``adrepro.live``) and logs the curves every ``mlflow_every`` steps (``LiveRun``); `track` finds that
run (its id is in train.json; it stays RUNNING, tag ``phase``, until then) and finishes it with the final metrics and
artifacts instead of creating another; a failing `train` or `evaluate` ends it FAILED.

The store is MLflow's default for the installed version (MLflow 3: ``sqlite:///mlflow.db`` in the project
root, where every stage runs), so a bare ``mlflow ui`` there shows the runs. ``MLFLOW_TRACKING_URI``
overrides it (a tracking server, ``http://host:5000``, is the store for many machines). Several stages writing
to the SQLite store at once (``adrepro run --jobs N``) open it under a file lock (``tracking_client``: the first
open creates the tables) and retry a locked database with bounded backoff (``retry``); a live run whose writes
still fail stops logging live and `track` logs the rest after the run.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import platform
import random
import socket
import sys
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import torch

from .registry import Experiment
from .results import git_sha

RECORD_TAG = "adrepro.record"
LIVE_TAG = "adrepro.live"
# bounded retry of a store write that met another writer: attempts, first delay, largest delay (seconds)
RETRY_ATTEMPTS, RETRY_FIRST_S, RETRY_MAX_S = 10, 0.05, 2.0
_TRANSIENT = ("database is locked", "database table is locked", "unique constraint failed", "already exists")
T = TypeVar("T")


def retry(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)``, retried with jittered exponential backoff while the store reports a concurrent
    writer (SQLite "database is locked", a run or experiment created by another process at the same moment);
    the last error is raised after ``RETRY_ATTEMPTS`` tries (about 10 s)."""
    for attempt in range(RETRY_ATTEMPTS):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if attempt + 1 == RETRY_ATTEMPTS or not any(s in str(exc).lower() for s in _TRANSIENT):
                raise
            time.sleep(min(RETRY_MAX_S, RETRY_FIRST_S * 2 ** attempt) * (0.5 + random.random()))
    raise AssertionError("unreachable")


def tracking_client() -> Any:
    """An ``MlflowClient``. A local SQLite store is opened (tables created or migrated on first use) under an
    exclusive file lock (in the temp folder, named by the database's path), so processes starting together never
    run the schema migration twice."""
    import mlflow
    from mlflow import MlflowClient

    uri = mlflow.get_tracking_uri()
    if not uri.startswith("sqlite:///"):
        return MlflowClient()
    import fcntl
    import tempfile

    db = str(Path(uri[len("sqlite:///"):]).resolve())
    lock = Path(tempfile.gettempdir()) / f"adrepro-mlflow-{hashlib.sha256(db.encode()).hexdigest()[:16]}.lock"
    with open(lock, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            client = MlflowClient()
            retry(client.search_experiments, max_results=1)  # opens the store: creates / migrates its tables
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
    return client


def experiment_id(client: Any, profile: str) -> str:
    """The MLflow experiment ``adrepro-<profile>``, created when missing (safe against a concurrent creator)."""
    name = f"adrepro-{profile}"

    def get_or_create() -> str:
        found = client.get_experiment_by_name(name)
        return found.experiment_id if found is not None else client.create_experiment(name)

    return retry(get_or_create)


def numeric_metrics(d: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Nested numbers as dotted MLflow metric names (``auroc.per_type.crack``); None, bools and text dropped."""
    out: dict[str, float] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(numeric_metrics(v, f"{prefix}{k}."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[f"{prefix}{k}"] = float(v)
    return out


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
        # where it ran: set by `adrepro run` (Ray task: the worker's node and GPU ids), else this machine
        "node": os.environ.get("ADREPRO_NODE") or socket.gethostname(), "gpu": os.environ.get("ADREPRO_GPU", "none"),
        "python": platform.python_version(),
    }


class History:
    """Collects training curves (``log_metric(name, value, step)``) for the run record, passing them on to a
    ``LiveRun`` when one is open."""

    def __init__(self, live: "LiveRun | None" = None) -> None:
        self.points: list[tuple[str, int, float]] = []
        self.live = live

    def log_metric(self, name: str, value: float, step: int) -> None:
        self.points.append((name.replace("/", "."), int(step), float(value)))
        if self.live is not None:
            self.live.log_metric(name.replace("/", "."), float(value), int(step))


class LiveRun:
    """The experiment's MLflow run, open (RUNNING) while it trains: curve points are sent every ``every`` steps.
    A store error never stops the training: live logging stops with a warning and `track` logs the rest."""

    def __init__(self, exp: Experiment, tags: dict[str, str], params: dict[str, Any], every: int) -> None:
        self.every, self.run_id, self.logged_until, self.stopped = max(1, int(every)), None, -1, ""
        self._pending: list[tuple[str, int, float]] = []
        self._flushed_at: int | None = None
        try:
            from mlflow.entities import Param, RunTag

            self.client = tracking_client()
            eid = experiment_id(self.client, exp.profile)
            stale = retry(self.client.search_runs, [eid], max_results=100, filter_string=(
                f"tags.experiment = '{exp.id}' and tags.`{LIVE_TAG}` = 'true' and attributes.status = 'RUNNING'"))
            for r in stale:  # a killed training's run: this training replaces it
                retry(self.client.set_terminated, r.info.run_id, "KILLED")
            run = retry(self.client.create_run, eid, run_name=exp.id, tags={**tags, LIVE_TAG: "true", "phase": "training"})
            self.run_id = run.info.run_id
            flat = _flatten(params)
            for i in range(0, max(len(flat), 1), 100):
                retry(self.client.log_batch, self.run_id, params=[Param(k, v) for k, v in list(flat.items())[i:i + 100]],
                      tags=[RunTag(k, v) for k, v in tags.items()] if i == 0 else [])
        except Exception as exc:
            self._stop(exc)

    def _stop(self, exc: Exception) -> None:
        self.stopped = f"{type(exc).__name__}: {str(exc)[:300]}"
        print(f"warning: live MLflow logging stopped ({self.stopped}); `adrepro track` logs the curves after the "
              "run", file=sys.stderr)

    def log_metric(self, name: str, value: float, step: int) -> None:
        if self.run_id is None or self.stopped:
            return
        self._pending.append((name, step, value))
        if self._flushed_at is None or step - self._flushed_at >= self.every:
            self.flush(step)

    def flush(self, step: int | None = None) -> None:
        """Send the pending points (one batch per 1000)."""
        if self.run_id is None or self.stopped or not self._pending:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        points, self._pending = self._pending, []
        try:
            for i in range(0, len(points), 1000):
                retry(self.client.log_batch, self.run_id,
                      metrics=[Metric(n, v, now, s) for n, s, v in points[i:i + 1000]])
        except Exception as exc:
            self._stop(exc)
            return
        self.logged_until = max(self.logged_until, max(s for _, s, _ in points))
        self._flushed_at = step if step is not None else self.logged_until

    def close(self) -> dict[str, Any]:
        """End of training: the last points; the run stays RUNNING until `track` adds the evaluation. Returns
        the train.json record (run id, last step logged live, why live logging stopped, if it did)."""
        self.flush()
        if self.run_id is not None and not self.stopped:
            try:
                retry(self.client.set_tag, self.run_id, "phase", "trained, awaiting evaluate/track")
            except Exception as exc:
                self._stop(exc)
        return {"run_id": self.run_id, "logged_until": self.logged_until, "stopped": self.stopped or None}


def live_run(exp: Experiment, tags: dict[str, str], params: dict[str, Any], profile: dict[str, Any]) -> LiveRun | None:
    """A ``LiveRun`` when the profile asks for one (``mlflow_live``, every ``mlflow_every`` steps), else None."""
    if not profile.get("mlflow_live", False):
        return None
    return LiveRun(exp, tags, params, int(profile.get("mlflow_every", 50)))


def _log_run(profile: str, run_name: str, tags: dict[str, str], params: dict[str, Any], history: list,
             metrics: dict[str, Any], artifacts: list[Path], json_artifacts: dict[str, Any], status: str,
             run_id: str | None = None) -> str:
    """Log one run (a new one, or the open live run ``run_id``) and end it with ``status``; every store write
    is retried against concurrent writers."""
    from mlflow.entities import Metric, Param, RunTag

    client = tracking_client()
    if run_id is None:
        run_id = retry(client.create_run, experiment_id(client, profile), run_name=run_name).info.run_id
    flat = _flatten(params)
    items = list(flat.items())
    for i in range(0, max(len(items), 1), 100):
        retry(client.log_batch, run_id, params=[Param(k, v) for k, v in items[i:i + 100]],
              tags=[RunTag(k, v) for k, v in tags.items()] if i == 0 else [])
    now = int(time.time() * 1000)
    ms = [Metric(n, v, now, s) for n, s, v in history]
    ms += [Metric(k, float(v), now, 0) for k, v in metrics.items() if isinstance(v, (int, float))]
    for i in range(0, len(ms), 1000):
        retry(client.log_batch, run_id, metrics=ms[i:i + 1000])
    for path in artifacts:
        if path.is_file():
            retry(client.log_artifact, run_id, str(path))
    for name, data in json_artifacts.items():
        retry(client.log_dict, run_id, data, name)
    retry(client.set_terminated, run_id, status)
    return run_id


def _log_failure(profile: str, run_name: str, stage: str, tags: dict[str, str], params: dict[str, Any],
                 points: list, error: BaseException, run_id: str | None = None) -> None:
    try:
        text = "".join(traceback.format_exception(error))
        _log_run(profile, run_name, {**tags, "failed_stage": stage, "error": str(error)[:500]}, params, points,
                 {}, [], {"error.txt.json": {"stage": stage, "traceback": text}, "config.json": json.loads(json.dumps(params, default=str))},
                 "FAILED", run_id)
    except Exception as exc:  # never hide the original error behind a tracking problem
        print(f"warning: could not log the failed run to MLflow: {exc}", file=sys.stderr)


def log_failed(exp: Experiment, stage: str, tags: dict[str, str], params: dict[str, Any], history: History | None,
               error: BaseException) -> None:
    """Log the run now, status FAILED, with what it had (params, tags, curves so far, the traceback); a live run
    is ended FAILED with the points it had not received yet."""
    live = history.live if history else None
    points = history.points if history else []
    run_id = live.run_id if live is not None else None
    if live is not None and run_id is not None:
        live.flush()
        points = [p for p in points if p[1] > live.logged_until]
    elif stage != "train":  # e.g. evaluate failed after a live training: end that run FAILED, no second run
        try:
            run_id = _open_live_run(tracking_client(), exp, {})[0]
        except Exception as exc:
            print(f"warning: could not look up the live MLflow run: {exc}", file=sys.stderr)
    _log_failure(exp.profile, exp.id, stage, tags, params, points, error, run_id)


def clear_message(error: BaseException) -> str | None:
    """A one-line message for failures the user fixes without a traceback: an unwritable folder (named),
    non-finite values (step, loss terms and knob are in the error). None for anything else."""
    if isinstance(error, OSError) and error.errno in (errno.EACCES, errno.EPERM, errno.EROFS) and error.filename:
        target = Path(error.filename)
        folder = target if target.is_dir() and not os.access(target, os.W_OK) else target.parent
        if folder.is_dir() and not os.access(folder, os.W_OK):
            return (f"cannot write {target}: folder {folder} is not writable ({error.strerror}); "
                    f"make it writable (e.g. `chmod -R u+w {folder}`) and run again")
        return f"{error.strerror}: {target}; check its permissions and run again"
    if isinstance(error, FloatingPointError):
        return str(error)
    return None


@contextmanager
def clean_exit() -> Iterator[None]:
    """Turn the failures of ``clear_message`` into ``error: ...`` and exit status 1 (no traceback)."""
    try:
        yield
    except (OSError, FloatingPointError) as exc:
        msg = clear_message(exc)
        if msg is None:
            raise
        raise SystemExit(f"error: {msg}") from exc


@contextmanager
def failed_stage(stage: str, profile: str, name: str, config: dict[str, Any]) -> Iterator[None]:
    """Wrap a stage that is not one experiment (`data@`, `teacher@`, `latency`): when the body raises,
    log a FAILED run ``<stage>@<name>`` with the error, traceback and ``config``, then exit cleanly
    (``clean_exit``) or re-raise."""
    with clean_exit():
        try:
            yield
        except BaseException as exc:
            tags = {"stage": stage, "profile": profile, "git_sha": git_sha(), "torch": torch.__version__,
                    "python": platform.python_version()}
            _log_failure(profile, f"{stage}@{name}", stage, tags, config, [], exc)
            raise


def record_hash(*parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _open_live_run(client: Any, exp: Experiment, train: dict[str, Any]) -> tuple[str | None, int]:
    """(run id, last step it holds) of the experiment's live run still RUNNING: the one train.json names, else
    one found by the experiment id; (None, -1) when there is none (e.g. profiles with ``mlflow_live: false``)."""
    live = train.get("mlflow_live") or {}
    rid = live.get("run_id")
    if rid:
        run = retry(client.get_run, rid)
        if run.info.status == "RUNNING":
            return rid, int(live.get("logged_until", -1))
        return None, -1
    eid = experiment_id(client, exp.profile)
    found = retry(client.search_runs, [eid], max_results=1, order_by=["attributes.start_time DESC"], filter_string=(
        f"tags.experiment = '{exp.id}' and tags.`{LIVE_TAG}` = 'true' and attributes.status = 'RUNNING'"))
    return (found[0].info.run_id, -1) if found else (None, -1)


def sync(experiments: list[Experiment], model_dir: Any, metrics_path: Any, plots_dir: Any) -> tuple[int, int]:
    """Log every experiment whose train record and metrics exist and that MLflow does not hold yet
    (matched by a hash of the record); FAILED results are skipped (their stage logged them). An open live
    run of the experiment is finished with them (only the curve points it lacks are added) instead of a new
    run being made. Returns (logged, already there)."""
    client = tracking_client()
    logged = present = 0
    for exp in experiments:
        mfile = metrics_path(exp.profile, exp.id)
        tfile = model_dir(exp.profile, exp.id) / "train.json"
        if not mfile.is_file():
            continue
        metrics = json.loads(mfile.read_text())
        if metrics.get("status") == "FAILED":  # logged as a FAILED run by the stage that failed
            continue
        train = json.loads(tfile.read_text()) if tfile.is_file() else {}
        digest = record_hash(train, metrics)
        found = retry(client.search_runs, [experiment_id(client, exp.profile)], max_results=1,
                      filter_string=f"tags.`{RECORD_TAG}` = '{digest}' and attributes.status = 'FINISHED'")
        if found:
            present += 1
            continue
        tags = {**train.get("tags", {}), RECORD_TAG: digest, "status": metrics.get("status", "ok"), "phase": "done"}
        if not train:
            tags.update(experiment=exp.id, profile=exp.profile, variant=exp.variant.id)
        flat_metrics = numeric_metrics({"auroc": metrics.get("auroc", {})})  # incl. auroc.per_type.<defect>
        flat_metrics.update({k: v for k, v in (("train.wall_s", train.get("summary", {}).get("wall_s")),
                                                  ("steps", metrics.get("steps"))) if isinstance(v, (int, float))})
        flat_metrics.update({f"score_parts.{part}.{k}": v for part, stats in metrics.get("score_parts", {}).items()
                             for k, v in stats.items()})  # paper B: S_D and eq. 7's teacher / student terms
        run_id, held = _open_live_run(client, exp, train)
        history = [tuple(p) for p in train.get("history", []) if p[1] > held]
        plots = plots_dir(exp.profile, exp.id)
        _log_run(exp.profile, exp.id, tags, train.get("params", {}), history,
                 flat_metrics, sorted(plots.glob("*.png")) if plots.is_dir() else [],
                 {"metrics.json": metrics, "resolved_config.json": train.get("resolved_config", {})}, "FINISHED", run_id)
        logged += 1
    return logged, present
