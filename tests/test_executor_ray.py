"""The Ray executor end to end on a local 2-CPU Ray instance: the same results as `dvc repro`, two trainings at
once, DVC up to date afterwards, MLflow runs; a killed worker's task is retried and resumes from its checkpoint."""

from __future__ import annotations

import gzip
import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.ray, pytest.mark.slow]

from adrepro import REPO_ROOT
from adrepro.executor import RUN_DIR



@pytest.fixture(autouse=True)
def _needs_ray():
    """Skipped inside the test (not at collection), so ADREPRO_REQUIRE_EXTRAS=1 turns a missing Ray into a failure."""
    pytest.importorskip("ray", reason="pip install -e '.[ray]'")

VARIANTS = ["a-t2-e1", "a-t2-e2", "a-t2-e4"]


def _sh(cmd: list[str], cwd: Path, check: bool = True, **kw) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(ADREPRO_ROOT=str(cwd), DVC_NO_ANALYTICS="1", RAY_USAGE_STATS_ENABLED="0")
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def _params(variants: list[str], **efficientad: int) -> str:
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    prof = params["profiles"]["smoke"]
    prof["variants"] = variants
    prof["protocols"] = {"loco": prof["protocols"]["loco"]}
    prof["methods"]["efficientad"].update(efficientad)
    params["run"]["ray"].update(num_cpus=2, resources={"default": {"num_cpus": 1}, "train": {"num_cpus": 1}})
    return yaml.safe_dump(params, sort_keys=False, allow_unicode=True)


def _dvc_project(project, dest: Path, text: str) -> Path:
    proj = project(dest, text)
    _sh(["dvc", "init", "-q"], proj)
    _sh(["dvc", "config", "core.analytics", "false"], proj)
    return proj


def _results(proj: Path) -> dict[str, tuple]:
    out = {}
    for m in sorted((proj / "results" / "smoke").glob("*/metrics.json")):
        data = json.loads(m.read_text())
        scores = m.parent / "scores.csv.gz"
        out[m.parent.name] = (data["status"], data["auroc"], gzip.decompress(scores.read_bytes()) if scores.is_file() else None)
    return out


def test_ray_runs_the_matrix_like_dvc_repro(tmp_path, project):
    text = _params(VARIANTS)
    ref = _dvc_project(project, tmp_path / "ref", text)
    _sh(["dvc", "repro"], ref)
    proj = _dvc_project(project, tmp_path / "ray", text)
    out = _sh(["adrepro", "run", "--executor", "ray"], proj, timeout=900)
    assert "failed 0" in out.stderr

    assert _results(proj) == _results(ref) and len(_results(proj)) == 3
    stages = json.loads((proj / RUN_DIR / "summary.json").read_text())["stages"]
    trains = sorted((s["started"], s["ended"]) for n, s in stages.items() if n.startswith("train@"))
    assert len(trains) == 3 and any(b[0] < a[1] for a, b in zip(trains, trains[1:])), trains  # two at once
    assert all(s["status"] == "done" for s in stages.values())
    again = _sh(["dvc", "repro"], proj)
    assert "Running stage" not in again.stdout, again.stdout
    runs = sqlite3.connect(proj / "mlflow.db").execute("select status from runs").fetchall()
    assert [s for (s,) in runs] == ["FINISHED"] * 3


def test_ray_retries_a_killed_worker_and_the_training_resumes(tmp_path, project):
    exp = "a-t2-e1-loco-breakfast_tray-s0"
    text = _params(["a-t2-e1"], steps=400, checkpoint_every=20)
    proj = _dvc_project(project, tmp_path / "ray", text)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(ADREPRO_ROOT=str(proj), DVC_NO_ANALYTICS="1", RAY_USAGE_STATS_ENABLED="0")
    driver = subprocess.Popen(["adrepro", "run", "--executor", "ray"], cwd=proj, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ckpt = proj / ".adrepro" / "ckpt" / "smoke" / exp / "last.pt"
    worker_file = proj / RUN_DIR / f"train@{exp}.worker"
    deadline = time.monotonic() + 600
    while not (ckpt.is_file() and worker_file.is_file()) and time.monotonic() < deadline and driver.poll() is None:
        time.sleep(0.2)
    assert ckpt.is_file(), driver.communicate()[0][-3000:]
    os.kill(int(worker_file.read_text()), signal.SIGKILL)
    log, _ = driver.communicate(timeout=900)
    assert driver.returncode == 0, log[-3000:]
    stage_log = (proj / RUN_DIR / "logs" / f"train@{exp}.log").read_text()
    resumed = [int(line.split("resuming from step ")[1].split("/")[0]) for line in stage_log.splitlines()
               if "resuming from step" in line]
    assert resumed and resumed[-1] > 0, stage_log[-2000:]
    assert stage_log.count("\n=== ") == 2  # the task ran twice: killed, retried by Ray

    ref = _dvc_project(project, tmp_path / "ref", text)
    _sh(["dvc", "repro"], ref)
    assert _results(proj) == _results(ref)
