"""Registry -> experiments -> dvc.yaml mapping, and the variants the papers report."""

import pytest
import yaml

from adrepro import dvcgen
from adrepro.config import ConfigError, load_params
from adrepro.registry import VARIANTS, VARIANTS_BY_ID, experiments


def test_dvc_yaml_is_generated_from_registry_and_not_stale():
    assert not dvcgen.is_stale(), "dvc.yaml is stale: run `adrepro dvc-yaml`"


def test_every_smoke_experiment_has_train_and_evaluate_stages():
    params = load_params()
    stages = yaml.safe_load(dvcgen.render(params))["stages"]
    exps = experiments(params, "smoke")
    runnable = {e.id for e in exps if e.teacher_id}
    assert set(stages["train"]["foreach"]) == runnable
    assert set(stages["evaluate"]["foreach"]) == runnable
    for e in exps:
        item = stages["train"]["foreach"][e.id]
        assert item == {"method": e.method, "dataset": e.dataset, "teacher": e.teacher_id, "protocol": e.protocol}
    assert set(stages["data"]["foreach"]) == {e.dataset for e in exps}
    assert set(stages["teacher"]["foreach"]) == {e.teacher_id for e in exps}


def test_smoke_runs_every_variant_once_per_protocol_and_stays_small():
    exps = experiments(load_params(), "smoke")
    assert {e.variant.id for e in exps} == set(VARIANTS_BY_ID)
    assert 20 <= len(exps) <= 30
    assert len({e.id for e in exps}) == len(exps)


def test_paper_a_tables_2_and_3_and_fig_8_are_all_registered():
    rows = {(c.table, c.row) for v in VARIANTS if v.paper == "A" for c in v.cells}
    assert {("T2", r) for r in ["1 (Baseline)", "2", "3", "4", "5", "6", "7"]} <= rows
    assert {("T3", r) for r in ["1 (Baseline)", "8", "7", "9", "10", "11"]} <= rows
    assert {("T1", "EfficientAD"), ("T1", "本文"), ("F8", "serial single AE")} <= rows
    full = VARIANTS_BY_ID["a-t3-e11"].options
    assert all(full[k] for k in ("dual_ae", "srm", "crm", "sfm", "csf"))


def test_one_run_feeds_several_cells():
    base = {(c.table, c.row) for c in VARIANTS_BY_ID["a-t2-e1"].cells}
    assert {("T1", "EfficientAD"), ("T2", "1 (Baseline)"), ("T3", "1 (Baseline)")} <= base


def test_paper_profile_is_the_full_matrix():
    exps = experiments(load_params(), "paper")
    a = [e for e in exps if e.variant.paper == "A"]
    assert len(a) == 12 * 5
    main = [e for e in exps if e.variant.id == "b-main"]
    assert len(main) == 10 + 20 + 10 + 15


def test_offline_vit_rows_have_no_teacher():
    exps = experiments(load_params(), "offline")
    assert all(e.teacher_id is None for e in exps if e.method == "fcd_vit")
    stages = yaml.safe_load(dvcgen.render({**load_params(), "profile": "offline"}))["stages"]
    assert all(e.id in stages["skip"]["foreach"] for e in exps if e.method == "fcd_vit")


def test_smoke_keeps_exactly_its_25_experiments():
    assert len(experiments(load_params(), "smoke")) == 25


def test_cpu_profile_coverage_of_issue_10():
    exps = experiments(load_params(), "cpu")
    by = {}
    for e in exps:
        by.setdefault((e.variant.id, e.protocol), []).append(e)
    a_ids = [v.id for v in VARIANTS if v.paper == "A"]
    # paper A: all 12 variants on juice_bottle; exps 1, 7, 11 with 3 seeds there and on bottle, the rest 1 seed
    for vid in a_ids:
        seeds = sorted(e.seed for e in by[(vid, "loco")])
        assert seeds == ([0, 1, 2] if vid in ("a-t2-e1", "a-t2-e7", "a-t3-e11") else [0]), vid
        assert all(e.category == "juice_bottle" and e.teacher_id for e in by[(vid, "loco")])
    assert {vid for vid, proto in by if proto == "mvtec_ad" and vid.startswith("a-")} == {"a-t2-e1", "a-t2-e7", "a-t3-e11"}
    assert "a-t2-e1-mvtec_ad-bottle-s2" in {e.id for e in exps}
    # paper B: the CNN family once (VGG rows, EfficientNet-Lite stand-in) with and without L_anchor, one-class on
    # all 10 classes of F-MNIST and CIFAR-10 and on bottle; ResNet and ViT rows recorded as not runnable
    for vid in ("b-f3-vgg", "b-f3-vgg-anchor"):
        for proto, n in (("fmnist", 10), ("cifar10", 10), ("mvtec_ad", 1)):
            runs = by[(vid, proto)]
            assert len(runs) == n and all(e.teacher_id == "efficientnet_lite0" and e.seed == 0 for e in runs)
    not_runnable = {e.variant.id for e in exps if e.teacher_id is None}
    assert not_runnable == {"b-main", "b-f4-distill", "b-f4-gram", "b-f7-pos1", "b-f3-resnet", "b-f3-resnet-anchor"}
    assert len([e for e in exps if e.teacher_id]) == 18 + 9 + 2 * 21


def test_protocol_variant_list_rejects_unregistered_protocols():
    params = load_params()
    params["profiles"]["smoke"]["protocols"]["fmnist"]["variants"] = {"b-f4-gram": None}
    with pytest.raises(ConfigError, match=r"profiles.smoke.protocols.fmnist.variants: variant 'b-f4-gram' is not "
                                          r"registered for protocol 'fmnist'"):
        experiments(params, "smoke")
    params["profiles"]["smoke"]["protocols"]["fmnist"]["variants"] = {"b-nope": None}
    with pytest.raises(ConfigError, match="unknown variant 'b-nope'"):
        experiments(params, "smoke")
