"""EfficientAD's teacher pretraining: distil ImageNet-backbone features into a PDN (EfficientAD sec. 3.1).

The paper's recipe: WideResNet-101 layer 2 + layer 3 features (PatchCore-style: 3x3 neighbourhood
aggregation, layer 3 upsampled to layer 2's grid, channels averaged down to 384), channel-normalised,
regressed by PDN-S with an MSE loss; backbone sees the image at 2x the PDN's resolution so both grids
match (512 px -> 64x64 vs 256 px -> 64x64). Offline substitute: EfficientNet-Lite features at the same
output strides (8 and 16), mapped to 384 channels by a fixed, seeded random orthogonal projection.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from adrepro.training import config_hash, run_loop, seed_everything

from .penalty import penalty_images
from .provision import load_module, provision, save_teacher_file, state_sha256
from .registry import IMAGENET_MEAN, IMAGENET_STD, build_module, get_backbone

PAPER_STEPS = 60000


def _aggregate(feat: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """3x3 neighbourhood of every position stacked into channels, on the ``size`` grid: [B, 9C, H, W]."""
    if feat.shape[-2:] != size:
        feat = F.interpolate(feat, size=size, mode="bilinear", align_corners=False)
    b, c, h, w = feat.shape
    return F.unfold(feat, kernel_size=3, padding=1).view(b, c * 9, h, w)


def _channel_avg(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Adaptive average pooling over channels (PatchCore's dimension reduction): [B,C,H,W] -> [B,dim,H,W]."""
    b, c, h, w = x.shape
    y = F.adaptive_avg_pool1d(x.permute(0, 2, 3, 1).reshape(-1, 1, c), dim)
    return y.view(b, h, w, dim).permute(0, 3, 1, 2)


class BackboneTarget(nn.Module):
    """Distillation target: backbone features at strides 8 and 16, aggregated, projected, normalised."""

    def __init__(self, backbone_id: str, module: nn.Module, out_channels: int, seed: int):
        super().__init__()
        entry = get_backbone(backbone_id)
        self.backbone_id, self.out_channels = backbone_id, out_channels
        self.register_buffer("mean", torch.tensor(entry["mean"]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(entry["std"]).view(1, 3, 1, 1))
        self.module = module.eval().requires_grad_(False)
        if entry["arch"].startswith("efficientnet_lite"):
            from .lite import LiteFeatures

            self.features = LiteFeatures(module)
            self.projection = "orthogonal"
            with torch.no_grad():
                channels = sum(f.shape[1] for f in self._strides(torch.zeros(1, 3, 64, 64)))
            g = torch.Generator().manual_seed(seed)
            dims = 9 * channels
            q, _ = torch.linalg.qr(torch.randn(max(dims, out_channels), min(dims, out_channels), generator=g))
            self.register_buffer("proj", q.T if 9 * channels >= out_channels else q)  # [out, 9C], fixed
        elif "resnet" in entry["arch"]:
            self.features = None
            self.projection = "patchcore_avgpool"
        else:
            raise ValueError(f"backbone {backbone_id!r} (arch {entry['arch']}) has no PDN distillation target")
        self.register_buffer("chan_mean", torch.zeros(1, out_channels, 1, 1))
        self.register_buffer("chan_std", torch.ones(1, out_channels, 1, 1))

    def _strides(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.features is not None:
            feats = self.features(x)
            return [feats[8], feats[16]]
        m = self.module
        x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
        l2 = m.layer2(m.layer1(x))
        return [l2, m.layer3(l2)]

    @torch.no_grad()
    def raw(self, images: torch.Tensor) -> torch.Tensor:
        """images [B,3,H,W] in [0,1] -> un-normalised targets [B,out,H/8,W/8]."""
        l8, l16 = self._strides((images - self.mean) / self.std)
        size = l8.shape[-2:]
        a8, a16 = _aggregate(l8, size), _aggregate(l16, size)
        if self.projection == "orthogonal":
            return torch.einsum("oc,bchw->bohw", self.proj, torch.cat([a8, a16], 1))
        return _channel_avg(torch.cat([_channel_avg(a8, 1024), _channel_avg(a16, 1024)], 1), self.out_channels)

    @torch.no_grad()
    def fit_normalisation(self, batches: list[torch.Tensor]) -> None:
        """Per-channel mean/std of the raw targets over ``batches`` (EfficientAD's feature normalisation)."""
        feats = [self.raw(b) for b in batches]
        mean = torch.stack([f.mean(dim=(0, 2, 3)) for f in feats]).mean(0)
        var = torch.stack([((f - mean.view(1, -1, 1, 1)) ** 2).mean(dim=(0, 2, 3)) for f in feats]).mean(0)
        self.chan_mean.copy_(mean.view(1, -1, 1, 1))
        self.chan_std.copy_(var.sqrt().clamp_min(1e-6).view(1, -1, 1, 1))

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (self.raw(images) - self.chan_mean) / self.chan_std


class LossHistory:
    """Per-step losses, checkpointed with the run so a resumed run returns the whole curve."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def state_dict(self) -> dict[str, Any]:
        return {"losses": list(self.losses)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.losses = list(state["losses"])


def _batch(ds, idx: torch.Tensor) -> torch.Tensor:
    return torch.stack([ds[int(i)] for i in idx])


def distill_pdn(source_id: str, params: dict[str, Any], steps: int, image_size: int, seed: int, out_path: Path | str,
                *, batch_size: int = 16, lr: float = 1e-4, images: str | None = None, out_channels: int = 384,
                width: float = 1.0, profile: str | None = None, teacher_id: str | None = None,
                norm_batches: int = 8, work_dir: Path | None = None, device: str = "cpu",
                log_metric: Callable[[str, float, int], None] = lambda n, v, s: None,
                stop_after: int | None = None) -> list[float]:
    """Distil backbone ``source_id`` into a PDN-S; write the teacher file ``out_path``; return the loss curve.

    Adam (lr 1e-4, weight decay 1e-5) on MSE to the channel-normalised targets, batch 16, 60,000 steps
    in the paper. Images: ``images`` kind of ``penalty.penalty_images`` (default: the profile's
    ``penalty_images``), loaded at 2x ``image_size`` for the backbone, downsampled for the PDN, random
    greyscale p=0.1. Resumable: the run checkpoints to ``work_dir`` (default ``<out_path>.work/``).
    ``device: cuda`` where CUDA is absent is an error (never a silent CPU run)."""
    profile = profile or params["profile"]
    images = images or params["profiles"][profile].get("penalty_images") or "imagenet"
    out_path = Path(out_path)
    work_dir = Path(work_dir) if work_dir else out_path.with_name(out_path.name + ".work")
    ds, img_prov = penalty_images(images, params, 2 * image_size, seed, greyscale_p=0.1)
    if ds is None:
        raise FileNotFoundError(f"PDN distillation images ({images}) unavailable: {img_prov['reason']}")
    source = provision(source_id, params, profile, seed)
    from adrepro.config import check_device

    check_device(device, "profiles.<profile>.device (teacher distillation)")  # never a silent CPU run
    dev = torch.device(device)
    target = BackboneTarget(source_id, load_module(source), out_channels, seed).to(dev)
    g = seed_everything(seed)
    norm_g = torch.Generator().manual_seed(seed + 1)
    target.fit_normalisation([_batch(ds, torch.randint(len(ds), (batch_size,), generator=norm_g)).to(dev)
                              for _ in range(norm_batches)])
    pdn = build_module("pdn_s", {"out_channels": out_channels, "width": width}).to(dev)
    opt = torch.optim.Adam(pdn.parameters(), lr=lr, weight_decay=1e-5)
    history = LossHistory()
    pdn_mean = torch.tensor(IMAGENET_MEAN, device=dev).view(1, 3, 1, 1)
    pdn_std = torch.tensor(IMAGENET_STD, device=dev).view(1, 3, 1, 1)

    def step(i: int) -> dict[str, float]:
        big = _batch(ds, torch.randint(len(ds), (batch_size,), generator=g)).to(dev)
        small = F.interpolate(big, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True)
        t = target(big)
        pred = pdn((small - pdn_mean) / pdn_std)
        if t.shape[-2:] != pred.shape[-2:]:
            t = F.interpolate(t, size=pred.shape[-2:], mode="bilinear", align_corners=False)
        loss = F.mse_loss(pred, t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        history.losses.append(loss.item())
        return {"distill_loss": loss.item()}

    cfg = {"source": source_id, "source_sha256": source.provenance["sha256"], "steps": steps, "image_size": image_size,
           "seed": seed, "batch_size": batch_size, "lr": lr, "images": img_prov, "out_channels": out_channels,
           "width": width, "norm_batches": norm_batches, "projection": target.projection}
    t0 = time.perf_counter()
    run_loop(total_steps=steps, step_fn=step, state={"pdn": pdn, "opt": opt, "history": history}, work_dir=work_dir,
             cfg_hash=config_hash(cfg), generator=g, checkpoint_every=max(1, min(1000, steps // 10 or 1)),
             log_metric=log_metric, desc=f"distill-pdn<{source_id}", stop_after=stop_after,
             knob=f"profiles.{profile}.teacher_distill.lr = {lr} in params.yaml")
    shortfalls = []
    if source_id != "wide_resnet101_2":
        shortfalls.append(f"distilled from {source_id} instead of WideResNet-101")
    if img_prov.get("substitute"):
        shortfalls.append(f"on {img_prov['substitute_reason']}")
    if steps < PAPER_STEPS:
        shortfalls.append(f"{steps} steps instead of {PAPER_STEPS}")
    provenance = {
        "id": teacher_id or f"pdn_s_from_{source_id}", "source": f"distill:{source_id}",
        "paper_teacher": not shortfalls, "substitute_reason": "; ".join(shortfalls) or None,
        "licence": f"derived from {source_id} ({source.provenance.get('licence')})", "profile": profile,
        "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "input_size": image_size, "verified": "generated",
        "distill": dict(cfg, source_provenance={k: source.provenance.get(k) for k in ("id", "source", "sha256")},
                        final_loss=history.losses[-1] if history.losses else None,
                        wall_s_this_call=round(time.perf_counter() - t0, 1)),
    }
    provenance["sha256"] = state_sha256(pdn.state_dict())
    save_teacher_file(out_path, "pdn_s", {"out_channels": out_channels, "width": width}, pdn.state_dict(), provenance)
    return list(history.losses)
