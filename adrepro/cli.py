"""`adrepro` command line: the DVC stages call it, users call it. Every command reads params.yaml."""

from __future__ import annotations

import argparse
import re
import sys
from typing import Any, Callable

from .config import PARAMS_FILE, PROFILES, ConfigError, load_params


def _stage(module: str) -> Callable[[Any], None]:
    def call(args: Any) -> None:
        import importlib

        import torch

        params = load_params()
        threads = params["profiles"][params["profile"]].get("torch_threads", 0)
        if threads:
            torch.set_num_threads(threads)
        importlib.import_module(f"adrepro.pipelines.{module}").main(args)

    return call


def _list(args: Any) -> None:
    from .registry import experiments

    for e in experiments(profile=args.profile):
        print(f"{e.id:44s} {e.method:12s} {e.dataset:20s} teacher={e.teacher_id}")


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
    """Switch the active profile: rewrite `profile:` in params.yaml (comments kept) and regenerate dvc.yaml."""
    from . import dvcgen

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
    s.add_argument("--profile", choices=PROFILES)
    s.set_defaults(func=_list)
    s = sub.add_parser("fetch-data", help="stage data@<dataset>")
    s.add_argument("dataset")
    s.set_defaults(func=_stage("fetch_data"))
    s = sub.add_parser("provision-teacher", help="stage teacher@<id>")
    s.add_argument("teacher")
    s.set_defaults(func=_stage("provision_teacher"))
    for name in ("train", "evaluate"):
        s = sub.add_parser(name, help=f"stage {name}@<experiment>")
        s.add_argument("experiment")
        s.set_defaults(func=_stage(name))
    sub.add_parser("latency", help="stage latency").set_defaults(func=_stage("latency"))
    sub.add_parser("track", help="stage track: log finished experiments to MLflow").set_defaults(func=_stage("track"))
    sub.add_parser("report", help="stage report").set_defaults(func=_stage("report"))
    s = sub.add_parser("gate", help="regression gate vs reports/baselines/<profile>.json")
    s.add_argument("--profile", choices=PROFILES)
    s.add_argument("--update", action="store_true", help="write the baseline from the current results")
    s.set_defaults(func=_gate)
    s = sub.add_parser("spread", help="seed-to-seed AUROC spread of a profile run with several seeds")
    s.add_argument("--profile", choices=PROFILES)
    s.add_argument("--write", action="store_true", help="save it as the gate's per-experiment tolerance")
    s.set_defaults(func=_spread)
    s = sub.add_parser("dvc-yaml", help="regenerate dvc.yaml from the registry")
    s.add_argument("--check", action="store_true")
    s.set_defaults(func=_dvc_yaml)
    s = sub.add_parser("profile", help="switch the active profile (params.yaml + dvc.yaml)")
    s.add_argument("name", choices=PROFILES)
    s.set_defaults(func=_profile)
    args = p.parse_args(argv)
    try:
        args.func(args)
    except (ConfigError, FileNotFoundError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except Exception as exc:  # data errors etc.: one clear line plus non-zero exit
        if type(exc).__name__ in ("DataError", "ChecksumError"):
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(2)
        raise


if __name__ == "__main__":
    main()
