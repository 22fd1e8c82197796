"""Provision teachers: fetch + verify (or random-init, or distil) once, save one self-describing file.

Every provisioned teacher is ``<paths.teachers_root>/<profile>/<id>.pt`` =
``torch.save({"arch", "kwargs", "state_dict", "provenance"})`` with provenance
``{id, source, sha256, paper_teacher, substitute_reason, licence, state_sha256, verified, ...}``:
``sha256`` is the original weight file's hash (or the generated state's), ``state_sha256`` the hash of
the saved tensors, re-checked by ``read_teacher_file`` whenever the file is loaded. A local file in
``paths.teacher_files[<id>]`` replaces the source (formats: ``weightfile``; verified against the pin when one
applies to it).
"""

from __future__ import annotations

import copy
import hashlib
import os
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adrepro.config import resolve_path
from adrepro.download import ChecksumError, download, sha256_file, verify
from adrepro.methods.base import Teacher
from adrepro.training import config_hash

from .registry import build_module, get_backbone
from .weightfile import TeacherFileError, as_state_dict, read_weights, safe_torch_load, weight_format

FILE_KEYS = ("arch", "kwargs", "state_dict", "provenance")
UNPINNED = "unpinned (hash recorded)"


def teachers_root(params: dict[str, Any]) -> Path:
    value = params.get("paths", {}).get("teachers_root")
    if not value:
        raise KeyError("params.yaml: missing key 'paths.teachers_root'")
    return resolve_path(value)


def teacher_path(teacher_id: str, params: dict[str, Any], profile: str) -> Path:
    return teachers_root(params) / profile / f"{teacher_id}.pt"


def local_override(teacher_id: str, params: dict[str, Any]) -> Path | None:
    """``paths.teacher_files[<id>]``: a local weight file that replaces the registry source."""
    files = params.get("paths", {}).get("teacher_files") or {}
    value = files.get(teacher_id)
    return resolve_path(value) if value else None


def state_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of a state dict (order-independent)."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_teacher_file(path: Path, arch: str, kwargs: dict, state_dict: dict, provenance: dict) -> dict:
    """Write the teacher file atomically; fills ``provenance['state_sha256']``. Returns the provenance."""
    state = {k: v.detach().cpu().clone() for k, v in state_dict.items()}
    provenance = dict(provenance, state_sha256=state_sha256(state))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"arch": arch, "kwargs": kwargs, "state_dict": state, "provenance": provenance}, tmp)
    os.replace(tmp, path)
    return provenance


def read_teacher_file(path: Path | str) -> dict[str, Any]:
    """Load a teacher file and check its tensors against the recorded ``state_sha256``.

    Raises FileNotFoundError (missing), TeacherFileError (unreadable, not a teacher file, no recorded hash) or
    ChecksumError (weights edited since ``save_teacher_file`` wrote them), each naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: teacher file not found (run provision first)")
    ckpt = safe_torch_load(path, f"{path} (teacher file)")
    missing = [k for k in FILE_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise TeacherFileError(f"{path}: not a teacher file (missing {missing}; expected {list(FILE_KEYS)})")
    as_state_dict(ckpt["state_dict"], f"{path} (teacher file)")
    recorded = ckpt["provenance"].get("state_sha256") if isinstance(ckpt["provenance"], dict) else None
    if not recorded:
        raise TeacherFileError(f"{path}: teacher file records no provenance.state_sha256, so its weights cannot "
                               "be verified (not written by provision/save_teacher_file); provision it again")
    actual = state_sha256(ckpt["state_dict"])
    if recorded != actual:
        raise ChecksumError(f"{path}: weights SHA-256 mismatch: recorded {recorded}, got {actual} "
                            "(tampered or corrupt teacher file; delete it and provision again)")
    return ckpt


def load_module(teacher: Teacher) -> nn.Module:
    """Build the teacher's architecture and load its verified weights (eval mode, frozen)."""
    if teacher.path is None:
        raise ValueError(f"teacher {teacher.id}: no file (provision it first)")
    ckpt = read_teacher_file(teacher.path)
    expected = teacher.provenance.get("state_sha256")
    if expected and expected != ckpt["provenance"]["state_sha256"]:
        raise ChecksumError(f"{teacher.path}: weights SHA-256 mismatch: expected {expected}, "
                            f"got {ckpt['provenance']['state_sha256']} (file replaced since provisioning)")
    module = build_module(ckpt["arch"], ckpt["kwargs"])
    module.load_state_dict(ckpt["state_dict"])
    return module.eval().requires_grad_(False)


# --- original weight files -------------------------------------------------------------------------

def _adapt_pdn(module: nn.Module, state: dict[str, torch.Tensor], where: str) -> dict[str, torch.Tensor]:
    """Map PDN weights saved with other layer names (anomalib's ``conv1..``) onto our Sequential, in order."""
    ours = [n[: -len(".weight")] for n, p in module.state_dict().items() if n.endswith(".weight") and p.dim() == 4]
    theirs = [n[: -len(".weight")] for n, p in state.items() if n.endswith(".weight") and p.dim() == 4]
    if len(ours) != len(theirs):
        raise TeacherFileError(f"{where}: PDN weights have {len(theirs)} conv layers, the architecture {len(ours)}")
    try:
        return {f"{o}.{s}": state[f"{t}.{s}"] for o, t in zip(ours, theirs) for s in ("weight", "bias")}
    except KeyError as exc:
        raise TeacherFileError(f"{where}: PDN weights lack {exc.args[0]!r}") from exc


def _weights_into(arch: str, kwargs: dict, state: dict[str, torch.Tensor], where: str) -> dict[str, torch.Tensor]:
    module = build_module(arch, kwargs)
    if arch in ("pdn_s", "pdn_m") and set(state) != set(module.state_dict()):
        state = _adapt_pdn(module, state, where)
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        raise TeacherFileError(f"{where}: weights do not fit arch {arch} {kwargs}: {exc}") from exc
    return module.state_dict()


def _check_prefix(path: Path, digest: str, prefix: str) -> None:
    if not digest.startswith(prefix):
        raise ChecksumError(f"{path}: SHA-256 mismatch: expected prefix {prefix}, got {digest}")


def _fetch(teacher_id: str, entry: dict, params: dict[str, Any]) -> tuple[Path, str | None, dict]:
    """Obtain the original weight file: local override, download, hub or installed package.

    Returns (path, zip member or None, provenance additions incl. ``sha256`` and ``verified``)."""
    kind, _, ref = entry["source"].partition(":")
    member = (ref.partition("#")[2] or None) if kind == "url" else None
    override = local_override(teacher_id, params)
    pin, prefix = entry.get("sha256"), entry.get("sha256_prefix")
    if override is not None:
        if not override.is_file():
            raise FileNotFoundError(f"params.yaml paths.teacher_files.{teacher_id}: {override}: file not found")
        digest = verify(override, None)
        # the pin is on the file as downloaded: an archive when the source names a member, else the file itself
        archive = member is not None and weight_format(override) == "zip"
        if pin and (member is None or archive):
            verify(override, pin)
            verified = "sha256 pin"
        elif prefix:
            _check_prefix(override, digest, prefix)
            verified = "sha256 prefix"
        else:
            verified = "unpinned local file (hash recorded)" + (
                "; the registry pin is on the release archive, not on this single weight file" if pin else "")
        return override, member if archive else None, {"sha256": digest, "verified": verified,
                                                       "local_file": str(override)}
    downloads = teachers_root(params) / "downloads"
    if kind == "url":
        url = ref.partition("#")[0]
        path = download(url, downloads / url.rsplit("/", 1)[-1], sha256=pin)
        return path, member, {"sha256": sha256_file(path), "verified": "sha256 pin" if pin else UNPINNED}
    if kind == "torchvision":
        import torchvision

        url = torchvision.models.get_weight(ref).url
        path = download(url, downloads / url.rsplit("/", 1)[-1], sha256=pin)
        digest = sha256_file(path)
        if prefix:
            _check_prefix(path, digest, prefix)
        return path, None, {"sha256": digest, "verified": "sha256 pin" if pin else "sha256 prefix", "url": url}
    if kind == "timm":
        import timm
        from huggingface_hub import hf_hub_download

        cfg = timm.models.get_pretrained_cfg(ref)
        path = Path(hf_hub_download(cfg.hf_hub_id, "model.safetensors", cache_dir=downloads / "hf"))
        digest = verify(path, pin)
        return path, None, {"sha256": digest, "verified": "sha256 pin" if pin else UNPINNED,
                            "hf_hub_id": cfg.hf_hub_id}
    if kind == "pypi":
        from .lite import package_file

        package, _, relpath = ref.partition(":")
        path = package_file(package, relpath)
        return path, None, {"sha256": verify(path, pin), "verified": "sha256 pin" if pin else UNPINNED}
    raise ValueError(f"teacher {teacher_id}: source {entry['source']!r} has no weight file")


# --- provisioning ----------------------------------------------------------------------------------

def _base_provenance(teacher_id: str, entry: dict, profile: str) -> dict[str, Any]:
    return {"id": teacher_id, "source": entry["source"], "paper_teacher": entry["paper_teacher"],
            "substitute_reason": entry["substitute_reason"], "licence": entry["licence"], "profile": profile,
            "mean": list(entry["mean"]), "std": list(entry["std"]), "input_size": entry["input_size"]}


def _distill_settings(params: dict[str, Any], profile: str) -> dict[str, Any]:
    """``profiles.<profile>.teacher_distill`` over EfficientAD's pretraining defaults."""
    prof = params.get("profiles", {}).get(profile, {})
    cfg = {"steps": 60000, "image_size": 256, "batch_size": 16, "lr": 1e-4,
           "images": prof.get("penalty_images", "imagenet")}
    cfg.update(prof.get("teacher_distill") or {})
    return cfg


def _fingerprint(teacher_id: str, entry: dict, params: dict[str, Any], profile: str, seed: int) -> str:
    override = local_override(teacher_id, params)
    fp: dict[str, Any] = {"source": entry["source"], "arch": entry["arch"], "kwargs": entry["kwargs"],
                          "sha256": entry["sha256"], "override": str(override) if override else None}
    if entry["source"] == "random" or entry["source"].startswith("distill:"):
        fp["seed"] = seed
    if entry["source"].startswith("distill:"):
        fp["distill"] = _distill_settings(params, profile)
    return config_hash(fp)


def provision(teacher_id: str, params: dict[str, Any], profile: str, seed: int = 0) -> Teacher:
    """Make ``<teachers_root>/<profile>/<id>.pt`` exist and be verified; return the ``Teacher``.

    Idempotent: an existing file with intact weights and the same fingerprint (source, pin, arch,
    override, seed, distillation settings) is reused; a stale one is rebuilt; a tampered one raises
    ChecksumError."""
    entry = get_backbone(teacher_id)
    out = teacher_path(teacher_id, params, profile)
    fingerprint = _fingerprint(teacher_id, entry, params, profile, seed)
    if out.is_file():
        prov = read_teacher_file(out)["provenance"]
        if prov.get("fingerprint") == fingerprint:
            return Teacher(teacher_id, out, prov)
        print(f"[teachers] {out}: settings changed, provisioning again", file=sys.stderr)
    prov = _base_provenance(teacher_id, entry, profile)
    prov["fingerprint"] = fingerprint
    arch, kwargs = entry["arch"], copy.deepcopy(entry["kwargs"])
    override = local_override(teacher_id, params)
    source = entry["source"]
    if source.startswith("distill:") and override is None:
        from .distill import distill_pdn

        cfg = _distill_settings(params, profile)
        distill_pdn(source.partition(":")[2], params, steps=cfg["steps"], image_size=cfg["image_size"], seed=seed,
                    out_path=out, batch_size=cfg["batch_size"], lr=cfg["lr"], images=cfg["images"],
                    out_channels=kwargs["out_channels"], width=kwargs["width"], profile=profile,
                    teacher_id=teacher_id, device=params["profiles"][profile].get("device", "cpu"))
        ckpt = read_teacher_file(out)
        prov = save_teacher_file(out, ckpt["arch"], ckpt["kwargs"], ckpt["state_dict"],
                                 dict(ckpt["provenance"], fingerprint=fingerprint))
        return Teacher(teacher_id, out, prov)
    if source == "random" and override is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            state = build_module(arch, kwargs).state_dict()
        prov.update(seed=seed, sha256=state_sha256(state), verified="generated")
        prov = save_teacher_file(out, arch, kwargs, state, prov)
        return Teacher(teacher_id, out, prov)
    path, member, extra = _fetch(teacher_id, entry, params)
    where = f"params.yaml paths.teacher_files.{teacher_id}: {path}" if override is not None else str(path)
    raw, member_sha = read_weights(path, member, where)
    if member_sha:
        extra.update(member=member, member_sha256=member_sha)
    if override is not None:
        prov["source"] = f"local:{override} (registry source {source})"
    prov.update(extra)
    state = _weights_into(arch, kwargs, raw, where)
    prov = save_teacher_file(out, arch, kwargs, state, prov)
    return Teacher(teacher_id, out, prov)


def teacher_for(params: dict[str, Any], profile: str, role: str) -> str | None:
    """The teacher id a profile assigns to a role (``pdn``, ``vit``, ``vgg16``, ``resnet18``); None means
    "no teacher available here" (e.g. offline ViT: report "not runnable here (no ImageNet ViT)")."""
    teachers = params["profiles"][profile].get("teachers") or {}
    if role not in teachers:
        raise KeyError(f"params.yaml: missing key 'profiles.{profile}.teachers.{role}' (has {sorted(teachers)})")
    return teachers[role]
