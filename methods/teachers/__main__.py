"""``python -m adrepro.methods.teachers [ID ...] [--profile P] [--seed S]``: provision teachers (a DVC stage's
command) and print their provenance as JSON. Without ids: every teacher the profile assigns to a role."""

from __future__ import annotations

import argparse
import json
import sys

from adrepro.config import load_params

from .provision import provision


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m adrepro.methods.teachers", description=__doc__.split("\n")[0])
    ap.add_argument("ids", nargs="*", help="teacher ids (default: the profile's teachers)")
    ap.add_argument("--profile", default=None, help="params.yaml profile (default: the active one)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    params = load_params()
    profile = args.profile or params["profile"]
    ids = args.ids or sorted({t for t in params["profiles"][profile]["teachers"].values() if t})
    out = {tid: provision(tid, params, profile, args.seed).provenance for tid in ids}
    json.dump(out, sys.stdout, indent=2, default=str)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
