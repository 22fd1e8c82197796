"""Registry -> experiments -> dvc.yaml mapping, and the variants the papers report."""

import yaml

from adrepro import dvcgen
from adrepro.config import load_params
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
