"""Read original weight files safely: format sniffing, ``weights_only`` loading, checkpoint unwrapping.

Accepted (docs/teachers.md, "Weight files"): a ``torch.save`` file in either serialisation (the zip archive of
torch >= 1.6 or the legacy pickle), a ``.safetensors`` file, or a zip archive holding one of these as a member
(EfficientAD's release). The content must be a state dict (name -> tensor), bare or wrapped as timm/torchvision
training checkpoints wrap it (``{"state_dict": ...}`` / ``{"model": ...}``, optionally with ``argparse.Namespace``
args); a ``module.`` prefix (DataParallel) is stripped. Pickled modules or other Python objects are refused:
unpickling them would run code from the file. Every failure is a ``TeacherFileError`` naming the file.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import re
import struct
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

import torch

WRAPPER_KEYS = ("state_dict", "model")  # timm train.py / torchvision references (and DeiT-style) checkpoints
ACCEPTED = "a torch.save state dict (.pth/.pt), a .safetensors file or the registry's release zip"


class TeacherFileError(ValueError):
    """A teacher or weight file that cannot be used (corrupt, truncated, wrong content); names the file."""


def weight_format(path: Path) -> str:
    """``torch-zip`` | ``zip`` (an archive of weight files) | ``safetensors`` | ``pickle`` (legacy torch.save)."""
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError) as exc:
            raise TeacherFileError(f"{path}: unreadable zip archive ({exc}); corrupt or truncated file") from exc
        # torch.save's archive: <prefix>/data.pkl + <prefix>/version (torch/serialization.py layout)
        return "torch-zip" if any(re.fullmatch(r"[^/]+/data\.pkl", n) for n in names) else "zip"
    with open(path, "rb") as f:
        head = f.read(9)
    if path.suffix == ".safetensors" or (len(head) == 9 and head[8:9] == b"{"
                                         and struct.unpack("<Q", head[:8])[0] < path.stat().st_size):
        return "safetensors"
    return "pickle"


def safe_torch_load(source: BinaryIO | Path, where: str) -> Any:
    """``torch.load(weights_only=True)``; argparse.Namespace (checkpoint ``args``) is the only extra type."""
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(source, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError/RuntimeError/EOFError/... for bad files
        text = str(exc)
        found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if found:
            what = found.group(1)
            module = ".nn.modules." in what or what.startswith("__main__")
            kind = "a whole pickled module" if module else "Python objects"
            raise TeacherFileError(
                f"{where}: refused: holds {kind} ({what}), not only tensors, and unpickling it would run code from "
                "the file. If you trust the file, save its weights as a state dict and give that file instead: "
                "torch.save(torch.load(F, weights_only=False).state_dict(), 'teacher_state.pth')") from exc
        first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "").split(". ")[0]
        raise TeacherFileError(f"{where}: not a readable torch.save file (corrupt or truncated?): "
                               f"{type(exc).__name__}: {first[:200]}") from exc


def _load_safetensors(data: bytes, where: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    try:
        return load(data)
    except Exception as exc:  # SafetensorsError and friends
        raise TeacherFileError(f"{where}: not a readable .safetensors file (corrupt or truncated?): {exc}") from exc


def as_state_dict(obj: Any, where: str) -> dict[str, torch.Tensor]:
    """The state dict inside a checkpoint: unwraps ``state_dict``/``model``, strips a ``module.`` prefix."""
    while isinstance(obj, dict) and any(isinstance(obj.get(k), dict) for k in WRAPPER_KEYS):
        obj = next(obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), dict))
    if not isinstance(obj, dict) or not obj:
        raise TeacherFileError(f"{where}: expected a state dict (name -> tensor), got "
                               f"{'an empty dict' if isinstance(obj, dict) else type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise TeacherFileError(f"{where}: not a state dict: entries {bad[:5]} are not tensors "
                               f"(checkpoint wrappers understood: {list(WRAPPER_KEYS)})")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def read_weights(path: Path, member: str | None,
                 where: str | None = None) -> tuple[dict[str, torch.Tensor], str | None]:
    """State dict from a weight file (or from ``member`` of a zip archive of weight files) and the member's
    SHA-256 (None when the file itself holds the weights). ``where`` names the file in errors."""
    where = where or str(path)
    if not path.is_file():
        raise FileNotFoundError(f"{where}: weight file not found")
    fmt = weight_format(path)
    if fmt == "zip":
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            base = Path(member).name if member else None
            name = member if member in names else next((n for n in names if base and n.endswith(base)), None)
            if name is None:
                wanted = f"no weight file {member!r} in it" if member else "no member named to read"
                raise TeacherFileError(f"{where}: a zip archive but not a torch.save file, and {wanted} (has "
                                       f"{names[:10]}); expected {ACCEPTED}")
            try:
                data = zf.read(name)
            except (zipfile.BadZipFile, OSError, EOFError) as exc:
                raise TeacherFileError(f"{where}: member {name} unreadable (corrupt or truncated): {exc}") from exc
        inner = f"{where} (member {name})"
        obj = (_load_safetensors(data, inner) if name.endswith(".safetensors")
               else safe_torch_load(io.BytesIO(data), inner))
        return as_state_dict(obj, inner), hashlib.sha256(data).hexdigest()
    if fmt == "pickle":
        with open(path, "rb") as f:
            head = f.read(12)
        if head[:2] == b"PK":
            raise TeacherFileError(f"{where}: a zip archive (torch.save or release zip) without its central "
                                   "directory: truncated or corrupt; download or copy it again")
        if head[:1] != b"\x80":  # a legacy torch.save file starts with a pickle protocol opcode
            raise TeacherFileError(f"{where}: not a weight file ({'empty' if not head else f'starts with {head!r}'}); "
                                   f"expected {ACCEPTED}")
    obj = _load_safetensors(path.read_bytes(), where) if fmt == "safetensors" else safe_torch_load(path, where)
    return as_state_dict(obj, where), None
