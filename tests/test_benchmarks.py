"""pytest-benchmark benchmarks of each family's inference path (latency at batch 1, throughput at batch 16).

Run the timings with ``pytest tests/test_benchmarks.py --benchmark-enable``; in the default suite
(``--benchmark-disable``) each body runs once as a smoke test. Sizes are the smoke profile's.
"""

from __future__ import annotations

import pytest
import torch

from adrepro.config import load_params
from adrepro.methods.base import FitContext, build_method
from adrepro.methods.teachers import provision
from adrepro.registry import VARIANTS_BY_ID, experiments

FAMILIES = ["a-t2-e1", "a-t3-e11", "b-main", "b-f3-vgg", "b-f3-resnet"]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, tiny_dataset):
    """One briefly trained method per benchmarked variant, with smoke-profile tiny teachers."""
    tmp = tmp_path_factory.mktemp("bench")
    params = load_params()
    params["paths"] = {**params["paths"], "teachers_root": str(tmp / "teachers")}
    out = {}
    for vid in FAMILIES:
        exp = next(e for e in experiments(params, "smoke") if e.variant.id == vid)
        cfg = {**exp.method_config(params), "steps": 2, "checkpoint_every": 2}
        teacher = provision(exp.teacher_id, params, "smoke")
        method = build_method(exp.method, cfg, teacher)
        data = tiny_dataset(cfg["image_size"])
        method.fit(data, data, FitContext(exp_id=exp.id, work_dir=tmp / vid, seed=0))
        out[vid] = (method, cfg["image_size"])
    return out


@pytest.mark.parametrize("variant", FAMILIES)
@pytest.mark.parametrize("batch", [1, 16])
def test_inference_path(benchmark, fitted, variant, batch):
    method, size = fitted[variant]
    x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    benchmark.extra_info.update(variant=VARIANTS_BY_ID[variant].title, batch=batch, image_size=size,
                                device="cpu", dtype="fp32", torch=torch.__version__)

    def run():
        scores, maps = method.predict(x)
        return (maps if maps is not None else scores).cpu()

    result = benchmark(run)
    assert result.shape[0] == batch
