"""Paper A's modules (Liang & Chen, J. Electron. Meas. Instrum.): SRM (sec. 1.2), CRM (sec. 1.3), SFM (sec. 1.4).

Readings of the text that the equations leave open are listed in docs/deviations.md ("Paper A").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _attention_pool(features: torch.Tensor, logits: torch.Tensor, softmax: bool) -> torch.Tensor:
    """reshape(features) [B,C,1,HW] . reshape(logits) [B,1,HW,1] -> [B,C,1,1] (eqs 6 and 9).
    With ``softmax`` the HW weights are normalised first (global-context attention pooling)."""
    b, c, h, w = features.shape
    weights = logits.reshape(b, 1, h * w, 1)
    if softmax:
        weights = weights.softmax(dim=2)
    return features.reshape(b, c, 1, h * w) @ weights


class SpatialReunionModule(nn.Module):
    """Spatial reunion module, eqs 1-7: a multi-scale (self-calibrated) convolution gives one logit per
    position (F_1), whose attention-pooling of the input gives a global vector X_1 added back to it.

    eq 1  D   = AvgPool_r(I)
    eq 2  U   = UpSample_r(Conv3x3(D))
    eq 3  A_1 = Conv3x3(I)
    eq 4  F_1 = Conv3x3(A_1 * sigma(U + I))        (1 output channel, so eq 6's reshape [B,1,HW,1] holds)
    eq 6  X_1 = reshape(F_1) . reshape(I)          ([B,C,1,1]; softmax over HW when ``softmax``)
    eq 7  O_1 = I + X_1                            (broadcast over positions)
    """

    def __init__(self, channels: int, pool: int = 4, softmax: bool = True):
        super().__init__()
        self.pool = pool
        self.softmax = softmax
        self.conv_down = nn.Conv2d(channels, channels, 3, padding=1)  # eq 2
        self.conv_a = nn.Conv2d(channels, channels, 3, padding=1)  # eq 3
        self.conv_f = nn.Conv2d(channels, 1, 3, padding=1)  # eq 4

    def position_logits(self, x: torch.Tensor) -> torch.Tensor:
        """F_1 of eqs 1-5, [B,1,H,W]."""
        r = max(1, min(self.pool, x.shape[-2], x.shape[-1]))
        d = F.avg_pool2d(x, r, r, ceil_mode=True)  # eq 1
        u = F.interpolate(self.conv_down(d), size=x.shape[-2:], mode="bilinear", align_corners=False)  # eq 2
        a1 = self.conv_a(x)  # eq 3
        return self.conv_f(a1 * torch.sigmoid(u + x))  # eqs 4-5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = _attention_pool(x, self.position_logits(x), self.softmax)  # eq 6
        return x + x1  # eq 7


class ChannelReunionModule(nn.Module):
    """Channel reunion module, eqs 8-10: a per-position logit A_2 pools the input into one vector E_2, two FC
    layers turn it into channel weights X_2 in (0,1) that re-weight the input's channels.

    eq 8  A_2 = Conv1x1(Conv1x1(I))                (C -> C/r -> 1, ReLU between)
    eq 9  E_2 = A_2 . I                            ([B,C]; attention pooling as eq 6, softmax over HW)
    eq 10 X_2 = sigma(FC_2(FC_1(E_2)))             (C -> C/r -> C, ReLU between)
    out   O_2 = I * X_2  (or I + I * X_2 with ``residual``)
    """

    def __init__(self, channels: int, reduction: int = 4, softmax: bool = True, residual: bool = False):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.softmax = softmax
        self.residual = residual
        self.attn = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, 1, 1))
        self.fc = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels))

    def channel_weights(self, x: torch.Tensor) -> torch.Tensor:
        """X_2 of eqs 8-10, [B,C]."""
        e2 = _attention_pool(x, self.attn(x), self.softmax).flatten(1)  # eqs 8-9
        return torch.sigmoid(self.fc(e2))  # eq 10

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scaled = x * self.channel_weights(x)[:, :, None, None]
        return x + scaled if self.residual else scaled


class SelectiveFusionModule(nn.Module):
    """Selective fusion module (Fig. 4): M = O_1 + O_2 -> global average pool -> FC -> two 1x1 convs ->
    softmax across the two branches per channel (N_1 + N_2 = 1) -> Y_k = N_k * O_k (channel re-weighting)."""

    def __init__(self, channels: int, reduction: int = 16, min_hidden: int = 32):
        super().__init__()
        hidden = max(channels // reduction, min_hidden)
        self.fc = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True))
        self.branch1 = nn.Conv2d(hidden, channels, 1)
        self.branch2 = nn.Conv2d(hidden, channels, 1)

    def branch_weights(self, o1: torch.Tensor, o2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """N_1, N_2 [B,C,1,1], summing to one per channel."""
        z = self.fc((o1 + o2).mean(dim=(2, 3), keepdim=True))
        n = torch.stack([self.branch1(z), self.branch2(z)], dim=0).softmax(dim=0)
        return n[0], n[1]

    def forward(self, o1: torch.Tensor, o2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n1, n2 = self.branch_weights(o1, o2)
        return n1 * o1, n2 * o2
