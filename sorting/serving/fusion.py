"""Fusing the spectrometer's fibre reading with the camera's view of the same garment: the rule, in one place.

**Rule** (Bayes' rule, the two senses taken as independent given the fibre: colour and texture vs molecular
bands): for each fibre class ``c`` of the camera's model,

    p(c | camera, NIR)  ∝  p_cam(c) · L(c)

``p_cam`` is the camera's calibrated fibre probability (its views aggregated); ``q`` is the spectral model's
calibrated probability over its classes ``k`` for the garment (the mean over its usable scans, ``background``
left out and ``q`` renormalised); a NIR class is matched to the camera's class of the same taxonomy name.
``L`` comes in two forms (the bins file's ``nir.fusion``):

* ``product`` (the default): ``L(c) = q_c``, a product of experts of two calibrated models. It trusts the NIR's
  confidence as its temperature calibrates it (on scans of swatches it never saw).
* ``confusion``: ``L(c) = Σ_k q_k · M[c, k]``, ``M[c, k] = P(the NIR reads k | the garment is c)``: the rows of the
  spectral model's out-of-fold confusion matrix (grouped cross-validation of its training set), Laplace-smoothed
  (``alpha``). Where the NIR confuses classes (nylon read as polyester, an 80/20 polycotton read as cotton) such a
  reading cannot overrule the camera; it is the more cautious rule, and it sorted fewer garments on the tuning
  clips (models/NIR.md, "On the line").

In both, a camera class the spectral model has no class for (a fibre without spectra: viscose, linen, silk
here) gets a flat ``L = 1/K``: the reading is no evidence for or against it, so such a fibre is decided by the
camera. An item with no usable reading (``scans == 0``) or an out-of-distribution one is not fused: the bins file
says whether the camera then decides alone under the same thresholds or the item goes to reject
(:class:`~sorting.serving.policy.Policy`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from sorting.datasets.spectra_labels import BACKGROUND

FusionRule = Literal["product", "confusion"]
CONFUSION_KEY = "oof/confusion"  # the spectral model's metrics entry: out-of-fold counts, rows = true class


@dataclass(frozen=True)
class NirEvidence:
    """What the spectrometer said about one item.

    ``scans``: usable scans averaged (0: none; ``fibre`` etc. are then None, or ``background`` when every scan
    read the bare belt); ``belt_scans``: scans left out because the model read the bare belt in them;
    ``fibre`` / ``confidence``: the spectral model's top-1 class and its mean probability; ``ood``: out of its
    distribution;
    ``cotton_share``: its composition head's estimate (%, meaningful for cotton/polyester items);
    ``likelihood``: ``L(c)`` over the camera's fibre classes (see the module docstring); ``probs``: the mean
    calibrated probabilities over the spectral model's own labels.
    """

    scans: int
    belt_scans: int = 0
    fibre: str | None = None
    confidence: float | None = None
    ood: bool = False
    cotton_share: float | None = None
    likelihood: np.ndarray | None = None
    probs: np.ndarray | None = None  # the mean calibrated probabilities over the spectral model's labels

    @property
    def usable(self) -> bool:
        return self.scans > 0 and self.likelihood is not None


class NirLikelihood:
    """``q`` over the spectral model's labels -> ``L(c)`` over the camera's fibre labels (module docstring)."""

    def __init__(self, nir_labels: Sequence[str], camera_labels: Sequence[str], *, rule: FusionRule = "product",
                 confusion: Sequence[Sequence[float]] | None = None, alpha: float = 1.0) -> None:
        self.nir_labels = list(nir_labels)
        self.camera_labels = list(camera_labels)
        self.rule = rule
        self._keep = np.array([lab != BACKGROUND for lab in self.nir_labels])
        fibres = [lab for lab in self.nir_labels if lab != BACKGROUND]
        k = len(fibres)
        counts = _confusion_counts(confusion, self.nir_labels, self._keep) if rule == "confusion" else None
        rows = np.full((len(self.camera_labels), k), 1.0 / k)
        for c, name in enumerate(self.camera_labels):
            if name not in fibres:
                continue  # no spectra of this fibre: a flat row
            i = fibres.index(name)
            if counts is None:
                rows[c] = np.eye(k)[i]
            else:
                smoothed = counts[i] + alpha
                rows[c] = smoothed / smoothed.sum()
        self.rows = rows  # (camera classes, NIR fibre classes)

    def __call__(self, probs: np.ndarray) -> np.ndarray:
        """``L(c)`` for a calibrated NIR probability vector over the model's labels (background dropped)."""
        q = np.asarray(probs, dtype=np.float64).ravel()[self._keep]
        total = q.sum()
        q = q / total if total > 0 else np.full(q.size, 1.0 / q.size)
        return self.rows @ q


def _confusion_counts(confusion: Sequence[Sequence[float]] | None, labels: list[str], keep: np.ndarray) -> np.ndarray:
    """The out-of-fold confusion between fibre classes (background row and column left out)."""
    if confusion is None:
        raise ValueError("the 'confusion' fusion rule needs the spectral model's out-of-fold confusion matrix "
                         f"(metrics '{CONFUSION_KEY}'; models exported before it have none: use nir.fusion product "
                         "or export the model again)")
    m = np.asarray(confusion, dtype=np.float64)
    if m.shape != (len(labels), len(labels)):
        raise ValueError(f"the spectral model's confusion matrix is {m.shape}, it has {len(labels)} labels")
    return m[np.ix_(keep, keep)]


def fuse(camera: np.ndarray, likelihood: np.ndarray) -> np.ndarray:
    """``p_cam · L`` normalised (the camera alone when the product vanishes everywhere)."""
    p = np.asarray(camera, dtype=np.float64).ravel() * np.asarray(likelihood, dtype=np.float64).ravel()
    total = p.sum()
    return (p / total).astype(np.float32) if total > 0 and np.isfinite(total) else np.asarray(camera, np.float32)
