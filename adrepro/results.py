"""Result files: ``results/<profile>/<exp>/metrics.json`` (small, committed, DVC metrics with cache: false).

Schema (ARCHITECTURE.md "Result file"):
{
  "experiment": id, "variant": id, "method": family, "paper": "A"|"B", "profile": ..., "protocol": ...,
  "dataset": ..., "category": ..., "seed": int, "status": "ok" | "not_runnable" | "FAILED",
  "reason": str (only when not_runnable),
  "failed_stage", "error", "previous": {...}   (only when FAILED: see ``write_failed``),
  "auroc": {"image": float|null, "logical": float|null, "structural": float|null, "mean_ls": float|null,
            "pixel": float|null},           # fractions in [0,1]; null where not applicable
  "steps": int, "train": {...method summary...},
  "teacher": {"id", "source", "sha256", "paper_teacher": bool, "substitute_reason"},
  "data": {"source", "protocol", "official": bool, "root", "counts", "notes"},
  "scale": {image_size, steps, ..., test_subset, n_test, n_test_full, teacher_distill} (adrepro/scores.py),
  "device": ..., "torch": ..., "git_sha": ... ("-dirty": code outside NOT_CODE modified), "mlflow_run_id": ...
Beside it: ``scores.csv.gz``, the per-image scores (adrepro/scores.py).
}
Latency lives in ``results/<profile>/latency.json`` keyed by experiment id (one stage times all).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from . import REPO_ROOT

RESULTS_DIR = REPO_ROOT / "results"
AUROC_KEYS = ("image", "logical", "structural", "mean_ls", "pixel")


def result_dir(profile: str, exp_id: str) -> Path:
    return RESULTS_DIR / profile / exp_id


def metrics_path(profile: str, exp_id: str) -> Path:
    return result_dir(profile, exp_id) / "metrics.json"


def latency_path(profile: str) -> Path:
    return RESULTS_DIR / profile / "latency.json"


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write atomically: a crash never leaves a half-written file where a complete one was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def identity(exp: Any) -> dict[str, Any]:
    """The fields naming an experiment's result (registry ``Experiment``), with the code version."""
    return {"experiment": exp.id, "variant": exp.variant.id, "method": exp.method, "paper": exp.variant.paper,
            "profile": exp.profile, "protocol": exp.protocol, "dataset": exp.dataset, "category": exp.category,
            "seed": exp.seed, "git_sha": git_sha()}


def write_failed(path: Path, record: dict[str, Any], stage: str, error: BaseException) -> None:
    """Mark a result FAILED (a stage of its experiment failed): no numbers, the stage and the error instead,
    so the gate and the report see a failure rather than a stale "ok". The result it replaces is kept
    whole under ``previous`` (and in git when committed); a chain of failures keeps the last good one."""
    old: dict[str, Any] | None = None
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            old = None
    if old and old.get("status") == "FAILED":
        old = old.get("previous")
    write_json(path, {**record, "status": "FAILED", "failed_stage": stage, "error": str(error)[:2000],
                      "auroc": {k: None for k in AUROC_KEYS}, **({"previous": old} if old else {})})


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc


def load_all(profile: str | None = None) -> dict[str, dict[str, dict[str, Any]]]:
    """{profile: {exp_id: metrics}} for every metrics.json on disk (the report reads every profile)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    if not RESULTS_DIR.is_dir():
        return out
    for prof_dir in sorted(p for p in RESULTS_DIR.iterdir() if p.is_dir()):
        if profile and prof_dir.name != profile:
            continue
        for mfile in sorted(prof_dir.glob("*/metrics.json")):
            out.setdefault(prof_dir.name, {})[mfile.parent.name] = read_json(mfile)
    return out


# tracked paths whose changes do not make a result's code "-dirty": parameters, the generated pipeline and lock,
# results, reports and documentation (git pathspecs, relative to the project root)
NOT_CODE = ("params.yaml", "dvc.yaml", "dvc.lock", "results", "reports", "docs", "*.md")


def git_sha(root: Path = REPO_ROOT) -> str:
    """HEAD's commit, with "-dirty" only when tracked code (anything outside ``NOT_CODE``) differs from it."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                *(f":(exclude){p}" for p in NOT_CODE)], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
