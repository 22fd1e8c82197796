"""Table rows built from result dicts for the report's per-run, latency and analogue sections (``adrepro.report``)."""

from __future__ import annotations

from statistics import fmean, stdev
from typing import TYPE_CHECKING, Any

from . import results as results_mod
from .provenance import data_text, provenance, short_sha, teacher_text
from .registry import VARIANTS_BY_ID

if TYPE_CHECKING:
    from .report import ResultIndex


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _auroc_cells(m: dict[str, Any]) -> dict[str, str]:
    return {k: (_pct(v) if (v := (m.get("auroc") or {}).get(k)) is not None else "—") for k in results_mod.AUROC_KEYS}


def run_rows(profile: str, metrics: dict[str, dict[str, Any]], latency: dict[str, Any],
             paper: str | None) -> list[dict[str, str]]:
    """One line per experiment of a profile (for the smoke / other-profile sections)."""
    rows = []
    for exp_id, m in sorted(metrics.items()):
        if paper and m.get("paper") not in (paper, None):
            continue
        lat = latency.get(exp_id) or {}
        rows.append({
            "experiment": exp_id, "variant": str(m.get("variant", "?")), "status": str(m.get("status", "?")),
            "reason": str(m.get("reason") or ""), "dataset": f"{m.get('dataset', '?')}/{m.get('category', '?')}",
            "seed": str(m.get("seed", "?")), **_auroc_cells(m), "teacher": teacher_text(m), "data": data_text(m),
            "steps": str(m.get("steps", "—")), "scale": provenance([m])["scale"],
            "latency_ms": f"{lat['latency_ms']:.2f}" if "latency_ms" in lat else "—",
            "throughput": f"{lat['throughput_img_s']:.1f}" if "throughput_img_s" in lat else "—",
            "git_sha": short_sha(m), "profile": profile,
        })
    return rows


def latency_rows(profile: str, latency: dict[str, Any], paper: str) -> list[dict[str, str]]:
    rows = []
    for exp_id, lat in sorted(latency.items()):
        v = VARIANTS_BY_ID.get(next((vid for vid in sorted(VARIANTS_BY_ID, key=len, reverse=True)
                                     if exp_id.startswith(vid + "-")), ""))
        if v is None or v.paper != paper:
            continue
        rows.append({"experiment": exp_id, "variant": v.title, "profile": profile,
                     **{k: (f"{lat[k]:.2f}" if isinstance(lat.get(k), float) else str(lat.get(k, "—")))
                        for k in ("latency_ms", "throughput_img_s", "device", "dtype", "batch", "throughput_batch",
                                  "torch")}})
    return rows


def latency_pairs(profile: str, latency: dict[str, Any], base: str = "a-t2-e1", full: str = "a-t3-e11") -> list[dict]:
    """Paper A: baseline vs full method latency on the same category and seed."""
    out = []
    for exp_id, lat in sorted(latency.items()):
        if not exp_id.startswith(base + "-"):
            continue
        other = latency.get(full + exp_id[len(base):])
        if other and lat.get("latency_ms") and other.get("latency_ms"):
            out.append({"profile": profile, "suffix": exp_id[len(base) + 1:],
                        "baseline_ms": f"{lat['latency_ms']:.2f}", "full_ms": f"{other['latency_ms']:.2f}",
                        "ratio": f"{other['latency_ms'] / lat['latency_ms']:.2f}×",
                        "device": str(other.get("device", "?")), "dtype": str(other.get("dtype", "?"))})
    return out


def _load_latency(profile: str) -> dict[str, Any]:
    path = results_mod.latency_path(profile)
    return results_mod.read_json(path) if path.is_file() else {}


def analogue_rows(indexes: list[ResultIndex]) -> list[dict[str, str]]:
    """Paper A's variants on plain MVTec AD (no paper cell: a structural analogue), seed mean ± sd per variant."""
    out = []
    for idx in indexes:
        for (vid, proto, cat), runs in sorted(idx.by_key.items()):
            v = VARIANTS_BY_ID[vid]
            ok = [m for m in runs if m.get("status") == "ok"]
            if v.paper != "A" or proto not in v.also or not ok:
                continue
            vals = [100 * m["auroc"]["image"] for m in ok if (m.get("auroc") or {}).get("image") is not None]
            pix = [100 * m["auroc"]["pixel"] for m in ok if (m.get("auroc") or {}).get("pixel") is not None]
            sd = f" ± {stdev(vals):.1f}" if len(vals) > 1 else ""
            out.append({"profile": idx.profile, "variant": vid, "title": v.title, "category": cat,
                        "image": f"{fmean(vals):.1f}{sd}" if vals else "—",
                        "pixel": f"{fmean(pix):.1f}" if pix else "—",
                        "n": str(len(vals)), **provenance(ok)})
    return out
