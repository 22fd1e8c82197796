"""CI regression gate: current AUROCs vs the committed baseline ``reports/baselines/<profile>.json``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from . import REPO_ROOT
from .results import AUROC_KEYS, load_all, read_json, write_json

BASELINE_DIR = REPO_ROOT / "reports" / "baselines"


def baseline_path(profile: str) -> Path:
    return BASELINE_DIR / f"{profile}.json"


def _nonfinite(m: dict[str, Any]) -> list[str]:
    return [k for k, v in (m.get("auroc") or {}).items() if isinstance(v, float) and not math.isfinite(v)]


def current(profile: str) -> dict[str, dict[str, float]]:
    """AUROCs of the experiments whose result is "ok" (and finite: see ``failures``)."""
    runs = load_all(profile).get(profile, {})
    return {exp: {k: v for k, v in m.get("auroc", {}).items() if k in AUROC_KEYS and isinstance(v, (int, float))}
            for exp, m in runs.items() if m.get("status", "ok") == "ok" and not _nonfinite(m)}


def failures(profile: str) -> dict[str, str]:
    """Experiments whose result is FAILED (or holds a non-finite AUROC) -> why: a failure, never a number."""
    out = {}
    for exp, m in load_all(profile).get(profile, {}).items():
        if m.get("status") == "FAILED":
            out[exp] = f"{m.get('failed_stage', '?')} failed: {str(m.get('error', '?')).splitlines()[0][:200]}"
        elif m.get("status", "ok") == "ok" and _nonfinite(m):
            out[exp] = f"non-finite AUROC {_nonfinite(m)}"
    return out


def spread_path(profile: str) -> Path:
    return BASELINE_DIR / f"{profile}.spread.json"


def _seedless(exp: str) -> str:
    return exp.rsplit("-s", 1)[0]


def compare(base: dict[str, dict[str, float]], cur: dict[str, dict[str, float]], tolerance: float,
            spread: dict[str, dict[str, float]] | None = None,
            failed: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """One row per baseline AUROC: status ok | REGRESSION | MISSING (no current value) | FAILED (the
    experiment's result is FAILED: ``failed`` maps it to why), plus one FAILED row per failed experiment
    absent from the baseline. The allowed drop is ``tolerance``, widened to the measured seed-to-seed
    range of that experiment's AUROC where one is known."""
    rows = []
    spread = spread or {}
    failed = failed or {}
    for exp in sorted(set(failed) - set(base)):
        rows.append({"experiment": exp, "auroc": "-", "baseline": None, "current": None, "delta": None,
                     "tolerance": None, "status": "FAILED", "why": failed[exp]})
    for exp in sorted(base):
        for key, b in sorted(base[exp].items()):
            tol = max(tolerance, spread.get(_seedless(exp), {}).get(key, 0.0))
            c = cur.get(exp, {}).get(key)
            row = {"experiment": exp, "auroc": key, "baseline": b, "current": c, "delta": None, "tolerance": tol}
            if exp in failed:
                rows.append({**row, "current": None, "status": "FAILED", "why": failed[exp]})
                continue
            if c is None:
                rows.append({**row, "status": "MISSING"})
                continue
            rows.append({**row, "delta": c - b, "status": "REGRESSION" if c - b < -tol else "ok"})
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    def f(key: str, v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:+.4f}" if key == "delta" else f"{v:.4f}"
        return str(v)

    headers = ["experiment", "auroc", "baseline", "current", "delta", "tolerance", "status"]
    table = [[f(h, r[h]) for h in headers] for r in rows]
    widths = [max(len(h), *(len(row[i]) for row in table)) if table else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in table]
    return "\n".join(lines)


def seed_spread(profile: str) -> list[dict[str, Any]]:
    """Per experiment (seed suffix removed) and AUROC: min, max and range over the seeds on disk.
    Run a profile with several seeds (params `protocols.*.seeds`) to justify `gate.tolerance`."""
    groups: dict[tuple[str, str], list[float]] = {}
    for exp, aurocs in current(profile).items():
        for key, value in aurocs.items():
            groups.setdefault((_seedless(exp), key), []).append(value)
    return [{"experiment": e, "auroc": k, "seeds": len(v), "min": min(v), "max": max(v), "range": max(v) - min(v)}
            for (e, k), v in sorted(groups.items()) if len(v) > 1]


def run(profile: str, tolerance: float, update: bool = False) -> int:
    """Returns the process exit code: 0 pass or no baseline (a profile without one is not gated), 1 regression,
    missing or FAILED result (``--update`` refuses to write a baseline while any result is FAILED)."""
    cur = current(profile)
    path = baseline_path(profile)
    if update:
        failed = failures(profile)
        if failed:
            for exp, why in sorted(failed.items()):
                print(f"[gate] {exp}: {why}")
            print(f"[gate] not writing a baseline: {len(failed)} experiment(s) FAILED")
            return 1
        write_json(path, cur)
        print(f"[gate] wrote baseline {path} ({len(cur)} experiments)")
        return 0
    if not path.is_file():  # a user's own profile (docs/data.md): nothing to regress against
        print(f"[gate] profile {profile}: no baseline, not gated ({path.relative_to(REPO_ROOT)} does not exist; "
              "`adrepro gate --update` creates one)")
        return 0
    spread = read_json(spread_path(profile)) if spread_path(profile).is_file() else {}
    rows = compare(read_json(path), cur, tolerance, spread, failures(profile))
    bad = [r for r in rows if r["status"] != "ok"]
    print(f"[gate] profile {profile}: {len(rows)} AUROCs vs {path.relative_to(REPO_ROOT)} (tolerance {tolerance}, "
          f"widened to the seed-to-seed range of {len(spread)} experiment(s) in {spread_path(profile).name})")
    print(format_table(bad if bad else rows))
    if bad:
        for exp, why in sorted({r["experiment"]: r["why"] for r in bad if "why" in r}.items()):
            print(f"[gate] {exp}: {why}")
        print(f"[gate] FAILED: {len(bad)} AUROC(s) dropped by more than {tolerance}, are missing or failed")
        return 1
    print("[gate] passed")
    return 0
