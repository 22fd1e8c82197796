"""Gate logic on synthetic baselines (the end-to-end regression test lives in test_pipeline_e2e.py)."""

import json

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


def _results(tmp_path, monkeypatch, runs):
    from adrepro import gate, results

    monkeypatch.setattr(results, "RESULTS_DIR", tmp_path / "results")
    monkeypatch.setattr(gate, "BASELINE_DIR", tmp_path / "baselines")
    for exp, m in runs.items():
        results.write_json(tmp_path / "results" / "smoke" / exp / "metrics.json", m)
    return gate


def test_failed_and_nonfinite_results_fail_the_gate_never_count_as_numbers(tmp_path, monkeypatch):
    gate = _results(tmp_path, monkeypatch, {
        "ok": {"status": "ok", "auroc": {"image": 0.9}},
        "failed": {"status": "FAILED", "failed_stage": "train", "error": "non-finite loss at step 1\nmore",
                   "auroc": {"image": None}, "previous": {"status": "ok", "auroc": {"image": 0.9}}},
        "nan": {"status": "ok", "auroc": {"image": float("nan")}},
        "new-failed": {"status": "FAILED", "failed_stage": "evaluate", "error": "boom", "auroc": {}}})
    assert gate.current("smoke") == {"ok": {"image": 0.9}}  # the FAILED run's previous 0.9 is not current
    failed = gate.failures("smoke")
    assert failed == {"failed": "train failed: non-finite loss at step 1", "nan": "non-finite AUROC ['image']",
                      "new-failed": "evaluate failed: boom"}
    base = {"ok": {"image": 0.9}, "failed": {"image": 0.9}, "nan": {"image": 0.5}}
    rows = {r["experiment"]: r for r in gate.compare(base, gate.current("smoke"), 0.05, None, failed)}
    assert [rows[e]["status"] for e in ("ok", "failed", "nan", "new-failed")] == ["ok", "FAILED", "FAILED", "FAILED"]
    assert rows["failed"]["current"] is None and "FAILED" in format_table(list(rows.values()))


def test_update_refuses_to_write_a_baseline_while_a_result_is_failed(tmp_path, monkeypatch, capsys):
    gate = _results(tmp_path, monkeypatch, {"e": {"status": "FAILED", "failed_stage": "train", "error": "x",
                                                  "auroc": {}}})
    assert gate.run("smoke", 0.05, update=True) == 1
    assert not (tmp_path / "baselines" / "smoke.json").exists()
    assert "e: train failed: x" in capsys.readouterr().out


def test_write_failed_keeps_the_last_good_result_under_previous(tmp_path):
    from adrepro.results import write_failed, write_json

    path = tmp_path / "metrics.json"
    good = {"experiment": "e", "status": "ok", "auroc": {"image": 0.8}}
    write_json(path, good)
    write_failed(path, {"experiment": "e"}, "train", FloatingPointError("nan at step 3"))
    write_failed(path, {"experiment": "e"}, "evaluate", RuntimeError("again"))
    m = json.loads(path.read_text())
    assert m["status"] == "FAILED" and m["failed_stage"] == "evaluate" and m["error"] == "again"
    assert m["auroc"]["image"] is None and m["previous"] == good
