"""Shared pieces of every loader: image decoding with clear errors, resizing to the item contract
(datasets/base.py), lazy folder- and array-backed datasets, seeded splits and atomic generation."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from adrepro import download

from .base import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
# Resized uint8 images are kept in memory up to this many bytes per dataset (decode once, resize once).
CACHE_BYTES = 512 * 2**20
# Fixed seed for test-set membership of non-official splits (the test set never changes with the run seed).
SPLIT_SEED = 0


def require_dir(path: Path, what: str) -> Path:
    """Return ``path`` if it is a directory, else raise DataError naming it and what was expected."""
    path = Path(path)
    if path.is_file():
        raise DataError(f"{path}: is a file; expected a directory ({what})")
    if not path.is_dir():
        raise DataError(f"{path}: directory not found; expected {what}")
    return path


def list_images(folder: Path, what: str, allow_empty: bool = False) -> list[Path]:
    """Image files directly inside ``folder`` (sorted by name); empty or missing folders are errors."""
    folder = require_dir(folder, what)
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files and not allow_empty:
        raise DataError(f"{folder}: no images ({'/'.join(IMAGE_EXTENSIONS)}) found; expected {what}")
    return files


def subdirs(folder: Path) -> list[str]:
    return sorted(p.name for p in Path(folder).iterdir() if p.is_dir() and not p.name.startswith("."))


def image_size_of(path: Path) -> tuple[int, int]:
    """(width, height) from the file header (cheap); unreadable headers raise DataError."""
    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: unreadable image ({exc}); expected a PNG/JPEG image file") from exc


def read_image(path: Path) -> np.ndarray:
    """Decode fully to uint8 [H,W] (grey) or [H,W,3] (RGB); truncated/corrupt files raise DataError."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("L", "1", "I;16", "I", "F"):
                im = im.convert("L")
            elif im.mode != "RGB":
                im = im.convert("RGB")
            return np.asarray(im).copy()
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: unreadable or truncated image ({exc}); expected a complete PNG/JPEG image") from exc


def read_mask(paths: Sequence[Path], size: tuple[int, int]) -> np.ndarray:
    """Union (>0) of one or more mask files, each required to be ``size`` (W,H) like its image."""
    out = np.zeros((size[1], size[0]), dtype=bool)
    for p in paths:
        m = read_image(p)
        if m.ndim == 3:
            m = m.max(axis=2)
        if (m.shape[1], m.shape[0]) != tuple(size):
            raise DataError(f"{p}: mask is {m.shape[1]}x{m.shape[0]} but its image is {size[0]}x{size[1]} (WxH); "
                            "expected the same size")
        out |= m > 0
    return out


def to_image_tensor(arr: np.ndarray) -> torch.Tensor:
    """uint8 [H,W] or [H,W,3] -> float [3,H,W] in [0,1], grey repeated to 3 channels."""
    t = torch.from_numpy(np.array(arr, dtype=np.float32)).div_(255.0)
    if t.ndim == 2:
        return t.unsqueeze(0).expand(3, -1, -1).contiguous()
    return t.permute(2, 0, 1).contiguous()


def resize_image(arr: np.ndarray, size: int) -> np.ndarray:
    if arr.shape[0] == size and arr.shape[1] == size:
        return arr
    return np.asarray(Image.fromarray(arr).resize((size, size), Image.BILINEAR))


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    if mask.shape == (size, size):
        return mask
    return np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((size, size), Image.NEAREST)) > 0


@dataclass
class Record:
    """One item before decoding. ``masks``: None (no mask), [] (all-zero mask), or mask files to merge."""

    source: Any  # a Path (folder datasets) or an int index (array datasets)
    label: int
    meta: dict[str, Any]
    masks: list[Path] | None = None


class _CachedDataset(Dataset):
    def __init__(self, records: list[Record], image_size: int):
        if image_size <= 0:
            raise DataError(f"image_size must be a positive integer, got {image_size!r}")
        self.records = records
        self.image_size = int(image_size)
        self._cache: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}
        self._cache_bytes = 0

    def __len__(self) -> int:
        return len(self.records)

    def _decode(self, rec: Record) -> tuple[np.ndarray, np.ndarray | None]:
        raise NotImplementedError

    def __getitem__(self, i: int):
        rec = self.records[i]
        hit = self._cache.get(i)
        if hit is None:
            img, mask = self._decode(rec)
            img = resize_image(img, self.image_size)
            mask = None if mask is None else resize_mask(mask, self.image_size)
            nbytes = img.nbytes + (0 if mask is None else mask.nbytes)
            if self._cache_bytes + nbytes <= CACHE_BYTES:
                self._cache[i] = (img, mask)
                self._cache_bytes += nbytes
        else:
            img, mask = hit
        mask_t = None if mask is None else torch.from_numpy(mask.astype(np.float32))
        return to_image_tensor(img), int(rec.label), mask_t, dict(rec.meta)

    def labels(self) -> list[int]:
        return [r.label for r in self.records]

    def anomaly_types(self) -> list[str]:
        return [r.meta["anomaly_type"] for r in self.records]


class FolderDataset(_CachedDataset):
    """Images (and masks) decoded lazily from files; sizes of image and mask are checked on access."""

    def _decode(self, rec: Record) -> tuple[np.ndarray, np.ndarray | None]:
        img = read_image(rec.source)
        if rec.masks is None:
            return img, None
        return img, read_mask(rec.masks, (img.shape[1], img.shape[0]))


class ArrayDataset(_CachedDataset):
    """Items from an in-memory uint8 array [N,H,W] or [N,H,W,3] (CIFAR, Fashion-MNIST, digits, ELPV)."""

    def __init__(self, images: np.ndarray | Callable[[int], np.ndarray], records: list[Record], image_size: int):
        super().__init__(records, image_size)
        self.images = images

    def _decode(self, rec: Record) -> tuple[np.ndarray, np.ndarray | None]:
        img = self.images(rec.source) if callable(self.images) else self.images[rec.source]
        return np.asarray(img, dtype=np.uint8), None


def holdout(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of range(n) into (kept, held_out) with round(fraction*n) held out (>=1 if fraction>0)."""
    if not 0 <= fraction < 1:
        raise DataError(f"hold-out fraction must be in [0, 1), got {fraction!r}")
    k = int(round(fraction * n))
    if fraction > 0:
        k = max(1, k)
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[k:]), np.sort(perm[:k])


def count_by(records: Sequence[Record], key: str = "anomaly_type") -> dict[str, int]:
    out: dict[str, int] = {}
    for r in records:
        out[r.meta[key]] = out.get(r.meta[key], 0) + 1
    return dict(sorted(out.items()))


@dataclass
class SplitRecords:
    train: list[Record]
    val: list[Record] | None
    test: list[Record]
    info: dict[str, Any] = field(default_factory=dict)

    def counts(self) -> dict[str, Any]:
        return {
            "train": len(self.train),
            "val": None if self.val is None else len(self.val),
            "test": count_by(self.test),
            "test_total": len(self.test),
            "test_masks": sum(1 for r in self.test if r.masks),
        }


def atomic_build(dest: Path, build: Callable[[Path], None], stamp: str) -> Path:
    """``adrepro.download.atomic_build`` with the datasets' error type."""
    try:
        return download.atomic_build(dest, build, stamp)
    except NotADirectoryError as exc:
        raise DataError(f"{exc} for generated data") from exc
