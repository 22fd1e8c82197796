"""Paper-vs-reproduced report: ``reports/paper_a.md`` and ``reports/paper_b.md`` (Jinja, ``reports/templates/``).

Every printed table with every row; per cell the paper value, the reproduced value (or "not run") and
Δ = reproduced − paper in percentage points. Paper values come from ``reports/paper_values.csv``, reproduced
ones only from ``adrepro.results.load_all()``. Profiles ``paper`` and ``offline`` are compared with paper cells
(substitute teachers / non-official data flagged from metrics.json); ``smoke`` never is: it gets its own section.
Averages are computed as the paper does and shown only when every category was run ("partial: n/N" otherwise).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from statistics import fmean
from typing import Any

import jinja2

from . import REPO_ROOT, claims
from . import paper_values as pv
from . import results as results_mod
from .provenance import code_commits, provenance
from .provenance import join as _join
from .registry import VARIANTS, VARIANTS_BY_ID, Variant
from .report_rows import _load_latency, analogue_rows, latency_pairs, latency_rows, run_rows

REPORTS_DIR = REPO_ROOT / "reports"
TEMPLATES_DIR = REPORTS_DIR / "templates"
COMPARABLE_PROFILES = claims.COMPARABLE_PROFILES  # compared with paper cells, in this order
SMOKE_TITLE = "Smoke runs (embedded data, random tiny teachers — not comparable)"
PAPER_TITLES = {
    "A": "Paper A — Knowledge distillation based spatial channel dual autoencoders (Liang & Chen, JEMI)",
    "B": "Paper B — Feature constrained restricted distillation learning (Xing et al., J. Software 2023)",
}
FIGURE_TITLES = {
    ("A", "F8"): "Fig. 8 — parallel dual AE vs serial single AE (MVTec LOCO)",
    ("B", "F3"): "Fig. 3 — VGG16 / ResNet18 distillation with and without L_anchor",
    ("B", "F4"): "Fig. 4 — loss ablation of the ViT method (MVTec AD)",
    ("B", "F5"): "Fig. 5 — effect of L_anchor on different backbones (MVTec AD)",
    ("B", "F7"): "Fig. 7 — position-encoding strategies (MVTec AD)",
}
FIGURE_COMMENT = "Paper values are shown only in the figure (not in the text): reproduced values only."


# ---- reproduced values -------------------------------------------------------------------------------
def _metric(m: dict[str, Any], key: str) -> float | None:
    a = m.get("auroc") or {}
    v = a.get(key)
    if v is None and key == "mean_ls" and a.get("logical") is not None and a.get("structural") is not None:
        v = (a["logical"] + a["structural"]) / 2
    return v


@dataclass
class Reproduced:
    """One reproduced cell: how it reads, Δ against the paper, and where its numbers came from."""

    text: str
    delta: str = "—"
    status: str = "not_run"  # ok | partial | not_run | not_runnable
    value: float | None = None  # percent
    n_done: int = 0
    n_total: int = 0
    reasons: list[str] = field(default_factory=list)
    sources: list[dict[str, Any]] = field(default_factory=list)

    @property
    def provenance(self) -> dict[str, str]:
        return provenance(self.sources)


class ResultIndex:
    """Metrics of one profile, by (variant, protocol, category)."""

    def __init__(self, profile: str, metrics: dict[str, dict[str, Any]]):
        self.profile = profile
        self.by_key: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
        self.unmapped: list[dict[str, Any]] = []
        for exp_id, m in sorted(metrics.items()):
            m = {"experiment": exp_id, **m}
            proto, cat = m.get("protocol"), str(m.get("category"))
            if m.get("variant") not in VARIANTS_BY_ID or cat not in pv.CATEGORY_COLUMNS.get(proto, {}):
                self.unmapped.append(m)
                continue
            self.by_key.setdefault((m["variant"], proto, cat), []).append(m)

    def category(self, variant: str, protocol: str, category: str, key: str) -> tuple[float | None, list, list]:
        """Seed-mean of one category: (value or None, metrics used, not_runnable reasons)."""
        runs = self.by_key.get((variant, protocol, category), [])
        ok = [m for m in runs if m.get("status") == "ok" and _metric(m, key) is not None]
        reasons = [m.get("reason") or "not runnable" for m in runs if m.get("status") == "not_runnable"]
        if not ok:
            return None, [m for m in runs if m.get("status") == "not_runnable"], reasons
        return fmean(_metric(m, key) for m in ok), ok, reasons

    def cell(self, variant: str, protocol: str, categories: list[str], key: str,
             paper_value: float | None, is_mean: bool) -> Reproduced:
        values, sources, reasons = [], [], []
        for cat in categories:
            v, used, why = self.category(variant, protocol, cat, key)
            sources += used
            reasons += why
            if v is not None:
                values.append(v)
        n, total = len(values), len(categories)
        if n == 0:
            if reasons:
                return Reproduced("not runnable", status="not_runnable", n_total=total, reasons=reasons,
                                  sources=sources)
            return Reproduced("not run", n_total=total)
        mean = 100 * fmean(values)
        if is_mean and n < total:
            return Reproduced(f"partial: {n}/{total} ({mean:.1f})", status="partial", value=mean, n_done=n,
                              n_total=total, reasons=reasons, sources=sources)
        delta = f"{mean - paper_value:+.1f}" if paper_value is not None else "—"
        return Reproduced(f"{mean:.1f}", delta, "ok", mean, n, total, reasons, sources)


def _column_spec(paper: str, protocol: str, column: str, kind: str,
                 categories: list[str]) -> tuple[list[str], str] | None:
    """(categories averaged, auroc key) a printed column is reproduced from; None for non-metric columns."""
    if kind not in ("value", "mean"):
        return None
    if paper == "A":
        suffix = column[-1] if column.endswith((" L", " S")) else ""
        key = pv.LS_SUFFIX.get(suffix, "mean_ls")
        if kind == "value":
            return [pv.category_for(protocol, column[:-2])], key
        return categories, key
    if kind == "value":
        return [pv.category_for(protocol, column)], "image"
    return categories, "image"


# ---- view models ---------------------------------------------------------------------------------------
@dataclass
class Line:
    label: str  # row label shown in the first column ("" for continuation lines)
    kind: str  # "paper" (reported only / paper values), "reproduced", "delta"
    tag: str
    cells: list[str]
    titles: list[str] = field(default_factory=list)  # per cell: its provenance (HTML report tooltips)


@dataclass
class TableView:
    title: str
    key: str
    columns: list[str]
    lines: list[Line]
    long_rows: list[dict[str, str]]
    notes: list[dict[str, Any]]
    reasons: list[str]
    comment: str = ""


def _note_marker(notes: list[dict[str, Any]], text: str, where: str) -> str:
    """Footnote marker of a printing-error note; one footnote per distinct note, listing its cells."""
    for i, n in enumerate(notes):
        if n["text"] == text:
            n["cells"].append(where)
            return f" †{i + 1}"
    notes.append({"text": text, "cells": [where]})
    return f" †{len(notes)}"


def _reason_marker(reasons: list[str], text: str) -> str:
    if text not in reasons:
        reasons.append(text)
    return f" ‡{reasons.index(text) + 1}"


def _paper_text(t: pv.PaperTable, c: pv.PaperCell | None, notes: list[dict[str, Any]]) -> str:
    if c is None:
        return ""
    text = c.value.strip()
    if c.bold and text:
        text = f"**{text}**"
    m = pv.recomputed_mean(t, c.row, c.column)
    if m is not None and m.status != "ok":
        text += f" (recomputed {m.shown})"
    if c.note:
        text += _note_marker(notes, c.note, f"{c.row} · {c.column}")
    return text


def _cell_variants() -> dict[tuple[str, str, str], list[Variant]]:
    out: dict[tuple[str, str, str], list[Variant]] = {}
    for v in VARIANTS:
        for cell in v.cells:
            out.setdefault((v.paper, cell.table, cell.row), []).append(v)
    return out


def _repro_lines(label: str, variants: list[Variant], protocol: str, specs: list[tuple[str, Any, float | None, bool]],
                 indexes: list[ResultIndex], long_rows: list[dict[str, str]], reasons: list[str],
                 paper_texts: dict[str, str]) -> list[Line]:
    """Reproduced and Δ lines of one row, one pair per comparable profile with results (else one 'not run' line)."""
    lines: list[Line] = []
    for idx in indexes or [None]:
        cells, deltas, scales = [], [], []
        tips: dict[str, str] = {}
        for column, spec, paper_value, is_mean in specs:
            if spec is None:
                cells.append("")
                deltas.append("")
                continue
            if idx is None:
                cells.append("not run")
                deltas.append("—")
                continue
            r = next((r for r in (idx.cell(v.id, protocol, spec[0], spec[1], paper_value, is_mean) for v in variants)
                      if r.status != "not_run"), Reproduced("not run", n_total=len(spec[0])))
            text = r.text
            for why in dict.fromkeys(r.reasons):
                text += _reason_marker(reasons, why)
            cells.append(text)
            deltas.append(r.delta)
            if r.status != "not_run":
                prov = r.provenance
                scales.append(prov["scale"])
                why = _join(r.reasons)
                shown = why if r.status == "not_runnable" else r.text
                long_rows.append({"row": label, "column": column, "profile": idx.profile,
                                  "paper": paper_texts.get(column, "figure only"), "reproduced": shown,
                                  "delta": r.delta, "n": f"{r.n_done}/{r.n_total}",
                                  "reason": "" if r.status == "not_runnable" else why, **prov,
                                  "value": r.value, "paper_value": paper_value, "is_mean": is_mean,  # charts
                                  "partial": r.status == "partial"})
                tips[column] = (f"{idx.profile}: {prov['experiments']} · teacher {prov['teacher']} · data "
                                f"{prov['data']} · scale {prov['scale'] or '—'} · git {prov['git_sha']}")
        tag = f"reproduced · {idx.profile}" if idx else "reproduced"
        if _join(scales):
            tag += f" ({_join(scales)})"
        lines.append(Line("", "reproduced", tag, cells, [tips.get(c[0], "") for c in specs]))
        if idx is not None:
            lines.append(Line("", "delta", f"Δ pp · {idx.profile}", deltas))
    return lines


def table_view(t: pv.PaperTable, indexes: list[ResultIndex]) -> TableView:
    notes: list[dict[str, Any]] = []
    reasons: list[str] = []
    long_rows: list[dict[str, str]] = []
    lines: list[Line] = []
    cv = _cell_variants()
    categories = list(pv.CATEGORY_COLUMNS.get(t.protocol, {}))
    for row in t.rows:
        label_cell = t.get(row, t.label_column)
        label = row + (f" {label_cell.ref}" if label_cell and label_cell.ref else "")
        if label_cell and label_cell.note:
            label += _note_marker(notes, label_cell.note, row)
        paper_texts = {c: _paper_text(t, t.get(row, c), notes) for c in t.columns}
        variants = cv.get((t.paper, t.table, row), [])
        tag = "paper" if variants else "paper (reported only)"
        if t.protocol is None:
            tag = "paper (reported only: per-image example)"
        lines.append(Line(label, "paper", tag, [paper_texts[c] for c in t.columns]))
        if variants and t.protocol:
            specs = []
            for c in t.columns:
                pc = t.get(row, c)
                kind = t.kind(c)
                specs.append((c, _column_spec(t.paper, t.protocol, c, kind, categories),
                              pc.numeric if pc else None, kind == "mean"))
            lines += _repro_lines(row, variants, t.protocol, specs, indexes, long_rows, reasons, paper_texts)
    title = f"Table {t.table[1:]}" if t.table.startswith("T") else f"Fig. {t.table[1:]} (printed example table)"
    return TableView(title, t.table, [t.label_column, *t.columns], lines, long_rows, notes, reasons)


def figure_views(paper: str, table_headers: dict[str, list[str]], indexes: list[ResultIndex]) -> list[TableView]:
    """Reproduced-only tables for ablations the paper shows only in figures."""
    out: list[TableView] = []
    figs: dict[str, list[tuple[str, Variant]]] = {}
    for v in VARIANTS:
        if v.paper != paper:
            continue
        for cell in v.cells:
            if cell.table.startswith("F"):
                figs.setdefault(cell.table, []).append((cell.row, v))
    ran = {(k[0], k[1]) for idx in indexes for k in idx.by_key}

    def shown(v: Variant, protocol: str) -> bool:
        """The paper's protocols, and (paper B) an ``also`` protocol a comparable profile ran it on."""
        return protocol in v.protocols or (paper == "B" and protocol in v.also and (v.id, protocol) in ran)

    for fig in sorted(figs, key=lambda f: int(f[1:])):
        protocols = list(dict.fromkeys(p for _, v in figs[fig] for p in (*v.protocols, *v.also) if shown(v, p)))
        for protocol in protocols:
            cats = list(pv.CATEGORY_COLUMNS[protocol])
            headers = table_headers.get(protocol) or [pv.column_for(protocol, c) for c in cats]
            if paper == "A":
                columns = [f"{h} {s}" for h in headers for s in "LS"] + ["平均(L/S) L", "平均(L/S) S", "平均"]
            else:
                columns = headers + ["平均值"]
            lines: list[Line] = []
            long_rows: list[dict[str, str]] = []
            reasons: list[str] = []
            for row, v in figs[fig]:
                if not shown(v, protocol):
                    continue
                specs = [(c, _column_spec(paper, protocol, c, "mean" if "平均" in c else "value", cats), None,
                          "平均" in c) for c in columns]
                lines.append(Line(row, "paper", f"paper: figure only · {v.id}", ["figure only"] * len(columns)))
                lines += _repro_lines(row, [v], protocol, specs, indexes, long_rows, reasons, {})
            title = f"{FIGURE_TITLES.get((paper, fig), fig)} — {protocol}"
            in_paper = any(protocol in v.protocols for _, v in figs[fig])
            comment = FIGURE_COMMENT if in_paper else f"Not in the paper (its figure has no {protocol} panel): runs here only."
            out.append(TableView(title, fig, ["row", *columns], lines, long_rows, [], reasons, comment))
    return out


def context(paper: str, all_results: dict[str, dict[str, dict[str, Any]]], cells: list[pv.PaperCell]) -> dict[str, Any]:
    indexes = [ResultIndex(p, all_results[p]) for p in COMPARABLE_PROFILES if p in all_results]
    tabs = pv.tables(cells)
    views = [table_view(t, indexes) for (p, _), t in tabs.items() if p == paper]
    headers: dict[str, list[str]] = {}
    for (p, _), t in tabs.items():
        values = [c for c in t.columns if t.kind(c) == "value"]
        if p == paper and t.protocol and values:
            headers.setdefault(t.protocol, list(dict.fromkeys(c[:-2] if p == "A" else c for c in values)))
    latencies = {p: _load_latency(p) for p in all_results}
    others = ["smoke"] + [p for p in all_results if p not in (*COMPARABLE_PROFILES, "smoke")]
    errata = []
    for (p, _), t in tabs.items():
        if p != paper:
            continue
        for c in t.cells.values():
            if c.note:
                m = pv.recomputed_mean(t, c.row, c.column)
                errata.append({"table": t.table, "row": c.row, "column": c.column, "printed": c.value,
                               "recomputed": m.shown if m and m.status != "ok" else "", "note": c.note})
    unmapped = [m for idx in indexes for m in idx.unmapped if m.get("paper") in (paper, None)]
    return {
        "paper": paper, "title": PAPER_TITLES[paper], "tables": views,
        "figures": figure_views(paper, headers, indexes),
        "compared_profiles": [i.profile for i in indexes],
        "counts": {p: sum(1 for m in all_results[p].values() if m.get("paper") == paper) for p in all_results},
        "other_profiles": [{"profile": p, "title": SMOKE_TITLE if p == "smoke" else f"Profile '{p}' (not compared)",
                            "rows": run_rows(p, all_results.get(p, {}), latencies.get(p, {}), paper)}
                           for p in others],
        "latency": [r for p in all_results for r in latency_rows(p, latencies[p], paper)],
        "latency_pairs": [r for p in all_results for r in latency_pairs(p, latencies[p])] if paper == "A" else [],
        "errata": errata, "unmapped": unmapped, "claims": claims.claim_rows(paper, all_results, cells),
        "analogue": analogue_rows(indexes) if paper == "A" else [], "commits": code_commits(paper, all_results),
    }


def _md(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def environment(templates: Path = TEMPLATES_DIR) -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(templates)), undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True, autoescape=False)
    env.filters["md"] = _md
    return env


def _bench_section() -> str | None:
    """`adrepro bench`'s side-by-side tables (results/bench/*.json) for the paper A report, or None before a run."""
    import json

    from . import REPO_ROOT
    from .bench import render as render_bench

    records = [json.loads(p.read_text()) for p in sorted((REPO_ROOT / "results" / "bench").glob("*.json"))]
    return render_bench(records, level=2) if records else None


def render(out_dir: Path = REPORTS_DIR, templates: Path = TEMPLATES_DIR,
           paper_values_csv: Path = pv.CSV_PATH) -> list[Path]:
    """Write ``paper_a.md``, ``paper_b.md``, their charts (``figures/``) and ``index.html`` into ``out_dir`` from
    every profile's results; returns the paths of the reports."""
    from . import figures, report_html  # they build on this module's view models

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cells = pv.load(paper_values_csv)
    all_results = results_mod.load_all()
    env = environment(templates)
    contexts = {paper: context(paper, all_results, cells) for paper in ("A", "B")}
    contexts["A"]["bench"], contexts["B"]["bench"] = _bench_section(), None  # speed tables: paper A (EfficientAD)
    charts = figures.render(contexts, all_results, out_dir / figures.FIGURES)
    written = []
    for paper, ctx in contexts.items():
        ctx["charts"] = charts[paper]
        text = env.get_template("paper.md.j2").render(**ctx)
        path = out_dir / f"paper_{paper.lower()}.md"
        path.write_text(text, encoding="utf-8")
        written.append(path)
    written.append(report_html.write(out_dir, contexts, templates))
    return written
