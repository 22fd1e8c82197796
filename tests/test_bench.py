"""`adrepro bench` (quick mode: record structure, the equality assertion against anomalib) and EfficientAD's speed
options (issue 11): the penalty look-ahead leaves every number bit-identical; the CPU-meaningful options that change
float rounding keep the outputs within tolerance of the default path. No timed asserts."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from adrepro.methods.base import FitContext
from adrepro.methods.efficientad import trainer as trainer_module
from adrepro.methods.efficientad.method import EfficientAD

sys.path.insert(0, str(Path(__file__).parent))
from conftest import TinyDataset  # noqa: E402
from test_efficientad import TINY, teacher_file  # noqa: E402


@pytest.fixture(scope="module")
def bench():
    """adrepro.bench (skip here, at setup, so ADREPRO_REQUIRE_EXTRAS=1 turns a missing anomalib into a failure)."""
    pytest.importorskip("anomalib", reason="pip install -e .[conformance]")
    from adrepro import bench

    return bench


@pytest.fixture(scope="module")
def quick(bench, tmp_path_factory):
    """One quick run through the CLI entry: (JSON record, report text)."""
    out = tmp_path_factory.mktemp("bench")
    args = SimpleNamespace(quick=True, device="cpu", sizes=None, threads=None, out=str(out),
                           report=str(out / "bench.md"), render=False)
    assert bench.main(args) == 0
    return json.loads((out / "cpu.json").read_text()), (out / "bench.md").read_text()


def test_quick_record_has_device_versions_measures_and_ratios(quick):
    record, _ = quick
    assert record["device_type"] == "cpu" and record["mode"] == "quick" and record["threads"] == torch.get_num_threads()
    assert record["torch"] == torch.__version__ and record["anomalib"].startswith("2.7")
    assert record["dtype"] == {"inference": "fp32", "training": "fp32"}
    names = {"anomalib", "ours", "ours_fast"}
    assert set(record["measures"]) == set(record["ratios"]) == {"S"}
    for measure in ("latency_ms", "throughput_img_s", "train_steps_s"):
        cells = record["measures"]["S"][measure]
        assert set(cells) == names
        for cell in cells.values():
            assert cell["mean"] > 0 and cell["std"] >= 0 and cell["n"] == record["settings"][
                {"latency_ms": "latency", "throughput_img_s": "throughput", "train_steps_s": "train"}[measure]]["rounds"]
        for name in ("ours", "ours_fast"):
            assert record["ratios"]["S"][measure][name] == pytest.approx(cells[name]["mean"] / cells["anomalib"]["mean"])


def test_quick_run_asserted_equality_with_anomalib(quick, bench):
    record, report = quick
    eq = record["equality"]["S"]
    assert eq["ok"] and eq["tol"] == bench.TOL == 1e-5 and eq["threads"] == record["threads"]
    assert set(eq["max_abs_diff"]) == {"map", "score", "loss_st", "loss_ae", "loss_stae"}
    assert all(0 <= d <= 1e-5 for d in eq["max_abs_diff"].values())
    assert "EfficientAD-S" in report and "| latency_ms |" in report and "ours_fast / anomalib" in report


def test_equality_check_fails_when_the_weights_differ(bench, tmp_path, monkeypatch):
    real = bench.reference_model

    def perturbed(ours, size):
        ref = real(ours, size)
        with torch.no_grad():
            ref.student.conv4.bias.add_(1e-3)  # a change far below any visible effect on the maps
        return ref

    monkeypatch.setattr(bench, "reference_model", perturbed)
    with pytest.raises(bench.BenchError, match="beyond 1e-05"):
        bench.check_equal("S", tmp_path)


# ---- speed options (tiny networks, CPU) ----
def _fit(tmp_path, name, **opts):
    method = EfficientAD({**TINY, **opts}, teacher_file(tmp_path / "teacher.pt"))
    method.fit(TinyDataset(32, n=6, seed=1), TinyDataset(32, n=3, seed=2), FitContext(
        name, tmp_path / name, seed=0, extra={"penalty": TinyDataset(40, n=5, seed=3)}))
    return method


def test_penalty_look_ahead_is_used_and_bit_identical(tmp_path, monkeypatch):
    hits = []
    get = trainer_module.PenaltyPrefetcher.get
    monkeypatch.setattr(trainer_module.PenaltyPrefetcher, "get", lambda self, *a: (hits.append(self.hits), get(self, *a))[1])
    ahead = _fit(tmp_path, "ahead", penalty_prefetch=2, sampling="replacement")
    inline = _fit(tmp_path, "inline", penalty_prefetch=0, sampling="replacement")
    assert hits == list(range(TINY["steps"]))  # every step's image came from the look-ahead thread, none inline
    for key, value in ahead.model.state_dict().items():
        assert torch.equal(value, inline.model.state_dict()[key]), key


@pytest.mark.parametrize("options, atol", [
    ({"channels_last": True, "teacher_cache_mb": 64}, 1e-5),  # float rounding only
    ({"inference_dtype": "bf16"}, 5e-2),  # bf16 autocast: ~3 significant digits
])
def test_speed_options_keep_outputs_within_tolerance(tmp_path, options, atol):
    """Same weights: the maps, scores and one training step's losses of the option's path vs the default path."""
    base = _fit(tmp_path, "base")
    fast = _fit(tmp_path, "fast", **options)  # trains with the option (its weights drift apart: Adam, top-k loss)
    assert fast.summary["speed"] == options and "speed" not in base.summary
    fast.load_state_dict(base.state_dict())
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(9))
    (s0, m0), (s1, m1) = base.predict(images), fast.predict(images)
    scale = float(m0.abs().max())
    assert scale > 1e-3 and m1.dtype == torch.float32
    torch.testing.assert_close(m1, m0, rtol=0, atol=atol * scale)
    torch.testing.assert_close(s1, s0, rtol=0, atol=atol * scale)
    img, aug, pen = images[:1], images[1:2], images[2:3]
    losses = []
    for method in (base, fast):
        method.model.train()
        torch.manual_seed(0)  # same dropout masks
        losses.append(method.training_losses(img, aug, pen))
    for key in ("hard", "penalty", "ae", "total"):  # training runs in fp32 whatever inference_dtype says
        torch.testing.assert_close(losses[1][key], losses[0][key], rtol=1e-5, atol=0, msg=key)


def test_speed_options_are_validated(tmp_path):
    teacher = teacher_file(tmp_path / "t.pt")
    for key, bad in (("inference_dtype", "fp8"), ("tf32", True), ("compile", "fast"), ("penalty_prefetch", -1)):
        with pytest.raises(ValueError, match=key):
            EfficientAD({**TINY, key: bad}, teacher)
    with pytest.raises(ValueError, match="cuda_graphs"):
        EfficientAD({**TINY, "compile": "reduce-overhead", "cuda_graphs": True}, teacher)
