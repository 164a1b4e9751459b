"""Synthetic world: procedural garments on a conveyor belt, for demos, tests and pre-training.

Two outputs from one renderer (:mod:`.scene`): a labelled crop dataset
(:func:`make_crop_dataset`) and a conveyor video with per-item ground truth
(:func:`render_conveyor_clip`, :func:`iter_conveyor_frames`, :class:`ConveyorWorld`).
"""

from sorting.datasets.synth.conveyor import (
    ConveyorClip,
    ConveyorConfig,
    ConveyorWorld,
    iter_conveyor_frames,
    render_conveyor_clip,
)
from sorting.datasets.synth.crops import make_crop_dataset

__all__ = [
    "ConveyorClip",
    "ConveyorConfig",
    "ConveyorWorld",
    "iter_conveyor_frames",
    "make_crop_dataset",
    "render_conveyor_clip",
]
