"""Stage `data@<dataset>`: fetch / verify / extract or generate one dataset for the active profile."""

from __future__ import annotations

from typing import Any

from adrepro.config import load_params, profile_config
from adrepro.datasets.registry import prepare
from adrepro.tracking import failed_stage

from .common import check_dvc_profile


def categories_for(params: dict[str, Any], dataset: str) -> list[str]:
    prof = profile_config(params)
    cats: list[str] = []
    for spec in prof["protocols"].values():
        if spec["dataset"] == dataset:
            cats += [str(c) for c in spec["categories"] if str(c) not in cats]
    return cats


def main(args: Any) -> None:
    params = load_params()
    check_dvc_profile(params)
    config = {"paths": params.get("paths"), "datasets": params.get("datasets"), "dataset": args.dataset}
    with failed_stage("data", params["profile"], args.dataset, config):
        info = prepare(args.dataset, params, categories_for(params, args.dataset))
    print(f"[data] {args.dataset}: {info}")
