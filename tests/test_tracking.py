"""MLflow: a failing stage leaves a FAILED run with its tags; `sync` logs each finished experiment once."""

import json
from pathlib import Path
from unittest import mock

import mlflow
import pytest

from adrepro.config import load_params
from adrepro.registry import experiments
from adrepro.results import write_json
from adrepro.tracking import History, log_failed, run_tags, sync


def test_failed_stage_is_logged_as_failed_with_its_tags(mlflow_tmp):
    exp = experiments(load_params(), "smoke")[0]
    history = History()
    history.log_metric("train/loss", 1.5, 0)
    log_failed(exp, "train", run_tags(exp, {"id": "t", "paper_teacher": False}, "cpu"), {"cfg": {"lr": 1e-4}},
               history, RuntimeError("disk full"))
    runs = mlflow.search_runs(experiment_names=[f"adrepro-{exp.profile}"], output_format="list")
    assert len(runs) == 1 and runs[0].info.status == "FAILED"
    assert runs[0].data.tags["experiment"] == exp.id and runs[0].data.tags["failed_stage"] == "train"
    assert runs[0].data.params["cfg.lr"] == "0.0001" and runs[0].data.metrics["train.loss"] == 1.5


def test_sync_logs_finished_experiments_once(mlflow_tmp, tmp_path):
    exp = experiments(load_params(), "smoke")[0]
    mdir, rdir = tmp_path / "models", tmp_path / "results"
    write_json(mdir / exp.id / "train.json", {"params": {"cfg": {"steps": 3}}, "tags": {"experiment": exp.id},
                                              "history": [["train.loss", 0, 2.0], ["train.loss", 1, 1.0]]})
    write_json(rdir / exp.id / "metrics.json", {"status": "ok", "auroc": {"image": 0.75, "pixel": None}, "steps": 3})
    args = ([exp], lambda p, e: mdir / e, lambda p, e: rdir / e / "metrics.json", lambda p, e: tmp_path / "plots" / e)
    assert sync(*args) == (1, 0)
    assert sync(*args) == (0, 1)
    run = mlflow.search_runs(experiment_names=[f"adrepro-{exp.profile}"], output_format="list")[0]
    assert run.info.status == "FINISHED" and run.data.metrics["auroc.image"] == 0.75
    assert json.loads(json.dumps(run.data.params)) == {"cfg.steps": "3"}


def test_failed_stage_logs_a_failed_run_with_config_and_exits_cleanly_on_a_read_only_folder(mlflow_tmp, tmp_path):
    from adrepro.tracking import failed_stage

    folder = tmp_path / "results"
    folder.mkdir(mode=0o555)
    err = PermissionError(13, "Permission denied", str(folder / "latency.json.tmp"))
    with mock.patch("os.access", lambda path, mode: Path(path) != folder):  # root may write anyway
        with pytest.raises(SystemExit) as e, failed_stage("latency", "smoke", "smoke", {"latency": {"iters": 3}}):
            raise err
    assert str(e.value).startswith(f"error: cannot write {folder / 'latency.json.tmp'}: folder {folder} is not writable")
    run = mlflow.search_runs(experiment_names=["adrepro-smoke"], output_format="list")[0]
    assert run.info.status == "FAILED" and run.info.run_name == "latency@smoke"
    assert run.data.tags["failed_stage"] == "latency" and run.data.params["latency.iters"] == "3"


def test_failed_stage_reraises_other_errors_unchanged(mlflow_tmp):
    from adrepro.tracking import failed_stage

    with pytest.raises(KeyError), failed_stage("data", "smoke", "mvtec_ad", {}):
        raise KeyError("x")
    assert mlflow.search_runs(experiment_names=["adrepro-smoke"], output_format="list")[0].info.status == "FAILED"


def test_sync_skips_failed_results(mlflow_tmp, tmp_path):
    exp = experiments(load_params(), "smoke")[0]
    write_json(tmp_path / "results" / exp.id / "metrics.json", {"status": "FAILED", "auroc": {}})
    assert sync([exp], lambda p, e: tmp_path / e, lambda p, e: tmp_path / "results" / e / "metrics.json",
                lambda p, e: tmp_path / e) == (0, 0)


def test_track_logs_other_profiles_committed_results(monkeypatch, tmp_path):
    """A fresh clone has committed results of other profiles (e.g. results/cpu/) but no models: `track` logs them
    too, after the active profile's."""
    from adrepro import results as results_mod
    from adrepro.pipelines import track

    (tmp_path / "cpu").mkdir()
    monkeypatch.setattr(track, "RESULTS_DIR", tmp_path)
    monkeypatch.setattr(track, "check_dvc_profile", lambda params: None)
    seen = []
    monkeypatch.setattr(track, "sync", lambda exps, *a: seen.append({e.profile for e in exps}) or (len(exps), 0))
    track.main(None)
    assert seen == [{load_params()["profile"]}, {"cpu"}]  # profiles without results/<p>/ (paper, offline): none
    assert results_mod.RESULTS_DIR != tmp_path  # only the stage's view was redirected
