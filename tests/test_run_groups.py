"""Run groups (methods/efficientad/group.py): K EfficientAD runs trained as one batched computation end where
the same K runs trained alone by ``EfficientAD.fit`` end, and a killed group resumes to the same weights."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from adrepro.methods.base import FitContext, Teacher
from adrepro.methods.efficientad.group import RunGroup
from adrepro.methods.efficientad.method import EfficientAD
from adrepro.methods.efficientad.pdn import build_pdn
from adrepro.training import Interrupted

sys.path.insert(0, str(Path(__file__).parent))
from conftest import TinyDataset  # noqa: E402


def teacher_file(path, out_channels=16, width=0.25) -> Teacher:
    from adrepro.methods.teachers.provision import save_teacher_file  # records state_sha256 (checked on load)

    torch.manual_seed(0)
    save_teacher_file(path, "pdn_s", {"out_channels": out_channels, "width": width},
                      build_pdn("S", out_channels, width).state_dict(), {"id": "random_pdn"})
    return Teacher("random_pdn", path)


CFG = dict(image_size=64, steps=30, pdn_width=0.25, ae_latent=16, checkpoint_every=10)
SEEDS = (0, 1, 2)
PROBE = TinyDataset(64, n=4, seed=99).images  # images scored by every trained run


def _runs(tmp_path, tag: str, logs: dict | None = None):
    """Three runs with their own seeds, training and validation images (as three categories would be)."""
    out = []
    for s in SEEDS:
        log = (lambda n, v, step, s=s: logs.setdefault(s, []).append((n, v, step))) if logs is not None else None
        ctx = FitContext(f"run{s}", tmp_path / f"{tag}{s}", seed=s, extra={"penalty": TinyDataset(80, n=5, seed=3)},
                         **({"log_metric": log} if log else {}))
        out.append((TinyDataset(64, n=6, seed=10 + s), TinyDataset(64, n=3, seed=20 + s), ctx))
    return out


def _methods(teacher, **opts):
    return [EfficientAD({**CFG, **opts, "seed": s}, teacher) for s in SEEDS]


def test_group_of_three_ends_as_the_three_runs_trained_alone(tmp_path):
    teacher = teacher_file(tmp_path / "teacher.pt", out_channels=16, width=0.25)
    solo_logs, group_logs = {}, {}
    solo = _methods(teacher)
    for method, (train, val, ctx) in zip(solo, _runs(tmp_path, "solo", solo_logs)):
        method.fit(train, val, ctx)
    group = _methods(teacher)
    summaries = RunGroup(group).fit(_runs(tmp_path, "grp", group_logs), tmp_path / "group")
    for k, (a, b) in enumerate(zip(solo, group)):
        sa, sb = a.model.state_dict(), b.model.state_dict()
        assert sa.keys() == sb.keys()
        for name in sa:
            torch.testing.assert_close(sb[name], sa[name], rtol=0, atol=1e-5, msg=f"run {k}: {name}")
        torch.testing.assert_close(b.predict(PROBE)[0], a.predict(PROBE)[0], rtol=0, atol=1e-5)
        assert summaries[k] == b.summary == a.summary
        assert [(n, s) for n, _, s in group_logs[SEEDS[k]]] == [(n, s) for n, _, s in solo_logs[SEEDS[k]]]
        for (n, va, s), (_, vb, _) in zip(solo_logs[SEEDS[k]], group_logs[SEEDS[k]]):
            assert vb == pytest.approx(va, rel=1e-5, abs=1e-6), (k, n, s)
    # the runs really differ (own seeds and data): equal weights would make the comparison above vacuous
    assert not torch.allclose(group[0].model.student[0].weight, group[1].model.student[0].weight, atol=1e-3)


def test_dual_autoencoder_variant_group_ends_as_its_runs_trained_alone(tmp_path):
    """Paper A's full method (two AEs with SRM and CRM, the SFM, CSF loss): 12 dropout layers per step, the
    1-channel SRM/CRM logit convolutions and the CRM's linear layers, batched. Few steps: gradients that sit at
    the rounding floor (the channel AE's late decoder blocks) turn rounding differences into Adam steps later."""
    teacher = teacher_file(tmp_path / "teacher.pt", out_channels=16, width=0.25)
    opts = dict(dual_ae=True, srm=True, crm=True, sfm=True, csf=True, steps=6, sampling="replacement")
    solo = _methods(teacher, **opts)[:2]
    for method, (train, val, ctx) in zip(solo, _runs(tmp_path, "solo")):
        method.fit(train, val, ctx)
    group = _methods(teacher, **opts)[:2]
    RunGroup(group).fit(_runs(tmp_path, "grp")[:2], tmp_path / "group")
    for k, (a, b) in enumerate(zip(solo, group)):
        for name, t in a.model.state_dict().items():
            torch.testing.assert_close(b.model.state_dict()[name], t, rtol=0, atol=1e-5, msg=f"run {k}: {name}")
        torch.testing.assert_close(b.predict(PROBE)[0], a.predict(PROBE)[0], rtol=0, atol=1e-5)


def test_killed_group_resumes_to_the_uninterrupted_weights(tmp_path):
    teacher = teacher_file(tmp_path / "teacher.pt", out_channels=16, width=0.25)
    opts = dict(steps=12, checkpoint_every=5, sampling="replacement")
    whole = _methods(teacher, **opts)
    RunGroup(whole).fit(_runs(tmp_path, "a"), tmp_path / "whole")
    with pytest.raises(Interrupted):
        RunGroup(_methods(teacher, **opts)).fit(_runs(tmp_path, "b"), tmp_path / "killed", stop_after=7)
    assert (tmp_path / "killed" / "last.pt").is_file()
    resumed = _methods(teacher, **opts)
    RunGroup(resumed).fit(_runs(tmp_path, "b"), tmp_path / "killed")  # resumes from step 5
    for a, b in zip(whole, resumed):
        for name, t in a.model.state_dict().items():
            assert torch.equal(b.model.state_dict()[name], t), name


def test_group_refuses_runs_with_other_training_options(tmp_path):
    teacher = teacher_file(tmp_path / "teacher.pt", out_channels=16, width=0.25)
    a = EfficientAD({**CFG, "seed": 0}, teacher)
    b = EfficientAD({**CFG, "seed": 1, "lr": 1e-3}, teacher)
    with pytest.raises(ValueError, match=r"run 1 differs from run 0 in option\(s\) \['lr'\]"):
        RunGroup([a, b])
    RunGroup([a, EfficientAD({**CFG, "seed": 1, "q_b": 0.99}, teacher)])  # post-training options may differ


@pytest.mark.slow
def test_train_group_cli_writes_each_experiment_as_adrepro_train_does(tmp_path, project):
    import copy
    import json
    import os
    import subprocess

    import yaml

    from adrepro import REPO_ROOT

    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    prof = copy.deepcopy(params["profiles"]["smoke"])
    prof.update(variants=["a-t2-e1"], protocols={"loco": {"dataset": "synth_loco", "categories": ["breakfast_tray"],
                                                          "seeds": [0, 1]}})
    prof["methods"]["efficientad"]["steps"] = 10
    params["profiles"]["groups"], params["profile"] = prof, "groups"
    proj = project(tmp_path / "proj", yaml.safe_dump(params, sort_keys=False, allow_unicode=True))
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}, "ADREPRO_ROOT": str(proj)}

    def adrepro(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(["adrepro", *args], cwd=proj, env=env, capture_output=True, text=True)
        assert (proc.returncode == 0) == ok, proc.stderr[-2000:]
        return proc

    exps = [f"a-t2-e1-loco-breakfast_tray-s{s}" for s in (0, 1)]
    adrepro("fetch-data", "synth_loco")
    adrepro("provision-teacher", "random_pdn_tiny")
    adrepro("train-group", *exps)
    models = proj / "models" / "groups"
    grouped = {e: (json.loads((models / e / "train.json").read_text()),
                   torch.load(models / e / "model.pt", weights_only=False)) for e in exps}
    for e in exps[:1]:  # one solo run is enough to compare the files (the first test compares weights)
        adrepro("train", e)
        solo_json = json.loads((models / e / "train.json").read_text())
        solo = torch.load(models / e / "model.pt", weights_only=False)
        group_json, group = grouped[e]
        assert group_json["summary"].pop("run_group") == exps
        for rec in (group_json, solo_json):
            rec["summary"].pop("wall_s")
        assert group_json["summary"] == solo_json["summary"]
        assert {k: v for k, v in group_json.items() if k != "history"} == {k: v for k, v in solo_json.items()
                                                                          if k != "history"}
        assert [p[:2] for p in group_json["history"]] == [p[:2] for p in solo_json["history"]]
        for name, t in solo["state"]["model"].items():
            torch.testing.assert_close(group["state"]["model"][name], t, rtol=0, atol=1e-5, msg=name)


def test_train_group_refuses_the_smoke_profile(monkeypatch):
    from adrepro.pipelines import train_group

    monkeypatch.setattr(train_group, "load_params", lambda: {"profile": "smoke"})
    with pytest.raises(SystemExit, match="smoke profile does not use run groups"):
        train_group.run(["a-t2-e1-loco-breakfast_tray-s0", "a-t2-e1-loco-breakfast_tray-s1"])
