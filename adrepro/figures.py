"""Report-level charts (``reports/figures/*.png``), drawn by the `report` stage from result files only.

- **paper vs reproduced** (one per printed table with a reproduced number): grouped bars of the paper's value and
  each comparable profile's, from the same cells as the Markdown table (``TableView.long_rows``); the mean
  columns where every category was run, else the per-category columns, else (tables printing only means) the
  partial means, hatched.
- **ablation** (one per ablation, protocol and profile with at least two of its variants run): one bar per
  variant, the mean over seeds of the per-seed category mean, error bar = sample sd over seeds (n shown).
- **latency vs AUROC** (one per paper and profile with ``latency.json``): one point per variant and protocol.

Every number comes from ``results/<profile>/*/metrics.json``, ``results/<profile>/latency.json`` and
``reports/paper_values.csv`` (through ``adrepro.report``'s view models). ``smoke`` charts are labelled as not
comparable. Per-experiment plots (ROC, histograms, montage) are ``adrepro/plots.py``'s.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from statistics import fmean, stdev
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from . import paper_values as pv  # noqa: E402
from .registry import VARIANTS  # noqa: E402
from .report import TableView, _load_latency, _metric  # noqa: E402

DPI = 90
FIGURES = "figures"  # folder beside the reports
# the papers' ablations (the other tables compare with other methods): (paper, table or figure)
ABLATIONS = (("A", "T2"), ("A", "T3"), ("A", "F8"), ("B", "F3"), ("B", "F4"), ("B", "F5"), ("B", "F7"))
GLOSSARY = (("平均值", "mean"), ("平均", "mean"), ("本文方法", "ours"), ("本文", "ours"), ("并行双", "parallel dual"),
            ("双", "dual"))
COLORS = ("tab:gray", "tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")


def ascii_label(text: str) -> str:
    """A printed row/column header for a chart axis (no CJK font is assumed): LOCO category headers as their
    category ids, the papers' recurring words in English."""
    for cat, col in pv.CATEGORY_COLUMNS["loco"].items():
        text = text.replace(col, cat)
    for word, english in GLOSSARY:
        text = text.replace(word, english)
    return text


def metric_key(protocol: str, runs: Any = ()) -> str:
    """The AUROC a protocol's tables report: LOCO's mean of logical and structural (logical alone where the runs
    have no structural split, e.g. the partial juice_bottle copy), else image AUROC."""
    if protocol != "loco":
        return "image"
    runs = [m for m in runs if m.get("protocol") == "loco"]
    has_structural = any((m.get("auroc") or {}).get("structural") is not None for m in runs)
    return "mean_ls" if has_structural or not runs else "logical"


def _profile_note(profile: str) -> str:
    return f"{profile} — not comparable with the paper" if profile == "smoke" else profile


def _slug(*parts: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", "_".join(parts).lower()).strip("_")


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def paper_vs_reproduced(paper: str, tab: TableView, path: Path) -> bool:
    """Grouped bars (paper, then each profile) per reproduced cell of a printed table; False: nothing to draw."""
    rows = [r for r in tab.long_rows if r.get("value") is not None and r.get("paper_value") is not None]
    # like with like: complete means, else the per-category cells, else (tables printing only means) the partial
    # means over the categories run, hatched and said so in the title
    means = [r for r in rows if r["is_mean"]]
    rows = [r for r in means if not r.get("partial")] or [r for r in rows if not r["is_mean"]] or means
    if not rows:
        return False
    cells = list(dict.fromkeys((r["row"], r["column"]) for r in rows))
    profiles = list(dict.fromkeys(r["profile"] for r in rows))
    width = 0.8 / (1 + len(profiles))
    fig, ax = plt.subplots(figsize=(min(12, 2 + 0.7 * len(cells) * (1 + len(profiles)) / 2), 3.4))
    paper_vals = {(r["row"], r["column"]): r["paper_value"] for r in rows}
    ax.bar([i for i in range(len(cells))], [paper_vals[c] for c in cells], width, label="paper", color=COLORS[0])
    for k, prof in enumerate(profiles):
        vals = {(r["row"], r["column"]): r["value"] for r in rows if r["profile"] == prof}
        partial = {(r["row"], r["column"]) for r in rows if r["profile"] == prof and r.get("partial")}
        xs = [i + (k + 1) * width for i, c in enumerate(cells) if c in vals]
        bars = ax.bar(xs, [vals[c] for c in cells if c in vals], width, label=f"reproduced · {prof}",
                      color=COLORS[1 + k % (len(COLORS) - 1)])
        for bar, c in zip(bars, [c for c in cells if c in vals]):
            bar.set_hatch("//" if c in partial else "")
    ax.set_xticks([i + width * len(profiles) / 2 for i in range(len(cells))],
                  [ascii_label(f"{r}\n{c}") for r, c in cells], fontsize=7)
    lo = min(min(paper_vals.values()), min(r["value"] for r in rows))
    ax.set_ylim(max(0.0, lo - 10), 100)
    note = " (hatched: mean over the categories run only)" if any(r.get("partial") for r in rows) else ""
    ax.set(ylabel="AUROC %", title=f"Paper {paper} · {tab.title}: paper vs reproduced{note}")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=7)
    _save(fig, path)
    return True


def _seed_means(runs: list[dict[str, Any]], key: str) -> list[float]:
    """Per seed: the mean over its categories (AUROC %)."""
    by_seed: dict[Any, list[float]] = {}
    for m in runs:
        v = _metric(m, key)
        if m.get("status") == "ok" and v is not None:
            by_seed.setdefault(m.get("seed"), []).append(100 * v)
    return [fmean(v) for _, v in sorted(by_seed.items(), key=lambda kv: str(kv[0]))]


def ablation_bars(paper: str, table: str, protocol: str, profile: str, metrics: dict[str, dict[str, Any]],
                  path: Path) -> bool:
    rows = [(cell.row, v) for v in VARIANTS if v.paper == paper for cell in v.cells if cell.table == table]
    bars = []
    for label, v in rows:
        seeds = _seed_means([m for m in metrics.values() if m.get("variant") == v.id and m.get("protocol") == protocol],
                            metric_key(protocol, metrics.values()))
        if seeds:
            bars.append((ascii_label(f"{label}\n{v.id}"), fmean(seeds), stdev(seeds) if len(seeds) > 1 else 0.0, len(seeds)))
    if len(bars) < 2:
        return False
    fig, ax = plt.subplots(figsize=(min(12, 1.5 + 0.9 * len(bars)), 3.4))
    xs = range(len(bars))
    ax.bar(xs, [b[1] for b in bars], 0.6, color=COLORS[1])
    spread = [(x, b) for x, b in zip(xs, bars) if b[3] > 1]  # no error bar from a single seed
    if spread:
        ax.errorbar([x for x, _ in spread], [b[1] for _, b in spread], yerr=[b[2] for _, b in spread], fmt="none",
                    ecolor="k", capsize=4)
    for x, b in zip(xs, bars):
        ax.annotate(f"{b[1]:.1f}\nn={b[3]}", (x, b[1] + b[2]), ha="center", va="bottom", fontsize=6)
    ax.set_xticks(list(xs), [b[0] for b in bars], fontsize=6)
    lo = min(b[1] - b[2] for b in bars)
    ax.set_ylim(max(0.0, lo - 10), min(105.0, max(b[1] + b[2] for b in bars) + 8))
    title = f"Paper {paper} {table} ablation · {protocol} · {_profile_note(profile)} (error bar: sd over seeds)"
    ax.set_ylabel(f"{metric_key(protocol, metrics.values())} AUROC %")
    ax.set_title("\n".join(textwrap.wrap(title, int(fig.get_figwidth() * 11))), fontsize=9)  # fits narrow charts
    ax.title.set_fontsize(8)
    _save(fig, path)
    return True


def latency_scatter(paper: str, profile: str, metrics: dict[str, dict[str, Any]], latency: dict[str, Any],
                    path: Path) -> bool:
    """One point per (variant, protocol): mean latency (batch 1) vs mean AUROC over its runs."""
    groups: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for exp_id, lat in latency.items():
        m = metrics.get(exp_id) or {}
        v = _metric(m, metric_key(str(m.get("protocol")), metrics.values()))
        if m.get("paper") == paper and m.get("status") == "ok" and v is not None and lat.get("latency_ms"):
            groups.setdefault((m["variant"], m["protocol"]), []).append((float(lat["latency_ms"]), 100 * v))
    if not groups:
        return False
    fig, ax = plt.subplots(figsize=(6, 3.8))
    protocols = sorted({p for _, p in groups})
    for (vid, proto), pts in sorted(groups.items()):
        x, y = fmean(p[0] for p in pts), fmean(p[1] for p in pts)
        ax.scatter([x], [y], s=18, color=COLORS[1 + protocols.index(proto) % (len(COLORS) - 1)])
        ax.annotate(vid, (x, y), fontsize=6, xytext=(3, 2), textcoords="offset points")
    for k, proto in enumerate(protocols):
        ax.scatter([], [], color=COLORS[1 + k % (len(COLORS) - 1)], label=f"{proto} ({metric_key(proto, metrics.values())})")
    devices = sorted({str(lat.get("device", "?")) for lat in latency.values()})
    ax.set(xlabel=f"latency ms per image (batch 1; {', '.join(devices)})", ylabel="AUROC %",
           title=f"Paper {paper} · latency vs AUROC · {_profile_note(profile)}")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=7)
    _save(fig, path)
    return True


def render(contexts: dict[str, dict[str, Any]], all_results: dict[str, dict[str, dict[str, Any]]],
           out_dir: Path) -> dict[str, list[dict[str, str]]]:
    """Draw every chart into ``out_dir`` (stale PNGs removed); per paper the list of {file, title, kind}."""
    out_dir.mkdir(parents=True, exist_ok=True)
    charts: dict[str, list[dict[str, str]]] = {}
    for paper, ctx in contexts.items():
        made = charts.setdefault(paper, [])

        def add(ok: bool, name: str, title: str, kind: str) -> None:
            if ok:
                made.append({"file": f"{FIGURES}/{name}", "title": title, "kind": kind})

        for tab in ctx["tables"]:
            name = f"{_slug(paper, tab.key)}_paper_vs_reproduced.png"
            add(paper_vs_reproduced(paper, tab, out_dir / name), name, f"{tab.title}: paper vs reproduced", "table")
        for p, table in ABLATIONS:
            if p != paper:
                continue
            protocols = dict.fromkeys(pr for v in VARIANTS if v.paper == p and any(c.table == table for c in v.cells)
                                      for pr in (*v.protocols, *v.also))
            for protocol in protocols:
                for profile, metrics in sorted(all_results.items()):
                    name = f"{_slug(paper, table, protocol, profile)}_ablation.png"
                    add(ablation_bars(paper, table, protocol, profile, metrics, out_dir / name), name,
                        f"{table} ablation · {protocol} · {_profile_note(profile)}", "ablation")
        for profile, metrics in sorted(all_results.items()):
            name = f"{_slug(paper, 'latency', profile)}.png"
            add(latency_scatter(paper, profile, metrics, _load_latency(profile), out_dir / name), name,
                f"latency vs AUROC · {_profile_note(profile)}", "latency")
    keep = {Path(c["file"]).name for made in charts.values() for c in made}
    for stale in out_dir.glob("*.png"):
        if stale.name not in keep:
            stale.unlink()
    return charts
