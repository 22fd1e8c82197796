"""`adrepro` command line: the DVC stages call it, users call it. Every command reads params.yaml."""

from __future__ import annotations

import argparse
import re
import sys
from typing import Any, Callable

from .config import PARAMS_FILE, ConfigError, check_device, load_params


def _stage(module: str, on_device: bool = False) -> Callable[[Any], None]:
    """A DVC stage; ``on_device`` stages refuse a profile device that is not available (no silent CPU run)."""

    def call(args: Any) -> None:
        import importlib

        import torch

        params = load_params()
        if on_device:
            check_device(params["profiles"][params["profile"]].get("device", "cpu"), f"profiles.{params['profile']}.device")
        threads = params["profiles"][params["profile"]].get("torch_threads", 0)
        if threads:
            torch.set_num_threads(threads)
        importlib.import_module(f"adrepro.pipelines.{module}").main(args)

    return call


def _list(args: Any) -> None:
    from .registry import experiments

    for e in experiments(profile=args.profile):
        print(f"{e.id:44s} {e.method:12s} {e.dataset:20s} teacher={e.teacher_id}")


def _run(args: Any) -> None:
    from .executor import main as run_main

    sys.exit(run_main(args))


def _bench(args: Any) -> None:
    from .bench import main as bench_main

    sys.exit(bench_main(args))


def _check_lock(args: Any) -> None:
    """Before `dvc repro` in CI: exit 1 naming every stage the committed dvc.lock does not match."""
    from .lockcheck import stale_stages

    try:
        stale = stale_stages(targets=args.stages)
    except RuntimeError as exc:  # dvc itself failed: its message, no traceback
        sys.exit(f"error: {exc}")
    for stage, why in stale.items():
        print(f"STALE {stage}: " + "; ".join(why))
    if stale:
        sys.exit(f"error: {len(stale)} stage(s) of the committed dvc.lock were not produced by this code and "
                 "params.yaml: run `dvc repro` and commit dvc.lock with the results")
    print("dvc.lock matches the code and params.yaml")


def _check_results(args: Any) -> None:
    """After `dvc repro` in CI: regenerated AUROCs must equal the committed ones exactly."""
    from .lockcheck import result_differences

    profile = args.profile or load_params()["profile"]
    diffs = result_differences(profile, ref=args.ref)
    for d in diffs:
        print(f"DIFFERS {d}")
    if diffs:
        sys.exit(f"error: {len(diffs)} experiment(s) of results/{profile} differ from {args.ref}: the committed "
                 "numbers are not those this code produces")
    print(f"results/{profile}: regenerated AUROCs equal those committed at {args.ref}")


def _params_doc(args: Any) -> None:
    from .paramsdoc import DOC_FILE, render

    text = render()
    if args.check:
        if not DOC_FILE.is_file() or DOC_FILE.read_text() != text:
            sys.exit(f"error: {DOC_FILE} is stale: run `adrepro params-doc`")
        print(f"{DOC_FILE} is up to date")
    elif args.stdout:
        print(text, end="")
    else:
        DOC_FILE.write_text(text)
        print(f"wrote {DOC_FILE}")


def _dvc_yaml(args: Any) -> None:
    from . import dvcgen

    if args.check:
        if dvcgen.is_stale():
            raise SystemExit("dvc.yaml is stale: run `adrepro dvc-yaml`")
        print("dvc.yaml is up to date")
        return
    dvcgen.write()
    print(f"wrote {dvcgen.DVC_YAML}")


def _profile(args: Any) -> None:
    """Switch the active profile: rewrite `profile:` in params.yaml (comments kept) and regenerate dvc.yaml;
    `profile new NAME --from PROFILE [--data FOLDER]` first adds a profile (adrepro/profiles.py)."""
    from . import dvcgen

    if args.words[0] == "new":
        if len(args.words) != 2 or not args.source:
            raise ConfigError("usage: adrepro profile new NAME --from PROFILE [--data FOLDER] [--switch]")
        from .profiles import create

        args.name = args.words[1]
        create(args.name, args.source, args.data, args.layout, args.variants.split(",") if args.variants else None)
        print(f"added profile '{args.name}' (a copy of '{args.source}') to {PARAMS_FILE.name}")
        if not args.switch:
            print(f"switch to it with `adrepro profile {args.name}`")
            return
    elif len(args.words) != 1 or any((args.source, args.data, args.layout, args.variants, args.switch)):
        raise ConfigError("usage: adrepro profile NAME  |  adrepro profile new NAME --from PROFILE [...]")
    else:
        args.name = args.words[0]
    profiles = load_params()["profiles"]  # an invalid file is reported before anything is rewritten
    if args.name not in profiles:
        from .schema import suggest

        raise ConfigError(f"{PARAMS_FILE}: no profile '{args.name}' under profiles{suggest(args.name, profiles)}; "
                          f"known: {', '.join(profiles)}")
    text = PARAMS_FILE.read_text()
    new, n = re.subn(r"(?m)^profile:\s*\S+", f"profile: {args.name}", text, count=1)
    if n != 1:
        raise ConfigError(f"{PARAMS_FILE}: no top-level 'profile:' line to rewrite")
    PARAMS_FILE.write_text(new)
    try:
        dvcgen.write(load_params())
    except Exception:
        PARAMS_FILE.write_text(text)  # leave nothing half-switched
        raise
    print(f"profile is now '{args.name}'; run `dvc repro`")


def _gate(args: Any) -> None:
    from .gate import run

    params = load_params()
    sys.exit(run(args.profile or params["profile"], params["gate"]["tolerance"], update=args.update))


def _spread(args: Any) -> None:
    from .gate import seed_spread

    profile = args.profile or load_params()["profile"]
    rows = seed_spread(profile)
    for r in rows:
        print(f"{r['experiment']:44s} {r['auroc']:10s} n={r['seeds']} min={r['min']:.4f} max={r['max']:.4f} range={r['range']:.4f}")
    if rows:
        worst = max(rows, key=lambda r: r["range"])
        print(f"largest seed-to-seed range: {worst['range']:.4f} ({worst['experiment']} {worst['auroc']})")
    if args.write:
        from .gate import spread_path
        from .results import write_json

        data: dict[str, dict[str, float]] = {}
        for r in rows:
            data.setdefault(r["experiment"], {})[r["auroc"]] = round(r["range"], 4)
        write_json(spread_path(profile), data)
        print(f"wrote {spread_path(profile)}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="adrepro", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("list", help="list the experiments of a profile")
    s.add_argument("--profile", help="a profile of params.yaml (default: the active one)")
    s.set_defaults(func=_list)
    s = sub.add_parser("fetch-data", help="stage data@<dataset>")
    s.add_argument("dataset")
    s.set_defaults(func=_stage("fetch_data"))
    s = sub.add_parser("provision-teacher", help="stage teacher@<id>")
    s.add_argument("teacher")
    s.set_defaults(func=_stage("provision_teacher", on_device=True))
    for name in ("train", "evaluate"):
        s = sub.add_parser(name, help=f"stage {name}@<experiment>")
        s.add_argument("experiment")
        s.set_defaults(func=_stage(name, on_device=True))
    s = sub.add_parser("train-group", help="train EfficientAD experiments that share an architecture as one run "
                                           "group, writing each one's model dir and train.json (not smoke)")
    s.add_argument("experiments", nargs="+", metavar="experiment")
    s.set_defaults(func=_stage("train_group", on_device=True))
    sub.add_parser("latency", help="stage latency").set_defaults(func=_stage("latency", on_device=True))
    sub.add_parser("track", help="stage track: log finished experiments to MLflow").set_defaults(func=_stage("track"))
    sub.add_parser("report", help="stage report").set_defaults(func=_stage("report"))
    s = sub.add_parser("gate", help="regression gate vs reports/baselines/<profile>.json")
    s.add_argument("--profile", help="a profile of params.yaml (default: the active one)")
    s.add_argument("--update", action="store_true", help="write the baseline from the current results")
    s.set_defaults(func=_gate)
    s = sub.add_parser("spread", help="seed-to-seed AUROC spread of a profile run with several seeds")
    s.add_argument("--profile", help="a profile of params.yaml (default: the active one)")
    s.add_argument("--write", action="store_true", help="save it as the gate's per-experiment tolerance")
    s.set_defaults(func=_spread)
    s = sub.add_parser("run", help="run the stale stages of dvc.yaml locally or on Ray, optionally within a time budget")
    s.add_argument("--executor", choices=("local", "ray"), help="default: params.yaml run.executor (local)")
    s.add_argument("--address", help="Ray cluster address (auto, ray://host:10001); default: a local Ray instance")
    s.add_argument("--budget", help="stop starting stages after this long, e.g. 25m, 1h30m (priority: run.priority)")
    s.add_argument("--jobs", type=int, help="local executor: stages at once (default: run.jobs)")
    s.add_argument("--force", action="store_true", help="run every stage, stale or not")
    s.add_argument("--dry-run", action="store_true", help="print the plan (priority, stage, command) and exit")
    s.set_defaults(func=_run)
    s = sub.add_parser("bench", help="EfficientAD-S/-M vs anomalib: equality, latency, throughput, training steps/s")
    s.add_argument("--quick", action="store_true", help="CI settings: tiny iteration counts, EfficientAD-S only")
    s.add_argument("--device", default="cpu", help="cpu | cuda (default: cpu)")
    s.add_argument("--sizes", nargs="+", choices=("S", "M"), help="default: S (quick), S and M (full)")
    s.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    s.add_argument("--out", help="JSON folder (default: results/bench)")
    s.add_argument("--report", help="Markdown report (default: reports/bench.md)")
    s.add_argument("--render", action="store_true", help="only re-render the report from the JSON files")
    s.set_defaults(func=_bench)
    s = sub.add_parser("check-lock", help="CI, before dvc repro: the committed dvc.lock matches code and params")
    s.add_argument("stages", nargs="*", help="only these stages (default: all)")
    s.set_defaults(func=_check_lock)
    s = sub.add_parser("check-results", help="CI, after dvc repro: regenerated AUROCs equal the committed ones")
    s.add_argument("--profile", help="default: the active profile")
    s.add_argument("--ref", default="HEAD", help="git revision holding the committed results (default: HEAD)")
    s.set_defaults(func=_check_results)
    s = sub.add_parser("params-doc", help="write docs/params.md (every params.yaml key, from adrepro/schema.py)")
    s.add_argument("--check", action="store_true", help="exit 1 if docs/params.md is stale")
    s.add_argument("--stdout", action="store_true", help="print instead of writing")
    s.set_defaults(func=_params_doc)
    s = sub.add_parser("dvc-yaml", help="regenerate dvc.yaml from the registry")
    s.add_argument("--check", action="store_true")
    s.set_defaults(func=_dvc_yaml)
    s = sub.add_parser("profile", help="switch the active profile (params.yaml + dvc.yaml), or add one: "
                                       "`profile new NAME --from PROFILE [--data FOLDER]` (docs/data.md)")
    s.add_argument("words", nargs="+", metavar="NAME", help="a profile of params.yaml, or `new NAME`")
    s.add_argument("--from", dest="source", help="new: the profile to copy (smoke, paper, cpu, ...)")
    s.add_argument("--data", help="new: an MVTec-AD- or LOCO-layout folder, declared as datasets.custom.NAME")
    s.add_argument("--layout", choices=("mvtec_ad", "mvtec_loco"), help="new: the folder's layout (default: detected)")
    s.add_argument("--variants", help="new: comma-separated variants to run on it (default: all registered)")
    s.add_argument("--switch", action="store_true", help="new: also make it the active profile")
    s.set_defaults(func=_profile)
    args = p.parse_args(argv)
    try:
        args.func(args)
    except (ConfigError, FileNotFoundError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except Exception as exc:  # data errors etc.: one clear line plus non-zero exit
        if type(exc).__name__ in ("DataError", "ChecksumError", "TeacherFileError"):
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(2)
        raise


if __name__ == "__main__":
    main()
