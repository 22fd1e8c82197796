"""End to end on a real (tiny) project: `dvc repro` -> metrics, MLflow run, report; a second repro does
nothing; disabling a real component makes the regression gate fail."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess

import pytest
import yaml

from adrepro import REPO_ROOT

EXP = "a-t2-e1-loco-breakfast_tray-s0"


def _run(cmd: list[str], cwd, check: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(ADREPRO_ROOT=str(cwd), DVC_NO_ANALYTICS="1")
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.mark.slow
def test_repro_tracks_reports_is_idempotent_and_gate_catches_a_real_regression(tmp_path, project):
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["profiles"]["smoke"]["variants"] = ["a-t2-e1"]
    proj = project(tmp_path / "proj", yaml.safe_dump(params, sort_keys=False, allow_unicode=True))
    _run(["dvc", "init", "-q"], proj)
    _run(["dvc", "config", "core.analytics", "false"], proj)

    _run(["dvc", "repro"], proj)
    metrics = json.loads((proj / "results" / "smoke" / EXP / "metrics.json").read_text())
    assert metrics["status"] == "ok"
    assert 0.0 <= metrics["auroc"]["logical"] <= 1.0 and 0.0 <= metrics["auroc"]["structural"] <= 1.0
    assert metrics["teacher"]["paper_teacher"] is False
    latency = json.loads((proj / "results" / "smoke" / "latency.json").read_text())
    assert latency[EXP]["latency_ms"] > 0 and latency[EXP]["dtype"] == "fp32"
    assert EXP in (proj / "reports" / "paper_a.md").read_text()

    db = sqlite3.connect(proj / "mlflow.db")
    runs = db.execute("select run_uuid, status from runs").fetchall()
    assert [s for _, s in runs] == ["FINISHED"]
    tags = dict(db.execute("select key, value from tags where run_uuid = ?", (runs[0][0],)).fetchall())
    for key in ("git_sha", "profile", "dataset", "category", "seed", "teacher.source", "teacher.paper_teacher",
                "device", "torch"):
        assert key in tags, key
    assert tags["experiment"] == EXP

    again = _run(["dvc", "repro"], proj)
    assert "Running stage" not in again.stdout, again.stdout

    _run(["adrepro", "gate", "--update"], proj)
    assert _run(["adrepro", "gate"], proj).returncode == 0

    # a real component off: the student-teacher hard loss -> the affected experiment reruns and regresses
    params["profiles"]["smoke"]["methods"]["efficientad"]["disable"] = ["student_training"]
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False, allow_unicode=True))
    out = _run(["dvc", "repro"], proj).stdout
    assert f"train@{EXP}" in out
    gate = _run(["adrepro", "gate"], proj, check=False)
    assert gate.returncode == 1, gate.stdout
    assert "REGRESSION" in gate.stdout
