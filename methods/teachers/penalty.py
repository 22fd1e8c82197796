"""Natural images for EfficientAD's penalty loss (ImageNet in the paper) and for PDN distillation.

Kinds: ``imagenet`` (folder at ``paths.imagenet``: ImageNet or Imagenette, or the hash-pinned Imagenette
download), ``cifar10_jpeg`` (the shared CIFAR-10 JPEG archive, upsampled; substitute, flagged) and
``synthetic`` (generated 1/f-spectrum images with shapes, for smoke; substitute, flagged).
Items are float tensors [3,H,W] in [0,1]; augmentation (random greyscale, as EfficientAD's
penalty transform) is drawn from a per-item generator, so an item depends only on (seed, index).
"""

from __future__ import annotations

import io
import tarfile
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from adrepro.config import resolve_path
from adrepro.download import download, extract, verify

CIFAR10_JPEG = "cifar10-jpeg.tar.gz"
CIFAR10_JPEG_SHA256 = "efac85c8ed52f4ead1e1f1b670d8dcf435d551fccebdd8b6365e0a01a504f3a4"
IMAGENETTE_URL = "https://s3.amazonaws.com/fast-ai-imageclas/imagenette2.tgz"
IMAGENETTE_SHA256 = "6cbfac238434d89fe99e651496f0812ebc7a10fa62bd42d6874042bf01de4efd"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
KINDS = ("imagenet", "cifar10_jpeg", "synthetic")


def _to_tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(img.convert("RGB"), dtype=np.uint8)).permute(2, 0, 1).float() / 255


def _item_generator(seed: int, index: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + index)


def _greyscale(x: torch.Tensor, p: float, g: torch.Generator) -> torch.Tensor:
    if p > 0 and torch.rand((), generator=g).item() < p:
        y = (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]).clamp(0, 1)
        return y.expand(3, -1, -1).clone()
    return x


class _NaturalImages(Dataset):
    """Shared resize + greyscale augmentation; subclasses implement ``_load(index) -> PIL image``."""

    def __init__(self, n: int, image_size: int, seed: int, greyscale_p: float, crop: bool):
        self.n, self.image_size, self.seed, self.greyscale_p, self.crop = n, image_size, seed, greyscale_p, crop

    def __len__(self) -> int:
        return self.n

    def _load(self, index: int) -> Image.Image:
        raise NotImplementedError

    def __getitem__(self, index: int) -> torch.Tensor:
        s = self.image_size
        x = _to_tensor(self._load(index))[None]
        if self.crop:  # EfficientAD: resize to 2s, centre crop s
            x = F.interpolate(x, size=(2 * s, 2 * s), mode="bilinear", align_corners=False, antialias=True)
            x = x[..., s // 2: s // 2 + s, s // 2: s // 2 + s]
        else:
            x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
        return _greyscale(x[0].clamp(0, 1), self.greyscale_p, _item_generator(self.seed, index))


class FolderImages(_NaturalImages):
    """All images below a folder (ImageNet/Imagenette train), sorted by path."""

    def __init__(self, files: list[Path], image_size: int, seed: int, greyscale_p: float = 0.3, crop: bool = True):
        super().__init__(len(files), image_size, seed, greyscale_p, crop)
        self.files = files

    def _load(self, index: int) -> Image.Image:
        with Image.open(self.files[index]) as img:
            return img.convert("RGB")


@lru_cache(maxsize=2)
def _cifar_blobs(archive: str, split: str) -> tuple[bytes, ...]:
    blobs = []
    with tarfile.open(archive) as tf:
        for m in tf:
            if m.isfile() and f"/{split}/" in m.name and m.name.lower().endswith(".jpg"):
                blobs.append((m.name, tf.extractfile(m).read()))
    return tuple(b for _, b in sorted(blobs))


class CifarJpegImages(_NaturalImages):
    """CIFAR-10 JPEG (32x32) images read straight from the shared archive, upsampled to ``image_size``."""

    def __init__(self, archive: Path, image_size: int, seed: int, greyscale_p: float = 0.3, split: str = "train"):
        self.blobs = _cifar_blobs(str(archive), split)
        super().__init__(len(self.blobs), image_size, seed, greyscale_p, crop=False)

    def _load(self, index: int) -> Image.Image:
        return Image.open(io.BytesIO(self.blobs[index]))


class SyntheticImages(Dataset):
    """Natural-ish generated images: noise with a 1/f^a amplitude spectrum (a ~ U[1.25, 2], smoother
    than photos' a ~ 1 so small images are not mere grain), correlated colours, a few flat ellipses."""

    def __init__(self, n: int, image_size: int, seed: int):
        self.n, self.image_size, self.seed = n, image_size, seed

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> torch.Tensor:
        s, g = self.image_size, _item_generator(self.seed, index)
        fy = torch.fft.fftfreq(s)[:, None]
        fx = torch.fft.rfftfreq(s)[None, :]
        f = torch.sqrt(fx**2 + fy**2).clamp_min(1.0 / s)
        amp = f ** -(1.25 + 0.75 * torch.rand((), generator=g))
        spec = torch.complex(torch.randn(3, *f.shape, generator=g), torch.randn(3, *f.shape, generator=g)) * amp
        x = torch.fft.irfft2(spec, s=(s, s))
        x = torch.einsum("ij,jhw->ihw", torch.randn(3, 3, generator=g) + 1.0, x)  # correlated colours
        x = (x - x.amin()) / (x.amax() - x.amin() + 1e-8)
        yy, xx = torch.meshgrid(torch.arange(s), torch.arange(s), indexing="ij")
        for _ in range(int(torch.randint(1, 5, (), generator=g))):
            cy, cx, ry, rx = (torch.rand(4, generator=g) * torch.tensor([s, s, s / 4, s / 4])).tolist()
            inside = ((yy - cy) / (ry + 2)) ** 2 + ((xx - cx) / (rx + 2)) ** 2 <= 1
            x[:, inside] = torch.rand(3, 1, generator=g)
        return x.clamp(0, 1)


def _image_files(root: Path) -> list[Path]:
    base = root / "train" if (root / "train").is_dir() else root
    return sorted(p for p in base.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def fetch_imagenette(params: dict[str, Any]) -> Path:
    """Download (hash-pinned) and extract Imagenette to ``<paths.data_root>/imagenette2``; needs network."""
    data_root = resolve_path(params["paths"]["data_root"])
    archive = download(IMAGENETTE_URL, data_root / "downloads" / "imagenette2.tgz", sha256=IMAGENETTE_SHA256)
    return extract(archive, data_root / "imagenette2") / "imagenette2"


def penalty_images(kind: str, params: dict[str, Any], image_size: int, seed: int, *, greyscale_p: float = 0.3,
                   n_synthetic: int = 1024, allow_download: bool = False) -> tuple[Dataset | None, dict[str, Any]]:
    """Dataset of natural images [3,s,s] in [0,1] and its provenance; (None, {..., reason}) when unavailable.

    Provenance: kind, source, n_images, substitute (bool), substitute_reason, and sha256 where pinned."""
    if kind not in KINDS:
        raise KeyError(f"unknown penalty image kind {kind!r} (known: {', '.join(KINDS)})")
    paths = params.get("paths", {})
    prov: dict[str, Any] = {"kind": kind, "image_size": image_size, "seed": seed}
    if kind == "synthetic":
        prov.update(source="generated (1/f noise + ellipses)", n_images=n_synthetic, substitute=True,
                    substitute_reason="smoke: generated images instead of ImageNet")
        return SyntheticImages(n_synthetic, image_size, seed), prov
    if kind == "cifar10_jpeg":
        shared = resolve_path(paths.get("shared_data"))
        archive = shared / CIFAR10_JPEG if shared else None
        if archive is None or not archive.is_file():
            return None, dict(prov, reason=f"{archive or 'paths.shared_data'}: CIFAR-10 JPEG archive not found")
        prov.update(sha256=verify(archive, CIFAR10_JPEG_SHA256))
        ds = CifarJpegImages(archive, image_size, seed, greyscale_p)
        prov.update(source=str(archive), n_images=len(ds), substitute=True,
                    substitute_reason=f"CIFAR-10 train JPEGs (32 px) upsampled to {image_size} px instead of ImageNet")
        return ds, prov
    root = resolve_path(paths.get("imagenet"))
    if root is None and allow_download:
        root = fetch_imagenette(params)
    if root is None or not root.is_dir():
        return None, dict(prov, reason=f"paths.imagenet ({root}) is not an image folder; set it to ImageNet or "
                                       "Imagenette (or allow the hash-pinned Imagenette download)")
    files = _image_files(root)
    if not files:
        return None, dict(prov, reason=f"{root}: no images found")
    imagenette = "imagenette" in str(root).lower()
    prov.update(source=str(root), n_images=len(files), substitute=imagenette,
                substitute_reason="Imagenette (10-class ImageNet subset)" if imagenette else None)
    return FolderImages(files, image_size, seed, greyscale_p), prov
