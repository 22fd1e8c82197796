"""Stage `latency`: time every trained experiment's inference path; writes results/<profile>/latency.json."""

from __future__ import annotations

from typing import Any

import torch
from tqdm.auto import tqdm

from adrepro.config import load_params, profile_config
from adrepro.latency import measure
from adrepro.methods.base import build_method
from adrepro.registry import experiments
from adrepro.results import latency_path, write_json
from adrepro.tracking import failed_stage

from .common import check_dvc_profile, load_teacher, model_dir


def run(profile: str | None = None) -> dict[str, Any]:
    params = load_params()
    check_dvc_profile(params)
    profile = profile or params["profile"]
    lat_cfg = profile_config(params, profile)["latency"]
    out: dict[str, Any] = {}
    for exp in tqdm(experiments(params, profile), desc="latency"):
        mfile = model_dir(profile, exp.id) / "model.pt"
        if not mfile.is_file():
            out[exp.id] = {"status": "not run"}
            continue
        cfg = exp.method_config(params)
        method = build_method(exp.method, cfg, load_teacher(params, exp))
        method.load_state_dict(torch.load(mfile, map_location="cpu", weights_only=False)["state"])
        out[exp.id] = {"variant": exp.variant.id, **measure(method, cfg["image_size"], lat_cfg["warmup"], lat_cfg["iters"],
                                                            lat_cfg["throughput_batch"], lat_cfg["throughput_iters"])}
    write_json(latency_path(profile), out)
    return out


def main(args: Any) -> None:
    params = load_params()
    with failed_stage("latency", params["profile"], params["profile"], {"latency": profile_config(params)["latency"]}):
        run()
