"""Stage `evaluate@<exp>`: score the test split; write results/<profile>/<exp>/metrics.json, and the ROC curve,
score histograms, extremes montage and plot data (adrepro/plots.py) to plots/<profile>/<exp>/ (the `track` stage
logs the PNGs to MLflow; `dvc plots show` reads the CSVs)."""

from __future__ import annotations

import math
import platform
from typing import Any

import torch
from tqdm.auto import tqdm  # noqa: E402

from adrepro.datasets.base import collate  # noqa: E402
from adrepro.datasets.registry import load_splits  # noqa: E402
from adrepro.methods.base import build_method  # noqa: E402
from adrepro.metrics import image_aurocs, per_type_aurocs, per_type_pixel_aurocs, pixel_auroc  # noqa: E402
from adrepro.config import profile_config  # noqa: E402
from adrepro import plots as expplots  # noqa: E402
from adrepro.results import identity, metrics_path, read_json, write_json  # noqa: E402
from adrepro.scores import SCORES_FILE, image_ref, scale_record, test_subset, write_scores  # noqa: E402
from adrepro.tracking import clean_exit, log_failed, run_tags  # noqa: E402
from adrepro.training import NonFiniteError  # noqa: E402

from .common import load_experiment, load_teacher, model_dir, not_runnable_reason, plots_dir  # noqa: E402
from .train import lr_knob, record_failure  # noqa: E402

BATCH = 16


def score(method: Any, dataset: Any, parts: dict[str, list[float]] | None = None
          ) -> tuple[list[float], list[int], list[str], list, list]:
    """Scores, labels, types, maps, masks of ``dataset``; with ``parts``, a method's score parts (its optional
    ``predict_with_parts``, e.g. paper B's S_D and eq. 7's teacher/student terms) are appended there per image."""
    scores, labels, types, maps, masks = [], [], [], [], []
    with_parts = getattr(method, "predict_with_parts", None) if parts is not None else None
    idx = list(range(len(dataset)))
    for start in tqdm(range(0, len(idx), BATCH), desc="evaluate", mininterval=2.0, leave=False):
        images, y, m, meta = collate([dataset[i] for i in idx[start:start + BATCH]])
        s, amap, p = with_parts(images) if with_parts else (*method.predict(images), {})
        for name, values in p.items():
            parts.setdefault(name, []).extend(values.float().tolist())
        scores += s.float().tolist()
        labels += y.tolist()
        types += [d["anomaly_type"] for d in meta]
        if amap is not None and m is not None:
            maps += list(amap.float())
            masks += list(m)
    return scores, labels, types, maps, masks


def score_parts_summary(parts: dict[str, list[float]], labels: list[int], types: list[str]) -> dict[str, Any]:
    """Per score part: its AUROC alone and its mean on normal / anomalous test images (metrics.json
    ``score_parts``), so an anchor gain (S_A's teacher term) is told apart from a student that learned nothing."""
    out: dict[str, Any] = {}
    for name, values in parts.items():
        by = {y: [v for v, lab in zip(values, labels) if lab == y] for y in (0, 1)}
        out[name] = {"auroc": image_aurocs(values, labels, types)["image"],
                     **{f"mean_{k}": (sum(by[y]) / len(by[y]) if by[y] else None)
                        for k, y in (("normal", 0), ("anomalous", 1))}}
    return out


def check_finite(scores: list[float], maps: list, culprit: str) -> None:
    """Non-finite scores or maps are a failed evaluation, never a number (an AUROC of NaN scores is 0.5)."""
    bad = [i for i, s in enumerate(scores) if not math.isfinite(s)]
    bad_maps = sum(not bool(torch.isfinite(m).all()) for m in maps)
    if bad or bad_maps:
        first = f" (first: test item {bad[0]})" if bad else ""
        raise NonFiniteError(f"evaluate: {len(bad)} of {len(scores)} image scores{first} and {bad_maps} of {len(maps)} "
                             f"anomaly maps are non-finite; likely culprit: {culprit}")


def run(exp_id: str) -> dict[str, Any]:
    params, exp, cfg = load_experiment(exp_id)
    mdir = model_dir(exp.profile, exp.id)
    base = identity(exp)
    reason = not_runnable_reason(exp)
    if reason:
        result = {**base, "status": "not_runnable", "reason": reason,
                  "auroc": {k: None for k in ("image", "logical", "structural", "mean_ls", "pixel")},
                  "teacher": {"id": exp.teacher_id, "paper_teacher": None}}
        write_json(metrics_path(exp.profile, exp.id), result)
        return result
    tags = run_tags(exp, None, str(cfg.get("device", "cpu")))
    try:
        saved = torch.load(mdir / "model.pt", map_location="cpu", weights_only=False)
        tags = run_tags(exp, saved["teacher"], str(cfg.get("device", "cpu")))
        method = build_method(exp.method, cfg, load_teacher(params, exp))
        method.load_state_dict(saved["state"])
        for m in method.inference_modules():
            m.to(method.device).eval()
        splits = load_splits(exp.dataset, exp.category, cfg["image_size"], exp.seed, params,
                             val_fraction=cfg.get("val_fraction"))  # paper B: its own (0: all of train/good)
        prof = profile_config(params, exp.profile)
        test = test_subset(splits.test, (prof["protocols"][exp.protocol] or {}).get("test_subset"))
        parts: dict[str, list[float]] = {}
        with torch.inference_mode():
            scores, labels, types, maps, masks = score(method, test, parts)
        check_finite(scores, maps, f"{mdir / 'model.pt'} (retrain; {lr_knob(params, exp, cfg)})")
        auroc = image_aurocs(scores, labels, types)
        auroc["pixel"] = pixel_auroc(maps, masks) if maps else None
        if exp.protocol in ("mvtec_ad", "loco"):  # each defect type against the good test images
            auroc["per_type"] = per_type_aurocs(scores, labels, types)
            auroc["pixel_per_type"] = per_type_pixel_aurocs(maps, masks, types) if len(maps) == len(types) else {}
        result = {**base, "status": "ok", "auroc": auroc, "steps": saved["summary"].get("steps"),
                  "train": saved["summary"], "teacher": saved["teacher"], "data": saved["data"],
                  "n_test": len(labels), "device": str(method.device), "torch": torch.__version__,
                  "python": platform.python_version(), "determinism": saved["summary"].get("determinism"),
                  "scale": scale_record(cfg, prof, exp.protocol, len(labels), len(splits.test),
                                        saved["teacher"])}
        if parts:
            result["score_parts"] = score_parts_summary(parts, labels, types)
        plots = plots_dir(exp.profile, exp.id)
        plots.mkdir(parents=True, exist_ok=True)
        expplots.write_roc(plots, labels, scores, exp.id)
        expplots.write_histogram(plots, labels, scores, exp.id)
        with torch.inference_mode():
            expplots.write_montage(plots, method, test, labels, scores, types, maps)
        expplots.write_train_curve(plots, read_json(mdir / "train.json").get("history", []))
        mpath = metrics_path(exp.profile, exp.id)
        write_scores(mpath.parent / SCORES_FILE, [image_ref(r.meta, exp.dataset, splits.info.get("root"))
                                                  for r in test.records], labels, types, scores)
        write_json(mpath, result)
    except BaseException as exc:
        log_failed(exp, "evaluate", tags, {"cfg": cfg}, None, exc)
        record_failure(exp, "evaluate", exc)
        raise
    return result


def main(args: Any) -> None:
    with clean_exit():
        r = run(args.experiment)
    print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r["auroc"].items()})
