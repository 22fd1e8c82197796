"""Committed numbers come from committed code: `adrepro check-lock` (before `dvc repro`) and `adrepro check-results`
(after it), on a throw-away project copy whose dvc.lock DVC itself wrote."""

from __future__ import annotations

import contextlib
import copy
import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from adrepro import REPO_ROOT

STAGE = "data@synth_loco"


@contextlib.contextmanager
def _rewritten(path: Path, text: str):
    """``path`` holds ``text`` inside the block and its original content again after it."""
    original = path.read_text()
    path.write_text(text)
    try:
        yield
    finally:
        path.write_text(original)


def _run(cmd: list[str], root: Path, check: bool = False) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(ADREPRO_ROOT=str(root), DVC_NO_ANALYTICS="1", MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlflow.db'}")
    r = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    if check and r.returncode:
        raise AssertionError(f"{' '.join(cmd)}: {r.returncode}\n{r.stdout}\n{r.stderr}")
    return r


@pytest.fixture(scope="module")
def proj(tmp_path_factory):
    import sys

    here = str(Path(__file__).with_name("conftest.py"))
    conftest = next(m for m in list(sys.modules.values()) if getattr(m, "__file__", None) == here)
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    smoke = params["profiles"]["smoke"]
    smoke["variants"] = ["a-t2-e1"]
    smoke["protocols"] = {"loco": smoke["protocols"]["loco"]}
    root = conftest.make_project(tmp_path_factory.mktemp("lock") / "proj",
                                 yaml.safe_dump(params, sort_keys=False, allow_unicode=True))
    _run(["dvc", "init", "-q"], root, check=True)
    _run(["dvc", "repro", "-s", STAGE], root, check=True)  # DVC writes the lock entry (md5s, params)
    assert STAGE in yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    return root


def test_lock_written_by_dvc_is_current(proj):
    r = _run(["adrepro", "check-lock", STAGE], proj)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "dvc.lock matches" in r.stdout


def test_missing_outputs_are_not_staleness(proj, tmp_path):
    """A clean clone has no data or cache: deleted outputs alone never fail the check."""
    data = proj / "data" / "synth_loco"
    moved = tmp_path / "synth_loco"
    data.rename(moved)
    try:
        assert _run(["adrepro", "check-lock", STAGE], proj).returncode == 0
    finally:
        moved.rename(data)


def test_edited_code_dependency_names_stage_and_file(proj):
    f = proj / "datasets" / "synth.py"
    with _rewritten(f, f.read_text() + "\n# an edit after the lock was written\n"):
        r = _run(["adrepro", "check-lock"], proj)
    assert r.returncode == 1
    assert f"STALE {STAGE}: dependency datasets: modified" in r.stdout, r.stdout
    assert "not produced by this code" in r.stderr


def test_stale_lock_entry_names_the_dependency(proj):
    lock_file = proj / "dvc.lock"
    lock = yaml.safe_load(lock_file.read_text())
    dep = next(d for d in lock["stages"][STAGE]["deps"] if d["path"] == "pipelines/fetch_data.py")
    dep["md5"] = "0" * 32  # a lock committed from other code
    with _rewritten(lock_file, yaml.safe_dump(lock, sort_keys=False)):
        r = _run(["adrepro", "check-lock", STAGE], proj)
    assert r.returncode == 1 and "dependency pipelines/fetch_data.py: modified" in r.stdout, r.stdout


def test_changed_param_and_never_run_stage(proj):
    pfile = proj / "params.yaml"
    params = yaml.safe_load(pfile.read_text())
    params["paths"]["shared_data"] = "../elsewhere"
    with _rewritten(pfile, yaml.safe_dump(params, sort_keys=False, allow_unicode=True)):
        r = _run(["adrepro", "check-lock"], proj)
    assert r.returncode == 1
    assert f"STALE {STAGE}: parameter paths (params.yaml): modified" in r.stdout, r.stdout
    assert "STALE train@a-t2-e1-loco-breakfast_tray-s0: not in dvc.lock (never run with this code)\n" in r.stdout


def test_check_results_compares_regenerated_aurocs_with_the_commit(proj):
    exp = proj / "results" / "smoke" / "a-x-s0"
    exp.mkdir(parents=True)
    committed = {"experiment": "a-x-s0", "status": "ok", "git_sha": "abc",
                 "auroc": {"image": 0.8125, "logical": 0.75, "structural": 0.875, "pixel": None}}
    (exp / "metrics.json").write_text(json.dumps(committed))
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    _run([*git, "add", "results"], proj, check=True)
    _run([*git, "commit", "-q", "-m", "results"], proj, check=True)

    regenerated = copy.deepcopy(committed)
    regenerated["git_sha"] = "def"  # provenance may differ; the numbers may not
    (exp / "metrics.json").write_text(json.dumps(regenerated))
    r = _run(["adrepro", "check-results"], proj)
    assert r.returncode == 0, r.stdout + r.stderr

    regenerated["auroc"]["logical"] = 0.75 + 1e-12  # equality is exact: the pipeline is deterministic
    (exp / "metrics.json").write_text(json.dumps(regenerated))
    r = _run(["adrepro", "check-results"], proj)
    assert r.returncode == 1 and "DIFFERS a-x-s0" in r.stdout, r.stdout

    (exp / "metrics.json").unlink()
    r = _run(["adrepro", "check-results"], proj)
    assert r.returncode == 1 and "a-x-s0: committed at HEAD but not produced now" in r.stdout, r.stdout
