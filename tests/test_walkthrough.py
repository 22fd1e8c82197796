"""docs/data.md "Your own data, step by step", run as written: its bash blocks in a throw-away project copy
(generated MVTec-layout folder -> new profile -> `dvc repro` -> per-defect AUROCs, non-official flag, report
section, the user profile not gated, the smoke baseline untouched). ``project``: conftest.make_project."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest
import yaml

from adrepro import REPO_ROOT

SECTION = "## Your own data, step by step"


def walkthrough_blocks() -> list[str]:
    text = (REPO_ROOT / "docs" / "data.md").read_text()
    assert SECTION in text, f"docs/data.md lost its section {SECTION!r}"
    body = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)```", body, flags=re.S)


def test_docs_walkthrough_runs_as_written(tmp_path, project):
    blocks = walkthrough_blocks()
    assert len(blocks) >= 4 and any("dvc repro" in b for b in blocks)
    proj = project(tmp_path / "proj")
    baseline = REPO_ROOT / "reports" / "baselines" / "smoke.json"
    (proj / "reports" / "baselines").mkdir(parents=True)
    shutil.copy2(baseline, proj / "reports" / "baselines" / "smoke.json")
    env = {**os.environ, "ADREPRO_ROOT": str(proj), "DVC_NO_ANALYTICS": "1",
           "MLFLOW_TRACKING_URI": f"sqlite:///{proj / 'mlflow.db'}"}
    subprocess.run(["dvc", "init", "-q"], cwd=proj, env=env, check=True)  # the user's clone is a DVC repo
    script = "set -euo pipefail\n" + "\n".join(blocks)
    run = subprocess.run(["bash", "-c", script], cwd=proj, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    params = yaml.safe_load((proj / "params.yaml").read_text())
    assert params["profile"] == "smoke" and params["datasets"]["custom"]["mytiles"]["layout"] == "mvtec_ad"
    results = sorted((proj / "results" / "mytiles").glob("*/metrics.json"))
    assert [p.parent.name for p in results] == ["a-t2-e1-mvtec_ad-tiles-s0"]  # the id names the real protocol
    m = json.loads(results[0].read_text())
    assert m["status"] == "ok" and m["profile"] == "mytiles"
    for key in ("per_type", "pixel_per_type"):
        assert sorted(m["auroc"][key]) == ["crack", "stain"] and all(0 <= v <= 1 for v in m["auroc"][key].values())
    assert m["data"]["official"] is False and "datasets.custom.mytiles" in m["data"]["non_official_reason"]
    assert m["train"]["quantiles_from"] == "hold-out of train/good (10%, 6 images)"
    assert "no baseline, not gated" in run.stdout
    report = (proj / "reports" / "paper_a.md").read_text()
    section = report.split("## Profile 'mytiles'", 1)[1].split("\n## ", 1)[0]
    assert "a-t2-e1-mvtec_ad-tiles-s0" in section and "non-official" in section
    assert not (proj / "results" / "smoke").exists()  # nothing ran or was written under the smoke profile
    assert (proj / "reports" / "baselines" / "smoke.json").read_bytes() == baseline.read_bytes()
    assert not (proj / "reports" / "baselines" / "mytiles.json").exists()


def test_profile_new_appends_a_copy_and_keeps_the_rest_of_the_file(tmp_path):
    from adrepro.datasets import synth
    from adrepro.profiles import new_profile_text

    text = (REPO_ROOT / "params.yaml").read_text()
    out = new_profile_text(text, "mine", "cpu")
    assert out.startswith(text.rstrip("\n"))  # every line before, comments included, unchanged
    new, old = yaml.safe_load(out), yaml.safe_load(text)
    assert new["profiles"]["mine"] == old["profiles"]["cpu"] and new["profile"] == old["profile"]
    folder = synth.generate("synth_loco", tmp_path / "loco_copy", seed=0)
    out = new_profile_text(text, "myloco", "smoke", data=str(folder))
    new = yaml.safe_load(out)
    assert new["datasets"]["custom"]["myloco"] == {"layout": "mvtec_loco", "path": str(folder)}  # layout detected
    protos = new["profiles"]["myloco"]["protocols"]
    assert list(protos) == ["loco"] and protos["loco"]["categories"] == [synth.LOCO_CATEGORY]
    assert sorted(protos["loco"]["variants"]) == sorted(v for v in old["profiles"]["cpu"]["protocols"]["loco"]["variants"])
    it = iter(out.splitlines())  # with --data too, every old line is still there, in order
    assert all(any(ln == o for o in it) for ln in text.splitlines())


def test_profile_new_refuses_clearly(tmp_path):
    from adrepro.config import ConfigError
    from adrepro.profiles import new_profile_text

    from adrepro.datasets import synth

    text = (REPO_ROOT / "params.yaml").read_text()
    folder = synth.generate("synth_mvtec", tmp_path / "tiles", seed=0)
    for kwargs, msg in (({"name": "smoke", "source": "cpu"}, "exists already"),
                        ({"name": "x", "source": "nope"}, "no profile 'nope'"),
                        ({"name": "new", "source": "smoke"}, "profile name 'new'"),
                        ({"name": "x", "source": "smoke", "data": str(tmp_path / "missing")}, "folder not found"),
                        ({"name": "x", "source": "smoke", "data": str(folder), "variants": ["b-main"],
                          "layout": "mvtec_loco"}, "not registered for protocol loco")):
        with pytest.raises(ConfigError, match=msg):
            new_profile_text(text, **kwargs)
