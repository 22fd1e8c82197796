"""Paper B losses and scores, one function per equation (section 3).

Features are ViT block outputs ``[B, N, D]`` with the cls token at index 0 (``N`` = 1 + patches).
Every per-sample quantity is returned as ``[B]``; training losses take the batch mean.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F


def update_anchor(anchor: torch.Tensor, count: torch.Tensor, cls_feats: torch.Tensor,
                  momentum: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. (1) as a moving average: anchor = mean of the teacher's cls feature at layer c over normal images.

    ``cls_feats`` [B, ..., D] is one batch. ``momentum=None``: cumulative mean over all images seen
    (after one pass over D it equals eq. 1 exactly); otherwise an exponential moving average
    ``m * anchor + (1 - m) * batch mean`` (the first batch initialises it). Returns (anchor, count)."""
    cls_feats = cls_feats.detach().to(anchor.dtype)
    b = cls_feats.shape[0]
    if momentum is None or int(count) == 0:
        new_count = count + b
        new_anchor = anchor + (cls_feats.sum(0) - b * anchor) / new_count.to(anchor.dtype)
        return new_anchor, new_count
    return momentum * anchor + (1.0 - momentum) * cls_feats.mean(0), count + b


def anchor_loss(s_cls: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
    """Eq. (2): L_anchor = ||S phi_c^cls - anchor||_2, per sample [B] (summed over anchor layers if [B,L,D])."""
    d = torch.linalg.vector_norm(s_cls - anchor.detach(), dim=-1)
    return d.reshape(d.shape[0], -1).sum(1)


def token_cosine_distance(t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """1 - <t_p, s_p> / (||t_p|| ||s_p||) per token: [B, N, D] -> [B, N]."""
    return 1.0 - F.cosine_similarity(t, s, dim=-1, eps=1e-8)


def distill_loss(t_feats: Sequence[torch.Tensor], s_feats: Sequence[torch.Tensor], l2: str = "norm") -> torch.Tensor:
    """Eq. (3): sum over c in groupc of ||T phi_c - S phi_c||_2 + sum_p (1 - cos(T phi_c,p, S phi_c,p)). [B]

    ``l2="norm"``: the Euclidean norm over all tokens and channels of layer c (as printed);
    ``l2="mse"``: the mean square instead (the common implementation of an "l2 distance")."""
    total = 0.0
    for t, s in zip(t_feats, s_feats, strict=True):
        diff = (t - s).flatten(1)
        if l2 == "norm":
            l2_term = torch.linalg.vector_norm(diff, dim=1)
        elif l2 == "mse":
            l2_term = diff.pow(2).mean(1)
        else:
            raise ValueError(f"fcd_vit: cfg 'distill_l2' must be 'norm' or 'mse', got {l2!r}")
        total = total + l2_term + token_cosine_distance(t, s).sum(1)
    return total


def gram_matrix(phi_c1: torch.Tensor, phi_c2: torch.Tensor, mode: str = "channel",
                normalize: bool = True) -> torch.Tensor:
    """Eq. (4): the Gram / FSP relation of layers c1, c2 for features [B, N, D].

    ``mode="channel"`` (default): phi_c1^T . phi_c2, [B, D, D], channel x channel summed over the N token
    positions (the FSP matrix of ref. [10], Yim et al. 2017); ``mode="token"``: phi_c1 . phi_c2^T, [B, N, N].
    ``normalize`` divides by the contracted dimension (N resp. D): the FSP average over positions."""
    if mode == "channel":
        g = phi_c1.transpose(1, 2) @ phi_c2
        k = phi_c1.shape[1]
    elif mode == "token":
        g = phi_c1 @ phi_c2.transpose(1, 2)
        k = phi_c1.shape[2]
    else:
        raise ValueError(f"fcd_vit: cfg 'gram_mode' must be 'channel' or 'token', got {mode!r}")
    return g / k if normalize else g


def gram_loss(t_feats: Mapping[int, torch.Tensor], s_feats: Mapping[int, torch.Tensor],
              pairs: Sequence[tuple[int, int]], mode: str = "channel", normalize: bool = True) -> torch.Tensor:
    """Eq. (5): L_Gram = ||G_T - G_S||_2 (Frobenius), summed over the layer pairs (c1, c2). [B]"""
    total = 0.0
    for c1, c2 in pairs:
        g_t = gram_matrix(t_feats[c1], t_feats[c2], mode, normalize)
        g_s = gram_matrix(s_feats[c1], s_feats[c2], mode, normalize)
        total = total + torch.linalg.vector_norm((g_t - g_s).flatten(1), dim=1)
    return total


def total_loss(l_distill: torch.Tensor, l_anchor: torch.Tensor, l_gram: torch.Tensor, lam: float = 1.0) -> torch.Tensor:
    """Eq. (6): L = L_distill + lambda * (L_anchor + L_Gram)."""
    return l_distill + lam * (l_anchor + l_gram)


def anchor_score(t_cls: torch.Tensor, s_cls: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
    """Eq. (7): S_A = ||T phi_c^cls - anchor||_2 + ||S phi_c^cls - anchor||_2. [B] (summed over layers if [B,L,D])."""
    return anchor_loss(t_cls, anchor) + anchor_loss(s_cls, anchor)


def token_diff(t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Eq. (8): Diff_c,p = ||T phi_c,p - S phi_c,p||_2 + 1 - cos(T phi_c,p, S phi_c,p), [B, N, D] -> [B, N]."""
    return torch.linalg.vector_norm(t - s, dim=-1) + token_cosine_distance(t, s)


def avg_topk(diff: torch.Tensor, k: int) -> torch.Tensor:
    """AvgTopk: mean of the k largest values per row of [B, P]; all P values when k > P."""
    return diff.topk(min(int(k), diff.shape[1]), dim=1).values.mean(1)


def feature_diff_score(t_feats: Sequence[torch.Tensor], s_feats: Sequence[torch.Tensor], k: int = 20,
                       num_prefix_tokens: int = 1) -> torch.Tensor:
    """Eq. (9): S_D = sum over c of (Diff_c,cls + AvgTopk(Diff_c)); patch tokens exclude cls (index 0). [B]"""
    total = 0.0
    for t, s in zip(t_feats, s_feats, strict=True):
        d = token_diff(t, s)
        total = total + d[:, 0] + avg_topk(d[:, num_prefix_tokens:], k)
    return total


def anomaly_score(s_d: torch.Tensor, s_a: torch.Tensor | float) -> torch.Tensor:
    """Eq. (10): Score = S_D + S_A."""
    return s_d + s_a
