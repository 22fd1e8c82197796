"""Committed numbers come from committed code (issue 12, item 5).

``adrepro check-lock`` (CI, before ``dvc repro``, on a clean clone with no DVC cache): every stage of the generated
dvc.yaml is in the committed dvc.lock with the same command, the same parameter values and the same md5 for every
dependency that is not another stage's output (code, external files: hashed by DVC itself via ``dvc status``), and
committed result files (``cache: false`` outputs) match the lock. Outputs missing from the workspace or the cache are
not compared (a clean clone has none). ``adrepro check-results`` (CI, after ``dvc repro``): the regenerated AUROCs of
the active profile equal the committed ones (``git show HEAD:results/...``) exactly.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import yaml

from . import REPO_ROOT

_IGNORED_OUT_STATES = ("not in cache", "deleted")


def _dvc_status(root: Path, targets: list[str]) -> dict[str, Any]:
    proc = subprocess.run(["dvc", "status", "--json", *targets], cwd=root, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"`dvc status` failed in {root}: {proc.stderr.strip() or proc.stdout.strip()}")
    return json.loads(proc.stdout or "{}")


def _outs(root: Path) -> set[str]:
    """Every output path in the lock, plus dvc.yaml's output patterns (``models/smoke/${key}``)."""
    from .config import load_params
    from .dvcgen import build

    outs = {o["path"] for entry in _lock(root).values() for key in ("outs", "metrics", "plots")
            for o in entry.get(key, []) if isinstance(o, dict)}
    for stage in build(load_params(root / "params.yaml")).get("stages", {}).values():
        body = stage.get("do", stage)
        for key in ("outs", "metrics"):
            outs.update(next(iter(o)) if isinstance(o, dict) else o for o in body.get(key, []))
    return outs


def _lock(root: Path) -> dict[str, Any]:
    path = root / "dvc.lock"
    return (yaml.safe_load(path.read_text()) or {}).get("stages", {}) if path.is_file() else {}


def _is_output(path: str, outs: set[str]) -> bool:
    """``path`` is (inside, or holds) some stage's output, or a templated output pattern."""
    for o in outs:
        if "${" in o:
            prefix = o.split("${", 1)[0]
            if path.startswith(prefix) and prefix:
                return True
        elif path == o or path.startswith(o.rstrip("/") + "/") or o.startswith(path.rstrip("/") + "/"):
            return True
    return False


def stale_stages(root: Path = REPO_ROOT, targets: list[str] | None = None) -> dict[str, list[str]]:
    """{stage: [why, ...]} for every stage whose committed lock entry the checkout would not reproduce."""
    from . import dvcgen

    out: dict[str, list[str]] = {}
    if dvcgen.DVC_YAML.resolve() == (root / "dvc.yaml").resolve() and dvcgen.is_stale():
        out["dvc.yaml"] = ["stale: does not match adrepro/registry.py + params.yaml (run `adrepro dvc-yaml`)"]
    lock, outs = _lock(root), _outs(root)
    for stage, changes in _dvc_status(root, targets or []).items():
        why: list[str] = []
        if stage not in lock:
            out[stage] = ["not in dvc.lock (never run with this code)"]
            continue
        for change in changes if isinstance(changes, list) else [changes]:
            if isinstance(change, str):
                why.append(change)
                continue
            for path, state in (change.get("changed deps") or {}).items():
                if isinstance(state, dict):  # a params file: {key: modified | new | deleted}
                    why.extend(f"parameter {key} ({path}): {s}" for key, s in state.items())
                elif not _is_output(path, outs):
                    why.append(f"dependency {path}: {state}")
            for path, state in (change.get("changed outs") or {}).items():
                if state not in _IGNORED_OUT_STATES:
                    why.append(f"committed output {path}: {state} (differs from the lock)")
        if why:
            out[stage] = why
    return out


def _aurocs_of(text: str) -> Any:
    data = json.loads(text)
    return {"status": data.get("status"), "auroc": data.get("auroc")}


def result_differences(profile: str, root: Path = REPO_ROOT, ref: str = "HEAD") -> list[str]:
    """Experiments of ``profile`` whose AUROCs in the workspace differ from those committed at ``ref``."""
    rel = f"results/{profile}"
    listed = subprocess.run(["git", "ls-tree", "-r", "--name-only", ref, "--", rel], cwd=root, capture_output=True,
                            text=True)
    if listed.returncode != 0:
        raise RuntimeError(f"git ls-tree {ref} {rel} failed: {listed.stderr.strip()}")
    committed = {p for p in listed.stdout.split() if p.endswith("/metrics.json")}
    current = {str(p.relative_to(root)) for p in (root / rel).glob("*/metrics.json")}
    out = []
    for path in sorted(committed | current):
        exp = Path(path).parent.name
        if path not in current:
            out.append(f"{exp}: committed at {ref} but not produced now")
            continue
        if path not in committed:
            out.append(f"{exp}: produced now but not committed at {ref}")
            continue
        old = subprocess.run(["git", "show", f"{ref}:{path}"], cwd=root, capture_output=True, text=True, check=True)
        before, now = _aurocs_of(old.stdout), _aurocs_of((root / path).read_text())
        if before != now:
            out.append(f"{exp}: committed {before} != regenerated {now}")
    return out
