"""Stage `evaluate@<exp>`: score the test split; write results/<profile>/<exp>/metrics.json and the ROC curve
and anomaly-map montage to plots/<profile>/<exp>/ (the `track` stage logs them to MLflow)."""

from __future__ import annotations

import platform
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from adrepro.datasets.base import collate  # noqa: E402
from adrepro.datasets.registry import load_splits  # noqa: E402
from adrepro.methods.base import build_method  # noqa: E402
from adrepro.metrics import image_aurocs, pixel_auroc, roc_curve  # noqa: E402
from adrepro.results import git_sha, metrics_path, write_json  # noqa: E402
from adrepro.tracking import log_failed, run_tags  # noqa: E402

from .common import load_experiment, load_teacher, model_dir, not_runnable_reason, plots_dir  # noqa: E402

BATCH = 16


def score(method: Any, dataset: Any) -> tuple[list[float], list[int], list[str], list, list]:
    scores, labels, types, maps, masks = [], [], [], [], []
    idx = list(range(len(dataset)))
    for start in tqdm(range(0, len(idx), BATCH), desc="evaluate", mininterval=2.0, leave=False):
        images, y, m, meta = collate([dataset[i] for i in idx[start:start + BATCH]])
        s, amap = method.predict(images)
        scores += s.float().tolist()
        labels += y.tolist()
        types += [d["anomaly_type"] for d in meta]
        if amap is not None and m is not None:
            maps += list(amap.float())
            masks += list(m)
    return scores, labels, types, maps, masks


def _roc_figure(scores: list[float], labels: list[int], title: str) -> Any:
    fpr, tpr = roc_curve(labels, scores)
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot(fpr, tpr, lw=1.5)
    ax.plot([0, 1], [0, 1], "k--", lw=0.5)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title)
    fig.tight_layout()
    return fig


def _montage(method: Any, dataset: Any, n: int = 6) -> Any:
    """First anomalous and normal test images with their anomaly maps."""
    picks = [i for i in range(len(dataset)) if dataset[i][1] == 1][: n // 2]
    picks += [i for i in range(len(dataset)) if dataset[i][1] == 0][: n - len(picks)]
    images, _, _, meta = collate([dataset[i] for i in picks])
    scores, maps = method.predict(images)
    fig, axes = plt.subplots(2, len(picks), figsize=(2 * len(picks), 4.2), squeeze=False)
    for j in range(len(picks)):
        axes[0, j].imshow(images[j].permute(1, 2, 0).clamp(0, 1).numpy())
        axes[0, j].set_title(f"{meta[j]['anomaly_type'][:14]}\n{float(scores[j]):.3g}", fontsize=7)
        axes[1, j].imshow(maps[j].float().numpy(), cmap="jet")
        for ax in axes[:, j]:
            ax.axis("off")
    fig.tight_layout()
    return fig


def run(exp_id: str) -> dict[str, Any]:
    params, exp, cfg = load_experiment(exp_id)
    mdir = model_dir(exp.profile, exp.id)
    base = {"experiment": exp.id, "variant": exp.variant.id, "method": exp.method, "paper": exp.variant.paper,
            "profile": exp.profile, "protocol": exp.protocol, "dataset": exp.dataset, "category": exp.category,
            "seed": exp.seed, "git_sha": git_sha()}
    reason = not_runnable_reason(exp)
    if reason:
        result = {**base, "status": "not_runnable", "reason": reason,
                  "auroc": {k: None for k in ("image", "logical", "structural", "mean_ls", "pixel")},
                  "teacher": {"id": exp.teacher_id, "paper_teacher": None}}
        write_json(metrics_path(exp.profile, exp.id), result)
        return result
    saved = torch.load(mdir / "model.pt", map_location="cpu", weights_only=False)
    tags = run_tags(exp, saved["teacher"], str(cfg.get("device", "cpu")))
    try:
        method = build_method(exp.method, cfg, load_teacher(params, exp))
        method.load_state_dict(saved["state"])
        for m in method.inference_modules():
            m.to(method.device).eval()
        splits = load_splits(exp.dataset, exp.category, cfg["image_size"], exp.seed, params)
        with torch.inference_mode():
            scores, labels, types, maps, masks = score(method, splits.test)
        auroc = image_aurocs(scores, labels, types)
        auroc["pixel"] = pixel_auroc(maps, masks) if maps else None
        result = {**base, "status": "ok", "auroc": auroc, "steps": saved["summary"].get("steps"),
                  "train": saved["summary"], "teacher": saved["teacher"], "data": saved["data"],
                  "n_test": len(labels), "device": str(method.device), "torch": torch.__version__,
                  "python": platform.python_version()}
        plots = plots_dir(exp.profile, exp.id)
        plots.mkdir(parents=True, exist_ok=True)
        _roc_figure(scores, labels, exp.id).savefig(plots / "roc_curve.png", dpi=80)
        if maps:
            with torch.inference_mode():
                _montage(method, splits.test).savefig(plots / "anomaly_maps.png", dpi=80)
        plt.close("all")
    except BaseException as exc:
        log_failed(exp, "evaluate", tags, {"cfg": cfg}, None, exc)
        raise
    write_json(metrics_path(exp.profile, exp.id), result)
    return result


def main(args: Any) -> None:
    r = run(args.experiment)
    print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r["auroc"].items()})
