"""Patch description networks (EfficientAD paper, Tables 6-7): teacher, and student with 2x channels."""

from __future__ import annotations

from torch import nn


def _c(x: int, width: float) -> int:
    return max(8, int(round(x * width)))


def pdn_small(out_channels: int = 384, width: float = 1.0) -> nn.Sequential:
    """PDN-S: 4x4 conv 128 -> avgpool -> 4x4 conv 256 -> avgpool -> 3x3 conv 256 -> 4x4 conv out.
    Receptive field 33x33 px; 256x256 input -> 64x64 output. ``width`` < 1 only for smoke teachers."""
    c1, c2 = _c(128, width), _c(256, width)
    return nn.Sequential(
        nn.Conv2d(3, c1, 4, padding=3), nn.ReLU(inplace=True),
        nn.AvgPool2d(2, stride=2, padding=1),
        nn.Conv2d(c1, c2, 4, padding=3), nn.ReLU(inplace=True),
        nn.AvgPool2d(2, stride=2, padding=1),
        nn.Conv2d(c2, c2, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(c2, out_channels, 4),
    )


def pdn_medium(out_channels: int = 384, width: float = 1.0) -> nn.Sequential:
    """PDN-M: 4x4 conv 256 -> avgpool -> 4x4 conv 512 -> avgpool -> 1x1 512 -> 3x3 512 -> 4x4 out -> 1x1 out.

    The last two convs have ``out_channels`` channels (EfficientAD Table 7 lists 384 for the teacher; the
    student doubles its output, so its conv-5 is 512 -> 768 and conv-6 768 -> 768, as in EfficientAD's and
    anomalib's ``get_pdn_medium(2 * out_channels)``): teacher 8,026,624 and student 11,615,488 parameters at
    width 1. ``width`` scales only the 256/512 hidden widths (smoke teachers)."""
    c1, c2 = _c(256, width), _c(512, width)
    return nn.Sequential(
        nn.Conv2d(3, c1, 4, padding=3), nn.ReLU(inplace=True),
        nn.AvgPool2d(2, stride=2, padding=1),
        nn.Conv2d(c1, c2, 4, padding=3), nn.ReLU(inplace=True),
        nn.AvgPool2d(2, stride=2, padding=1),
        nn.Conv2d(c2, c2, 1), nn.ReLU(inplace=True),
        nn.Conv2d(c2, c2, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(c2, out_channels, 4), nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 1),
    )


def build_pdn(size: str, out_channels: int = 384, width: float = 1.0) -> nn.Sequential:
    if size not in ("S", "M"):
        raise ValueError(f"EfficientAD size must be 'S' or 'M', got {size!r}")
    return (pdn_small if size == "S" else pdn_medium)(out_channels, width)
