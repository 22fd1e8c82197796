"""CI regression gate: current AUROCs vs the committed baseline ``reports/baselines/<profile>.json``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import REPO_ROOT
from .results import AUROC_KEYS, load_all, read_json, write_json

BASELINE_DIR = REPO_ROOT / "reports" / "baselines"


def baseline_path(profile: str) -> Path:
    return BASELINE_DIR / f"{profile}.json"


def current(profile: str) -> dict[str, dict[str, float]]:
    runs = load_all(profile).get(profile, {})
    return {exp: {k: v for k, v in m.get("auroc", {}).items() if k in AUROC_KEYS and isinstance(v, (int, float))}
            for exp, m in runs.items() if m.get("status", "ok") == "ok"}


def spread_path(profile: str) -> Path:
    return BASELINE_DIR / f"{profile}.spread.json"


def _seedless(exp: str) -> str:
    return exp.rsplit("-s", 1)[0]


def compare(base: dict[str, dict[str, float]], cur: dict[str, dict[str, float]], tolerance: float,
            spread: dict[str, dict[str, float]] | None = None) -> list[dict[str, Any]]:
    """One row per baseline AUROC: status ok | REGRESSION | MISSING (no current value). The allowed drop is
    ``tolerance``, widened to the measured seed-to-seed range of that experiment's AUROC where one is known."""
    rows = []
    spread = spread or {}
    for exp in sorted(base):
        for key, b in sorted(base[exp].items()):
            tol = max(tolerance, spread.get(_seedless(exp), {}).get(key, 0.0))
            c = cur.get(exp, {}).get(key)
            row = {"experiment": exp, "auroc": key, "baseline": b, "current": c, "delta": None, "tolerance": tol}
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
    """Returns the process exit code: 0 pass, 1 regression or missing metrics, 2 no baseline."""
    cur = current(profile)
    path = baseline_path(profile)
    if update:
        write_json(path, cur)
        print(f"[gate] wrote baseline {path} ({len(cur)} experiments)")
        return 0
    if not path.is_file():
        print(f"[gate] no baseline {path}; create it with `adrepro gate --update`")
        return 2
    spread = read_json(spread_path(profile)) if spread_path(profile).is_file() else {}
    rows = compare(read_json(path), cur, tolerance, spread)
    bad = [r for r in rows if r["status"] != "ok"]
    print(f"[gate] profile {profile}: {len(rows)} AUROCs vs {path.relative_to(REPO_ROOT)} (tolerance {tolerance}, "
          f"widened to the seed-to-seed range of {len(spread)} experiment(s) in {spread_path(profile).name})")
    print(format_table(bad if bad else rows))
    if bad:
        print(f"[gate] FAILED: {len(bad)} AUROC(s) dropped by more than {tolerance} or are missing")
        return 1
    print("[gate] passed")
    return 0
