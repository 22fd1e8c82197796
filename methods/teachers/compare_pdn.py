"""Teacher study (docs/teachers.md): EfficientAD with a distilled PDN teacher versus a random PDN of the same shape,
at a profile's scale, on every category the profile runs paper A's baseline on, over several seeds.

    python -m adrepro.methods.teachers.compare_pdn --profile cpu --seeds 0 1 2 --recipe R1 \
        --distill steps=800 image_size=64 batch_size=8 lr=5e-4 images=cifar10_jpeg --out results/teacher_study

Each run is the profile's experiment ``<variant>-<protocol>-<category>-s<seed>`` (same data, scale, penalty
images and hyperparameters as ``dvc repro``) with its teacher swapped: (a) the distilled PDN (``--teacher FILE``,
or distilled here with ``--distill``), (b) a random PDN-S seeded with the run's seed. ``--set KEY=VALUE`` overrides
EfficientAD cfg keys for both (e.g. ``lr=1e-3``). Writes ``<out>/<recipe>.json`` after every run (re-running skips
finished runs) and prints the table with mean ± sd and the criterion: distilled mean − random mean greater than the
larger seed-to-seed sd, on every category.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from sklearn.metrics import roc_auc_score

from adrepro.config import load_params
from adrepro.methods.base import FitContext, Teacher

from .distill import distill_pdn
from .penalty import penalty_images
from .provision import read_teacher_file, save_teacher_file, state_sha256
from .registry import build_module


def random_pdn(path: Path, arch: str, kwargs: dict[str, Any], seed: int) -> Teacher:
    """A randomly initialised PDN (PyTorch's default init, seeded) of the given shape: the control teacher."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        state = build_module(arch, kwargs).state_dict()
    prov = save_teacher_file(path, arch, kwargs, state, {
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


def _kv(pairs: list[str]) -> dict[str, Any]:
    out = {}
    for p in pairs:
        if "=" not in p:
            raise SystemExit(f"error: expected KEY=VALUE, got {p!r}")
        k, v = p.split("=", 1)
        out[k] = yaml.safe_load(v)
    return out


def summarise(runs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per category: mean/sd per teacher over seeds, the effect and whether it exceeds the larger sd."""
    out: dict[str, dict[str, Any]] = {}
    for cat in sorted({r["category"] for r in runs.values()}):
        stats = {}
        for t in ("distilled", "random"):
            v = [r["image_auroc"] for r in runs.values() if r["category"] == cat and r["teacher_kind"] == t]
            stats[t] = {"n": len(v), "mean": statistics.fmean(v) if v else None,
                        "sd": statistics.stdev(v) if len(v) > 1 else None, "values": v}
        d, r = stats["distilled"], stats["random"]
        effect = d["mean"] - r["mean"] if d["n"] and r["n"] else None
        spread = max(d["sd"] or 0.0, r["sd"] or 0.0) if d["n"] > 1 and r["n"] > 1 else None
        out[cat] = {**stats, "effect": effect, "spread": spread,
                    "beats_random": None if effect is None or spread is None else effect > spread}
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="cpu", help="profile whose experiments (scale, data, penalty) are run")
    ap.add_argument("--variant", default="a-t2-e1", help="paper A variant (default: the EfficientAD baseline)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--recipe", required=True, help="label of this teacher recipe (output file name)")
    ap.add_argument("--teacher", type=Path, help="distilled teacher file (default: distil with --distill)")
    ap.add_argument("--distill", nargs="*", default=[], metavar="KEY=VALUE",
                    help="distill_pdn settings: steps, image_size, batch_size, lr, images, source, seed")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="EfficientAD cfg overrides (both teachers)")
    ap.add_argument("--categories", nargs="*", help="only these categories (default: all the profile runs)")
    ap.add_argument("--out", type=Path, default=Path("results/teacher_study"))
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from adrepro.datasets.registry import load_splits
    from adrepro.methods.efficientad.method import EfficientAD
    from adrepro.registry import experiments

    params = copy.deepcopy(load_params())
    params["profile"] = args.profile
    work = args.out / f"{args.recipe}.work"
    out_file = args.out / f"{args.recipe}.json"
    result = json.loads(out_file.read_text()) if out_file.is_file() else {"recipe": args.recipe, "runs": {}}
    if args.teacher:
        teacher_path = args.teacher
    else:
        d = _kv(args.distill)
        teacher_path = work / "pdn_distilled.pt"
        if not teacher_path.is_file():
            t0 = time.perf_counter()
            params["paths"]["teachers_root"] = str(work / "teachers")
            losses = distill_pdn(d.pop("source", "efficientnet_lite0"), params, int(d.pop("steps")),
                                 int(d.pop("image_size")), int(d.pop("seed", 0)), teacher_path,
                                 profile=args.profile, **d)
            result["distill_wall_s"] = round(time.perf_counter() - t0, 1)
            result["distill_loss_every100"] = [round(statistics.fmean(losses[i:i + 100]), 4)
                                               for i in range(0, len(losses), 100)]
    tfile = read_teacher_file(teacher_path)
    distilled = Teacher(tfile["provenance"]["id"], teacher_path, tfile["provenance"])
    result["teacher"] = {k: distilled.provenance.get(k) for k in ("id", "source", "sha256", "distill")}
    result["set"] = _kv(args.set)
    exps = [e for e in experiments(params, args.profile) if e.variant.id == args.variant and e.seed in args.seeds
            and (not args.categories or e.category in args.categories)]
    exps = sorted({(e.protocol, e.category, e.seed): e for e in exps}.values(), key=lambda e: (e.category, e.seed))
    if not exps:
        raise SystemExit(f"error: profile {args.profile!r} runs no {args.variant} experiment with seeds {args.seeds}")
    from adrepro.results import git_sha

    result["git_sha"] = git_sha()  # the code of the runs added by this call
    for exp in exps:
        cfg = dict(exp.method_config(params), **result["set"])
        result["cfg"] = {k: v for k, v in cfg.items() if k not in ("seed", "protocol")}  # as run (lr, steps, size…)
        splits = load_splits(exp.dataset, exp.category, cfg["image_size"], exp.seed, params,
                             cfg.get("val_fraction"))
        penalty, _ = penalty_images(params["profiles"][args.profile]["penalty_images"], params, cfg["image_size"],
                                    exp.seed)
        for kind in ("distilled", "random"):
            key = f"{exp.id}:{kind}"
            if key in result["runs"]:
                continue
            teacher = distilled if kind == "distilled" else random_pdn(
                work / f"random_s{exp.seed}.pt", tfile["arch"], tfile["kwargs"], exp.seed)
            method = EfficientAD(cfg, teacher)
            t1 = time.perf_counter()
            method.fit(splits.train, splits.val, FitContext(f"study-{key}", work / "ckpt" / key.replace(":", "-"),
                                                            exp.seed, extra={"penalty": penalty}))
            result["runs"][key] = {"experiment": exp.id, "category": exp.category, "seed": exp.seed,
                                   "teacher_kind": kind, "teacher_sha256": teacher.provenance.get("sha256"),
                                   "image_auroc": round(evaluate(method, splits.test), 4),
                                   "wall_s": round(time.perf_counter() - t1, 1)}
            result["summary"] = summarise(result["runs"])
            out_file.parent.mkdir(parents=True, exist_ok=True)
            out_file.write_text(json.dumps(result, indent=2))
            print(key, result["runs"][key]["image_auroc"], flush=True)
    result["summary"] = summarise(result["runs"])
    out_file.write_text(json.dumps(result, indent=2))
    print(f"| recipe {args.recipe} | distilled | random | effect | spread | beats random |\n|---|---|---|---|---|---|")
    for cat, s in result["summary"].items():
        def f(t):
            return f"{s[t]['mean']:.4f} ± {s[t]['sd'] or 0:.4f} (n={s[t]['n']})" if s[t]["n"] else "—"
        print(f"| {cat} | {f('distilled')} | {f('random')} | {s['effect']:+.4f} | {s['spread'] or 0:.4f} | "
              f"{s['beats_random']} |")
    return result


if __name__ == "__main__":
    main()
