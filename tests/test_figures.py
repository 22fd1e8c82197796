"""Per-experiment plots (adrepro/plots.py), report charts (adrepro/figures.py) and the DVC plots definitions,
checked against independent computations (scikit-learn, numpy, the paper values CSV)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score, roc_curve

from adrepro import dvcgen, figures, plots, report
from adrepro import paper_values as pv
from adrepro import results as results_mod
from adrepro.config import load_params
from adrepro.registry import experiments


def _read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_csv_keeps_the_curve_of_scikit_learn(tmp_path, seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 300)
    scores = np.round(rng.normal(labels * 0.8, 1.0), 1)  # ties: several images per threshold
    plots.write_roc(tmp_path, labels.tolist(), scores.tolist(), "t")
    rows = _read_csv(tmp_path / plots.ROC_CSV)
    fpr, tpr = np.array([float(r["fpr"]) for r in rows]), np.array([float(r["tpr"]) for r in rows])
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    # scikit-learn's corners (collinear points dropped; it may keep one more just after its prepended (0, 0))
    corners = set(zip(*roc_curve(labels, scores, drop_intermediate=True)[:2]))
    assert set(zip(fpr, tpr)) <= corners and len(corners) - len(rows) in (0, 1)
    assert len(rows) < len(roc_curve(labels, scores, drop_intermediate=False)[0])
    assert (tmp_path / plots.ROC_PNG).stat().st_size > 0


def test_extremes_are_the_most_missed_hardest_and_best():
    labels = [0, 1, 1, 0, 1, 0, 1, 0, 1]
    scores = [0.9, 0.1, 0.5, 0.2, 0.95, 0.3, 0.05, 0.85, 0.7]
    picks = plots.extremes(labels, scores, k=2)
    anom = sorted((s, i) for i, (s, y) in enumerate(zip(scores, labels)) if y == 1)
    good = sorted(((s, i) for i, (s, y) in enumerate(zip(scores, labels)) if y == 0), reverse=True)
    assert picks == ([("most missed", i) for _, i in anom[:2]] + [("hardest normal", i) for _, i in good[:2]]
                     + [("best detected", i) for _, i in anom[::-1][:2]])


class _Method:
    def __init__(self):
        self.calls = []

    def predict(self, images):
        self.calls.append(len(images))
        return images.mean((1, 2, 3)), images[:, 0] * 2


def test_montage_reuses_kept_maps_and_predicts_only_the_picks(tmp_path):
    n = 20
    data = [(torch.rand(3, 16, 16), i % 2, None, {"anomaly_type": "good" if i % 2 == 0 else "crack", "path": str(i)})
            for i in range(n)]
    labels, scores = [d[1] for d in data], [float(i) for i in range(n)]
    types = [d[3]["anomaly_type"] for d in data]
    m = _Method()
    plots.write_montage(tmp_path, m, data, labels, scores, types, [torch.zeros(16, 16)] * n)
    assert m.calls == [] and (tmp_path / plots.MONTAGE_PNG).stat().st_size > 0
    plots.write_montage(tmp_path, m, data, labels, scores, types)
    assert m.calls == [3 * plots.PER_GROUP]


def test_train_curve_is_one_row_per_step(tmp_path):
    history = [["train.loss", 0, 3.0], ["train.hard", 0, 2.0], ["train.loss", 10, 1.5], ["train.hard", 10, 1.0],
               ["train.lr", 10, 0.1]]
    plots.write_train_curve(tmp_path, history)
    rows = _read_csv(tmp_path / plots.TRAIN_CSV)
    assert list(rows[0]) == ["step", "loss", "hard", "lr"]
    assert [(int(r["step"]), float(r["loss"]), float(r["hard"])) for r in rows] == [(0, 3.0, 2.0), (10, 1.5, 1.0)]
    assert rows[0]["lr"] == "" and float(rows[1]["lr"]) == 0.1


def test_histogram_written(tmp_path):
    plots.write_histogram(tmp_path, [0, 0, 1, 1, 1], [0.1, 0.2, 0.7, 0.8, 0.3], "t")
    assert (tmp_path / plots.HIST_PNG).stat().st_size > 0


@pytest.fixture
def captured(monkeypatch):
    """The charts' axes instead of PNG files."""
    figs = []
    monkeypatch.setattr(figures, "_save", lambda fig, path: figs.append(fig))
    return figs


def _metrics(variant, protocol, seed, cat, lo, st, profile="paper"):
    return {"experiment": f"{variant}-{protocol}-{cat}-s{seed}", "variant": variant, "paper": "A", "protocol": protocol,
            "category": cat, "seed": seed, "status": "ok", "profile": profile,
            "auroc": {"image": None, "logical": lo, "structural": st, "mean_ls": None, "pixel": None}}


def test_ablation_bars_are_seed_means_with_sample_sd(captured, tmp_path):
    vals = {("a-t2-e1", 0): (0.80, 0.90), ("a-t2-e1", 1): (0.70, 0.88), ("a-t2-e1", 2): (0.75, 0.86),
            ("a-t2-e7", 0): (0.82, 0.94)}
    metrics = {}
    for (v, seed), (lo, st) in vals.items():
        for k, cat in enumerate(["breakfast_box", "juice_bottle"]):
            m = _metrics(v, "loco", seed, cat, lo + 0.01 * k, st)
            metrics[m["experiment"]] = m
    assert figures.ablation_bars("A", "T2", "loco", "paper", metrics, tmp_path / "x.png")
    ax = captured[0].axes[0]
    heights = [p.get_height() for p in ax.patches]
    per_seed = [np.mean([100 * ((lo + 0.01 * k) + st) / 2 for k in range(2)]) for (v, _), (lo, st) in vals.items()
                if v == "a-t2-e1"]
    assert heights == pytest.approx([np.mean(per_seed), 100 * (0.825 + 0.94) / 2])
    segs = [c for c in ax.collections if len(c.get_segments()) == 1]  # the one error bar (a-t2-e7: n = 1)
    (lo_y, hi_y) = segs[0].get_segments()[0][:, 1]
    assert (hi_y - lo_y) / 2 == pytest.approx(np.std(per_seed, ddof=1))
    assert not figures.ablation_bars("A", "T2", "mvtec_ad", "paper", metrics, tmp_path / "y.png")  # < 2 variants


def test_paper_vs_reproduced_bars_come_from_the_csv_and_the_results(captured, tmp_path, monkeypatch):
    cats = list(pv.CATEGORY_COLUMNS["loco"])
    for k, cat in enumerate(cats):
        m = _metrics("a-t3-e11", "loco", 0, cat, 0.80 + 0.02 * k, 0.90)
        m.update(teacher={"id": "t", "paper_teacher": True}, data={"official": True})
        d = tmp_path / "res" / "paper" / m["experiment"]
        d.mkdir(parents=True)
        (d / "metrics.json").write_text(json.dumps(m), encoding="utf-8")
    monkeypatch.setattr(results_mod, "RESULTS_DIR", tmp_path / "res")
    ctx = report.context("A", results_mod.load_all(), pv.load())
    tab = next(t for t in ctx["tables"] if t.key == "T3")
    assert figures.paper_vs_reproduced("A", tab, tmp_path / "t3.png")
    ax = captured[0].axes[0]
    paper_row = {c.column: c.numeric for c in pv.load() if c.paper == "A" and c.table == "T3" and c.row == "11"}
    means = [paper_row[c] for c in ("平均(L/S)/% L", "平均(L/S)/% S", "平均/%")]
    lo = np.mean([80 + 2 * k for k in range(5)])
    assert [p.get_height() for p in ax.patches] == pytest.approx(means + [lo, 90.0, (lo + 90) / 2])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["11\nmean(L/S)/% L", "11\nmean(L/S)/% S", "11\nmean/%"]


def test_dvc_plots_cover_every_evaluated_experiment():
    params = load_params()
    built = dvcgen.build(params)
    evaluated = set(built["stages"]["evaluate"]["foreach"])
    defined = {p for entry in built["plots"] for p in entry}
    profile = params["profile"]
    assert defined == {f"plots/{profile}/{e}/{name}" for e in evaluated for name in (plots.ROC_CSV, plots.TRAIN_CSV)}
    assert evaluated == {e.id for e in experiments(params) if e.teacher_id is not None}
    assert "reports/index.html" in str(built["stages"]["report"]["outs"])


def test_partial_means_are_not_charted_against_the_papers_full_means(captured, tmp_path, monkeypatch):
    """Only juice_bottle ran: Table 1 (per-category cells printed) charts that cell, not the 1/5 'mean'; Table 3
    (means only) charts the partial mean, hatched and titled so."""
    for v in ("a-t2-e1", "a-t3-e11"):
        m = _metrics(v, "loco", 0, "juice_bottle", 0.85, None)
        d = tmp_path / "res" / "cpu" / m["experiment"]
        d.mkdir(parents=True)
        (d / "metrics.json").write_text(json.dumps({**m, "profile": "cpu"}), encoding="utf-8")
    monkeypatch.setattr(results_mod, "RESULTS_DIR", tmp_path / "res")
    ctx = report.context("A", results_mod.load_all(), pv.load())
    tables = {t.key: t for t in ctx["tables"]}
    assert figures.paper_vs_reproduced("A", tables["T1"], tmp_path / "t1.png")
    ticks = [t.get_text() for t in captured[-1].axes[0].get_xticklabels()]
    assert ticks and all("juice_bottle" in t for t in ticks)  # the category's own column, never the mean's
    assert figures.paper_vs_reproduced("A", tables["T3"], tmp_path / "t3.png")
    ax = captured[-1].axes[0]
    assert "categories run only" in ax.get_title()
    assert [p.get_hatch() for p in ax.patches if p.get_hatch()] == ["//"] * 2  # baseline and exp 11, partial
