"""Paper A's losses (sec. 1.5, eqs 11-19), one function per equation, on EfficientAD's definitions.

Tensors are feature maps [B,C,H,W]. "Squared distance" at a position is averaged over channels
(``reduction="mean"``, EfficientAD's (C*H*W)^-1 normalisation) unless ``reduction="sum"`` (the squared
Euclidean norm, the literal reading of eqs 11/15); see docs/deviations.md.
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F


def _position_sq_dist(a: torch.Tensor, b: torch.Tensor, reduction: str) -> torch.Tensor:
    d = (a - b) ** 2
    if reduction == "mean":
        return d.mean(dim=1)
    if reduction == "sum":
        return d.sum(dim=1)
    raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")


def st_loss(teacher: torch.Tensor, student: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Eq 11: L_ST = 1/(HW) sum_ij (T_ij(I) - S'_ij(I))^2."""
    return _position_sq_dist(teacher, student, reduction).mean()


def hard_loss(teacher: torch.Tensor, student: torch.Tensor, p_hard: float = 0.999) -> torch.Tensor:
    """L_HARD (EfficientAD): mean of the element-wise squared distances (T - S')^2 that are >= their
    p_hard-quantile, i.e. only the top (1 - p_hard) = 0.1 % are back-propagated."""
    d = (teacher - student) ** 2
    d_hard = torch.quantile(d.detach().flatten(), p_hard)
    keep = d >= d_hard  # masked mean, not d[keep].mean(): no data-dependent shape (vmap, run groups; no host sync)
    return torch.where(keep, d, 0.0).sum() / keep.sum()


def penalty_loss(student_on_penalty: torch.Tensor) -> torch.Tensor:
    """Eq 12: L_PEN = 1/(HW) sum_ij S'_ij(P)^2 on an ImageNet image P (EfficientAD: the S' channels,
    averaged over channels too)."""
    return (student_on_penalty**2).mean()


def distillation_loss(l_hard: torch.Tensor, l_pen: torch.Tensor | float) -> torch.Tensor:
    """Eq 13: L_DIS = L_HARD + L_PEN."""
    return l_hard + l_pen


def ta_loss(teacher: torch.Tensor, ae: torch.Tensor) -> torch.Tensor:
    """Eq 14: L_TA = 1/(HW) sum_ij (T_ij(I) - A_ij(I))^2 (channel mean, as EfficientAD's L_AE)."""
    return _position_sq_dist(teacher, ae, "mean").mean()


def sa_dis_loss(ae: torch.Tensor, student: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Eq 15: L_SA^dis = 1/(HW) sum_ij (A_ij(I) - S''_ij(I))^2 (EfficientAD's L_STAE)."""
    return _position_sq_dist(ae, student, reduction).mean()


def sa_cos_loss(ae: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """Eq 16: L_SA^cos = 1/(HW) sum_ij (1 - <A_ij, S''_ij> / (|A_ij| |S''_ij|)), cosine over channels."""
    return (1.0 - F.cosine_similarity(ae, student, dim=1, eps=1e-8)).mean()


def csf_loss(ae: torch.Tensor, student: torch.Tensor, lam: float = 0.5, reduction: str = "mean") -> torch.Tensor:
    """Eq 17 (cosine-similarity-fused loss): L_SA = L_SA^dis + lambda * L_SA^cos, lambda = 0.5 (sec. 2.1)."""
    return sa_dis_loss(ae, student, reduction) + lam * sa_cos_loss(ae, student)


def ae_loss(terms: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Eq 18: L_AE = sum over autoencoders k of (L_TA^k + L_SA^k) (one term for a single AE)."""
    total = None
    for l_ta, l_sa in terms:
        total = l_ta + l_sa if total is None else total + l_ta + l_sa
    if total is None:
        raise ValueError("ae_loss needs at least one (L_TA, L_SA) pair")
    return total


def total_loss(l_dis: torch.Tensor, l_ae: torch.Tensor) -> torch.Tensor:
    """Eq 19: L_TOTAL = L_DIS + L_AE."""
    return l_dis + l_ae
