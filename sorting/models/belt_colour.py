"""Conveyor backbone: multi-stage texture pooling + the colour descriptor of the garment on the belt.

Why: ImageNet features are trained to be colour-invariant-ish, so a frozen Lite0 mislabels garments
whose colour is the whole question: on the synthetic crops almost every colour error of
``efficientnet_lite0_multistage`` is a multicolour garment (colour blocks, stripes) called by one of
its colours. :class:`~sorting.models.colour_features.ColourFeatures` measures "how much of the garment
has which colour" explicitly, but its background mask removes border-connected *white*; a conveyor
crop has a dark belt around the garment and grey letterbox bands, which would otherwise count as
grey/black garment pixels in varying amounts (a crop's margin of belt depends on the garment's
size and on where the segmenter put its box).

:class:`BeltColourFeatures` therefore defines the background per crop: the letterbox padding plus
the pixels connected to the crop border whose colour is close to the mean colour of the crop's
border ring (the belt, under whatever light the camera has). The rest is garment. Everything stays
plain tensor ops (AvgPool, MaxPool, comparisons, Where), so the whole model exports to one ONNX
graph and the INT8 quantizer keeps this branch in FP32 (node scope ``/backbone/colour/``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F

from sorting.models.colour_features import ColourAwareBackbone, ColourFeatures, border_ring
from sorting.models.multistage import MultiStagePoolBackbone
from sorting.models.standardise import column_statistics

PAD_TOLERANCE = 1.5 / 255.0  # a grid cell this close to the padding colour (all channels) is padding


class BeltColourFeatures(ColourFeatures):
    """:class:`ColourFeatures` whose background is the belt and the letterbox padding, not white.

    ``pad_value`` must be the preprocessing's letterbox fill (0..255); ``belt_tolerance`` is the largest
    per-channel difference (RGB 0..1) from the border-ring colour that still counts as belt. ``iters``
    geodesic steps of a 5 x 5 window reach 2 x ``iters`` cells in from the border (the whole 16 x 16 grid).
    """

    def __init__(
        self,
        mean: tuple[float, float, float] = (127.0, 127.0, 127.0),
        std: tuple[float, float, float] = (128.0, 128.0, 128.0),
        *,
        pad_value: int = 127,
        belt_tolerance: float = 0.07,
        grid: int = 16,
        iters: int = 8,
    ) -> None:
        super().__init__(mean, std, grid=grid, iters=iters)
        self.pad_level = pad_value / 255.0
        self.belt_tolerance = belt_tolerance

    def foreground(self, rgb: torch.Tensor) -> torch.Tensor:
        """(N,3,G,G) RGB 0..1 -> (N,1,G,G) float mask, 1 = garment (not padding, not border-connected belt)."""
        pad = ((rgb - self.pad_level).abs().amax(dim=1, keepdim=True) < PAD_TOLERANCE).to(rgb.dtype)
        ring = border_ring(rgb)
        ring_weight = ring * (1.0 - pad)
        belt = (rgb * ring_weight).sum(dim=(2, 3), keepdim=True) / ring_weight.sum(dim=(2, 3), keepdim=True).clamp(min=1.0)
        near = ((rgb - belt).abs().amax(dim=1, keepdim=True) < self.belt_tolerance).to(rgb.dtype)
        # grid cells straddling the letterbox edge average belt and padding: between the two colours
        span = self.pad_level - belt
        t = (((rgb - belt) * span).sum(dim=1, keepdim=True) / (span * span).sum(dim=1, keepdim=True).clamp(min=1e-6)).clamp(0.0, 1.0)
        mixed = ((rgb - belt - t * span).abs().amax(dim=1, keepdim=True) < self.belt_tolerance).to(rgb.dtype)
        near = torch.maximum(torch.maximum(near, pad), mixed * F.max_pool2d(pad, 3, stride=1, padding=1))
        return self._garment_mask(near, ring)


class MultiStageColourBackbone(ColourAwareBackbone):
    """[standardised multi-stage texture features, standardised colour descriptor].

    ``fit_statistics`` fits both standardisations in one pass over the training batches (the trainer
    calls it once); the texture part keeps its own buffers (``backbone.feat_mean``/``feat_std``).
    """

    def __init__(self, texture: MultiStagePoolBackbone, colour: ColourFeatures) -> None:
        super().__init__(texture, texture.feature_dim, colour)

    @torch.no_grad()
    def fit_statistics(self, batches: Iterable[torch.Tensor]) -> int:
        """Set both standardisations from preprocessed, unaugmented training batches; returns the image count."""
        colour: list[torch.Tensor] = []

        def tapped() -> Iterator[torch.Tensor]:
            for x in batches:
                colour.append(self.colour(x))
                yield x

        n = self.backbone.fit_statistics(tapped())
        mean, std = column_statistics(torch.cat(colour))
        self.colour_mean.copy_(mean)
        self.colour_std.copy_(std)
        return n

    def _cnn_statistics(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.backbone.statistics_from_features(feats)
