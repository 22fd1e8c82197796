"""params.yaml loading and validation against adrepro/schema.py (bad input names the file and key, exits non-zero)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from . import REPO_ROOT

PARAMS_FILE = REPO_ROOT / "params.yaml"


class ConfigError(ValueError):
    """A parameter is missing or invalid; the message names the file and the key."""


def load_params(path: Path | str | None = None) -> dict[str, Any]:
    path = Path(path) if path else PARAMS_FILE
    if not path.is_file():
        raise ConfigError(f"{path}: parameters file not found")
    try:
        params = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    validate(params, path)
    return params


def validate(params: Any, path: Path = PARAMS_FILE) -> None:
    """Check the whole file against adrepro/schema.py; one ConfigError listing every problem by key path."""
    from .schema import schema_errors

    problems = schema_errors(params)
    if problems:
        lines = "\n".join(f"  {path.name}: {p}" for p in problems)
        raise ConfigError(f"{path}: {len(problems)} invalid parameter(s):\n{lines}")


def check_device(device: str, where: str) -> None:
    """``device: cuda`` where CUDA is absent is an error, never a silent CPU run."""
    import torch

    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"{PARAMS_FILE}: {where} is '{device}' but CUDA is not available here (torch "
                          f"{torch.__version__}, CUDA build {torch.version.cuda}); set it to 'cpu' or run on a GPU")


def determinism_mode(device: str) -> dict[str, Any]:
    """What a result's bit-identity rests on: torch's deterministic-algorithms switch (warn-only, so CUDA ops
    without a deterministic kernel still run) and whether a killed-and-resumed run is bit-identical (CPU only)."""
    import torch

    cpu = not str(device).startswith("cuda")
    return {"device": str(device), "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
            "warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
            "bit_identical_resume": "guaranteed (CPU)" if cpu else "not guaranteed (CUDA: nondeterministic kernels warn only)"}


def profile_config(params: dict[str, Any], profile: str | None = None) -> dict[str, Any]:
    profile = profile or params["profile"]
    if profile not in params["profiles"]:
        raise ConfigError(f"{PARAMS_FILE}: profile '{profile}' is not defined (known: {sorted(params['profiles'])})")
    return copy.deepcopy(params["profiles"][profile])


def resolve_path(value: str | None) -> Path | None:
    """Paths in params.yaml are relative to the repository root."""
    if value is None:
        return None
    p = Path(value).expanduser()
    return p if p.is_absolute() else (REPO_ROOT / p).resolve()
