"""Latency and throughput of a method's inference path (EfficientAD paper protocol).

Warm-up passes, then the mean over timed passes, each timed from a host tensor to the anomaly
map/score back on the host; batch 1 for latency, ``throughput_batch`` for throughput; fp16 (autocast)
on GPU, fp32 on CPU. Device, dtype and versions are recorded with every figure.
"""

from __future__ import annotations

import contextlib
import platform
import statistics
import time
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from adrepro.methods.base import Method


def _context(device: torch.device) -> contextlib.AbstractContextManager:
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def _timed(method: "Method", x: torch.Tensor, iters: int, device: torch.device) -> list[float]:
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        with _context(device):
            scores, maps = method.predict(x)
        (maps if maps is not None else scores).cpu()  # result back on host
        times.append(time.perf_counter() - t0)
    return times


def measure(method: "Method", image_size: int, warmup: int, iters: int, throughput_batch: int,
            throughput_iters: int, seed: int = 0) -> dict[str, Any]:
    device = method.device
    for m in method.inference_modules():
        m.to(device).eval()
    g = torch.Generator().manual_seed(seed)
    x1 = torch.rand(1, 3, image_size, image_size, generator=g)
    xb = torch.rand(throughput_batch, 3, image_size, image_size, generator=g)
    with torch.inference_mode():
        _timed(method, x1, warmup, device)
        lat = _timed(method, x1, iters, device)
        _timed(method, xb, 1, device)
        thr = _timed(method, xb, throughput_iters, device)
    return {
        "latency_ms": 1000 * statistics.fmean(lat),
        "latency_ms_std": 1000 * (statistics.stdev(lat) if len(lat) > 1 else 0.0),
        "throughput_img_s": throughput_batch / statistics.fmean(thr),
        "batch": 1, "throughput_batch": throughput_batch, "iters": iters, "warmup": warmup,
        "image_size": image_size, "device": _device_name(device),
        "dtype": "fp16-autocast" if device.type == "cuda" else "fp32",
        "torch": torch.__version__, "cuda": torch.version.cuda, "threads": torch.get_num_threads(),
    }


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()})"
