"""Issue 12's configuration probes, run as a careless user would: the real `adrepro` command in a throw-away project.

Each bad params.yaml must stop `adrepro list` and the first stage (`adrepro fetch-data`) before any work, with exit
status 2, a message naming the key path and params.yaml, and no file created or changed in the project.
"""

from __future__ import annotations

import copy
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from adrepro import REPO_ROOT

BASE = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())


def _smoke(p: dict) -> dict:
    return p["profiles"]["smoke"]


# (probe id, edit of a copy of params.yaml, key path the message must name, a word it must contain)
PROBES = [
    ("lrr", lambda p: _smoke(p)["methods"]["fcd_vit"].update(lrr=0.1),
     "profiles.smoke.methods.fcd_vit.lrr", "did you mean 'lr'"),
    ("warmup_step", lambda p: _smoke(p)["methods"]["kd_cnn"].update(warmup_step=3),
     "profiles.smoke.methods.kd_cnn.warmup_step", "did you mean 'warmup_steps'"),
    ("variant", lambda p: _smoke(p).update(variant=["a-t2-e1"]),
     "profiles.smoke.variant", "did you mean 'variants'"),
    ("allow_downlaod", lambda p: p.update(datasets={"allow_downlaod": False}),
     "datasets.allow_downlaod", "did you mean 'allow_download'"),
    ("categories-string", lambda p: _smoke(p)["protocols"]["mvtec_ad"].update(categories="tiles"),
     "profiles.smoke.protocols.mvtec_ad.categories", "must be a list"),
    ("seeds-int", lambda p: _smoke(p)["protocols"]["mvtec_ad"].update(seeds=3),
     "profiles.smoke.protocols.mvtec_ad.seeds", "must be a list"),
    ("lr-fast", lambda p: _smoke(p)["methods"]["fcd_vit"].update(lr="fast"),
     "profiles.smoke.methods.fcd_vit.lr", "'fast'"),
    ("steps-0", lambda p: _smoke(p)["methods"]["efficientad"].update(steps=0),
     "profiles.smoke.methods.efficientad.steps", "greater than or equal to 1"),
    ("image-size-16", lambda p: _smoke(p)["methods"]["efficientad"].update(image_size=16),
     "profiles.smoke.methods.efficientad.image_size", ">= 32"),
    ("method-key-top-level", lambda p: p["methods"]["efficientad"].update(lr_decay=0.9),
     "methods.efficientad.lr_decay", "did you mean 'lr_decay_at'"),
    ("profile-typo", lambda p: p.update(profile="smok"), "profile", "did you mean 'smoke'"),
    ("option-value-typo", lambda p: p["methods"]["efficientad"].update(sampling="shufle"),
     "methods.efficientad.sampling", "did you mean 'shuffle'"),
    ("option-value-unknown", lambda p: p["methods"]["fcd_vit"].update(gram_mode="gramian"),
     "methods.fcd_vit.gram_mode", "'channel' or 'token'"),
]


def _env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(ADREPRO_ROOT=str(root), DVC_NO_ANALYTICS="1", MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlflow.db'}")
    return env


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` (git internals aside) with the hash of its bytes."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and ".git" not in p.relative_to(root).parts}


def conftest_module():
    """tests/conftest.py as pytest loaded it (importlib mode: not importable by name)."""
    here = str(Path(__file__).with_name("conftest.py"))
    return next(m for m in list(sys.modules.values()) if getattr(m, "__file__", None) == here)


@pytest.fixture(scope="module")
def proj(tmp_path_factory):
    return conftest_module().make_project(tmp_path_factory.mktemp("probes") / "proj")


@pytest.mark.parametrize("probe,edit,key,word", PROBES, ids=[p[0] for p in PROBES])
def test_bad_params_stop_list_and_first_stage_naming_the_key(proj, probe, edit, key, word):
    params = copy.deepcopy(BASE)
    edit(params)
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False, allow_unicode=True))
    before = snapshot(proj)
    for cmd in (["adrepro", "list"], ["adrepro", "fetch-data", "synth_mvtec"]):
        r = subprocess.run(cmd, cwd=proj, env=_env(proj), capture_output=True, text=True)
        assert r.returncode == 2, (cmd, r.returncode, r.stdout, r.stderr)
        assert "Traceback" not in r.stderr, r.stderr
        line = next((ln for ln in r.stderr.splitlines() if f"params.yaml: {key}:" in ln), None)
        assert line is not None, f"no line naming params.yaml: {key}:\n{r.stderr}"
        assert word in line, line
        assert snapshot(proj) == before, f"{' '.join(cmd)} changed files in the project"
    assert not (proj / "data").exists()


def test_every_error_is_reported_at_once(proj):
    params = copy.deepcopy(BASE)
    _smoke(params)["methods"]["fcd_vit"].update(lrr=0.1)
    _smoke(params)["protocols"]["mvtec_ad"].update(seeds=3)
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False, allow_unicode=True))
    r = subprocess.run(["adrepro", "list"], cwd=proj, env=_env(proj), capture_output=True, text=True)
    assert r.returncode == 2 and "2 invalid parameter(s)" in r.stderr, r.stderr
    assert "fcd_vit.lrr" in r.stderr and "mvtec_ad.seeds" in r.stderr


def test_a_user_profile_is_valid_and_switchable(proj):
    params = copy.deepcopy(BASE)
    params["profiles"]["mine"] = copy.deepcopy(_smoke(params))
    params["profiles"]["mine"]["variants"] = ["a-t2-e1"]
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False, allow_unicode=True))
    r = subprocess.run(["adrepro", "list", "--profile", "mine"], cwd=proj, env=_env(proj), capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() and r.stdout.split()[0] == "a-t2-e1-loco-breakfast_tray-s0"
    bad = subprocess.run(["adrepro", "profile", "mnie"], cwd=proj, env=_env(proj), capture_output=True, text=True)
    assert bad.returncode == 2 and "did you mean 'mine'" in bad.stderr, bad.stderr
    assert yaml.safe_load((proj / "params.yaml").read_text())["profile"] == "smoke"  # left as it was
