"""params.yaml schema (adrepro/schema.py), CUDA honesty, determinism record, penalty-image refusal, docs/params.md."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from adrepro import REPO_ROOT
from adrepro.config import ConfigError, check_device, determinism_mode, load_params, validate
from adrepro.schema import schema_errors

BASE = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())


def _errors(edit) -> list[str]:
    params = copy.deepcopy(BASE)
    edit(params)
    return schema_errors(params)


def test_committed_params_yaml_is_valid():
    assert schema_errors(copy.deepcopy(BASE)) == []


def test_method_keys_come_from_the_family_defaults_dict_at_run_time(monkeypatch):
    from adrepro.methods.kd_cnn import method as kd

    edit = lambda p: p["methods"]["kd_cnn"].update(new_knob=3)  # noqa: E731
    assert any("methods.kd_cnn.new_knob: unknown key" in e for e in _errors(edit))
    monkeypatch.setitem(kd.DEFAULTS, "new_knob", 1)  # a key another engineer adds: accepted, typed by its default
    assert _errors(edit) == []
    assert _errors(lambda p: p["methods"]["kd_cnn"].update(new_knob="x")) == [
        "methods.kd_cnn.new_knob: input should be a valid integer, got 'x'"]


@pytest.mark.parametrize("key,value,expect", [
    ("crm_residual", 1, "input should be a valid boolean"),        # bool default: 1 is not true
    ("srm_pool", 4.0, "input should be a valid integer"),          # int default: no silent float
    ("lr", True, "input should be a valid number"),                # float default: a bool is not a number
    ("disable", "student_training", "must be a list"),             # list default: a string is not a list
    ("q_b", 1.5, "less than 1"),                                    # range
    ("lr", 1e-3, None),                                             # ok
])
def test_types_follow_the_defaults(key, value, expect):
    errors = _errors(lambda p: p["methods"]["efficientad"].update({key: value}))
    if expect is None:
        assert errors == []
    else:
        assert len(errors) == 1 and errors[0].startswith(f"methods.efficientad.{key}: ") and expect in errors[0], errors


def test_cross_section_names_and_merged_method_sections():
    errs = _errors(lambda p: p["profiles"]["smoke"]["teachers"].update(vit="random_vit_tiyn"))
    assert errs == ["profiles.smoke.teachers.vit: unknown teacher id 'random_vit_tiyn' (did you mean 'random_vit_tiny'?)"]
    errs = _errors(lambda p: p["profiles"]["smoke"]["methods"]["kd_cnn"].pop("steps"))
    assert errs == ["profiles.smoke.methods.kd_cnn.steps: missing key (not in methods.kd_cnn either)"]
    errs = _errors(lambda p: p["profiles"]["smoke"].pop("penalty_images"))
    assert errs and errs[0].startswith("profiles.smoke.penalty_images: missing key (the profile runs efficientad)")
    # random_vit_tiny has 8-px patches: 36 px would silently drop a border of 4 px
    errs = _errors(lambda p: p["profiles"]["smoke"]["methods"]["fcd_vit"].update(image_size=36))
    assert errs == ["profiles.smoke.methods.fcd_vit.image_size: must be a multiple of the ViT teacher's patch size 8 "
                    "(random_vit_tiny), got 36"]
    assert _errors(lambda p: p["profiles"]["smoke"]["methods"]["fcd_vit"].update(image_size=40)) == []


def test_validate_names_the_file_and_lists_every_problem(tmp_path):
    params = copy.deepcopy(BASE)
    params["gate"]["tolerance"] = 1.5
    params["paths"]["imagenett"] = "x"
    with pytest.raises(ConfigError) as err:
        validate(params, tmp_path / "params.yaml")
    text = str(err.value)
    assert text.startswith(f"{tmp_path / 'params.yaml'}: 2 invalid parameter(s)")
    assert "params.yaml: gate.tolerance: input should be less than 1, got 1.5" in text
    assert "params.yaml: paths.imagenett: unknown key (did you mean 'imagenet'?)" in text
    path = tmp_path / "p.yaml"
    path.write_text("profile: [")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(path)


def test_cuda_profile_without_cuda_is_an_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"profiles\.paper\.device is 'cuda' but CUDA is not available"):
        check_device("cuda", "profiles.paper.device")
    check_device("cpu", "profiles.smoke.device")  # no error


def test_determinism_mode_records_the_switches_and_the_cpu_only_guarantee():
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    try:
        torch.use_deterministic_algorithms(True, warn_only=True)  # as adrepro.training.seed_everything does
        cpu, cuda = determinism_mode("cpu"), determinism_mode("cuda")
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
    assert cpu["deterministic_algorithms"] is True and cpu["warn_only"] is True
    assert cpu["bit_identical_resume"].startswith("guaranteed")
    assert cuda["bit_identical_resume"].startswith("not guaranteed") and cuda["device"] == "cuda"


def test_train_stage_params_include_paths_and_penalty_images():
    from adrepro import dvcgen

    stages = yaml.safe_load(dvcgen.render(load_params()))["stages"]
    train = stages["train"]["do"]["params"]
    assert "paths" in train and "profiles.smoke.penalty_images" in train


def test_params_doc_is_up_to_date():
    from adrepro.paramsdoc import DOC_FILE, render

    assert DOC_FILE.read_text() == render(), "docs/params.md is stale: run `adrepro params-doc`"


def test_every_key_of_params_yaml_is_documented():
    doc = (REPO_ROOT / "docs" / "params.md").read_text()

    def keys(node, depth=0):
        if isinstance(node, dict):
            for k, v in node.items():
                yield str(k)
                if depth < 1 or not isinstance(v, dict) or k not in ("profiles", "teachers", "protocols", "sources",
                                                                        "teacher_files", "resources"):
                    yield from keys(v, depth + 1)

    missing = sorted({k for k in keys(BASE) if not any(f"{a}{k}{b}" in doc for a in "`." for b in "`.")}
                     - set(BASE["profiles"]) - {"loco", "mvtec_ad", "cifar10", "cifar100", "fmnist"}
                     - {"pdn", "pdn_m", "vit", "vgg16", "resnet18", "default", "train", "num_cpus", "num_gpus"})
    assert not missing, f"keys of params.yaml missing from docs/params.md: {missing}"


# ------------------------------------------------------------------ penalty images (issue 9, item 3)
def _env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(ADREPRO_ROOT=str(root), DVC_NO_ANALYTICS="1", MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlflow.db'}")
    return env


def _run(cmd: list[str], root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=root, env=_env(root), capture_output=True, text=True)


EXP = "a-t2-e1-loco-breakfast_tray-s0"


@pytest.mark.slow
def test_penalty_images_refused_when_missing_and_explicit_none_is_flagged(tmp_path, project):
    params = copy.deepcopy(BASE)
    smoke = params["profiles"]["smoke"]
    smoke.update(variants=["a-t2-e1"], penalty_images="imagenet")
    smoke["protocols"] = {"loco": smoke["protocols"]["loco"]}
    smoke["methods"]["efficientad"].update(steps=2, image_size=32, checkpoint_every=1)
    params["paths"]["imagenet"] = None
    proj = project(tmp_path / "proj", yaml.safe_dump(params, sort_keys=False, allow_unicode=True))
    for cmd in (["adrepro", "fetch-data", "synth_loco"], ["adrepro", "provision-teacher", "random_pdn_tiny"]):
        assert _run(cmd, proj).returncode == 0
    before = sorted(p for p in proj.rglob("*") if ".git" not in p.parts)
    r = _run(["adrepro", "train", EXP], proj)
    assert r.returncode == 2, r.stderr
    assert "profiles.smoke.penalty_images is 'imagenet'" in r.stderr and "paths.imagenet" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert sorted(p for p in proj.rglob("*") if ".git" not in p.parts) == before  # nothing written

    smoke["penalty_images"] = "none"
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False, allow_unicode=True))
    for cmd in (["adrepro", "train", EXP], ["adrepro", "evaluate", EXP]):
        r = _run(cmd, proj)
        assert r.returncode == 0, r.stderr
    summary = json.loads((proj / "models" / "smoke" / EXP / "train.json").read_text())["summary"]
    metrics = json.loads((proj / "results" / "smoke" / EXP / "metrics.json").read_text())
    assert summary["penalty"] == metrics["train"]["penalty"] == "none (explicit)"
    assert metrics["determinism"] == summary["determinism"]
    assert metrics["determinism"]["device"] == "cpu" and metrics["determinism"]["deterministic_algorithms"] is True


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_profile_stage_fails_without_cuda(tmp_path, project):
    params = copy.deepcopy(BASE)
    params["profiles"]["smoke"]["device"] = "cuda"
    proj = project(tmp_path / "proj", yaml.safe_dump(params, sort_keys=False, allow_unicode=True))
    r = _run([sys.executable, "-m", "adrepro.cli", "train", EXP], proj)
    assert r.returncode == 2 and "profiles.smoke.device is 'cuda' but CUDA is not available" in r.stderr, r.stderr
    assert not (proj / "models").exists() and not (proj / "results").exists()
