"""Stage `track`: log every finished experiment of the profile to MLflow (one run each, idempotent)."""

from __future__ import annotations

from typing import Any

from adrepro.config import load_params
from adrepro.registry import experiments
from adrepro.results import metrics_path
from adrepro.tracking import sync

from .common import check_dvc_profile, model_dir, plots_dir


def main(args: Any) -> None:
    params = load_params()
    check_dvc_profile(params)
    logged, present = sync(experiments(params), model_dir, metrics_path, plots_dir)
    print(f"[track] logged {logged} run(s) to MLflow; {present} already there")
