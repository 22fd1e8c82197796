"""Paper B's feature extraction against timm's own (timm is a base dependency: never skipped).

- Block outputs for groupc {3, 6, 9, 11} (``vit_block_outputs``) against ``forward_intermediates`` of the SAME timm
  model object, before (``norm=False``) and after (``norm=True``) the final LayerNorm.
- Position-embedding resampling of ``build_vit`` (teacher weights at another input size) against timm's own path:
  ``timm.create_model(..., img_size=...)`` loading the same weights file, whose checkpoint filter resamples.
Random weights (no download), small images.
"""

from __future__ import annotations

import pytest
import timm
import torch

from adrepro.methods.fcd_vit.method import GROUPC
from adrepro.methods.fcd_vit.model import build_vit, vit_block_outputs

# timm's vit_tiny_patch16_224 architecture (12 blocks, as ViT-B/16), as our teacher files store it
NAME = "vit_tiny_patch16_224"
KWARGS = dict(patch_size=16, embed_dim=192, depth=12, num_heads=3, num_classes=0)
TOL = 1e-5


def _timm_intermediates(vit: torch.nn.Module, x: torch.Tensor, norm: bool) -> list[torch.Tensor]:
    """timm's blocks [3, 6, 9, 11] as [B, N, D]: prefix (cls) tokens, then the patch tokens."""
    out = vit.forward_intermediates(x, indices=list(GROUPC), norm=norm, output_fmt="NLC",
                                    return_prefix_tokens=True, intermediates_only=True)
    return [torch.cat([prefix, patches], dim=1) for patches, prefix in out]


@pytest.fixture(scope="module")
def vit() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(NAME, pretrained=False, img_size=64, num_classes=0).eval()


@pytest.mark.parametrize("norm", [False, True], ids=["before_final_norm", "after_final_norm"])
def test_block_outputs_equal_timm_forward_intermediates(vit, norm):
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = vit_block_outputs(vit, x, list(GROUPC), final_norm=norm)
        ref = _timm_intermediates(vit, x, norm)
    assert sorted(ours) == list(GROUPC)
    for c, r in zip(GROUPC, ref):
        assert ours[c].shape == r.shape == (2, 1 + 16, 192)
        torch.testing.assert_close(ours[c], r, atol=TOL, rtol=0)
    # the switch matters: the final LayerNorm changes the features
    other = vit_block_outputs(vit, x, [11], final_norm=not norm)[11]
    assert (other - ours[11]).abs().max() > 1e-2


@pytest.mark.parametrize("size", [32, 96])
def test_pos_embed_resampling_equals_timm_create_model(tmp_path, size):
    """Teacher trained at 64 px (4x4 patches), used at ``size``: same weights through our loader and timm's."""
    torch.manual_seed(2)
    src = timm.create_model(NAME, pretrained=False, img_size=64, num_classes=0)
    sd = src.state_dict()
    path = tmp_path / "vit.pth"
    torch.save(sd, path)
    ref = timm.create_model(NAME, pretrained=True, img_size=size, num_classes=0,
                            pretrained_cfg_overlay=dict(file=str(path), num_classes=0)).eval()
    ours = build_vit(KWARGS, size, sd).eval()
    grid = size // 16
    assert ours.pos_embed.shape == ref.pos_embed.shape == (1, 1 + grid * grid, 192)
    torch.testing.assert_close(ours.pos_embed, ref.pos_embed, atol=TOL, rtol=0)
    assert not torch.allclose(ours.pos_embed[:, 1:2], src.pos_embed[:, 1:2])  # it really was resampled
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        mine = vit_block_outputs(ours, x, list(GROUPC))
        theirs = _timm_intermediates(ref, x, norm=False)
    for c, r in zip(GROUPC, theirs):
        torch.testing.assert_close(mine[c], r, atol=TOL, rtol=0)
