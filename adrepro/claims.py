"""The papers' headline claims as data, and their verdicts from result files (rule: docs/claims.md).

A ``Claim`` is "variant ``new`` beats variant ``ref``" with where the paper says so (a printed table's two rows, or
the text's words for a figure-only ablation); each ``Measure`` is a protocol and AUROC key it is checked on.
``verdicts()`` computes, per claim, measure and comparable profile, the paper's effect (``reports/paper_values.csv``)
and ours (paired seed differences, mean ± sd, n) and applies the rule. The report renders them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from statistics import fmean, stdev
from typing import Any

from . import paper_values as pv
from .provenance import provenance, sources_text

COMPARABLE_PROFILES = ("paper", "offline", "cpu")  # never smoke (docs/claims.md)
ZERO_EFFECT_PP = 0.05
ANALOGUE = "structural analogue (MVTec AD bottle, image AUROC), not LOCO's structural split"
CONSISTENT, CONTRADICTED, NOT_REPRODUCED = "consistent", "contradicted", "not reproduced at this scale"
INDICATIVE, NOT_RUNNABLE, NOT_RUN = "indicative only (n = 1)", "not runnable here", "not run"


@dataclass(frozen=True)
class Measure:
    protocol: str
    metric: str  # auroc key in metrics.json
    label: str
    column: str | None = None  # printed column of the paper's mean effect (None: figure-only claim)
    per_category: str | None = None  # suffix of per-category columns after the category header; None: none printed
    analogue: bool = False  # compared with the paper's effect on another protocol (A on bottle)


@dataclass(frozen=True)
class Claim:
    id: str
    paper: str
    source: str  # "Table 1", "Fig. 8"
    title: str
    new: str  # variant ids
    ref: str
    measures: tuple[Measure, ...]
    table: str | None = None  # paper_values table and rows, for printed claims
    new_row: str | None = None
    ref_row: str | None = None
    stated: str = ""  # figure-only: the paper's words (its direction is ``sign``)
    sign: int = 1
    note: str = ""


def _a_measures(table: str, headline: bool) -> tuple[Measure, ...]:
    mean = "平均(L/S)" if table == "T1" else "平均(L/S)/%"
    per = " L" if table == "T1" else None
    out = [Measure("loco", "logical", "logical (LOCO)", f"{mean} L", per)]
    if headline:
        out += [Measure("loco", "structural", "structural (LOCO)", f"{mean} S", " S" if per else None),
                Measure("loco", "mean_ls", "mean of logical and structural (LOCO)", "平均" if table == "T1" else "平均/%")]
    out.append(Measure("mvtec_ad", "image", ANALOGUE, f"{mean} S", None, analogue=True))
    return tuple(out)


def _a_step(new: str, ref: str, table: str, new_row: str, ref_row: str, title: str) -> Claim:
    return Claim(f"A-{table}-{new_row.split()[0]}-vs-{ref_row.split()[0]}", "A", f"Table {table[1:]}", title,
                 new, ref, _a_measures(table, False), table, new_row, ref_row)


def _b_fig(cid: str, source: str, title: str, new: str, ref: str, protocol: str, stated: str, note: str = "") -> Claim:
    return Claim(cid, "B", source, title, new, ref, (Measure(protocol, "image", f"image AUROC ({protocol})"),),
                 stated=stated, note=note)


_STAND_IN = ("with one EfficientNet-Lite0 stand-in for VGG16 and ResNet18 (offline/cpu), the CNN family runs once, "
             "under the VGG rows")
CLAIMS: tuple[Claim, ...] = (
    Claim("A-main", "A", "Table 1", "full method vs EfficientAD (+2.7 logical / +0.8 structural / +1.7 mean)",
          "a-t3-e11", "a-t2-e1", _a_measures("T1", True), "T1", "本文", "EfficientAD"),
    _a_step("a-t2-e2", "a-t2-e1", "T2", "2", "1 (Baseline)", "+SRM on the single AE"),
    _a_step("a-t2-e3", "a-t2-e1", "T2", "3", "1 (Baseline)", "+CRM on the single AE"),
    _a_step("a-t2-e4", "a-t2-e1", "T2", "4", "1 (Baseline)", "parallel dual AE vs single AE"),
    _a_step("a-t2-e5", "a-t2-e4", "T2", "5", "4", "+SRM in the dual AE"),
    _a_step("a-t2-e6", "a-t2-e4", "T2", "6", "4", "+CRM in the dual AE"),
    _a_step("a-t2-e7", "a-t2-e4", "T2", "7", "4", "+SRM+CRM in the dual AE"),
    _a_step("a-t3-e8", "a-t2-e1", "T3", "8", "1 (Baseline)", "+CSF loss on the baseline"),
    _a_step("a-t3-e9", "a-t2-e7", "T3", "9", "7", "+SFM on exp 7"),
    _a_step("a-t3-e10", "a-t2-e7", "T3", "10", "7", "+CSF loss on exp 7"),
    _a_step("a-t3-e11", "a-t2-e7", "T3", "11", "7", "+SFM+CSF on exp 7 (full method)"),
    Claim("A-F8", "A", "Fig. 8", "parallel dual AE (full method) vs serial single AE (CRM then SRM)",
          "a-t3-e11", "a-f8-serial", (Measure("loco", "logical", "logical (LOCO)"),),
          stated="并行双编码器…比单编码器考虑更全面…错误响应也比串联单编码器更少 (visual comparison only)"),
    Claim("B-main-vs-MKDAD", "B", "Table 1", "main method vs MKDAD on CIFAR-10 (96.3 vs 87.2)", "b-main", "b-f3-vgg",
          (Measure("cifar10", "image", "image AUROC (CIFAR-10)", "平均值", ""),), "T1", "本文方法", "MKDAD"),
    _b_fig("B-F3-VGG-anchor-CIFAR10", "Fig. 3", "L_anchor on VGG16 distillation, CIFAR-10", "b-f3-vgg-anchor",
           "b-f3-vgg", "cifar10", "所有类别的异常检测效果均有一定的提升, 约提升 1%", _STAND_IN),
    _b_fig("B-F3-VGG-anchor-MVTec", "Fig. 3", "L_anchor on VGG16 distillation, MVTec AD", "b-f3-vgg-anchor",
           "b-f3-vgg", "mvtec_ad", "在 MVTEC 数据集上, 异常检测总体性能有所提升", _STAND_IN),
    _b_fig("B-F3-ResNet-anchor-MVTec", "Fig. 3", "L_anchor on ResNet18 distillation, MVTec AD", "b-f3-resnet-anchor",
           "b-f3-resnet", "mvtec_ad", "L_anchor 损失函数对于 ResNet 卷积神经网络异常检测十分有效", _STAND_IN),
    _b_fig("B-F3-VGG-vs-ResNet", "Fig. 3", "VGG16+L_anchor vs ResNet18+L_anchor, MVTec AD", "b-f3-vgg-anchor",
           "b-f3-resnet-anchor", "mvtec_ad", "使用中心特征约束策略的 VGG 网络优于使用同样策略的 ResNet 网络 (texture images)",
           _STAND_IN),
    _b_fig("B-F4-Gram", "Fig. 4", "L_Gram on ViT distillation, MVTec AD", "b-f4-gram", "b-f4-distill", "mvtec_ad",
           "所有类别的 AUROC 值在 L_Gram 损失函数的约束下均得到了提升"),
    _b_fig("B-F4-anchor", "Fig. 4", "L_anchor on ViT+L_Gram, MVTec AD", "b-main", "b-f4-gram", "mvtec_ad",
           "本文所提出的各个模块都有助于模型性能的提升, 平均每个模块能提升 1%"),
    _b_fig("B-F5-ViT-vs-VGG", "Figs 4–5", "ViT backbone vs VGG16 (both with L_anchor), MVTec AD", "b-main",
           "b-f3-vgg-anchor", "mvtec_ad", "ViT 的整体检测效果明显高于卷积神经网络"),
    _b_fig("B-F5-ViT-vs-ResNet", "Figs 4–5", "ViT backbone vs ResNet18 (both with L_anchor), MVTec AD", "b-main",
           "b-f3-resnet-anchor", "mvtec_ad", "ViT 的整体检测效果明显高于卷积神经网络", _STAND_IN),
    _b_fig("B-F7-position", "Fig. 7", "position encoding: strategy 2 (copied, frozen) vs strategy 1 (learned)",
           "b-main", "b-f7-pos1", "mvtec_ad", "策略 (2) 的效果基本高于策略 (1), 且每个类别均有一定幅度的提升"),
)


# ---- the paper's effect --------------------------------------------------------------------------------
def paper_effect(claim: Claim, m: Measure, categories: list[str],
                 tables: dict[tuple[str, str], pv.PaperTable]) -> tuple[float | None, str]:
    """(effect in pp or None for figure-only, how it was obtained)."""
    if claim.table is None or m.column is None:
        return None, f"figure only: {'+' if claim.sign > 0 else '−'} (text: “{claim.stated}”)"
    t = tables[(claim.paper, claim.table)]

    def diff(column: str) -> float | None:
        a, b = t.get(claim.new_row, column), t.get(claim.ref_row, column)
        return None if a is None or b is None or a.numeric is None or b.numeric is None else a.numeric - b.numeric

    where = f"{claim.source} {claim.new_row} − {claim.ref_row}"
    if m.per_category is not None and categories and not m.analogue:
        cols = [pv.column_for(m.protocol, c) + m.per_category for c in categories]
        diffs = [diff(c) for c in cols]
        if all(d is not None for d in diffs):
            return fmean(diffs), f"{where}, per category ({', '.join(cols)})"
    value = diff(m.column)
    if value is None:
        raise KeyError(f"reports/paper_values.csv: no numbers for {claim.paper} {claim.table} rows "
                       f"'{claim.new_row}'/'{claim.ref_row}' column '{m.column}' (claim {claim.id})")
    scope = "LOCO structural mean" if m.analogue else "mean over the paper's categories"
    return value, f"{where}, {m.column} ({scope})"


# ---- our effect and the verdict ------------------------------------------------------------------------
@dataclass
class Ours:
    diffs: dict[int, float] = field(default_factory=dict)  # seed -> mean paired difference (pp)
    categories: list[str] = field(default_factory=list)
    sources: list[dict[str, Any]] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # experiments whose metrics.json says FAILED (never dropped silently)
    ran_without_metric: bool = False


def our_effect(metrics: dict[str, dict[str, Any]], claim: Claim, m: Measure) -> Ours:
    """Paired (category, seed) differences new − ref of one profile's results, averaged over categories per seed."""
    runs: dict[str, dict[tuple[str, int], dict[str, Any]]] = {claim.new: {}, claim.ref: {}}
    out = Ours()
    for exp_id, r in sorted(metrics.items()):
        if r.get("variant") in runs and r.get("protocol") == m.protocol:
            r = {"experiment": exp_id, **r}
            if r.get("status") == "not_runnable":
                out.reasons.append(str(r.get("reason") or "not runnable"))
                out.sources.append(r)
            elif r.get("status") == "ok":
                runs[r["variant"]][(str(r.get("category")), int(r.get("seed", 0)))] = r
            elif str(r.get("status", "")).lower() == "failed":
                out.failed.append(exp_id)
    pairs = sorted(set(runs[claim.new]) & set(runs[claim.ref]))
    per_seed: dict[int, list[float]] = {}
    for key in pairs:
        a, b = ((runs[v][key].get("auroc") or {}).get(m.metric) for v in (claim.new, claim.ref))
        if a is None or b is None:
            out.ran_without_metric = True
            continue
        per_seed.setdefault(key[1], []).append(100 * (a - b))
        out.sources += [runs[claim.new][key], runs[claim.ref][key]]
        if key[0] not in out.categories:
            out.categories.append(key[0])
    out.diffs = {s: fmean(v) for s, v in sorted(per_seed.items())}
    return out


def verdict(diffs: list[float], paper: float | None, sign: int = 1) -> str:
    """docs/claims.md: n = 1 indicative; else the mean vs one seed-to-seed standard deviation."""
    if not diffs:
        return NOT_RUN
    if len(diffs) == 1:
        return INDICATIVE
    mean, sd = fmean(diffs), stdev(diffs)
    if paper is not None and abs(paper) < ZERO_EFFECT_PP:
        return CONSISTENT if abs(mean) <= sd else CONTRADICTED
    s = sign if paper is None else (1 if paper > 0 else -1)
    if s * mean > sd:
        return CONSISTENT
    if s * mean < -sd:
        return CONTRADICTED
    return NOT_REPRODUCED


@dataclass
class Row:
    claim: Claim
    measure: Measure
    profile: str
    verdict: str
    paper_effect: str
    paper_basis: str
    ours: str
    per_seed: str
    n: int
    categories: list[str]
    reason: str
    sources: list[dict[str, Any]]


def _fmt(x: float) -> str:
    return f"{x:+.1f}"


def evaluate_claim(claim: Claim, m: Measure, profile: str, metrics: dict[str, dict[str, Any]],
                   tables: dict[tuple[str, str], pv.PaperTable]) -> Row:
    ours = our_effect(metrics, claim, m)
    value, basis = paper_effect(claim, m, ours.categories, tables)
    shown = _fmt(value) if value is not None else ("+" if claim.sign > 0 else "−")
    diffs = list(ours.diffs.values())
    reason = ""
    if ours.reasons:  # the result files' reasons, without their own "not runnable here (...)" wrapper
        why = (r.removeprefix(NOT_RUNNABLE).strip().removeprefix("(").removesuffix(")") for r in ours.reasons)
        result, reason = NOT_RUNNABLE, "; ".join(dict.fromkeys(why))
    elif not diffs and ours.ran_without_metric:
        result, reason = NOT_RUNNABLE, f"no '{m.metric}' AUROC in this data (its test set has no such anomalies)"
    else:
        result = verdict(diffs, value, claim.sign)
    if len(diffs) >= 2:
        text = f"{_fmt(fmean(diffs))} ± {stdev(diffs):.1f}"
    elif diffs:
        text = _fmt(diffs[0])
    else:
        text = "—"
    seeds = ", ".join(f"s{s}: {_fmt(d)}" for s, d in ours.diffs.items())
    if ours.failed:  # n counts only finished pairs; say which runs are missing from it and why
        failed = f"{len(ours.failed)} FAILED run(s) not in n: {', '.join(ours.failed)}"
        reason = f"{reason}; {failed}" if reason else failed
    return Row(claim, m, profile, result, shown, basis, text, seeds, len(diffs), ours.categories, reason, ours.sources)


def verdicts(paper: str, all_results: dict[str, dict[str, dict[str, Any]]],
             cells: list[pv.PaperCell]) -> list[Row]:
    """Every claim of ``paper`` x measure x comparable profile with result files; analogue measures only where run."""
    tables = pv.tables(cells)
    rows = []
    for claim in CLAIMS:
        if claim.paper != paper:
            continue
        for m in claim.measures:
            for profile in COMPARABLE_PROFILES:
                if profile not in all_results:
                    continue
                row = evaluate_claim(claim, m, profile, all_results[profile], tables)
                if m.analogue and row.verdict == NOT_RUN:
                    continue
                rows.append(row)
    return rows


def claim_rows(paper: str, all_results: dict[str, dict[str, dict[str, Any]]],
               cells: list[pv.PaperCell]) -> list[dict[str, str]]:
    """The claims table (adrepro/claims.py, rule in docs/claims.md) with each row's provenance."""
    out = []
    for r in verdicts(paper, all_results, cells):
        prov = provenance([m for m in r.sources if m.get("status") == "ok"])
        out.append({"claim": r.claim.id, "source": r.claim.source, "title": r.claim.title, "measure": r.measure.label,
                    "profile": r.profile, "paper": r.paper_effect, "basis": r.paper_basis, "ours": r.ours,
                    "n": str(r.n), "per_seed": r.per_seed, "verdict": r.verdict, "reason": r.reason,
                    "note": r.claim.note, "categories": ", ".join(r.categories),
                    "files": sources_text(r.sources, r.profile),
                    **{k: prov[k] for k in ("teacher", "data", "scale", "penalty", "preset", "git_sha")}})
    return out
