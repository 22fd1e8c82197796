"""CNN teachers/students for paper B's backbone ablation: VGG16, ResNet18, EfficientNet-Lite0 (offline
substitute) and tiny random variants for the smoke profile, with feature taps by module name."""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

# Multi-layer taps per backbone (module names). VGG16: outputs of the max-pool layers of blocks 2-5 (MKDAD's
# "critical points"); ResNet18: outputs of layer1-4; EfficientNet-Lite0: the last block of stages 2, 3, 5, 7.
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
