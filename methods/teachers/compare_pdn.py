"""Issue 6 experiment: EfficientAD on MVTec AD ``bottle`` with a PDN teacher distilled from the offline
substitute (EfficientNet-Lite0 on CIFAR-10 JPEGs) versus a randomly initialised PDN, same short schedule.

    python -m adrepro.methods.teachers.compare_pdn --distill-steps 1200 --distill-image-size 32 --distill-batch-size 16
        --train-steps 1000 --seed 0 --out /tmp/cmp      (one command; the figures in docs/teachers.md)

Writes ``<out>/compare_pdn.json`` (AUROCs, steps, wall times, teacher provenance) and prints a
Markdown table. CPU by default; every stage resumes from its checkpoint when re-run.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch
from sklearn.metrics import roc_auc_score

from adrepro.config import load_params
from adrepro.methods.base import FitContext, Teacher

from .distill import distill_pdn
from .penalty import penalty_images
from .provision import read_teacher_file, save_teacher_file, state_sha256
from .registry import build_module


def random_pdn(path: Path, out_channels: int, width: float, seed: int) -> Teacher:
    kwargs = {"out_channels": out_channels, "width": width}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        state = build_module("pdn_s", kwargs).state_dict()
    prov = save_teacher_file(path, "pdn_s", kwargs, state, {
        "id": "random_pdn_s", "source": "random", "sha256": state_sha256(state), "paper_teacher": False,
        "substitute_reason": "randomly initialised PDN (control)", "licence": "n/a (generated)", "seed": seed})
    return Teacher("random_pdn_s", path, prov)


def evaluate(method, test, batch_size: int = 16) -> float:
    scores, labels = [], []
    for i in range(0, len(test), batch_size):
        items = [test[j] for j in range(i, min(i + batch_size, len(test)))]
        s, _ = method.predict(torch.stack([it[0] for it in items]))
        scores += s.tolist()
        labels += [int(it[1]) for it in items]
    return float(roc_auc_score(labels, scores))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/adrepro_compare_pdn"), help="work/output folder")
    ap.add_argument("--distill-steps", type=int, default=300)
    ap.add_argument("--distill-image-size", type=int, default=64, help="PDN input size (backbone sees 2x)")
    ap.add_argument("--distill-batch-size", type=int, default=8)
    ap.add_argument("--distill-lr", type=float, default=5e-4)
    ap.add_argument("--train-steps", type=int, default=300, help="EfficientAD steps (batch 1, as the paper)")
    ap.add_argument("--image-size", type=int, default=64, help="EfficientAD input size")
    ap.add_argument("--width", type=float, default=0.5, help="PDN width multiplier (teacher and student)")
    ap.add_argument("--out-channels", type=int, default=128)
    ap.add_argument("--source", default="efficientnet_lite0", help="backbone to distil from")
    ap.add_argument("--images", default="cifar10_jpeg", help="distillation + penalty images (penalty.KINDS)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (1 is fastest on busy shared cores)")
    ap.add_argument("--device", default="cpu", help="cuda to use a GPU (falls back to CPU)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from adrepro.datasets.registry import load_splits
    from adrepro.methods.efficientad.method import EfficientAD

    params = copy.deepcopy(load_params())
    params["paths"]["teachers_root"] = str(args.out / "teachers")
    out = args.out
    t0 = time.perf_counter()
    losses = distill_pdn(args.source, params, args.distill_steps, args.distill_image_size, args.seed,
                         out / "teachers" / "pdn_distilled.pt", batch_size=args.distill_batch_size,
                         lr=args.distill_lr, images=args.images, out_channels=args.out_channels, width=args.width,
                         profile="offline", teacher_id=f"pdn_s_from_{args.source}", device=args.device)
    distill_wall = time.perf_counter() - t0
    distilled = Teacher(f"pdn_s_from_{args.source}", out / "teachers" / "pdn_distilled.pt",
                        read_teacher_file(out / "teachers" / "pdn_distilled.pt")["provenance"])
    teachers = {"distilled": distilled,
                "random": random_pdn(out / "teachers" / "pdn_random.pt", args.out_channels, args.width, args.seed)}
    splits = load_splits("mvtec_ad_bottle_384", "bottle", args.image_size, args.seed, params)
    penalty, penalty_prov = penalty_images(args.images, params, args.image_size, args.seed)
    cfg = {"device": args.device, "image_size": args.image_size, "steps": args.train_steps, "pdn_width": args.width,
           "out_channels": args.out_channels, "ae_latent": 32, "checkpoint_every": max(1, args.train_steps // 3)}
    result = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "distill": {"steps": args.distill_steps, "wall_s": round(distill_wall, 1),
                          "loss_first10": sum(losses[:10]) / max(1, len(losses[:10])),
                          "loss_last10": sum(losses[-10:]) / max(1, len(losses[-10:])),
                          "loss_curve_every10": [round(sum(losses[i:i + 10]) / len(losses[i:i + 10]), 4)
                                                 for i in range(0, len(losses), 10)]},
              "data": splits.info.get("counts"), "penalty": penalty_prov, "runs": {}}
    for name, teacher in teachers.items():
        method = EfficientAD(dict(cfg, seed=args.seed), teacher)
        t1 = time.perf_counter()
        summary = method.fit(splits.train, splits.val, FitContext(f"compare-pdn-{name}", out / "ckpt" / name,
                                                                  args.seed, extra={"penalty": penalty}))
        train_wall = time.perf_counter() - t1
        result["runs"][name] = {"image_auroc": round(evaluate(method, splits.test), 4), "steps": summary["steps"],
                                "train_wall_s": round(train_wall, 1), "teacher": {
                                    k: teacher.provenance.get(k) for k in ("id", "source", "sha256", "paper_teacher",
                                                                          "substitute_reason")}}
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare_pdn.json").write_text(json.dumps(result, indent=2))
    print("| teacher | image AUROC (bottle) | EfficientAD steps | train wall s |\n|---|---|---|---|")
    for name, r in result["runs"].items():
        print(f"| {name} | {r['image_auroc']:.4f} | {r['steps']} | {r['train_wall_s']} |")
    d = result["distill"]
    print(f"distillation: {args.distill_steps} steps, {distill_wall:.0f} s, loss {d['loss_first10']:.3f}"
          f" -> {result['distill']['loss_last10']:.3f}")
    return result


if __name__ == "__main__":
    main()
