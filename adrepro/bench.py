"""`adrepro bench`: our EfficientAD-S and -M side by side with anomalib's ``EfficientAdModel`` (issue 11).

First it asserts that our anomaly maps, scores and training losses equal anomalib's within 1e-5 (CPU, fp32, the
same weights and threads: ours loaded into anomalib's model through ``key_map``). Then, in one process and
alternating the contenders every round (ABC, CBA, ...) so drift cancels, it times on ``--device``:

- inference latency at batch 1 and throughput at batch 16 by the EfficientAD protocol: a host tensor in, the
  map (and score) back on the host, warm-up passes, then the mean of timed passes; fp32 on CPU, fp16 autocast on
  CUDA (as the harness's latency stage);
- training steps/s of the real step at batch 1, 256 px, with a penalty image and the AE augmentation: ours is
  ``EfficientAD.trainer`` (what ``fit`` runs: losses, backward, Adam), anomalib's is its model's training forward
  (which draws its augmentation) + backward + Adam over student and AE. Both get the same pre-decoded penalty
  images (anomalib's Lightning module decodes Imagenette on its main thread per step; that is not counted).

Contenders: ``anomalib``, ``ours`` (default options: the numbers every run produces) and ``ours_fast`` (the speed
options of ``FAST``). Writes ``results/bench/<device>.json`` and renders every such file into ``reports/bench.md``.
Weights are random (seeded): speed and equality do not depend on them.
"""

from __future__ import annotations

import contextlib
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import torch

from .config import REPO_ROOT

SIZE, C = 256, 384
TOL = 1e-5
# our nn.Sequential index -> anomalib attribute (convs only; ReLU/pool have no parameters)
PDN_KEYS = {"S": {0: "conv1", 3: "conv2", 6: "conv3", 8: "conv4"},
            "M": {0: "conv1", 3: "conv2", 6: "conv3", 8: "conv4", 10: "conv5", 12: "conv6"}}
AE_KEYS = {**{f"encoder.{2 * i}": f"encoder.enconv{i + 1}" for i in range(6)},
           **{f"blocks.{i}.0": f"decoder.deconv{i + 1}" for i in range(6)},
           "head_hidden.0": "decoder.deconv7", "head_out": "decoder.deconv8"}
# ours_fast: speed options that change float rounding only (results within tolerance, not bit-identical)
FAST = {"cpu": {"channels_last": True, "teacher_cache_mb": 4096},
        "cuda": {"channels_last": True, "teacher_cache_mb": 4096, "cuda_graphs": True}}
SETTINGS = {  # warm-up passes, rounds, timed passes per round and contender
    "quick": {"sizes": ("S",), "latency": (1, 2, 1), "throughput": (0, 2, 1), "train": (1, 2, 1), "batch": 2},
    "full": {"sizes": ("S", "M"), "latency": (3, 4, 3), "throughput": (1, 2, 1), "train": (2, 3, 2), "batch": 16},
}
MEASURES = {"latency_ms": "lower", "throughput_img_s": "higher", "train_steps_s": "higher"}


class BenchError(AssertionError):
    """Our outputs differ from anomalib's beyond the tolerance: nothing is timed."""


def key_map(size: str) -> dict[str, str]:
    """Our parameter name -> anomalib's."""
    keys = {f"{net}.{i}.{p}": f"{net}.{name}.{p}" for net in ("teacher", "student")
            for i, name in PDN_KEYS[size].items() for p in ("weight", "bias")}
    keys.update({f"aes.0.{k}.{p}": f"ae.{name}.{p}" for k, name in AE_KEYS.items() for p in ("weight", "bias")})
    return keys


def to_reference(ours: Any, size: str) -> dict[str, torch.Tensor]:
    """Our state dict under anomalib's key names (raises KeyError if one of our tensors is missing)."""
    sd = ours.model.state_dict()
    out = {ref_key: sd[key] for key, ref_key in key_map(size).items()}
    q = sd["quantiles"]
    out.update({"mean_std.mean": sd["teacher_mean"], "mean_std.std": sd["teacher_std"],
                "quantiles.qa_st": q[0, 0], "quantiles.qb_st": q[0, 1], "quantiles.qa_ae": q[1, 0],
                "quantiles.qb_ae": q[1, 1]})
    return out


def our_efficientad(tmp_path: Path, size: str, device: str = "cpu", **options: Any) -> Any:
    """Our EfficientAD-``size`` at 256 px / 384 channels with a seeded random teacher and non-trivial statistics."""
    from adrepro.methods.base import Teacher
    from adrepro.methods.efficientad.method import EfficientAD
    from adrepro.methods.efficientad.pdn import build_pdn
    from adrepro.methods.teachers.provision import save_teacher_file

    torch.manual_seed(1)
    path = Path(tmp_path) / f"teacher_{size}.pt"
    save_teacher_file(path, f"pdn_{size.lower()}", {"out_channels": C, "width": 1.0}, build_pdn(size, C).state_dict(),
                      {"id": f"random_pdn_{size}"})
    method = EfficientAD({"size": size, "image_size": SIZE, "pdn_width": 1.0, "ae_latent": 64, "seed": 0,
                          "device": device, **options}, Teacher(f"random_pdn_{size}", path))
    m, g = method.model, torch.Generator().manual_seed(2)
    m.teacher_mean.copy_(0.05 * torch.randn(1, C, 1, 1, generator=g))
    m.teacher_std.copy_(0.02 + 0.05 * torch.rand(1, C, 1, 1, generator=g))
    m.quantiles.copy_(torch.tensor([[1.0, 3.0], [0.5, 2.5]]))
    return method


def reference_model(ours: Any, size: str) -> torch.nn.Module:
    """anomalib's EfficientAdModel (padded PDNs, unpadded maps) holding exactly our weights and statistics."""
    from anomalib.models.image.efficient_ad import torch_model as tm

    ref = tm.EfficientAdModel(teacher_out_channels=C, model_size=tm.EfficientAdModelSize[size], padding=True,
                              pad_maps=False)
    ref.load_state_dict({k: v.cpu() for k, v in to_reference(ours, size).items()}, strict=True)
    return ref.to(ours.device)


def check_equal(size: str, tmp: Path) -> dict[str, Any]:
    """Max |ours - anomalib| of maps, scores and the three training losses on CPU in fp32; raises BenchError."""
    from adrepro.methods.efficientad.model import augment_ae_input

    ours = our_efficientad(tmp, size)
    ref = reference_model(ours, size).eval()
    g = torch.Generator().manual_seed(3)
    images, pen = torch.rand(2, 3, SIZE, SIZE, generator=g), torch.rand(1, 3, SIZE, SIZE, generator=g)
    scores, maps = ours.predict(images)
    with torch.no_grad():
        out = ref(images)
    diff = {"map": float((maps - out.anomaly_map[:, 0]).abs().max()),
            "score": float((scores - out.pred_score.flatten()).abs().max())}
    aug = augment_ae_input(images[:1], torch.Generator().manual_seed(7))
    ref.choose_random_aug_image = lambda image: aug  # both see the same augmented image
    ours.model.train()
    ref.train()
    with torch.no_grad():
        torch.manual_seed(8)  # same dropout masks
        o = ours.training_losses(images[:1], aug, pen)
        torch.manual_seed(8)
        st, ae, stae = ref(images[:1], batch_imagenet=pen)
    diff.update(loss_st=float((o["hard"] + o["penalty"] - st).abs()), loss_ae=float((o["ta"][0] - ae).abs()),
                loss_stae=float((o["sa"][0] - stae).abs()))
    result = {"max_abs_diff": diff, "tol": TOL, "ok": max(diff.values()) <= TOL, "threads": torch.get_num_threads(),
              "device": "cpu", "dtype": "fp32"}
    if not result["ok"]:
        raise BenchError(f"EfficientAD-{size}: ours differs from anomalib's EfficientAdModel beyond {TOL}: {diff}")
    return result


def alternate(fns: dict[str, Callable[[], None]], warmup: int, rounds: int, passes: int) -> dict[str, list[float]]:
    """Seconds per timed pass of each contender: warm-up passes, then rounds in alternating order."""
    for f in fns.values():
        for _ in range(warmup):
            f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for r in range(rounds):
        for k in names if r % 2 == 0 else names[::-1]:
            for _ in range(passes):
                t0 = time.perf_counter()
                fns[k]()
                times[k].append(time.perf_counter() - t0)
    return times


def _summary(seconds: list[float], per: float, unit: str) -> dict[str, Any]:
    """latency_ms: mean/std of per-pass ms; img/s and steps/s: ``per`` / mean seconds, std over passes."""
    vals = [1000 * t for t in seconds] if unit == "ms" else [per / t for t in seconds]
    mean = 1000 * statistics.fmean(seconds) if unit == "ms" else per / statistics.fmean(seconds)
    return {"mean": mean, "std": statistics.stdev(vals) if len(vals) > 1 else 0.0, "n": len(vals)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _contenders(size: str, tmp: Path, device: str) -> dict[str, tuple[Any, torch.nn.Module | None]]:
    base = our_efficientad(tmp, size, device)
    fast = our_efficientad(tmp, size, device, **FAST[torch.device(device).type])
    fast.model.load_state_dict(base.model.state_dict())
    return {"anomalib": (base, reference_model(base, size)), "ours": (base, None), "ours_fast": (fast, None)}


def time_inference(contenders: dict, batch: int, setting: tuple[int, int, int], device: torch.device) -> dict:
    x = torch.rand(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))  # host tensor in
    amp = torch.autocast("cuda", dtype=torch.float16) if device.type == "cuda" else contextlib.nullcontext()

    def run(method: Any, ref: torch.nn.Module | None) -> Callable[[], None]:
        def ours() -> None:
            with amp:
                method.predict(x)  # maps and scores come back on the host

        def anomalib() -> None:
            with amp:
                out = ref(x.to(device))
            out.anomaly_map.cpu(), out.pred_score.cpu()

        return ours if ref is None else anomalib

    for method, ref in contenders.values():
        method.model.eval()
        if ref is not None:
            ref.eval()
    with torch.inference_mode():
        return alternate({k: run(*v) for k, v in contenders.items()}, *setting)


def time_training(contenders: dict, setting: tuple[int, int, int], device: torch.device) -> dict:
    from adrepro.methods.teachers.penalty import SyntheticImages

    g = torch.Generator().manual_seed(4)
    images = torch.rand(4, 3, SIZE, SIZE, generator=g)
    synthetic = SyntheticImages(4, SIZE, seed=0)
    penalty = [synthetic[j] for j in range(len(synthetic))]  # pre-decoded, the same for every contender
    fns = {}
    for name, (method, ref) in contenders.items():
        if ref is None:
            trainer = method.trainer(images, penalty, torch.Generator().manual_seed(5), seed=0, steps=70000)
            method.model.train()
            counter = iter(range(10**9))
            fns[name] = lambda t=trainer, c=counter: (t(next(c)), _sync(device))
        else:
            ref.train()
            params = [p for n, p in ref.named_parameters() if n.startswith(("student.", "ae."))]
            opt = torch.optim.Adam(params, lr=1e-4, weight_decay=1e-5)
            counter = iter(range(10**9))

            def step(r=ref, o=opt, c=counter) -> None:
                i = next(c)
                st, ae, stae = r(images[i % 4:i % 4 + 1].to(device), batch_imagenet=penalty[i % 4][None].to(device))
                o.zero_grad(set_to_none=True)
                (st + ae + stae).backward()
                o.step()
                _sync(device)
            fns[name] = step
    times = alternate(fns, *setting)
    for method, ref in contenders.values():
        if ref is None:
            method.model.eval()
    return times


def run(mode: str = "quick", device: str = "cpu", sizes: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Equality, then the timings; returns the JSON record."""
    import anomalib

    cfg, dev = SETTINGS[mode], torch.device(device)
    sizes = tuple(sizes or cfg["sizes"])
    record: dict[str, Any] = {
        "device": _device_name(dev), "device_type": dev.type, "mode": mode, "threads": torch.get_num_threads(),
        "dtype": {"inference": "fp16-autocast" if dev.type == "cuda" else "fp32", "training": "fp32"},
        "torch": torch.__version__, "anomalib": anomalib.__version__, "cuda": torch.version.cuda,
        "python": platform.python_version(), "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "image_size": SIZE, "out_channels": C, "throughput_batch": cfg["batch"],
        "settings": {k: dict(zip(("warmup", "rounds", "passes"), cfg[k])) for k in ("latency", "throughput", "train")},
        "contenders": {"anomalib": "anomalib EfficientAdModel (eager)", "ours": "EfficientAD, default options",
                       "ours_fast": {"options": FAST[dev.type]}},
        "equality": {}, "measures": {}, "ratios": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            record["equality"][size] = check_equal(size, Path(tmp))
        for size in sizes:
            contenders = _contenders(size, Path(tmp), device)
            lat = time_inference(contenders, 1, cfg["latency"], dev)
            thr = time_inference(contenders, cfg["batch"], cfg["throughput"], dev)
            train = time_training(contenders, cfg["train"], dev)
            measures = {k: {name: _summary(t, per, unit) for name, t in times.items()} for k, times, per, unit in (
                ("latency_ms", lat, 1, "ms"), ("throughput_img_s", thr, cfg["batch"], "/s"),
                ("train_steps_s", train, 1, "/s"))}
            record["measures"][size] = measures
            record["ratios"][size] = {k: {n: v[n]["mean"] / v["anomalib"]["mean"] for n in v if n != "anomalib"}
                                      for k, v in measures.items()}
            del contenders
    return record


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()})"


def render(records: list[dict[str, Any]], level: int = 1) -> str:
    """reports/bench.md from the JSON records (one section per device); ``level``: Markdown heading level of the
    title (the paper A report embeds it one level down)."""
    lines = [f"{'#' * level} EfficientAD side by side with anomalib", "",
             "Generated by `adrepro bench` from `results/bench/*.json` (do not edit). Ratio = ours / anomalib: below 1 "
             "is better for latency, above 1 for throughput and training steps/s. Outputs were first asserted equal "
             f"to anomalib's within {TOL} (CPU, fp32, same weights and threads). `ours` runs the default options "
             "(the numbers every run produces), `ours_fast` adds the listed speed options (float rounding differs).", ""]
    for r in records:
        lines += [f"{'#' * (level + 1)} {r['device']} ({r['mode']})", "",
                  f"{r['threads']} threads; inference {r['dtype']['inference']}, training {r['dtype']['training']}; "
                  f"torch {r['torch']}, anomalib {r['anomalib']}; {r['image_size']} px, throughput batch "
                  f"{r['throughput_batch']}; {r['date']}. `ours_fast`: "
                  f"{', '.join(f'{k}={v}' for k, v in r['contenders']['ours_fast']['options'].items())}.", "",
                  "| model | measure | anomalib | ours | ours_fast | ours / anomalib | ours_fast / anomalib |",
                  "|---|---|---|---|---|---|---|"]
        for size, measures in r["measures"].items():
            eq = max(r["equality"][size]["max_abs_diff"].values())
            for k, v in measures.items():
                cells = [f"{v[n]['mean']:.4g} ± {v[n]['std']:.2g}" for n in ("anomalib", "ours", "ours_fast")]
                ratios = [f"{r['ratios'][size][k][n]:.3f}" for n in ("ours", "ours_fast")]
                lines.append(f"| EfficientAD-{size} (max diff {eq:.1e}) | {k} | " + " | ".join(cells + ratios) + " |")
        lines.append("")
    return "\n".join(lines)


def main(args: Any) -> int:
    import json

    from .results import write_json

    out_dir = Path(args.out) if args.out else REPO_ROOT / "results" / "bench"
    report = Path(args.report) if args.report else REPO_ROOT / "reports" / "bench.md"
    if not args.render:
        if args.threads:
            torch.set_num_threads(args.threads)
        try:
            record = run("quick" if args.quick else "full", args.device, tuple(args.sizes) if args.sizes else None)
        except ModuleNotFoundError as exc:
            print(f"error: {exc}: the benchmark needs anomalib (pip install -e '.[conformance]')", file=sys.stderr)
            return 2
        except BenchError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        path = out_dir / f"{torch.device(args.device).type}.json"
        write_json(path, record)
        print(f"wrote {path}")
    records = [json.loads(p.read_text()) for p in sorted(out_dir.glob("*.json"))]
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(render(records))
    print(f"wrote {report}")
    return 0
