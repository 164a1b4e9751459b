"""In-graph colour descriptor of the garment pixels, and a backbone wrapper that appends it.

Why: ImageNet features are trained to be colour-invariant-ish and see the white catalogue
background as much as the garment. Colour classes need (1) the garment's pixels only, (2) an
explicit colour measurement in a perceptual space, (3) how much of the garment each colour covers
(the label is the *main* colour) and how diverse the colours are (multicolour).

:class:`ColourFeatures` has no learnable weights and exports to ONNX as plain tensor ops
(AvgPool, Max/Min, comparisons, MaxPool, Pow, Where, Softmax, MatMul):

  normalised input -> RGB 0..1 -> area-downsample to ``grid`` x ``grid``
  -> background = near-white (bright, unsaturated) pixels connected to the image border
     (geodesic dilation: ``iters`` x [maxpool 5x5 AND near-white]); all pixels if < 2% remain
  -> CIE Lab (D65) -> over the foreground pixels:
     * soft joint Lab histogram on a fixed prototype grid (fraction of garment per colour),
     * soft hue histogram weighted by chroma, soft lightness histogram weighted by (1 - chroma),
     * mean / std of L, a, b and chroma, histogram entropy, top bin, foreground fraction.
  Histograms are square-rooted (Hellinger) so a linear head works well on them.

The background mask assumes a white (255) background *and* white letterbox padding: the
``efficientnet_lite0_colour`` backbone therefore defaults to ``pad_value=255``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from sorting.models.standardise import column_statistics

_RGB2XYZ = ((0.412453, 0.357580, 0.180423), (0.212671, 0.715160, 0.072169), (0.019334, 0.119193, 0.950227))
_WHITE_D65 = (0.950456, 1.0, 1.088754)


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB in 0..1, shape (N,3,H,W) -> CIE Lab (L 0..100, a/b about -110..110)."""
    lin = torch.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055).clamp(min=1e-6) ** 2.4)
    m = torch.tensor(_RGB2XYZ, dtype=rgb.dtype, device=rgb.device)
    xyz = torch.einsum("ij,njhw->nihw", m, lin)
    xyz = xyz / torch.tensor(_WHITE_D65, dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
    f = torch.where(xyz > 0.008856, xyz.clamp(min=1e-6) ** (1.0 / 3.0), 7.787 * xyz + 16.0 / 116.0)
    fx, fy, fz = f[:, 0:1], f[:, 1:2], f[:, 2:3]
    return torch.cat([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], dim=1)


def border_ring(grid: torch.Tensor) -> torch.Tensor:
    """(1,1,G,G) mask of the outermost cells of an (N,C,G,G) grid."""
    g = grid.shape[-1]
    ring = torch.ones(1, 1, g, g, dtype=grid.dtype, device=grid.device)
    ring[:, :, 1:-1, 1:-1] = 0.0
    return ring


class ColourFeatures(nn.Module):
    """Maps a normalised image batch (N,3,S,S) to a fixed-length colour descriptor (N, ``out_dim``).

    ``mean``/``std`` are the preprocessing's normalisation (0..255 RGB units) so the module can
    recover the pixel colours from the model input.
    """

    def __init__(
        self,
        mean: tuple[float, float, float] = (127.0, 127.0, 127.0),
        std: tuple[float, float, float] = (128.0, 128.0, 128.0),
        *,
        grid: int = 28,
        white_min: float = 0.88,
        white_max_sat: float = 0.10,
        iters: int = 16,
        lab_step: float = 20.0,
        hue_bins: int = 24,
        light_bins: int = 10,
    ) -> None:
        super().__init__()
        self.grid = grid
        self.white_min = white_min
        self.white_max_sat = white_max_sat
        self.iters = iters
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) / 255.0, persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1) / 255.0, persistent=False)
        lightness = torch.arange(0.0, 100.1, lab_step / 2 * 1.25)  # L: 0, 12.5, .., 100
        ab = torch.arange(-80.0, 80.1, lab_step)  # a, b: -80 .. 80
        protos = torch.cartesian_prod(lightness, ab, ab)  # (K, 3)
        self.register_buffer("protos", protos, persistent=False)
        self.lab_sigma = lab_step * 0.6
        self.register_buffer("hue_centres", torch.arange(hue_bins) * (2 * math.pi / hue_bins), persistent=False)
        self.hue_kappa = (hue_bins / (2 * math.pi)) ** 2 * 2.0
        self.register_buffer("light_centres", torch.linspace(0.0, 100.0, light_bins), persistent=False)
        self.light_sigma = 100.0 / (light_bins - 1) * 0.6
        self.out_dim = protos.shape[0] + hue_bins + light_bins + 8 + 3

    def to_rgb(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised model input -> RGB 0..1, area-downsampled to about ``grid`` x ``grid``."""
        rgb = (x * self.std + self.mean).clamp(0.0, 1.0)
        k = max(1, rgb.shape[-1] // self.grid)
        return F.avg_pool2d(rgb, k, stride=k)

    def foreground(self, rgb: torch.Tensor) -> torch.Tensor:
        """(N,3,G,G) RGB 0..1 -> (N,1,G,G) float mask, 1 = garment (not border-connected white)."""
        mx = rgb.amax(dim=1, keepdim=True)
        mn = rgb.amin(dim=1, keepdim=True)
        white = ((mn > self.white_min) & ((mx - mn) < self.white_max_sat)).to(rgb.dtype)
        return self._garment_mask(white, border_ring(rgb))

    def _garment_mask(self, background_like: torch.Tensor, ring: torch.Tensor) -> torch.Tensor:
        """Background = cells reached from the border ring through background-like cells (``iters`` geodesic
        steps of a 5 x 5 window); the rest is garment. All garment when almost nothing is left."""
        bg = background_like * ring
        for _ in range(self.iters):
            bg = F.max_pool2d(bg, 5, stride=1, padding=2) * background_like
        fg = 1.0 - bg
        frac = fg.mean(dim=(2, 3), keepdim=True)
        return torch.where(frac < 0.02, torch.ones_like(fg), fg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rgb = self.to_rgb(x)
        n = rgb.shape[0]
        w = self.foreground(rgb).reshape(n, -1)  # (N,P)
        wsum = w.sum(dim=1, keepdim=True)
        wn = w / wsum
        lab = rgb_to_lab(rgb).reshape(n, 3, -1)  # (N,3,P)
        # joint Lab soft histogram; |x|^2 - 2 x.c + |c|^2 avoids an (N,K,3,P) intermediate
        d2 = (
            (lab * lab).sum(dim=1, keepdim=True)
            - 2.0 * torch.einsum("kc,ncp->nkp", self.protos, lab)
            + (self.protos * self.protos).sum(dim=1).view(1, -1, 1)
        )
        hist = torch.einsum("nkp,np->nk", torch.softmax(-d2 / (2 * self.lab_sigma**2), dim=1), wn)
        # hue histogram weighted by chroma; cos(hue - centre) without atan2 (not in ONNX; NaN at a=b=0)
        a, b, light = lab[:, 1], lab[:, 2], lab[:, 0]
        chroma = torch.sqrt(a * a + b * b + 1e-6)
        cos_d = (
            a.unsqueeze(1) * torch.cos(self.hue_centres).view(1, -1, 1)
            + b.unsqueeze(1) * torch.sin(self.hue_centres).view(1, -1, 1)
        ) / chroma.unsqueeze(1)
        hk = torch.exp(self.hue_kappa * (cos_d - 1.0))
        hk = hk / (hk.sum(dim=1, keepdim=True) + 1e-6)
        cw = (chroma / 100.0).clamp(max=1.0)
        hue_hist = torch.einsum("nkp,np->nk", hk, wn * cw)
        # lightness histogram weighted by achromaticity
        lk = torch.exp(-((light.unsqueeze(1) - self.light_centres.view(1, -1, 1)) ** 2) / (2 * self.light_sigma**2))
        lk = lk / (lk.sum(dim=1, keepdim=True) + 1e-6)
        light_hist = torch.einsum("nkp,np->nk", lk, wn * (1.0 - cw))
        # moments and diversity
        feats = torch.cat([lab, chroma.unsqueeze(1)], dim=1)  # (N,4,P)
        mu = torch.einsum("ncp,np->nc", feats, wn)
        var = torch.einsum("ncp,np->nc", (feats - mu.unsqueeze(2)) ** 2, wn)
        stats = torch.cat([mu / 100.0, torch.sqrt(var + 1e-6) / 50.0], dim=1)
        entropy = -(hist * torch.log(hist + 1e-8)).sum(dim=1, keepdim=True) / 3.0
        extra = torch.cat([entropy, hist.amax(dim=1, keepdim=True), wsum / w.shape[1]], dim=1)
        hists = [hist.clamp(min=0).sqrt(), hue_hist.clamp(min=0).sqrt(), light_hist.clamp(min=0).sqrt()]
        return torch.cat([*hists, stats, extra], dim=1)


class ColourAwareBackbone(nn.Module):
    """CNN embedding concatenated with the standardised :class:`ColourFeatures` (``feature_dim`` = sum).

    The colour branch has no trainable weights. Its features are standardised with the buffers
    ``colour_mean``/``colour_std`` (saved in the state_dict, so checkpoints and ONNX carry them),
    because the heads are plain Linear layers and the histogram bins live on very different scales
    from the CNN embedding. The trainer sets them once from the training images through
    :meth:`fit_statistics` before the first epoch (see ``sorting.training.image_setup``).
    """

    def __init__(self, backbone: nn.Module, backbone_dim: int, colour: ColourFeatures) -> None:
        super().__init__()
        self.backbone = backbone
        self.colour = colour
        self.feature_dim = backbone_dim + colour.out_dim
        self.register_buffer("colour_mean", torch.zeros(colour.out_dim))
        self.register_buffer("colour_std", torch.ones(colour.out_dim))

    @torch.no_grad()
    def fit_statistics(self, batches: Iterable[torch.Tensor]) -> int:
        """Set the colour standardisation from preprocessed, unaugmented training batches; returns the image count."""
        feats = torch.cat([self.colour(x) for x in batches])
        mean, std = column_statistics(feats)
        self.colour_mean.copy_(mean)
        self.colour_std.copy_(std)
        return int(feats.shape[0])

    @torch.no_grad()
    def statistics_from_features(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Fit every standardisation from this module's outputs before any fit (CNN part first, then
        the raw colour descriptor); returns the per-column (mean, std) now applied (mean 0, std 1 for
        CNN columns that are not standardised)."""
        cnn_dim = self.feature_dim - self.colour.out_dim
        mean, std = column_statistics(feats)
        mean[:cnn_dim], std[:cnn_dim] = self._cnn_statistics(feats[:, :cnn_dim])
        self.colour_mean.copy_(mean[cnn_dim:])
        self.colour_std.copy_(std[cnn_dim:])
        return mean, std

    def _cnn_statistics(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The CNN embedding is used as it is here (a subclass may standardise it)."""
        return feats.new_zeros(feats.shape[1]), feats.new_ones(feats.shape[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        colour = (self.colour(x) - self.colour_mean) / self.colour_std
        return torch.cat([self.backbone(x), colour], dim=1)

    # Split for partial fine-tuning (sorting.training.feature_cache): the colour descriptor has no weights,
    # so it is computed with the CNN's frozen prefix and cached with it (unstandardised, last part).
    def prefix(self, x: torch.Tensor, start: int) -> list[torch.Tensor]:
        """The CNN's prefix parts followed by the raw colour descriptor; needs a CNN with ``prefix``."""
        return [*self.backbone.prefix(x, start), self.colour(x)]

    def suffix(self, parts: list[torch.Tensor], start: int) -> torch.Tensor:
        colour = (parts[-1] - self.colour_mean) / self.colour_std
        return torch.cat([self.backbone.suffix(parts[:-1], start), colour], dim=1)

    def suffix_modules(self, start: int) -> list[nn.Module]:
        return self.backbone.suffix_modules(start)

    @property
    def num_blocks(self) -> int:
        return self.backbone.num_blocks
