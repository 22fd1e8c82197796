"""Stage `track`: log every finished experiment to MLflow (one run each, idempotent): the active profile's, then
every other profile's committed results (``results/<profile>/``), so a fresh clone's `mlflow ui` shows them too."""

from __future__ import annotations

from typing import Any

from adrepro.config import load_params
from adrepro.registry import experiments
from adrepro.results import RESULTS_DIR, metrics_path
from adrepro.tracking import sync

from .common import check_dvc_profile, model_dir, plots_dir


def main(args: Any) -> None:
    params = load_params()
    check_dvc_profile(params)
    active = params["profile"]
    for profile in [active] + [p for p in params["profiles"] if p != active and (RESULTS_DIR / p).is_dir()]:
        logged, present = sync(experiments(params, profile), model_dir, metrics_path, plots_dir)
        print(f"[track] {profile}: logged {logged} run(s) to MLflow; {present} already there")
