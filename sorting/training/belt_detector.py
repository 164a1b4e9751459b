"""Training the belt detector: ``fit_belt_detector(config)`` -> a run folder with ``best.pt`` and ``belt_detector.onnx``.

The detector (:mod:`sorting.models.belt_detector`) plugs into the project's training engine through a
:class:`~sorting.training.engine.TrainingSetup`: each output cell is a row (:class:`~sorting.models.belt_detector.
PerCellLogits`, targets ``(cells, heads)`` from :mod:`sorting.training.belt_detector_data`), so the engine's
per-head cross-entropies, accuracies, macro-F1 validation, early stopping, checkpoints and tracking apply
unchanged. What is its own: the losses (the core classes weighted against the many "none" cells, the size
heads scaled by ``loss.size_weight``), the frozen stem and first blocks (ImageNet weights and statistics kept:
small data, and backward through the high-resolution layers is most of a step's cost), and the export to ONNX
after the run (``belt_detector.onnx`` in the run folder, with what it was trained on in its metadata, and
``frames.json``: the names of the training and validation frames).

Which frames it learns from is the recipe's ``data`` section: the development photos of the conveyor photos
(``benchmarks/belt_split.json:dev``; the held-out photos are never read) and/or synthetic conveyor frames.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from sorting.models.belt_detector import (
    HEADS,
    KINDS,
    BeltDetectorNet,
    DetectorArch,
    PerCellLogits,
)
from sorting.models.belt_detector_export import export_belt_detector
from sorting.models.multihead import IGNORE_INDEX
from sorting.training import distributed as D
from sorting.training.belt_detector_config import BeltDetectorTrainConfig
from sorting.training.belt_detector_data import (
    DetectorDataset,
    DetectorSample,
    build_augment,
    cell_collate,
    photo_samples,
    split_by_group,
    synthetic_samples,
)
from sorting.training.copy_paste import CopyPaste
from sorting.training.engine import TrainingSetup, run_training, seed_everything
from sorting.training.loop import StepSettings

log = logging.getLogger(__name__)

ONNX_NAME = "belt_detector.onnx"
FRAMES_NAME = "frames.json"


@dataclass
class BeltDetectorResult:
    run_dir: Path
    checkpoint: Path
    onnx_path: Path
    metrics: dict[str, Any]
    seconds: float


class _Scaled(nn.Module):
    """A loss times a constant weight (the engine sums the heads' losses as they come)."""

    def __init__(self, loss: nn.Module, weight: float) -> None:
        super().__init__()
        self.loss, self.weight = loss, weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.weight * self.loss(logits, target)


def arch_of(config: BeltDetectorTrainConfig) -> DetectorArch:
    m = config.model
    return DetectorArch(input_width=m.input_size[0], input_height=m.input_size[1], blocks=m.blocks, width=m.width,
                        size_bins=m.size_bins, min_size=m.min_size, max_size=m.max_size, frozen_blocks=m.frozen_blocks)


def load_samples(config: BeltDetectorTrainConfig, arch: DetectorArch) -> tuple[list[DetectorSample],
                                                                               list[DetectorSample]]:
    """(train, validation) samples: photos split by scene group (synthetic frames all train), or, with no
    photos, the synthetic frames split by a share."""
    d = config.data
    synthetic = []
    if d.synthetic.frames:
        synthetic = synthetic_samples(arch, frames=d.synthetic.frames, seed=d.synthetic.seed, width=d.synthetic.size[0],
                                      height=d.synthetic.size[1], items=d.synthetic.items, every=d.synthetic.every)
    if d.photos is None:
        cut = len(synthetic) - (max(1, round(d.val_share * len(synthetic))) if d.val_share else 0)
        return synthetic[:cut], synthetic[cut:]
    assert d.boxes is not None
    photos = photo_samples(d.photos, d.boxes, arch, extra_labels=d.extra_labels, subset=d.subset)
    train, val = split_by_group(photos, val_share=d.val_share, group_size=d.group_size, seed=config.seed)
    return train + synthetic, val


def _criteria(config: BeltDetectorTrainConfig) -> dict[str, nn.Module]:
    weights = torch.tensor(config.loss.class_weights(KINDS))
    size = config.loss.size_weight
    return {"centre": nn.CrossEntropyLoss(weight=weights, ignore_index=IGNORE_INDEX),
            "width": _Scaled(nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX), size),
            "height": _Scaled(nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX), size)}


def build_detector_setup(config: BeltDetectorTrainConfig, ctx: D.DistContext
                         ) -> tuple[TrainingSetup, dict[str, Any], dict[str, list[str]]]:
    """The engine's set-up for a belt detector, what the exported file records about its data, and the names of
    the training and validation frames."""
    arch = arch_of(config)
    train, val = load_samples(config, arch)
    net = BeltDetectorNet(arch, pretrained=config.model.pretrained).to(ctx.device)
    frozen = {id(p) for m in net.frozen_modules() for p in m.parameters()}
    for p in net.parameters():
        p.requires_grad_(id(p) not in frozen)
    backbone = [p for b in net.blocks[arch.frozen_blocks:] for p in b.parameters()]
    head = [p for p in net.parameters() if id(p) not in frozen and all(p is not q for q in backbone)]

    def set_trainable(full: bool) -> None:
        for p in backbone:
            p.requires_grad_(full)

    augment, paste = None, None
    if config.augment.enabled:
        a = config.augment
        augment = build_augment(a.scale, a.translate, a.rotate, a.photometric, seed=config.seed)
        if a.copy_paste > 0:
            paste = CopyPaste(train, probability=a.copy_paste, max_things=a.paste_things, seed=config.seed)
    sampler = D.ShardedSampler(len(train), ctx, seed=config.seed)
    train_loader = DataLoader(DetectorDataset(train, arch, augment, paste), batch_size=config.batch_size,
                              sampler=sampler, collate_fn=cell_collate, drop_last=len(train) > config.batch_size)
    val_loader = DataLoader(DetectorDataset(val, arch), batch_size=config.batch_size, collate_fn=cell_collate)
    lr, wd = config.optim.lr, config.optim.weight_decay
    setup = TrainingSetup(
        model=net, step_model=PerCellLogits(net), train_loader=train_loader, val_loader=val_loader, sampler=sampler,
        criteria=_criteria(config), settings=StepSettings(HEADS, ctx.device, grad_clip=config.optim.grad_clip),
        param_groups=[{"params": head, "lr": lr, "weight_decay": wd},
                      {"params": backbone, "lr": lr * config.optim.backbone_lr_scale, "weight_decay": wd}],
        set_trainable=set_trainable, distributed=False, checkpoint_fields={"arch": arch.to_dict()},
        save_checkpoint=save_detector_checkpoint,
        sizes={"train_frames": len(train), "val_frames": len(val)},
        summary=f"belt detector {arch.input_width}x{arch.input_height}, {len(train)} training / {len(val)} validation "
                f"frames", trainable_label=f"blocks {arch.frozen_blocks}..{arch.blocks - 1} with the heads")
    trained_on = {"train": _names_digest(train), "val": _names_digest(val), "train_frames": len(train),
                  "val_frames": len(val), "photos_subset": config.data.subset,
                  "synthetic_frames": config.data.synthetic.frames}
    return setup, trained_on, {"train": [s.name for s in train], "val": [s.name for s in val]}


def _names_digest(samples: list[DetectorSample]) -> str:
    return hashlib.sha1("\n".join(sorted(s.name for s in samples)).encode()).hexdigest()[:16]


def save_detector_checkpoint(path: str | Path, model: nn.Module, *, arch: dict[str, Any], **fields: Any) -> Path:
    """The engine's checkpoint writer for the detector: weights, architecture and whatever the engine adds
    (metrics, epoch, optimizer state for ``last.pt``), written atomically."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"kind": "belt_detector", "arch": arch, "state_dict": model.state_dict(), **fields}, tmp)
    tmp.replace(path)
    return path


def fit_belt_detector(config: BeltDetectorTrainConfig) -> BeltDetectorResult:
    """Train (the engine's epoch loop, checkpoints and tracking), then export ``belt_detector.onnx``."""
    ctx = D.init_distributed(config.device)
    try:
        if config.threads:
            torch.set_num_threads(config.threads)
        seed_everything(config.seed)
        setup, trained_on, names = build_detector_setup(config, ctx)
        result = run_training(setup, config, ctx)
        # which photos it saw: a benchmark scores the validation ones apart (frames.json: {"train": [...], "val": [...]})
        (result.run_dir / FRAMES_NAME).write_text(json.dumps(names, indent=1) + "\n", encoding="utf-8")
        net = setup.model.to("cpu")
        assert isinstance(net, BeltDetectorNet)
        onnx_path = export_belt_detector(net, result.run_dir / ONNX_NAME, run=result.run_dir.name,
                                         trained_on=trained_on, best_epoch=result.best_epoch,
                                         val={k: v for k, v in result.metrics.items() if k.startswith("val/")})
        log.info("belt detector written to %s", onnx_path)
        return BeltDetectorResult(result.run_dir, result.best_checkpoint, onnx_path, result.metrics, result.seconds)
    finally:
        D.shutdown(ctx)
