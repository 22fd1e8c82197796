"""Claim verdicts (adrepro/claims.py, rule in docs/claims.md): the rule on hand-computed numbers, the paper's effects
read from reports/paper_values.csv, and the rendered table reacting to an edited result file."""

from __future__ import annotations

import json

import pytest

from adrepro import claims, report
from adrepro import paper_values as pv
from adrepro import results as results_mod

TEACHER = {"id": "pdn_s_from_efficientnet_lite0", "paper_teacher": False, "substitute_reason": "offline"}
DATA = {"source": "mvtec_loco_partial", "protocol": "loco", "official": False}
SCALE = {"image_size": 128, "steps": 200, "pdn_width": 0.5, "n_test": 169, "n_test_full": 169}


def test_rule_on_hand_computed_spreads():
    # mean 3.0, sd 1.0: beyond one sd in the paper's direction
    assert claims.verdict([3.0, 2.0, 4.0], 2.7) == claims.CONSISTENT
    # mean 1/3, sd 0.764: inside the spread
    assert claims.verdict([0.5, -0.5, 1.0], 2.7) == claims.NOT_REPRODUCED
    assert claims.verdict([-3.0, -2.0, -4.0], 2.7) == claims.CONTRADICTED
    # the paper's direction decides, not ours: a negative paper effect is consistent with a negative one of ours
    assert claims.verdict([-3.0, -2.0, -4.0], -0.5) == claims.CONSISTENT
    assert claims.verdict([1.0], 2.7) == claims.INDICATIVE
    assert claims.verdict([], 2.7) == claims.NOT_RUN
    # zero paper effect (99.8 vs 99.8): no effect of ours beyond the spread is consistent
    assert claims.verdict([0.2, -0.2, 0.1], 0.0) == claims.CONSISTENT
    assert claims.verdict([3.0, 2.0, 4.0], 0.0) == claims.CONTRADICTED
    # figure-only claims: the stated direction
    assert claims.verdict([3.0, 2.0, 4.0], None, sign=1) == claims.CONSISTENT
    assert claims.verdict([3.0, 2.0, 4.0], None, sign=-1) == claims.CONTRADICTED


def _claim(cid):
    return next(c for c in claims.CLAIMS if c.id == cid)


def test_paper_effects_from_the_printed_tables():
    tables = pv.tables(pv.load())
    main = _claim("A-main")
    logical, structural, mean, analogue = main.measures
    # all five categories: 89.4 - 86.7; only juice_bottle ran: its own cells 99.6 - 97.5, and 99.8 - 99.8
    assert claims.paper_effect(main, logical, [], tables)[0] == pytest.approx(2.7)
    assert claims.paper_effect(main, logical, ["juice_bottle"], tables)[0] == pytest.approx(2.1)
    assert claims.paper_effect(main, structural, ["juice_bottle"], tables)[0] == pytest.approx(0.0)
    assert claims.paper_effect(main, mean, [], tables)[0] == pytest.approx(92.1 - 90.4)
    # bottle is compared with the LOCO structural mean 94.9 - 94.1
    value, basis = claims.paper_effect(main, analogue, ["bottle"], tables)
    assert value == pytest.approx(0.8) and "structural" in basis
    # Table 2 prints only means: exp 2 vs baseline 87.6 - 86.7 even when one category ran
    step = _claim("A-T2-2-vs-1")
    assert claims.paper_effect(step, step.measures[0], ["juice_bottle"], tables)[0] == pytest.approx(0.9)
    b = _claim("B-main-vs-MKDAD")
    assert claims.paper_effect(b, b.measures[0], [], tables)[0] == pytest.approx(96.3 - 87.2)
    assert claims.paper_effect(b, b.measures[0], ["airplane", "cat"], tables)[0] == pytest.approx(
        ((97.3 - 90.5) + (92.8 - 77.0)) / 2)
    fig = _claim("B-F7-position")
    assert claims.paper_effect(fig, fig.measures[0], ["bottle"], tables)[0] is None


def test_every_headline_claim_is_listed():
    ids = {c.id for c in claims.CLAIMS}
    assert {"A-main", "A-F8", "B-main-vs-MKDAD", "B-F4-Gram", "B-F4-anchor", "B-F7-position",
            "B-F3-VGG-anchor-CIFAR10", "B-F3-ResNet-anchor-MVTec", "B-F5-ViT-vs-VGG"} <= ids
    steps = {(c.table, c.new_row) for c in claims.CLAIMS if c.paper == "A" and c.table in ("T2", "T3")}
    assert steps == {("T2", r) for r in "234567"} | {("T3", r) for r in ("8", "9", "10", "11")}


def _write(root, profile, exp, variant, protocol, category, seed, auroc, status="ok", **extra):
    path = root / profile / exp / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    full = {"image": None, "logical": None, "structural": None, "mean_ls": None, "pixel": None, **auroc}
    path.write_text(json.dumps({"experiment": exp, "variant": variant, "paper": variant[0].upper(),
                                "method": "efficientad" if variant.startswith("a") else "fcd_vit",
                                "profile": profile, "protocol": protocol, "dataset": "x", "category": category,
                                "seed": seed, "status": status, "git_sha": "feedc0ffee" * 4, "auroc": full,
                                "teacher": TEACHER, "data": DATA, "scale": SCALE, "steps": 200, **extra}))
    return path


@pytest.fixture
def results_tree(tmp_path, monkeypatch):
    root = tmp_path / "results"
    for seed, (base, full) in enumerate(((0.90, 0.93), (0.91, 0.935), (0.89, 0.925))):
        _write(root, "cpu", f"a-t2-e1-loco-juice_bottle-s{seed}", "a-t2-e1", "loco", "juice_bottle", seed,
               {"logical": base, "image": base})
        _write(root, "cpu", f"a-t3-e11-loco-juice_bottle-s{seed}", "a-t3-e11", "loco", "juice_bottle", seed,
               {"logical": full, "image": full})
    for seed, (base, full) in enumerate(((0.95, 0.97), (0.96, 0.95))):
        _write(root, "cpu", f"a-t2-e1-mvtec_ad-bottle-s{seed}", "a-t2-e1", "mvtec_ad", "bottle", seed, {"image": base})
        _write(root, "cpu", f"a-t3-e11-mvtec_ad-bottle-s{seed}", "a-t3-e11", "mvtec_ad", "bottle", seed, {"image": full})
    _write(root, "cpu", "b-main-cifar10-airplane-s0", "b-main", "cifar10", "airplane", 0, {}, status="not_runnable",
           reason="not runnable here (no vit teacher in profile 'cpu': no ImageNet ViT offline)")
    _write(root, "cpu", "b-f3-vgg-cifar10-airplane-s0", "b-f3-vgg", "cifar10", "airplane", 0, {"image": 0.8})
    _write(root, "smoke", "a-t2-e1-loco-juice_bottle-s0", "a-t2-e1", "loco", "juice_bottle", 0, {"logical": 0.1})
    _write(root, "smoke", "a-t3-e11-loco-juice_bottle-s0", "a-t3-e11", "loco", "juice_bottle", 0, {"logical": 0.9})
    monkeypatch.setattr(results_mod, "RESULTS_DIR", root)
    return root


def _rows(out, paper, claim, measure_start):
    text = (out / f"paper_{paper}.md").read_text(encoding="utf-8")
    section = text[text.index("## Claim verdicts"):text.index("\n## Table 1")]
    return [r for r in section.splitlines() if r.startswith(f"| **{claim}**") and f"| {measure_start}" in r]


def test_rendered_verdicts_follow_the_result_files(results_tree, tmp_path):
    out = tmp_path / "reports"
    report.render(out)
    row = _rows(out, "a", "A-main", "logical (LOCO) | cpu")
    assert len(row) == 1  # one comparable profile: smoke never gets a verdict
    # seeds: +3.0, +2.5, +3.5 -> +3.0 ± 0.5 against the paper's juice_bottle effect +2.1
    assert "| +2.1 | +3.0 ± 0.5 | 3 | **consistent** |" in row[0]
    assert "results/cpu/: a-t2-e1-loco-juice_bottle-s0, a-t2-e1-loco-juice_bottle-s1" in row[0]
    assert "128 px · 200 steps" in row[0]
    assert "non-official data" in row[0] and "not the paper's teacher" in row[0]
    structural = _rows(out, "a", "A-main", "structural (LOCO) | cpu")[0]
    assert "**not runnable here**: no 'structural' AUROC" in structural
    assert "**not runnable here**: no vit teacher in profile 'cpu': no ImageNet ViT offline |" in _rows(
        out, "b", "B-main-vs-MKDAD", "image AUROC")[0]
    # bottle: +2.0 and -1.0 -> +0.5 ± 2.1 against LOCO's structural +0.8, labelled as an analogue
    bottle = _rows(out, "a", "A-main", "structural analogue (MVTec AD bottle, image AUROC), not LOCO's")[0]
    assert "| +0.8 | +0.5 ± 2.1 | 2 | **not reproduced at this scale** |" in bottle
    a = (out / "paper_a.md").read_text(encoding="utf-8")
    analogue = a[a.index("## Paper A on MVTec AD bottle (structural analogue"):a.index("## Latency")]
    assert "| cpu | a-t3-e11 (full method (exp 7 + SFM + CSF)) | bottle | 96.0 ± 1.4 | — | 2 |" in analogue
    assert not _rows(out, "a", "A-T2-2-vs-1", "structural analogue")  # exp 2 never ran on bottle: no row

    # a throw-away edit of one result file: seed 2 of the full method now loses 5 points to the baseline
    edited = results_tree / "cpu" / "a-t3-e11-loco-juice_bottle-s2" / "metrics.json"
    m = json.loads(edited.read_text())
    m["auroc"]["logical"] = 0.84
    edited.write_text(json.dumps(m))
    report.render(out)
    # seeds: +3.0, +2.5, -5.0 -> mean +0.17, sd 4.48: inside the spread
    assert "| +0.2 ± 4.5 | 3 | **not reproduced at this scale** |" in _rows(out, "a", "A-main", "logical (LOCO) | cpu")[0]

    # only one seed left: indicative only
    for s in (1, 2):
        (results_tree / "cpu" / f"a-t2-e1-loco-juice_bottle-s{s}" / "metrics.json").unlink()
    report.render(out)
    assert "| +3.0 | 1 | **indicative only (n = 1)** |" in _rows(out, "a", "A-main", "logical (LOCO) | cpu")[0]


def test_failed_runs_are_named_not_dropped(results_tree, tmp_path):
    out = tmp_path / "reports"
    failed = results_tree / "cpu" / "a-t3-e11-loco-juice_bottle-s2" / "metrics.json"
    m = json.loads(failed.read_text())
    failed.write_text(json.dumps({**m, "status": "FAILED", "auroc": None, "failed_stage": "train",
                                  "error": "NonFiniteError: loss is nan at step 12"}))
    report.render(out)
    row = _rows(out, "a", "A-main", "logical (LOCO) | cpu")[0]
    # seeds 0 and 1 only: +3.0, +2.5 -> +2.8 ± 0.4, n = 2, and the missing pair is named with its status
    assert "| +2.8 ± 0.4 | 2 |" in row
    assert "1 FAILED run(s) not in n: a-t3-e11-loco-juice_bottle-s2" in row
