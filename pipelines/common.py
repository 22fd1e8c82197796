"""Shared plumbing of the stage scripts: experiment lookup, paths, teachers and data for one experiment."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from adrepro import REPO_ROOT
from adrepro.config import ConfigError, load_params, profile_config, resolve_path
from adrepro.methods.base import Teacher
from adrepro.registry import Experiment, get_experiment

MODELS_DIR = REPO_ROOT / "models"
SCRATCH_DIR = REPO_ROOT / ".adrepro" / "ckpt"


def model_dir(profile: str, exp_id: str) -> Path:
    return MODELS_DIR / profile / exp_id


def plots_dir(profile: str, exp_id: str) -> Path:
    return REPO_ROOT / "plots" / profile / exp_id


def scratch_dir(profile: str, exp_id: str) -> Path:
    return SCRATCH_DIR / profile / exp_id


def teacher_file(params: dict[str, Any], profile: str, teacher_id: str) -> Path:
    return resolve_path(params["paths"]["teachers_root"]) / profile / f"{teacher_id}.pt"


def check_dvc_profile(params: dict[str, Any]) -> None:
    """dvc.yaml is generated for one profile; refuse to mix (e.g. after `dvc exp run -S profile=...`)."""
    dvc_yaml = REPO_ROOT / "dvc.yaml"
    if not dvc_yaml.is_file():
        return
    first = dvc_yaml.read_text().splitlines()[:3]
    tag = next((ln.split(":", 1)[1].strip() for ln in first if ln.startswith("# profile:")), None)
    if tag and tag != params["profile"]:
        raise ConfigError(f"dvc.yaml was generated for profile '{tag}' but params.yaml says profile "
                          f"'{params['profile']}': run `adrepro profile {params['profile']}` first")


def load_experiment(exp_id: str) -> tuple[dict[str, Any], Experiment, dict[str, Any]]:
    params = load_params()
    check_dvc_profile(params)
    exp = get_experiment(exp_id, params)
    return params, exp, exp.method_config(params)


def load_teacher(params: dict[str, Any], exp: Experiment) -> Teacher | None:
    if exp.teacher_id is None:
        return None
    path = teacher_file(params, exp.profile, exp.teacher_id)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: teacher '{exp.teacher_id}' not provisioned; run `dvc repro` "
                                f"(stage teacher@{exp.teacher_id}) or `adrepro provision-teacher {exp.teacher_id}`")
    from adrepro.methods.teachers import read_teacher_file

    # refuses a corrupt file or weights edited since provisioning (state_sha256), naming the file and both hashes
    prov = read_teacher_file(path)["provenance"]
    return Teacher(exp.teacher_id, path, prov)


def not_runnable_reason(exp: Experiment) -> str | None:
    if exp.teacher_id is None:
        return f"not runnable here (no {exp.variant.teacher_role} teacher in profile '{exp.profile}'" + (
            ": no ImageNet ViT offline)" if exp.variant.teacher_role == "vit" else ")")
    return None


def profile_of(params: dict[str, Any], exp: Experiment) -> dict[str, Any]:
    return profile_config(params, exp.profile)
