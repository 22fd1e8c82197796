"""Report rendering from a fake results tree: values, Δ, "not run", partial averages, smoke kept apart."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from adrepro import report
from adrepro import results as results_mod

SHA = "0123456789abcdef0123"
PAPER_TEACHER = {"id": "vit_base_patch16_224", "source": "timm", "paper_teacher": True}
SUB_TEACHER = {"id": "pdn_s_from_efficientnet_lite0", "paper_teacher": False, "substitute_reason": "no ImageNet here"}
OFFICIAL = {"source": "cifar10", "protocol": "one-class", "official": True}
NON_OFFICIAL = {"source": "mvtec_loco_partial", "protocol": "loco", "official": False}
LOCO = ["breakfast_box", "juice_bottle", "pushpins", "screw_bag", "splicing_connectors"]


def _write(root, profile, exp, **m):
    base = {"experiment": exp, "profile": profile, "seed": 0, "status": "ok", "git_sha": SHA, "steps": 70000}
    path = root / profile / exp / "metrics.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({**base, **m}), encoding="utf-8")


def _b(root, profile, cat, image, teacher=PAPER_TEACHER, **extra):
    _write(root, profile, f"b-main-cifar10-{cat}-s0", variant="b-main", paper="B", method="fcd_vit",
           protocol="cifar10", dataset="cifar10", category=cat, teacher=teacher, data=OFFICIAL,
           auroc={"image": image, "logical": None, "structural": None, "mean_ls": None, "pixel": None}, **extra)


def _a(root, profile, variant, cat, logical, structural, teacher=PAPER_TEACHER, data=OFFICIAL):
    _write(root, profile, f"{variant}-loco-{cat}-s0", variant=variant, paper="A", method="efficientad",
           protocol="loco", dataset="mvtec_loco", category=cat, teacher=teacher, data=data,
           auroc={"image": None, "logical": logical, "structural": structural,
                  "mean_ls": (logical + structural) / 2, "pixel": None})


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    # paper profile: B main on two CIFAR-10 classes; A full method on all five LOCO categories
    _b(root, "paper", "airplane", 0.95)
    _b(root, "paper", "automobile", 0.90)
    for cat, lo in zip(LOCO, (0.8, 0.9, 1.0, 0.7, 0.6)):
        _a(root, "paper", "a-t3-e11", cat, lo, 0.9)
    # offline profile: A baseline on one category with a substitute teacher and non-official data;
    # B main not runnable (no ViT teacher)
    _a(root, "offline", "a-t2-e1", "juice_bottle", 0.9, 0.95, teacher=SUB_TEACHER, data=NON_OFFICIAL)
    _b(root, "offline", "airplane", None, teacher={"id": None, "paper_teacher": None}, status="not_runnable",
       reason="not runnable here (no ImageNet ViT)")
    # smoke: a category that matches a paper column, with a value that must never reach a paper table
    _b(root, "smoke", "airplane", 0.4321, teacher={"id": "random_vit_tiny", "paper_teacher": False})
    latency = {"a-t2-e1-loco-breakfast_box-s0": {"latency_ms": 2.0, "throughput_img_s": 500.0, "device": "NVIDIA H100",
                                                 "dtype": "fp16-autocast", "batch": 1, "torch": "2.4"},
               "a-t3-e11-loco-breakfast_box-s0": {"latency_ms": 3.0, "throughput_img_s": 330.0,
                                                  "device": "NVIDIA H100", "dtype": "fp16-autocast", "batch": 1,
                                                  "torch": "2.4"}}
    (root / "paper" / "latency.json").write_text(json.dumps(latency), encoding="utf-8")
    mp = pytest.MonkeyPatch()
    mp.setattr(results_mod, "RESULTS_DIR", root)
    out = tmp_path_factory.mktemp("reports")
    try:
        paths = report.render(out)
    finally:
        mp.undo()
    return {p.name: p.read_text(encoding="utf-8") for p in paths}


def _section(text, heading):
    start = text.index(heading)
    nxt = text.find("\n## ", start + len(heading))
    return text[start:nxt if nxt >= 0 else None]


def _grid(section):
    """The first markdown table of a section: header and rows as lists of stripped cells."""
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in section.splitlines()
            if line.startswith("|") and not line.startswith("|---")]
    return rows[0], rows[1:]


def _lines(section, label):
    """The paper line of a row and the lines that follow it (reproduced / Δ), keyed by the 'line' column."""
    header, rows = _grid(section)
    i = next(i for i, r in enumerate(rows) if r[0].strip("*").startswith(label))
    out = {"paper": dict(zip(header, rows[i]))}
    for r in rows[i + 1:]:
        if r[0]:
            break
        out[r[1]] = dict(zip(header, r))
    return out


def test_render_writes_both_papers(rendered):
    assert set(rendered) == {"paper_a.md", "paper_b.md", "index.html"}  # index.html: tests/test_html_report.py
    for name, heads in (("paper_a.md", 3), ("paper_b.md", 4)):
        for n in range(1, heads + 1):
            assert f"## Table {n}\n" in rendered[name]


def test_reproduced_value_and_delta(rendered):
    t1 = _lines(_section(rendered["paper_b.md"], "## Table 1"), "本文方法")
    assert t1["paper"]["Airplane"] == "**97.3**"
    assert t1["reproduced · paper"]["Airplane"] == "95.0" and t1["Δ pp · paper"]["Airplane"] == "-2.3"
    assert t1["reproduced · paper"]["Automobile"] == "90.0" and t1["Δ pp · paper"]["Automobile"] == "-8.4"
    assert t1["reproduced · paper"]["Cat"] == "not run" and t1["Δ pp · paper"]["Cat"] == "—"
    # partial average: 2 of 10 classes, with their mean, and no Δ
    assert t1["reproduced · paper"]["平均值"] == "partial: 2/10 (92.5)" and t1["Δ pp · paper"]["平均值"] == "—"


def test_full_average_computed_like_the_paper(rendered):
    a = rendered["paper_a.md"]
    t1 = _lines(_section(a, "## Table 1"), "本文")
    assert t1["reproduced · paper"]["图钉 L"] == "100.0" and t1["Δ pp · paper"]["图钉 L"] == "+1.3"
    assert t1["reproduced · paper"]["平均(L/S) L"] == "80.0" and t1["Δ pp · paper"]["平均(L/S) L"] == "-9.4"
    assert t1["reproduced · paper"]["平均(L/S) S"] == "90.0" and t1["Δ pp · paper"]["平均(L/S) S"] == "-4.9"
    assert t1["reproduced · paper"]["平均"] == "85.0" and t1["Δ pp · paper"]["平均"] == "-7.1"
    # the same runs feed Table 3 exp. 11 (means over the five LOCO categories)
    t3 = _lines(_section(a, "## Table 3"), "11")
    assert t3["reproduced · paper"]["平均(L/S)/% L"] == "80.0" and t3["Δ pp · paper"]["平均/%"] == "-7.1"
    # ... and Fig. 8's "parallel dual AE" row (figure only)
    f8 = _lines(_section(a, "## Figure-only"), "parallel dual AE")
    assert f8["paper"]["平均"] == "figure only" and f8["reproduced · paper"]["平均"] == "85.0"


def test_not_run_and_reported_only(rendered):
    b = rendered["paper_b.md"]
    t4 = _lines(_section(b, "## Table 4"), "本文方法")
    assert t4["reproduced · paper"]["Bottle"] == "not run" and t4["reproduced · paper"]["平均值"] == "not run"
    assert _lines(_section(b, "## Table 4"), "AnoGAN")["paper"]["line"] == "paper (reported only)"
    t2 = _lines(_section(rendered["paper_a.md"], "## Table 2"), "4")
    assert t2["reproduced · paper"]["平均(L/S)/% L"] == "not run"


def test_offline_flags_substitute_teacher_and_data_and_partial(rendered):
    a = _section(rendered["paper_a.md"], "## Table 1")
    eff = _lines(a, "EfficientAD")
    assert eff["reproduced · offline"]["果汁瓶 L"] == "90.0" and eff["Δ pp · offline"]["果汁瓶 L"] == "-7.5"
    assert eff["reproduced · offline"]["平均(L/S) L"] == "partial: 1/5 (90.0)"
    assert eff["reproduced · offline"]["平均"] == "partial: 1/5 (92.5)"
    prov = [r for r in a.splitlines() if r.startswith("| EfficientAD | 果汁瓶 L | offline |")]
    assert len(prov) == 1
    assert "not the paper's teacher" in prov[0] and "non-official data" in prov[0]
    assert SHA[:10] in prov[0] and "a-t2-e1-loco-juice_bottle-s0" in prov[0]


def test_not_runnable_reason_is_shown(rendered):
    t1 = _section(rendered["paper_b.md"], "## Table 1")
    cell = _lines(t1, "本文方法")["reproduced · offline"]["Airplane"]
    assert cell.startswith("not runnable ‡")
    assert re.search(r"‡\d+ not runnable here \(no ImageNet ViT\)", t1)


def test_smoke_is_never_compared(rendered):
    b = rendered["paper_b.md"]
    smoke_at = b.index("## Smoke runs (embedded data, random tiny teachers — not comparable)")
    assert "43.2" in b[smoke_at:] and "43.2" not in b[:smoke_at]
    assert "smoke" not in _section(b, "## Table 1")
    row = next(r for r in b[smoke_at:].splitlines() if "b-main-cifar10-airplane-s0" in r)
    assert "random_vit_tiny ⚠ not the paper's teacher" in row and "70000" in row


def test_latency_baseline_vs_full_method(rendered):
    lat = _section(rendered["paper_a.md"], "## Latency")
    assert "| paper | loco-breakfast_box-s0 | 2.00 | 3.00 | 1.50× | NVIDIA H100 | fp16-autocast |" in lat
    assert "a-t3-e11-loco-breakfast_box-s0" in lat


def test_printing_errors_listed_with_recomputed_means(rendered):
    errs = _section(rendered["paper_b.md"], "## Printing errors")
    assert "| T4 | DSVDD | 平均值 | `72` | 70.1 |" in errs
    assert "| T1 | CapsNetpp | 平均值 | `61.2` | 63.2 |" in errs
    assert "`522`" in errs
    t1 = _lines(_section(rendered["paper_b.md"], "## Table 1"), "CapsNetpp")
    assert t1["paper"]["平均值"].startswith("61.2 (recomputed 63.2) †")


# ---- per-image scores, code commit, provenance columns ------------------------------------------------------
SCORES_SCRIPT = """
import sys
from adrepro.config import load_params
from adrepro.methods.teachers.provision import provision
from adrepro.pipelines import evaluate, train
params = load_params()
for teacher in ("random_pdn_tiny", "random_vgg_tiny"):
    provision(teacher, params, "smoke")
for exp in sys.argv[1:]:
    train.run(exp)
    evaluate.run(exp)
"""


@pytest.mark.slow
def test_auroc_recomputed_from_scores_csv_with_sklearn(tmp_path, project):
    """Real train + evaluate of two tiny smoke experiments in a project copy; every AUROC of metrics.json is
    recomputed from scores.csv.gz with scikit-learn."""
    import gzip
    import os
    import subprocess

    import pandas as pd
    import yaml
    from sklearn.metrics import roc_auc_score

    from adrepro import REPO_ROOT

    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    smoke = params["profiles"]["smoke"]
    smoke["methods"]["efficientad"].update(steps=3, checkpoint_every=3)
    smoke["methods"]["kd_cnn"].update(steps=3, checkpoint_every=3)
    proj = project(tmp_path / "proj", yaml.safe_dump(params, sort_keys=False, allow_unicode=True))
    exps = ["a-t2-e1-loco-breakfast_tray-s0", "b-f3-vgg-cifar10-0-s0"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(ADREPRO_ROOT=str(proj), MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}")
    proc = subprocess.run(["python", "-c", SCORES_SCRIPT, *exps], cwd=proj, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for exp in exps:
        folder = proj / "results" / "smoke" / exp
        metrics = json.loads((folder / "metrics.json").read_text())
        with gzip.open(folder / "scores.csv.gz", "rt") as fh:
            df = pd.read_csv(fh, keep_default_na=False)
        assert list(df.columns) == ["image", "label", "anomaly_type", "score"]
        assert len(df) == metrics["n_test"] == metrics["scale"]["n_test"]
        assert roc_auc_score(df.label, df.score) == pytest.approx(metrics["auroc"]["image"], abs=1e-12)
        for key, kind in (("logical", "logical_anomalies"), ("structural", "structural_anomalies")):
            sel = df.anomaly_type.isin(["good", kind])
            if metrics["auroc"][key] is None:
                assert not (df.anomaly_type == kind).any()
            else:
                assert roc_auc_score(df.label[sel], df.score[sel]) == pytest.approx(metrics["auroc"][key], abs=1e-12)
    loco = pd.read_csv(proj / "results" / "smoke" / exps[0] / "scores.csv.gz")
    root = json.loads((proj / "results" / "smoke" / exps[0] / "metrics.json").read_text())["data"]["root"]
    assert all(not p.startswith("/") and (Path(root) / p).is_file() for p in loco.image)
    digits = pd.read_csv(proj / "results" / "smoke" / exps[1] / "scores.csv.gz")
    assert digits.image.str.fullmatch(r"digits/test#\d+").all() and digits.image.is_unique


def test_test_subset_is_stratified_and_fixed():
    from adrepro.datasets.common import Record
    from adrepro.scores import test_subset

    class DS:
        def __init__(self, records):
            self.records, self._cache, self._cache_bytes = records, {}, 0

        def __len__(self):
            return len(self.records)

    recs = [Record(i, int(i >= 900), {"anomaly_type": "good" if i < 900 else "cat"}) for i in range(1000)]
    ds = DS(recs)
    sub = test_subset(ds, 100)
    kinds = [r.meta["anomaly_type"] for r in sub.records]
    assert (kinds.count("good"), kinds.count("cat")) == (90, 10)  # 900:100 kept at 90:10
    assert [r.source for r in sub.records] == [r.source for r in test_subset(ds, 100).records]  # same for every run
    assert len(ds.records) == 1000 and test_subset(ds, None) is ds and test_subset(ds, 5000) is ds


def test_git_sha_is_dirty_only_for_code(tmp_path):
    import subprocess

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    for rel in ("params.yaml", "dvc.yaml", "dvc.lock", "results/cpu/x/metrics.json", "reports/paper_a.md",
                "docs/x.md", "adrepro/code.py"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("v1\n")
    git("init", "-q")
    git("-c", "user.email=t@t", "-c", "user.name=t", "add", ".")
    git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "c")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    for rel in ("params.yaml", "dvc.yaml", "dvc.lock", "results/cpu/x/metrics.json", "reports/paper_a.md", "docs/x.md"):
        (tmp_path / rel).write_text("v2\n")
    (tmp_path / "untracked.py").write_text("x = 1\n")
    assert results_mod.git_sha(tmp_path) == head
    (tmp_path / "adrepro/code.py").write_text("v2\n")
    assert results_mod.git_sha(tmp_path) == head + "-dirty"


def test_provenance_shows_scale_penalty_preset_and_code_commits(tmp_path, monkeypatch):
    root = tmp_path / "results"
    scale = {"image_size": 32, "steps": 80, "batch_size": 32, "test_subset": 2000, "n_test": 2000, "n_test_full": 10000}
    _write(root, "cpu", "b-f3-vgg-cifar10-airplane-s0", variant="b-f3-vgg", paper="B", method="kd_cnn",
           protocol="cifar10", dataset="cifar10_jpeg", category="airplane", teacher=SUB_TEACHER, data=OFFICIAL,
           scale=scale, train={"preset": "mkdad"},
           auroc={"image": 0.8, "logical": None, "structural": None, "mean_ls": None, "pixel": None})
    _write(root, "cpu", "b-f3-vgg-anchor-fmnist-trouser-s0", variant="b-f3-vgg-anchor", paper="B", method="kd_cnn",
           protocol="fmnist", dataset="fashion_mnist", category="Trouser", teacher=SUB_TEACHER, data=OFFICIAL,
           scale=scale, auroc={"image": 0.9, "logical": None, "structural": None, "mean_ls": None, "pixel": None})
    pen = {"kind": "cifar10_jpeg", "source": "/x/cifar10-jpeg.tar.gz", "substitute": True}
    _write(root, "cpu", "a-t2-e1-loco-juice_bottle-s0", variant="a-t2-e1", paper="A", method="efficientad",
           protocol="loco", dataset="mvtec_loco_partial", category="juice_bottle", teacher=SUB_TEACHER,
           data=NON_OFFICIAL, scale={"image_size": 128, "steps": 200, "pdn_width": 0.5},
           train={"penalty_source": pen, "penalty": "on (50000 images)"},
           auroc={"image": 0.9, "logical": 0.9, "structural": None, "mean_ls": None, "pixel": None})
    monkeypatch.setattr(results_mod, "RESULTS_DIR", root)
    out = {p.name: p.read_text(encoding="utf-8") for p in report.render(tmp_path / "reports")}
    t1 = _section(out["paper_b.md"], "## Table 1")
    tag = "reproduced · cpu (32 px · 80 steps · batch 32 · test 2000/10000)"
    assert _lines(t1, "MKDAD")[tag]["Airplane"] == "80.0"
    prov = next(r for r in t1.splitlines() if r.startswith("| MKDAD | Airplane | cpu |"))
    assert "| 32 px · 80 steps · batch 32 · test 2000/10000 |" in prov and "| mkdad |" in prov
    a = _section(out["paper_a.md"], "## Table 1")
    prov = next(r for r in a.splitlines() if r.startswith("| EfficientAD | 果汁瓶 L | cpu |"))
    assert "cifar10_jpeg: /x/cifar10-jpeg.tar.gz ⚠ substitute (on (50000 images))" in prov
    assert f"cpu: `{SHA[:10]}` (1)" in out["paper_a.md"]
    # the CNN family on F-MNIST (no paper figure panel) still gets a reproduced-only table, saying so
    fm = _section(out["paper_b.md"], "### Fig. 3 — VGG16 / ResNet18 distillation with and without L_anchor — fmnist")
    assert "Not in the paper (its figure has no fmnist panel)" in fm
    assert _lines(fm, "VGG+Lanchor")[tag]["Trouser"] == "90.0"
