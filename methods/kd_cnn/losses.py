"""Losses of the CNN backbone ablation: MKDAD multi-layer distillation (Salehi et al., CVPR 2021) and
paper B's anchor terms (eqs. 1, 2, 7) with a CNN "cls" feature."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..fcd_vit.losses import anchor_loss, anchor_score, update_anchor

__all__ = ["anchor_loss", "anchor_score", "update_anchor", "cnn_cls", "mkdad_loss"]


def cnn_cls(feats: Sequence[torch.Tensor]) -> torch.Tensor:
    """CNN stand-in for the ViT cls token: the globally average-pooled last tapped feature map, [B, C]."""
    return feats[-1].mean(dim=(2, 3))


def mkdad_loss(t_feats: Sequence[torch.Tensor], s_feats: Sequence[torch.Tensor], lam_mse: float,
               lam_dir: float = 1.0) -> torch.Tensor:
    """MKDAD's total loss, per sample [B], summed over the tapped layers i:
    lam_dir * (1 - cos(vec a_s^i, vec a_t^i)) + lam_mse * mean_j (a_s^i(j) - a_t^i(j))^2
    (L_dir + lambda L_val with MKDAD's lam_dir = 1; j runs over the C*H*W values of layer i). The same quantity
    over the scoring layers is MKDAD's anomaly score."""
    total = 0.0
    for t, s in zip(t_feats, s_feats, strict=True):
        t, s = t.flatten(1), s.flatten(1)
        total = total + lam_dir * (1.0 - F.cosine_similarity(s, t, dim=1, eps=1e-8)) + lam_mse * (s - t).pow(2).mean(1)
    return total
