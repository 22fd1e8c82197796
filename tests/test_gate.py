"""Gate logic on synthetic baselines (the end-to-end regression test lives in test_pipeline_e2e.py)."""

from adrepro.gate import compare, format_table


def test_drop_beyond_tolerance_is_a_regression_and_within_is_not():
    base = {"e1": {"image": 0.80, "logical": 0.70}, "e2": {"image": 0.9}}
    cur = {"e1": {"image": 0.78, "logical": 0.60}}
    rows = {(r["experiment"], r["auroc"]): r for r in compare(base, cur, tolerance=0.05)}
    assert rows[("e1", "image")]["status"] == "ok"
    assert rows[("e1", "logical")]["status"] == "REGRESSION"
    assert rows[("e2", "image")]["status"] == "MISSING"
    table = format_table(list(rows.values()))
    assert "REGRESSION" in table and "-0.1000" in table


def test_improvement_passes():
    rows = compare({"e": {"image": 0.5}}, {"e": {"image": 0.9}}, 0.0)
    assert rows[0]["status"] == "ok" and rows[0]["delta"] > 0


def test_seed_spread_groups_seeds_of_one_experiment(monkeypatch):
    from adrepro import gate

    monkeypatch.setattr(gate, "current", lambda profile: {
        "v-p-c-s0": {"image": 0.70}, "v-p-c-s1": {"image": 0.76}, "v-p-c-s2": {"image": 0.73}, "w-p-c-s0": {"image": 0.5}})
    rows = gate.seed_spread("smoke")
    assert len(rows) == 1 and rows[0]["experiment"] == "v-p-c" and rows[0]["seeds"] == 3
    assert abs(rows[0]["range"] - 0.06) < 1e-9


def test_measured_seed_spread_widens_the_tolerance_of_that_experiment_only():
    base = {"v-p-c-s0": {"image": 0.80}, "w-p-c-s0": {"image": 0.80}}
    cur = {"v-p-c-s0": {"image": 0.70}, "w-p-c-s0": {"image": 0.70}}
    rows = {r["experiment"]: r for r in compare(base, cur, 0.05, spread={"v-p-c": {"image": 0.15}})}
    assert rows["v-p-c-s0"]["status"] == "ok" and rows["v-p-c-s0"]["tolerance"] == 0.15
    assert rows["w-p-c-s0"]["status"] == "REGRESSION" and rows["w-p-c-s0"]["tolerance"] == 0.05
