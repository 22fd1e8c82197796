"""`adrepro run`: scheduling rules on stub stages with the local pool (tests/test_executor_ray.py: Ray)."""

from __future__ import annotations

import json
import time

import pytest

from adrepro.config import ConfigError
from adrepro.executor import RUN_DIR, Job, LocalExecutor, _rank, parse_budget, run


def test_parse_budget():
    assert parse_budget("25m") == 1500 and parse_budget("1h30m") == 5400 and parse_budget("90s") == 90
    assert parse_budget(None) is None
    with pytest.raises(ConfigError, match="--budget 'soon'"):
        parse_budget("soon")


def test_priority_rank_follows_run_priority():
    prio = ["a-t2-e1", "b-main"]
    assert _rank("a-t2-e1-loco-x-s0", prio) == 0 and _rank("b-main-cifar10-0-s0", prio) == 1
    assert _rank("a-t2-e10-loco-x-s0", prio) == 2  # a prefix of the id is not enough, the variant must match
    assert _rank(None, prio) == 3


def _jobs(spec: dict[str, tuple[str, set[str]]]) -> dict[str, Job]:
    return {name: Job(name, cmd, needs) for name, (cmd, needs) in spec.items()}


def test_failure_blocks_descendants_and_final_stages_run_last(tmp_path):
    jobs = _jobs({
        "data@d": ("true", set()),
        "train@ok": ("true", {"data@d"}),
        "train@bad": ("exit 3", {"data@d"}),
        "evaluate@bad": ("true", {"train@bad"}),
        "evaluate@ok": ("true", {"train@ok"}),
        "report": ("true", {"evaluate@ok"}),
    })
    committed: list[str] = []
    rc = run(LocalExecutor(tmp_path, 2), jobs, None, root=tmp_path, commit=lambda r, n: committed.extend(n))
    assert rc == 1
    assert {n: j.status for n, j in jobs.items()} == {
        "data@d": "done", "train@ok": "done", "train@bad": "failed", "evaluate@bad": "blocked",
        "evaluate@ok": "done", "report": "done"}
    assert committed[-1] == "report" and "train@bad" not in committed
    summary = json.loads((tmp_path / RUN_DIR / "summary.json").read_text())
    assert summary["stages"]["train@bad"]["status"] == "failed"
    assert "exit 3" in (tmp_path / RUN_DIR / "logs" / "train@bad.log").read_text()  # the command, logged


def test_budget_stops_starting_stages_in_priority_order_then_reports(tmp_path):
    jobs = _jobs({
        "train@first": ("sleep 0.2", set()),
        "train@slow": ("sleep 30", set()),
        "train@never": ("true", set()),
        "report": ("touch reported", {"train@first", "train@slow", "train@never"}),
    })
    jobs["train@first"].rank, jobs["train@slow"].rank, jobs["train@never"].rank = 0, 1, 2
    t0 = time.monotonic()
    rc = run(LocalExecutor(tmp_path, 1), jobs, 3.0, root=tmp_path, commit=lambda r, n: None)
    assert rc == 0 and time.monotonic() - t0 < 20  # the 30 s stage was stopped, not waited for
    assert [jobs[n].status for n in ("train@first", "train@slow", "train@never", "report")] == [
        "done", "stopped", "queued", "done"]
    assert (tmp_path / "reported").is_file()


def test_stage_is_not_committed_when_code_changed_while_it_ran(tmp_path):
    (tmp_path / "methods").mkdir()
    (tmp_path / "methods" / "m.py").write_text("X = 1\n")
    jobs = _jobs({
        "train@edited": ("sh -c 'sleep 0.5; echo X = 2 > methods/m.py'", set()),  # an edit lands mid-stage
        "evaluate@edited": ("true", {"train@edited"}),
        "train@other": ("true", set()),
    })
    committed: list[str] = []
    rc = run(LocalExecutor(tmp_path, 1), jobs, None, root=tmp_path, commit=lambda r, n: committed.extend(n))
    assert rc == 1
    assert jobs["train@edited"].status == "failed" and jobs["evaluate@edited"].status == "blocked"
    assert "train@edited" not in committed and "train@other" in committed  # started after the edit: consistent
