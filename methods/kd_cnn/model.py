"""CNN teachers/students for paper B's backbone ablation: VGG16, ResNet18, EfficientNet-Lite0 (offline
substitute) and tiny random variants for the smoke profile, with feature taps by module name; MKDAD's smaller
BatchNorm student (the "cloner", Salehi et al. 2021) and its generalisation to other teachers."""

from __future__ import annotations

import math
import re
from typing import Any

import torch
from torch import nn

# Multi-layer taps per backbone (module names), one per resolution (output strides 4, 8, 16, 32). VGG16: the
# max-pool outputs of blocks 2-5 (MKDAD's critical layers); ResNet18: layer1-4; EfficientNet-Lite0: the last block
# at each stride (MBConv stages 2, 3, 5, 7).
DEFAULT_TAPS: dict[str, list[str]] = {
    "vgg16": ["features.9", "features.16", "features.23", "features.30"],
    "resnet18": ["layer1", "layer2", "layer3", "layer4"],
    "efficientnet_lite0": ["_blocks.2", "_blocks.4", "_blocks.10", "_blocks.15"],
}


class TinyVGG(nn.Module):
    """VGG-shaped smoke backbone: per block ``convs`` 3x3 conv+ReLU then 2x2 max-pool; taps = the pools."""

    def __init__(self, widths: tuple[int, ...] = (8, 16, 32, 32), convs: int = 1):
        super().__init__()
        layers: list[nn.Module] = []
        self.default_taps: list[str] = []
        c_in = 3
        for w in widths:
            for _ in range(convs):
                layers += [nn.Conv2d(c_in, w, 3, padding=1), nn.ReLU(inplace=True)]
                c_in = w
            layers.append(nn.MaxPool2d(2))
            self.default_taps.append(f"features.{len(layers) - 1}")
        self.features = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


class TinyResNet(nn.Module):
    """ResNet-shaped smoke backbone: 3x3 stem, then one torchvision ``BasicBlock`` per stage; taps = layer1-4."""

    def __init__(self, widths: tuple[int, ...] = (8, 16, 32, 64)):
        from torchvision.models.resnet import BasicBlock  # lazy: importing torchvision costs ~2 s per stage

        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, padding=1, bias=False), nn.BatchNorm2d(widths[0]),
                                  nn.ReLU(inplace=True))
        c_in = widths[0]
        self.default_taps = []
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            down = None if stride == 1 and c_in == w else nn.Sequential(
                nn.Conv2d(c_in, w, 1, stride=stride, bias=False), nn.BatchNorm2d(w))
            setattr(self, f"layer{i + 1}", BasicBlock(c_in, w, stride=stride, downsample=down))
            self.default_taps.append(f"layer{i + 1}")
            c_in = w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for name in self.default_taps:
            x = getattr(self, name)(x)
        return x


def build_cnn(arch: str, kwargs: dict[str, Any]) -> nn.Module:
    """Randomly initialised backbone by teacher-file ``arch`` (weights are loaded by the caller)."""
    import torchvision

    if arch == "vgg16":
        return torchvision.models.vgg16(**kwargs)
    if arch == "resnet18":
        return torchvision.models.resnet18(**kwargs)
    if re.fullmatch(r"efficientnet_lite\d", arch):  # offline substitute teacher (optional extra adrepro[lite])
        from efficientnet_lite_pytorch import EfficientNet

        return EfficientNet.from_name(arch.replace("_", "-"), **kwargs)
    if arch == "tiny_vgg":
        return TinyVGG(**kwargs)
    if arch == "tiny_resnet":
        return TinyResNet(**kwargs)
    raise ValueError(f"kd_cnn: unknown teacher arch {arch!r} (known: vgg16, resnet18, efficientnet_lite<n>, tiny_vgg, "
                     "tiny_resnet)")


def default_taps(arch: str, net: nn.Module) -> list[str]:
    taps = getattr(net, "default_taps", None) or DEFAULT_TAPS.get(arch)
    if not taps:
        raise ValueError(f"kd_cnn: no feature taps known for arch {arch!r}; "
                         "give cfg 'taps' or the teacher file's 'taps'")
    return list(taps)


class _TapsDone(Exception):
    pass


class TappedCNN(nn.Module):
    """Runs ``net`` up to its last tap and returns the tapped feature maps [B, C_i, H_i, W_i] in tap order."""

    def __init__(self, net: nn.Module, taps: list[str]):
        super().__init__()
        self.net, self.taps = net, list(taps)
        modules = dict(net.named_modules())
        missing = [t for t in self.taps if t not in modules]
        if missing:
            raise ValueError(f"kd_cnn: feature taps {missing} are not modules of the backbone")
        self._out: dict[str, torch.Tensor] = {}
        for name in self.taps:
            modules[name].register_forward_hook(self._hook(name))

    def _hook(self, name: str):
        def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
            self._out[name] = output
            if len(self._out) == len(self.taps):
                raise _TapsDone

        return hook

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        self._out = {}
        try:
            self.net(x)
        except _TapsDone:
            pass
        out = [self._out[n] for n in self.taps]
        self._out = {}
        return out


# Whether a teacher's tapped features are post-ReLU (>= 0): the cloner's last conv of a stage then ends in a ReLU
# as MKDAD's does; EfficientNet's MBConv blocks end in a linear projection, so its cloner stages end linearly.
_RELU_TAPS = {"vgg16": True, "resnet18": True, "tiny_vgg": True, "tiny_resnet": True}
CLONER_WIDTH = 16  # MKDAD's cloner: every conv but the last of a block is 16 channels wide
# MKDAD's cloner for VGG16 (five blocks ending in 2x2 max-pools): the output width of each conv per block
MKDAD_VGG16_BLOCKS = ((16, 16), (16, 128), (16, 16, 256), (16, 16, 512), (16, 16, 512))


def _pool(size_in: tuple[int, int], size_out: tuple[int, int]) -> nn.Module:
    """2x2 max-pools when ``size_in`` / ``size_out`` is a power of two on both axes, else adaptive max-pooling."""
    if size_in == size_out:
        return nn.Identity()
    ratios = {size_in[0] / size_out[0], size_in[1] / size_out[1]}
    if len(ratios) == 1 and (r := ratios.pop()) >= 2 and r.is_integer() and math.log2(r).is_integer():
        return nn.Sequential(*[nn.MaxPool2d(2, 2) for _ in range(int(math.log2(r)))])
    return nn.AdaptiveMaxPool2d(size_out)


class Cloner(nn.Module):
    """MKDAD's student: blocks of bias-free 3x3 convs, Xavier-uniform initialised; every conv but a block's
    last is followed by BatchNorm + ReLU, the last by a ReLU only (``relu_out``), then the block's pooling.
    ``forward`` returns the outputs of the blocks listed in ``taps``."""

    def __init__(self, blocks: list[tuple[tuple[int, ...], nn.Module]], taps: list[int], relu_out: bool = True):
        super().__init__()
        self.taps = list(taps)
        c_in, stages = 3, []
        for widths, pool in blocks:
            layers: list[nn.Module] = []
            for k, w in enumerate(widths):
                conv = nn.Conv2d(c_in, w, 3, padding=1, bias=False)
                nn.init.xavier_uniform_(conv.weight)
                last = k == len(widths) - 1
                layers += [conv] + ([] if last else [nn.BatchNorm2d(w)]) + ([nn.ReLU()] if relu_out or not last else [])
                c_in = w
            stages.append(nn.Sequential(*layers, pool))
        self.blocks = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for i, block in enumerate(self.blocks[: max(self.taps) + 1]):
            x = block(x)
            if i in self.taps:
                out.append(x)
        return out


def build_cloner(arch: str, taps: list[str], tap_shapes: list[tuple[int, int, int]], image_size: int) -> Cloner:
    """The smaller BatchNorm student for teacher ``arch`` whose taps give features ``tap_shapes`` [(C, H, W)].

    VGG16 with taps pool2-5: MKDAD's own cloner (``MKDAD_VGG16_BLOCKS``). Any other teacher: one block per tap,
    convs of widths (16, 16, C_i), pooled to the tap's resolution, so each block output matches tap i."""
    if arch == "vgg16":
        if list(taps) != DEFAULT_TAPS["vgg16"]:
            raise ValueError(f"kd_cnn: MKDAD's VGG16 cloner matches taps {DEFAULT_TAPS['vgg16']} (pool2-5), got "
                             f"{taps}; use cfg 'student: same_arch' for other VGG16 taps")
        return Cloner([(widths, nn.MaxPool2d(2, 2)) for widths in MKDAD_VGG16_BLOCKS], taps=[1, 2, 3, 4])
    relu = _RELU_TAPS.get(arch, False if arch.startswith("efficientnet_lite") else None)
    if relu is None:
        raise ValueError(f"kd_cnn: no cloner rule for teacher arch {arch!r} (known: {sorted(_RELU_TAPS)}, "
                         "efficientnet_lite<n>); use cfg 'student: same_arch'")
    size, blocks = (image_size, image_size), []
    for c, h, w in tap_shapes:
        blocks.append(((CLONER_WIDTH, CLONER_WIDTH, c), _pool(size, (h, w))))
        size = (h, w)
    return Cloner(blocks, taps=list(range(len(blocks))), relu_out=relu)
