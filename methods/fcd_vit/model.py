"""ViT teacher/student for paper B (section 3.1), the teacher-file loader and the anchor buffer (eq. 1)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from .losses import update_anchor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def load_teacher_file(path: Path | str) -> dict[str, Any]:
    """Read a provisioned teacher file ``{"arch", "kwargs", "state_dict", "provenance"}``, its weights checked
    against the recorded ``state_sha256`` (``adrepro.methods.teachers.read_teacher_file``; errors name the file)."""
    from ..teachers.provision import read_teacher_file

    return read_teacher_file(path)


def normalisation(provenance: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Input mean/std [1,3,1,1]: the teacher's own (provenance) or ImageNet's."""
    mean = torch.tensor(provenance.get("mean") or IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(provenance.get("std") or IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1)
    return mean, std


def build_vit(kwargs: dict[str, Any], img_size: int, state_dict: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """timm ``VisionTransformer(**kwargs)`` at ``img_size``; loads ``state_dict`` (position embedding resampled
    when the teacher was trained at another size). Without ``state_dict``: random init from the torch RNG."""
    from timm.layers import resample_abs_pos_embed
    from timm.models.vision_transformer import VisionTransformer

    vit = VisionTransformer(**{**kwargs, "img_size": img_size})
    if state_dict is not None:
        sd = dict(state_dict)
        pe = sd.get("pos_embed")
        if pe is not None and pe.shape != vit.pos_embed.shape:
            prefix = 0 if vit.no_embed_class else vit.num_prefix_tokens
            sd["pos_embed"] = resample_abs_pos_embed(pe, list(vit.patch_embed.grid_size), num_prefix_tokens=prefix)
        vit.load_state_dict(sd)
    return vit


def vit_block_outputs(vit: nn.Module, x: torch.Tensor, layers: list[int],
                      final_norm: bool = False) -> dict[int, torch.Tensor]:
    """Outputs [B, N, D] of encoder blocks ``layers`` (0-based, c in [0, M-1]), cls/prefix tokens first.
    ``final_norm=False``: straight from the block (timm ``forward_intermediates(norm=False)``); ``True``: each
    passed through the ViT's final LayerNorm (timm ``norm=True``)."""
    if max(layers) >= len(vit.blocks):
        raise ValueError(f"fcd_vit: layer {max(layers)} requested but the ViT has {len(vit.blocks)} blocks")
    x = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x))))
    out: dict[int, torch.Tensor] = {}
    for i, blk in enumerate(vit.blocks[: max(layers) + 1]):
        x = blk(x)
        if i in layers:
            out[i] = vit.norm(x) if final_norm else x
    return out


class AnchorBank(nn.Module):
    """Anchors (eq. 1) of ``n_layers`` layers as buffers, so they are checkpointed and saved with the model."""

    def __init__(self, n_layers: int, dim: int, momentum: float | None = None):
        super().__init__()
        self.momentum = momentum
        self.register_buffer("anchor", torch.zeros(n_layers, dim))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update(self, cls_feats: torch.Tensor) -> None:
        """``cls_feats`` [B, n_layers, dim]: teacher cls features of a batch of normal training images."""
        anchor, count = update_anchor(self.anchor, self.count, cls_feats, self.momentum)
        self.anchor.copy_(anchor)
        self.count.copy_(count)
