"""What lies on the synthetic belt at a point and a time: the garments' masks moving with the belt.

A sensor that reads the belt between frames (the simulated spectrometer) needs the world itself, not the
frames: :class:`BeltTruth` holds each garment's mask (its silhouette as planned, the same one the frames
are rendered from) and its position at any time ``t`` (belt travel ``speed x t``; the rendered frame ``k``
sits within half a pixel of ``t = k / fps``). :meth:`BeltTruth.from_ground_truth` rebuilds the world of a
rendered clip from its ground-truth file (planning only, no rendering) and refuses one it cannot reproduce.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from sorting.datasets.synth.conveyor import ConveyorConfig, ConveyorWorld
from sorting.errors import DataError

BELT = -1  # what :meth:`BeltTruth.cover` returns for a point on the bare belt


class BeltTruth:
    """The garments of a planned clip as masks on the belt (image coordinates of its frames)."""

    def __init__(self, world: ConveyorWorld) -> None:
        self.world = world
        cfg = world.config
        self.speed_px_s = cfg.belt_speed_px_s
        self.transposed = cfg.direction == "+y"
        self.duration_s = world.n_frames / cfg.fps
        garments = [it for it in world.items if not it.is_stain]
        self.ids = np.array([it.id for it in garments], dtype=np.int64)
        self.fibre = {it.id: it.spec.fibre for it in garments}
        self._masks = [it.silhouette.posed_mask() > 127 for it in garments]
        self._origin = np.array([[it.x0, it.y0] for it in garments], dtype=np.float64).reshape(-1, 2)
        boxes = np.array([it.box for it in garments], dtype=np.float64).reshape(-1, 4)
        self._box_lo = self._origin + boxes[:, :2]  # mask box in world pixels at t = 0
        self._box_hi = self._box_lo + boxes[:, 2:]

    @classmethod
    def from_ground_truth(cls, gt: Mapping[str, Any]) -> BeltTruth:
        """The world of a rendered clip, planned again from its ground truth (DataError if it does not match).

        The file does not store the share of hard garments; the cut-off ones give it to within one (half the
        hard slots are cut-off garments), and the plan that reproduces every garment of the file is kept.
        """
        items = gt.get("items") or []
        if not items:
            raise DataError("ground truth without garments: no synthetic world to rebuild")
        cut = sum(it.get("hard_reason") == "cut_off" for it in items)
        for n_hard in (2 * cut, 2 * cut + 1):
            config = ConveyorConfig(n_items=len(items), seed=int(gt["seed"]), width=int(gt["width"]),
                                    height=int(gt["height"]), fps=float(gt["fps"]),
                                    belt_speed_px_s=float(gt["belt_speed_px_s"]), direction=gt.get("direction", "+x"),
                                    hard_fraction=n_hard / len(items), colour_cast=gt.get("colour_cast") is not None,
                                    stains=len(gt.get("distractors") or []))
            if round(config.n_items * config.hard_fraction) != n_hard or config.hard_fraction > 0.5:
                continue
            world = ConveyorWorld(config)
            if world.ground_truth()["items"] == items:
                return cls(world)
        raise DataError(f"cannot rebuild the synthetic world of seed {gt.get('seed')} from its ground truth "
                        "(rendered by another version of the world?)")

    def cover(self, t: float | np.ndarray, points: np.ndarray) -> np.ndarray:
        """The garment id under each image point ``(x, y)`` at time ``t`` (one time, or one per point;
        :data:`BELT` where there is none). Vectorised: the points are moved into the belt's own frame, where the
        garments stand still, and tested against the few garments near them."""
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        world = pts[:, ::-1] if self.transposed else pts
        xb = world[:, 0] - self.speed_px_s * np.broadcast_to(np.asarray(t, dtype=np.float64), len(world))
        yb = world[:, 1]
        out = np.full(len(world), BELT, dtype=np.int64)
        if not len(world):
            return out
        near = np.flatnonzero((self._box_lo[:, 0] <= xb.max()) & (self._box_hi[:, 0] > xb.min())
                              & (self._box_lo[:, 1] <= yb.max()) & (self._box_hi[:, 1] > yb.min()))
        for g in near:
            mx = np.floor(xb - self._origin[g, 0]).astype(np.int64)
            my = np.floor(yb - self._origin[g, 1]).astype(np.int64)
            mask = self._masks[g]
            ok = (out == BELT) & (mx >= 0) & (mx < mask.shape[1]) & (my >= 0) & (my < mask.shape[0])
            hit = np.zeros(len(world), dtype=bool)
            hit[ok] = mask[my[ok], mx[ok]]
            out[hit] = self.ids[g]
        return out
