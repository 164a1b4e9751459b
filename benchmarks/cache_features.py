"""Research feature cache: pooled statistics of a frozen EfficientNet-Lite, once per image and view.

Every probe and recipe comparison in ``benchmarks/`` reads these files instead of running the backbone
again, so all candidates of one backbone / resolution see the same numbers and the same folds.
Per image and view it stores, unstandardised (float32, one row):

* ``stage{k}_mean`` / ``stage{k}_std``: mean and standard deviation over the positions of the output of
  stage k = 2..6 (what ``efficientnet_lite*_multistage`` pools);
* ``head_mean`` / ``head_std``: the same for the 1280-channel head map (``head_mean`` is the plain pooled
  embedding; mean + std of it is the "plain probe" of issue 15);
* ``colour``: optional colour descriptor (``sorting.models.colour_features.ColourFeatures``), with the white
  border background removed (``masked``, catalogue photos) or over every pixel (``whole``, close-ups).

Views are transforms of the preprocessed input: ``id``, ``h`` (mirror), ``v`` (upside down), ``hv``
(rotation by 180), and the four transposed ones (``t``, ``th``, ``tv``, ``thv``: rotations by 90/270 and
the diagonal mirrors). ``--texture-views N`` adds N random draws of the ``texture`` augmentation
preset (the shipped fibre recipe's cached training views; unflipped, seeds 1..N).

Several files of one manifest / backbone / size (``--tag``) are views of the same images, in the same row order.
Images go through ``sorting.training.data.ManifestDataset`` with the model's own preprocessing, exactly as
the trainer feeds them. Output: ``<out>/<manifest stem>-<backbone>-<size>-<resize>.npz`` with ``features``
(V, N, D), ``views``, ``columns`` (JSON: name -> [start, stop]), ``paths``, ``fibre``, ``colour``, ``group``.

    PYTHONPATH=. python benchmarks/cache_features.py runs/data/fibre4.csv --backbone efficientnet_lite2 \\
        --size 260 --resize center_crop --views id,h,v,hv
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from sorting.datasets.augment import build_augmentation
from sorting.datasets.manifest import read_manifest
from sorting.datasets.preprocess import LITE_MEAN, LITE_STD, PreprocessConfig
from sorting.models.colour_features import ColourFeatures
from sorting.models.efficientnet_lite import VARIANTS, EfficientNetLite, efficientnet_lite
from sorting.models.multistage import POOLED_STAGES, VIEWS, view
from sorting.training.data import ManifestDataset, Sample
from sorting.training.feature_cache import extract_features

log = logging.getLogger("cache_features")

class PooledStats(nn.Module):
    """Lite -> [stage means, stage stds, head mean, head std (, colour)] for one view of the input."""

    def __init__(self, net: EfficientNetLite, view_name: str, colour: ColourFeatures | None) -> None:
        super().__init__()
        self.net, self.view, self.colour = net, view_name, colour
        ends = net.stage_ends()
        self.ends = {ends[k]: k for k in POOLED_STAGES}

    def columns(self) -> dict[str, tuple[int, int]]:
        widths = self.net.variant.stages
        names = [(f"stage{k}_mean", widths[k][3]) for k in POOLED_STAGES]
        names += [(f"stage{k}_std", widths[k][3]) for k in POOLED_STAGES]
        names += [("head_mean", 1280), ("head_std", 1280)]
        if self.colour is not None:
            names.append(("colour", self.colour.out_dim))
        out, start = {}, 0
        for name, width in names:
            out[name] = (start, start + width)
            start += width
        return out

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = view(x, self.view)
        y = self.net.prefix(x, 0)[0]
        means, stds = [], []
        for i, block in enumerate(self.net._blocks):
            y = block(y)
            if i in self.ends:
                means.append(y.mean(dim=(2, 3)))
                stds.append(y.std(dim=(2, 3)))
        head = self.net.head_map(y)
        parts = [*means, *stds, head.mean(dim=(2, 3)), head.std(dim=(2, 3))]
        if self.colour is not None:
            parts.append(self.colour(x))
        return parts


def _colour_module(kind: str | None) -> ColourFeatures | None:
    if kind is None:
        return None
    if kind == "masked":
        return ColourFeatures(mean=LITE_MEAN, std=LITE_STD)
    return ColourFeatures(mean=LITE_MEAN, std=LITE_STD, white_min=2.0)  # no pixel is "white": all are garment


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("manifest")
    parser.add_argument("--backbone", default="efficientnet_lite0", choices=sorted(VARIANTS))
    parser.add_argument("--size", type=int, help="input side (default: the backbone's native size)")
    parser.add_argument("--resize", default="center_crop", choices=["letterbox", "stretch", "center_crop"])
    parser.add_argument("--pad-value", type=int, default=127)
    parser.add_argument("--views", default="id,h", help=f"comma-separated views of {','.join(VIEWS)} (default id,h)")
    parser.add_argument("--texture-views", type=int, default=0)
    parser.add_argument("--colour", choices=["masked", "whole"])
    parser.add_argument("--out", default="runs/features")
    parser.add_argument("--tag", default="", help="appended to the file name (several files of one backbone setting)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)

    variant = VARIANTS[args.backbone]
    size = args.size or variant.input_size
    manifest = read_manifest(args.manifest)
    rows = manifest.rows
    samples = [Sample(manifest.image_path(r).absolute(), (0,)) for r in rows]
    pre = PreprocessConfig(input_size=size, resize=args.resize, mean=LITE_MEAN, std=LITE_STD, pad_value=args.pad_value)
    net = efficientnet_lite(variant, num_classes=0, pretrained=True).eval()
    colour = _colour_module(args.colour)
    started = time.perf_counter()
    blocks, names = [], []
    kw = {"batch_size": args.batch_size, "device": torch.device("cpu"), "progress": True}
    views = [v for v in args.views.split(",") if v]
    unknown = set(views) - set(VIEWS)
    if unknown:
        parser.error(f"unknown views {sorted(unknown)}")
    for name in views:
        encoder = PooledStats(net, name, colour)
        cached = extract_features(encoder, [ManifestDataset(samples, pre)], desc=f"view {name}", **kw)
        blocks.append(cached.views[0].numpy())
        names.append(name)
    for k in range(1, args.texture_views + 1):
        encoder = PooledStats(net, "id", colour)
        augmented = ManifestDataset(samples, pre, build_augmentation("texture", colour_safe=True, seed=k))
        cached = extract_features(encoder, [augmented], desc=f"texture {k}", **kw)
        blocks.append(cached.views[0].numpy())
        names.append(f"texture{k}")
    tag = f"-{args.tag}" if args.tag else ""
    out = Path(args.out) / f"{Path(args.manifest).stem}-{args.backbone}-{size}-{args.resize}{tag}.npz"
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(
        out, features=np.stack(blocks).astype(np.float32), views=np.array(names),
        columns=json.dumps(PooledStats(net, "id", colour).columns()),
        paths=np.array([r.path for r in rows]), fibre=np.array([r.fibre or "" for r in rows]),
        colour=np.array([r.colour or "" for r in rows]), group=np.array([r.garment or "" for r in rows]),
    )
    log.info("%s: %d images x %d views in %.0f s", out, len(rows), len(names), time.perf_counter() - started)


if __name__ == "__main__":
    main()
