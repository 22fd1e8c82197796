"""EfficientAD (Batzner et al., WACV 2024) autoencoder and inference model, with paper A's dual-AE options.

``EfficientADModel`` holds the frozen teacher, the student (2*C output channels: S' then S''), one or two
autoencoders (optionally with SRM/CRM) and optionally the SFM, plus the normalisation statistics (teacher
channel mean/std, map quantiles) as buffers, so its ``state_dict`` is everything ``predict`` needs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .modules import ChannelReunionModule, SelectiveFusionModule, SpatialReunionModule

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def pdn_output_size(pdn: nn.Module, image_size: int) -> int:
    """Spatial size of a PDN's output for a square ``image_size`` input (64 for 256 with padded PDNs)."""
    with torch.no_grad():
        p = next(pdn.parameters())
        return int(pdn(torch.zeros(1, 3, image_size, image_size, dtype=p.dtype, device=p.device)).shape[-1])


class EfficientADAutoencoder(nn.Module):
    """EfficientAD's autoencoder (EfficientAD paper, Table 8), sizes scaled with the image size.

    Encoder: five 4x4 stride-2 convs (32, 32, 64, 64, 64 channels, ReLU) and a conv over the remaining
    (image_size/32)^2 grid (8x8 at 256) to a ``latent``-d 1x1 code. Decoder: six blocks of bilinear resize
    (3, 8, 15, 32, 63, 127 at 256: s/64-1, s/32, s/16-1, s/8, s/4-1, s/2-1) -> 4x4 conv (padding 2) -> ReLU ->
    dropout, then resize to the PDN output size -> 3x3 conv -> ReLU -> 3x3 conv to ``out_channels``.

    Paper A options: ``crm`` inserted after decoder block ``crm_at`` (intermediate features, sec. 1.3);
    ``srm`` on the AE's final output (``srm_at="output"``, sec. 1.2) or on the last hidden features.
    """

    def __init__(self, out_channels: int, image_size: int, out_size: int, latent: int = 64, dropout: float = 0.2,
                 crm: ChannelReunionModule | None = None, crm_at: int = 3,
                 srm: SpatialReunionModule | None = None, srm_at: str = "output"):
        super().__init__()
        if image_size < 32:
            raise ValueError(f"efficientad: image_size must be >= 32 for the autoencoder, got {image_size}")
        if not 1 <= crm_at <= 6:
            raise ValueError(f"efficientad: crm_at must be a decoder block 1..6, got {crm_at}")
        if srm_at not in ("output", "last_hidden"):
            raise ValueError(f"efficientad: srm_at must be 'output' or 'last_hidden', got {srm_at!r}")
        enc = []
        cin = 3
        for cout in (32, 32, 64, 64, 64):
            enc += [nn.Conv2d(cin, cout, 4, stride=2, padding=1), nn.ReLU(inplace=True)]
            cin = cout
        enc.append(nn.Conv2d(64, latent, image_size >> 5))
        self.encoder = nn.Sequential(*enc)
        s = image_size
        self.sizes = [max(1, v) for v in (s // 64 - 1, s // 32, s // 16 - 1, s // 8, s // 4 - 1, s // 2 - 1)]
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(latent if i == 0 else 64, 64, 4, padding=2), nn.ReLU(inplace=True), nn.Dropout(dropout))
            for i in range(6)
        )
        self.out_size = out_size
        self.head_hidden = nn.Sequential(nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(inplace=True))
        self.head_out = nn.Conv2d(64, out_channels, 3, padding=1)
        self.crm, self.crm_at = crm, crm_at
        self.srm, self.srm_at = srm, srm_at

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.encoder(x)
        for i, (size, block) in enumerate(zip(self.sizes, self.blocks), start=1):
            z = block(F.interpolate(z, size=size, mode="bilinear", align_corners=False))
            if self.crm is not None and i == self.crm_at:
                z = self.crm(z)
        z = self.head_hidden(F.interpolate(z, size=self.out_size, mode="bilinear", align_corners=False))
        if self.srm is not None and self.srm_at == "last_hidden":
            z = self.srm(z)
        out = self.head_out(z)
        if self.srm is not None and self.srm_at == "output":
            out = self.srm(out)
        return out


def normalise_map(m: torch.Tensor, q_a: torch.Tensor | float, q_b: torch.Tensor | float) -> torch.Tensor:
    """EfficientAD's quantile normalisation: 0.1 * (m - q_a) / (q_b - q_a), so q_a -> 0 and q_b -> 0.1."""
    return 0.1 * (m - q_a) / (q_b - q_a)


AUGMENTATIONS = ("brightness", "contrast", "saturation")


def adjust_colour(images: torch.Tensor, which: int, factor: float) -> torch.Tensor:
    """torchvision's ``adjust_brightness`` / ``adjust_contrast`` / ``adjust_saturation`` (``which`` 0/1/2):
    blend with black / the per-image mean grey level / the grey image, clamped to [0, 1]."""
    grey = (0.2989 * images[:, 0] + 0.587 * images[:, 1] + 0.114 * images[:, 2])[:, None]
    if which == 0:
        other = torch.zeros_like(images)
    elif which == 1:
        other = grey.mean(dim=(-3, -2, -1), keepdim=True).expand_as(images)
    elif which == 2:
        other = grey.expand_as(images)
    else:
        raise ValueError(f"adjust_colour: which must be 0, 1 or 2 ({AUGMENTATIONS}), got {which}")
    return (factor * images + (1 - factor) * other).clamp(0, 1)


def augment_ae_input(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """EfficientAD's AE input augmentation: one of brightness, contrast, saturation, factor ~ U(0.8, 1.2)."""
    which = int(torch.randint(3, (1,), generator=generator))
    factor = float(0.8 + 0.4 * torch.rand(1, generator=generator))
    return adjust_colour(images, which, factor)


class EfficientADModel(nn.Module):
    """Teacher, student, autoencoder(s) and normalisation statistics. ``map_names`` lists the maps:
    "loc" (student-teacher, Omega_loc) and one global map per AE ("gol", or "gol_srm"/"gol_crm")."""

    def __init__(self, teacher: nn.Module, student: nn.Module, aes: list[nn.Module], sfm: SelectiveFusionModule | None,
                 out_channels: int, image_size: int, map_names: list[str], map_weights: list[float]):
        super().__init__()
        if len(map_names) != 1 + len(aes) or len(map_weights) != len(map_names):
            raise ValueError("efficientad: one map name/weight per map (local + one per AE) expected")
        self.teacher = teacher.eval().requires_grad_(False)
        self.student = student
        self.aes = nn.ModuleList(aes)
        self.sfm = sfm
        self.out_channels = out_channels
        self.image_size = image_size
        self.map_names = list(map_names)
        self.register_buffer("map_weights", torch.tensor(map_weights, dtype=torch.float32))
        self.register_buffer("teacher_mean", torch.zeros(1, out_channels, 1, 1))
        self.register_buffer("teacher_std", torch.ones(1, out_channels, 1, 1))
        self.register_buffer("quantiles", torch.tensor([[0.0, 0.1]] * len(map_names)))  # rows (q_a, q_b): identity
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def train(self, mode: bool = True) -> "EfficientADModel":
        super().train(mode)
        self.teacher.eval()
        return self

    def resize(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-2:] == (self.image_size, self.image_size):
            return images
        return F.interpolate(images, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False, antialias=True)

    def normalise_input(self, images: torch.Tensor) -> torch.Tensor:
        """ImageNet mean/std normalisation of [0,1] images already at ``image_size``."""
        return (images - self.mean) / self.std

    @torch.no_grad()
    def teacher_features(self, x: torch.Tensor) -> torch.Tensor:
        """Teacher output normalised by its channel mean/std over the training images."""
        return (self.teacher(x) - self.teacher_mean) / self.teacher_std

    def ae_branches(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(raw AE outputs [A] or [A^SRM, A^CRM], what the student-AE part sees: the SFM's [F^SRM, F^CRM]
        when the SFM is present, else the raw outputs)."""
        raw = [ae(x) for ae in self.aes]
        fused = list(self.sfm(raw[0], raw[1])) if self.sfm is not None else raw
        return raw, fused

    def ae_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """A (single AE), or (F^SRM, F^CRM): the two AE outputs, fused by the SFM when present."""
        return self.ae_branches(x)[1]

    def raw_maps(self, x: torch.Tensor) -> torch.Tensor:
        """Unnormalised maps [B, n_maps, h, w]: Omega_loc = mean_c (T - S')^2, Omega_gol^k = mean_c (A_k - S'')^2."""
        c = self.out_channels
        t = self.teacher_features(x)
        s = self.student(x)
        maps = [((t - s[:, :c]) ** 2).mean(dim=1)]
        maps += [((a - s[:, c:]) ** 2).mean(dim=1) for a in self.ae_outputs(x)]
        return torch.stack(maps, dim=1)

    def combine(self, raw: torch.Tensor) -> torch.Tensor:
        """Quantile-normalise each map, then the weighted sum (EfficientAD: 0.5 * ST + 0.5 * AE)."""
        q = self.quantiles
        norm = normalise_map(raw, q[:, 0].view(1, -1, 1, 1), q[:, 1].view(1, -1, 1, 1))
        return (norm * self.map_weights.view(1, -1, 1, 1)).sum(dim=1)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images [B,3,H,W] in [0,1] -> (scores [B] = max of the map, maps [B,H,W] resized to H,W)."""
        h, w = images.shape[-2:]
        x = self.normalise_input(self.resize(images))
        m = self.combine(self.raw_maps(x))
        m = F.interpolate(m[:, None], size=(h, w), mode="bilinear", align_corners=False)[:, 0]
        return m.flatten(1).amax(dim=1), m


def build_branches(cfg_flags: dict, out_channels: int, image_size: int, out_size: int, latent: int, dropout: float,
                   srm_kw: dict, crm_kw: dict, crm_at: int, srm_at: str) -> tuple[list[nn.Module], list[str], SelectiveFusionModule | None]:
    """The global branch of each variant (docs/deviations.md "Paper A"):

    single AE: plain (EfficientAD) | +SRM on its output | +CRM on an intermediate decoder feature |
               SRM and CRM in series (Fig. 8: CRM inside, then SRM on the output; ``serial``).
    dual AE:   a spatial AE (with SRM if ``srm``) and a channel AE (with CRM if ``crm``), in parallel; plain
               AEs where a module is off. ``sfm`` fuses their outputs (needs ``dual_ae``).
    """
    dual, srm, crm, sfm = (bool(cfg_flags.get(k, False)) for k in ("dual_ae", "srm", "crm", "sfm"))
    serial = bool(cfg_flags.get("serial", False))
    if serial and dual:
        raise ValueError("efficientad: 'serial' (Fig. 8 single AE) and 'dual_ae' are exclusive")
    if sfm and not dual:
        raise ValueError("efficientad: 'sfm' fuses two autoencoders and needs 'dual_ae: true'")
    srm_ch = out_channels if srm_at == "output" else 64

    def ae(with_srm: bool, with_crm: bool) -> EfficientADAutoencoder:
        return EfficientADAutoencoder(
            out_channels, image_size, out_size, latent, dropout,
            crm=ChannelReunionModule(64, **crm_kw) if with_crm else None, crm_at=crm_at,
            srm=SpatialReunionModule(srm_ch, **srm_kw) if with_srm else None, srm_at=srm_at)

    if dual:
        aes = [ae(srm, False), ae(False, crm)]
        names = ["gol_srm", "gol_crm"]
        fusion = SelectiveFusionModule(out_channels) if sfm else None
        return aes, names, fusion
    return [ae(srm, crm)], ["gol"], None
