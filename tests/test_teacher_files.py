"""Teacher files (issue 9 item 2, issue 12 item 3): each accepted weight-file format loads through
``paths.teacher_files`` with the pin checked on the file's bytes as given; corrupt or refused files get an error
naming the file; a provisioned teacher edited afterwards is refused by every stage that loads it."""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import zipfile
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file
from torch import nn

from adrepro import REPO_ROOT
from adrepro.download import ChecksumError
from adrepro.methods.teachers import (BACKBONES, TeacherFileError, load_module, provision, read_teacher_file,
                                      state_sha256)
from adrepro.methods.teachers.registry import build_module

PDN_KW = {"out_channels": 16, "width": 0.125}
VIT_KW = dict(BACKBONES["random_vit_tiny"]["kwargs"])
MEMBER = "efficientad_pretrained_weights/pretrained_teacher_small.pth"
EXP = "a-t2-e1-loco-breakfast_tray-s0"  # smoke EfficientAD experiment (teacher random_pdn_tiny)


@pytest.fixture
def params(tmp_path):
    """params.yaml as written (read directly, so these tests do not hang on other sections' validation)."""
    p = copy.deepcopy(yaml.safe_load((REPO_ROOT / "params.yaml").read_text()))
    p["paths"]["teachers_root"] = str(tmp_path / "teachers")
    p["paths"]["teacher_files"] = {}
    return p


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _entry(monkeypatch, tid: str, base: str, **changes) -> None:
    monkeypatch.setitem(BACKBONES, tid, {**BACKBONES[base], **changes})


def _use(params, tid: str, path: Path) -> None:
    params["paths"]["teacher_files"][tid] = str(path)


def _random_state(arch: str, kwargs: dict, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return build_module(arch, kwargs).state_dict()


def _anomalib_names(ours: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """PDN-S as anomalib saves it: conv1..conv4 (our Sequential indices 0, 3, 6, 8, written out by hand)."""
    return {f"conv{i}.{s}": ours[f"{k}.{s}"] for i, k in ((1, "0"), (2, "3"), (3, "6"), (4, "8"))
            for s in ("weight", "bias")}


def _assert_weights(teacher, expected: dict[str, torch.Tensor]) -> None:
    got = load_module(teacher).state_dict()
    assert set(got) == set(expected)
    for k, v in expected.items():
        assert torch.equal(got[k], v), k


# --- formats ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("zip_format", [True, False], ids=["torch-zip", "legacy-pickle"])
def test_users_pretrained_teacher_small_pth_loads(params, tmp_path, monkeypatch, zip_format):
    """EfficientAD's pretrained_teacher_small.pth (a plain PDN state dict), given alone: the registry pin is on the
    release zip, so it cannot apply; the file's own hash is recorded and the provenance says so."""
    _entry(monkeypatch, "pdn_user", "efficientad_pdn_s", kwargs=PDN_KW)
    ours = _random_state("pdn_s", PDN_KW, 0)
    f = tmp_path / "pretrained_teacher_small.pth"
    torch.save(_anomalib_names(ours), f, _use_new_zipfile_serialization=zip_format)
    assert zipfile.is_zipfile(f) == zip_format  # the case that was rejected ("no member None in the archive")
    _use(params, "pdn_user", f)
    t = provision("pdn_user", params, "paper")
    _assert_weights(t, ours)
    prov = t.provenance
    assert prov["sha256"] == _sha(f) and prov["local_file"] == str(f)
    assert prov["verified"].startswith("unpinned local file") and "release archive" in prov["verified"]
    assert "member_sha256" not in prov


def test_release_archive_given_locally_is_checked_against_its_pin(params, tmp_path, monkeypatch):
    ours = _random_state("pdn_s", PDN_KW, 1)
    pth = tmp_path / "member.pth"
    torch.save(_anomalib_names(ours), pth)
    archive = tmp_path / "efficientad_pretrained_weights.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(pth, MEMBER)
    _entry(monkeypatch, "pdn_zip", "efficientad_pdn_s", kwargs=PDN_KW, sha256=_sha(archive))
    _use(params, "pdn_zip", archive)
    t = provision("pdn_zip", params, "paper")
    _assert_weights(t, ours)
    assert t.provenance["verified"] == "sha256 pin" and t.provenance["sha256"] == _sha(archive)
    assert t.provenance["member_sha256"] == _sha(pth)
    _entry(monkeypatch, "pdn_zip_bad", "efficientad_pdn_s", kwargs=PDN_KW, sha256="1" * 64)
    _use(params, "pdn_zip_bad", archive)
    with pytest.raises(ChecksumError, match=_sha(archive)):
        provision("pdn_zip_bad", params, "paper")


def test_zip_format_file_is_checked_against_its_pin_on_the_file_bytes(params, tmp_path, monkeypatch):
    ours = _random_state("pdn_s", PDN_KW, 2)
    f = tmp_path / "teacher.pth"
    torch.save(ours, f)  # today's torch.save: a zip archive
    pin = _sha(f)
    _entry(monkeypatch, "pinned", "efficientad_pdn_s", kwargs=PDN_KW, source="url:http://127.0.0.1:9/teacher.pth",
           sha256=pin)
    _use(params, "pinned", f)
    t = provision("pinned", params, "paper")
    assert t.provenance["verified"] == "sha256 pin" and t.provenance["sha256"] == pin
    _assert_weights(t, ours)
    _entry(monkeypatch, "pinned_bad", "efficientad_pdn_s", kwargs=PDN_KW, source="url:http://127.0.0.1:9/teacher.pth",
           sha256="0" * 64)
    _use(params, "pinned_bad", f)
    with pytest.raises(ChecksumError) as exc:
        provision("pinned_bad", params, "paper")
    assert "0" * 64 in str(exc.value) and pin in str(exc.value) and str(f) in str(exc.value)
    assert not (Path(params["paths"]["teachers_root"]) / "paper" / "pinned_bad.pt").exists()


@pytest.mark.parametrize("wrap", ["bare", "timm_train", "deit_model", "data_parallel"])
def test_timm_checkpoint_loads(params, tmp_path, monkeypatch, wrap):
    ours = _random_state("vit", VIT_KW, 3)
    ema = {k: v + 1 for k, v in ours.items()}
    args = argparse.Namespace(model="vit_tiny", lr=5e-4)  # timm's train.py saves its argparse args
    obj = {"bare": ours,
           "timm_train": {"epoch": 7, "arch": "vit", "state_dict": ours, "state_dict_ema": ema, "args": args,
                          "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]}},
           "deit_model": {"model": ours, "epoch": 3},
           "data_parallel": {f"module.{k}": v for k, v in ours.items()}}[wrap]
    f = tmp_path / "checkpoint.pth.tar"
    torch.save(obj, f)
    _entry(monkeypatch, "vit_user", "vit_base_patch16_224", kwargs=VIT_KW)
    _use(params, "vit_user", f)
    t = provision("vit_user", params, "paper")
    _assert_weights(t, ours)  # the raw weights, not the EMA copy
    assert t.provenance["sha256"] == _sha(f) and t.provenance["verified"].startswith("unpinned local file")


def test_torchvision_checkpoint_loads_and_its_hash_prefix_is_checked(params, tmp_path, monkeypatch):
    ours = _random_state("resnet18", {}, 4)
    f = tmp_path / "resnet18-checkpoint.pth"
    # torchvision's references/classification/train.py layout, legacy serialisation as torchvision's hub files
    torch.save({"model": ours, "optimizer": {}, "lr_scheduler": {}, "epoch": 89,
                "args": argparse.Namespace(model="resnet18")}, f, _use_new_zipfile_serialization=False)
    _entry(monkeypatch, "tv_user", "resnet18_imagenet", sha256_prefix=_sha(f)[:8])
    _use(params, "tv_user", f)
    t = provision("tv_user", params, "paper")
    assert t.provenance["verified"] == "sha256 prefix"
    _assert_weights(t, ours)
    _entry(monkeypatch, "tv_other", "resnet18_imagenet")  # prefix f37072fd: the published weights only
    _use(params, "tv_other", f)
    with pytest.raises(ChecksumError, match="f37072fd"):
        provision("tv_other", params, "paper")


def test_safetensors_file_loads_with_its_pin(params, tmp_path, monkeypatch):
    ours = _random_state("vit", VIT_KW, 5)
    f = tmp_path / "model.safetensors"
    save_file(ours, str(f))
    _entry(monkeypatch, "vit_st", "vit_base_patch16_224", kwargs=VIT_KW, sha256=_sha(f))
    _use(params, "vit_st", f)
    t = provision("vit_st", params, "paper")
    assert t.provenance["verified"] == "sha256 pin" and t.provenance["sha256"] == _sha(f)
    _assert_weights(t, ours)


# --- refused and corrupt files -----------------------------------------------------------------------

def test_whole_pickled_module_is_refused_naming_the_file(params, tmp_path, monkeypatch):
    f = tmp_path / "teacher_final.pth"  # the original EfficientAD training script saves whole modules
    torch.save(build_module("pdn_s", PDN_KW), f)
    _entry(monkeypatch, "pdn_module", "efficientad_pdn_s", kwargs=PDN_KW)
    _use(params, "pdn_module", f)
    with pytest.raises(TeacherFileError) as exc:
        provision("pdn_module", params, "paper")
    msg = str(exc.value)
    assert str(f) in msg and "paths.teacher_files.pdn_module" in msg
    assert "pickled module" in msg and "Sequential" in msg and "state_dict()" in msg
    assert not list(Path(params["paths"]["teachers_root"]).rglob("*.pt"))


def _truncated(f: Path) -> None:
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


@pytest.mark.parametrize("damage", ["truncated_zip", "truncated_legacy", "truncated_safetensors", "garbage", "empty",
                                    "not_tensors", "wrong_shapes"])
def test_bad_local_file_gets_an_error_naming_it(params, tmp_path, monkeypatch, damage):
    ours = _random_state("pdn_s", PDN_KW, 6)
    f = tmp_path / ("weights.safetensors" if damage == "truncated_safetensors" else "weights.pth")
    if damage == "truncated_zip":
        torch.save(ours, f)
        _truncated(f)
    elif damage == "truncated_legacy":
        torch.save(ours, f, _use_new_zipfile_serialization=False)
        _truncated(f)
    elif damage == "truncated_safetensors":
        save_file(ours, str(f))
        _truncated(f)
    elif damage == "garbage":
        f.write_bytes(b"<html>404 Not Found</html>")
    elif damage == "empty":
        f.write_bytes(b"")
    elif damage == "not_tensors":
        torch.save({"layers": [1, 2, 3], "note": "hello"}, f)
    else:
        torch.save(_random_state("pdn_s", {"out_channels": 8, "width": 0.125}, 6), f)
    _entry(monkeypatch, "bad", "efficientad_pdn_s", kwargs=PDN_KW)
    _use(params, "bad", f)
    with pytest.raises(TeacherFileError) as exc:
        provision("bad", params, "paper")
    assert str(f) in str(exc.value) and "paths.teacher_files.bad" in str(exc.value)
    assert not list(Path(params["paths"]["teachers_root"]).rglob("*.pt"))


def test_missing_local_file_names_the_key(params, tmp_path, monkeypatch):
    _entry(monkeypatch, "gone", "efficientad_pdn_s", kwargs=PDN_KW)
    _use(params, "gone", tmp_path / "nowhere.pth")
    with pytest.raises(FileNotFoundError, match="paths.teacher_files.gone"):
        provision("gone", params, "paper")


# --- integrity at load time ----------------------------------------------------------------------------

def _tamper(path: Path) -> tuple[str, str]:
    """Edit one weight in place, keeping the recorded provenance; returns (recorded, actual) hashes."""
    blob = torch.load(path, weights_only=True)
    name = sorted(blob["state_dict"])[0]
    blob["state_dict"][name].view(-1)[0] += 0.5
    torch.save(blob, path)
    return blob["provenance"]["state_sha256"], state_sha256(blob["state_dict"])


def test_read_teacher_file_refuses_edited_unverifiable_and_corrupt_files(params):
    t = provision("random_pdn_tiny", params, "smoke", seed=0)
    assert read_teacher_file(t.path)["provenance"] == t.provenance  # intact: accepted
    recorded, actual = _tamper(t.path)
    assert recorded != actual
    with pytest.raises(ChecksumError) as exc:
        read_teacher_file(t.path)
    assert str(t.path) in str(exc.value) and recorded in str(exc.value) and actual in str(exc.value)
    blob = torch.load(t.path, weights_only=True)
    del blob["provenance"]["state_sha256"]
    torch.save(blob, t.path)
    with pytest.raises(TeacherFileError, match="state_sha256"):
        read_teacher_file(t.path)
    _truncated(t.path)
    with pytest.raises(TeacherFileError, match=str(t.path)):
        read_teacher_file(t.path)


def test_every_stage_refuses_a_teacher_edited_after_provisioning(params, tmp_path, monkeypatch):
    from adrepro.pipelines import common, evaluate, latency, train
    from adrepro.registry import get_experiment

    from adrepro import results as results_mod

    params["profile"] = "smoke"
    exp = get_experiment(EXP, params)
    t = provision(exp.teacher_id, params, "smoke", seed=0)
    monkeypatch.setattr(results_mod, "RESULTS_DIR", tmp_path / "results")  # FAILED records land here, not in the repo
    monkeypatch.setattr(common, "load_params", lambda: params)
    monkeypatch.setattr(latency, "load_params", lambda: params)
    assert common.load_teacher(params, exp).provenance == t.provenance  # intact: accepted
    models = tmp_path / "models"
    for mod in (evaluate, latency):
        monkeypatch.setattr(mod, "model_dir", lambda profile, exp_id: models / profile / exp_id)
    (models / "smoke" / EXP).mkdir(parents=True)
    torch.save({"state": {}, "teacher": t.provenance, "summary": {}, "data": {}}, models / "smoke" / EXP / "model.pt")
    failed = []
    monkeypatch.setattr(evaluate, "log_failed", lambda exp, stage, *a: failed.append(stage))
    recorded, actual = _tamper(t.path)
    for stage in (lambda: train.run(EXP), lambda: evaluate.run(EXP), lambda: latency.run("smoke")):
        with pytest.raises(ChecksumError) as exc:
            stage()
        assert str(t.path) in str(exc.value) and recorded in str(exc.value) and actual in str(exc.value)
    assert failed == ["evaluate"]  # evaluate records its FAILED run; train/latency fail before starting work
    assert json.loads((tmp_path / "results" / "smoke" / EXP / "metrics.json").read_text())["status"] == "FAILED"


def test_read_teacher_file_rejects_a_non_teacher_file(tmp_path):
    f = tmp_path / "plain.pt"
    torch.save(nn.Linear(2, 2).state_dict(), f)
    with pytest.raises(TeacherFileError, match="not a teacher file"):
        read_teacher_file(f)


def test_method_loaders_refuse_an_edited_teacher(params):
    """The methods' own loaders (EfficientAD; FCD-ViT and the CNN ablation via ``load_teacher_file``) verify too."""
    from adrepro.methods.efficientad.method import EfficientAD
    from adrepro.methods.fcd_vit.model import load_teacher_file

    t = provision("random_pdn_tiny", params, "smoke", seed=0)
    assert load_teacher_file(t.path)["provenance"] == t.provenance
    _, actual = _tamper(t.path)
    with pytest.raises(ChecksumError, match=actual):
        EfficientAD({}, t)
    with pytest.raises(ChecksumError, match=actual):
        load_teacher_file(t.path)
