"""params.yaml loading and early validation (bad input names the file and key, exits non-zero)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from . import REPO_ROOT

PARAMS_FILE = REPO_ROOT / "params.yaml"
PROFILES = ("smoke", "paper", "offline")
PROTOCOLS = ("loco", "mvtec_ad", "cifar10", "cifar100", "fmnist")


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


def _require(mapping: Any, key: str, where: str, path: Path) -> Any:
    if not isinstance(mapping, dict) or key not in mapping:
        raise ConfigError(f"{path}: missing key '{where}{key}'")
    return mapping[key]


def validate(params: dict[str, Any], path: Path = PARAMS_FILE) -> None:
    profile = _require(params, "profile", "", path)
    profiles = _require(params, "profiles", "", path)
    if profile not in profiles:
        raise ConfigError(f"{path}: profile '{profile}' is not defined under 'profiles' (known: {sorted(profiles)})")
    tol = _require(_require(params, "gate", "", path), "tolerance", "gate.", path)
    if not isinstance(tol, (int, float)) or not 0 <= tol < 1:
        raise ConfigError(f"{path}: gate.tolerance must be a number in [0, 1), got {tol!r}")
    _require(params, "paths", "", path)
    for name, prof in profiles.items():
        where = f"profiles.{name}."
        protocols = _require(prof, "protocols", where, path)
        for proto, spec in protocols.items():
            if proto not in PROTOCOLS:
                raise ConfigError(f"{path}: unknown protocol '{where}protocols.{proto}' (known: {list(PROTOCOLS)})")
            for key in ("dataset", "categories", "seeds"):
                _require(spec, key, f"{where}protocols.{proto}.", path)
            if not spec["categories"] or not spec["seeds"]:
                raise ConfigError(f"{path}: '{where}protocols.{proto}' needs at least one category and one seed")
            if not all(isinstance(s, int) for s in spec["seeds"]):
                raise ConfigError(f"{path}: '{where}protocols.{proto}.seeds' must be integers")
        _require(prof, "teachers", where, path)
        if prof.get("variants") is not None:
            from .registry import VARIANTS_BY_ID

            unknown = [v for v in prof["variants"] if v not in VARIANTS_BY_ID]
            if unknown:
                raise ConfigError(f"{path}: unknown variant(s) {unknown} in '{where}variants' (known: {sorted(VARIANTS_BY_ID)})")
        methods = _require(prof, "methods", where, path)
        for method, cfg in methods.items():
            for key in ("image_size", "steps"):
                value = _require(cfg, key, f"{where}methods.{method}.", path)
                if not isinstance(value, int) or value < 0:
                    raise ConfigError(f"{path}: '{where}methods.{method}.{key}' must be a non-negative integer, got {value!r}")


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
