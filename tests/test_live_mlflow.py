"""Live MLflow: a training shows a RUNNING run with its curve before it ends, `track` finishes that same run; two
processes writing to one fresh SQLite store at once both complete. The store is read with sqlite3 directly."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time

import pytest
import yaml

from adrepro import REPO_ROOT

EXP = "a-t2-e1-mvtec_ad-tiles-s0"


def _query(db, sql: str, *args):
    if not db.is_file():
        return []
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return con.execute(sql, args).fetchall()
    except sqlite3.OperationalError:  # tables not created yet
        return []
    finally:
        con.close()


def _tiny_live_params() -> str:
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    live = params["profiles"]["smoke"]
    live.update(mlflow_live=True, mlflow_every=5, torch_threads=1,
                protocols={"mvtec_ad": {"dataset": "synth_mvtec", "categories": ["tiles"], "seeds": [0],
                                        "variants": {"a-t2-e1": None}}})
    live["methods"]["efficientad"].update(steps=200, checkpoint_every=200)
    params["profiles"] = {"live": live}
    params["profile"] = "live"
    return yaml.safe_dump(params, sort_keys=False)


def test_training_shows_a_running_run_with_its_curve_and_track_finishes_it(tmp_path, project):
    proj = project(tmp_path / "proj", _tiny_live_params())
    db = proj / "mlflow.db"
    env = {**os.environ, "ADREPRO_ROOT": str(proj), "MLFLOW_TRACKING_URI": f"sqlite:///{db}"}

    def adrepro(*args: str) -> None:
        r = subprocess.run(["adrepro", *args], cwd=proj, env=env, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-3000:]

    adrepro("fetch-data", "synth_mvtec")
    adrepro("provision-teacher", "random_pdn_tiny")
    train = subprocess.Popen(["adrepro", "train", EXP], cwd=proj, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    seen = None
    while train.poll() is None:
        rows = _query(db, "SELECT r.run_uuid, r.status, count(m.step), max(m.step) FROM runs r JOIN metrics m "
                          "ON m.run_uuid = r.run_uuid AND m.key = 'train.loss' WHERE r.name = ? GROUP BY r.run_uuid",
                      EXP)
        if rows and rows[0][1] == "RUNNING" and rows[0][2] >= 2 and train.poll() is None:
            seen = rows[0]
            break
        time.sleep(0.1)
    _, err = train.communicate(timeout=300)
    assert train.returncode == 0, err[-3000:]
    assert seen is not None, "no RUNNING run with step-wise train.loss while the training ran"
    run_id, _, _, step = seen
    assert step < 199  # seen mid-training, not after the last step
    assert "live MLflow logging stopped" not in err
    adrepro("evaluate", EXP)
    adrepro("track")
    runs = _query(db, "SELECT run_uuid, status FROM runs WHERE name = ?", EXP)
    assert runs == [(run_id, "FINISHED")]  # the live run was finished, no duplicate made
    steps = [s for (s,) in _query(db, "SELECT step FROM metrics WHERE run_uuid = ? AND key = 'train.loss' "
                                      "ORDER BY step", run_id)]
    assert steps == sorted(set(steps)) and steps[0] == 0 and steps[-1] == 199  # whole curve, each point once
    names = {k for (k,) in _query(db, "SELECT key FROM latest_metrics WHERE run_uuid = ?", run_id)}
    assert {"auroc.image", "auroc.per_type.crack", "auroc.pixel_per_type.stain"} <= names


WRITER = """
import sys
from adrepro.config import load_params
from adrepro.registry import experiments
from adrepro.tracking import LiveRun, _log_run
exp = experiments(load_params(), "smoke")[int(sys.argv[1])]
live = LiveRun(exp, {"experiment": exp.id}, {"cfg": {"k": sys.argv[1]}}, every=1)
for step in range(150):
    live.log_metric("train.loss", 1.0 / (step + 1), step)
rec = live.close()
assert rec["stopped"] is None and rec["logged_until"] == 149, rec
_log_run(exp.profile, exp.id, {"done": "1"}, {}, [], {"auroc.image": 0.5}, [], {}, "FINISHED", rec["run_id"])
"""


def test_two_concurrent_writers_on_a_fresh_sqlite_store(tmp_path):
    db = tmp_path / "mlflow.db"
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{db}"}
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(i)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in (0, 1)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0 and "logging stopped" not in err, err[-3000:]
    runs = _query(db, "SELECT run_uuid, status FROM runs")
    assert len(runs) == 2 and {s for _, s in runs} == {"FINISHED"}
    for run_id, _ in runs:
        assert _query(db, "SELECT count(*) FROM metrics WHERE run_uuid = ? AND key = 'train.loss'", run_id) == [(150,)]
    assert _query(db, "PRAGMA integrity_check") == [("ok",)]


def test_retry_waits_out_a_locked_store_and_gives_up_after_a_bound(monkeypatch):
    from adrepro import tracking

    monkeypatch.setattr(tracking.time, "sleep", lambda s: None)
    calls = []

    def flaky(fail_times: int, message: str):
        calls.append(1)
        if len(calls) <= fail_times:
            raise RuntimeError(message)
        return "ok"

    assert tracking.retry(flaky, 3, "(sqlite3.OperationalError) database is locked") == "ok" and len(calls) == 4
    calls.clear()
    with pytest.raises(RuntimeError, match="locked"):
        tracking.retry(flaky, 99, "database is locked")
    assert len(calls) == tracking.RETRY_ATTEMPTS
    calls.clear()
    with pytest.raises(RuntimeError, match="no such run"):  # not a concurrent writer: raised at once
        tracking.retry(flaky, 1, "no such run")
    assert len(calls) == 1
