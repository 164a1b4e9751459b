"""Calibration transfer between spectrometers (or sessions of one): the mean-spectrum offset.

A second instrument reads the same material with a slightly different baseline and response. Scanning a few
transfer standards (known materials, e.g. the reference tiles or a handful of known swatches) on both gives the
mean difference per wavelength; subtracting it from every new spectrum brings them back to the first instrument's
scale before the model sees them. numpy only (serving applies it in front of the model's ONNX graph).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sorting.errors import DataError


@dataclass(frozen=True)
class MeanOffsetTransfer:
    """``corrected = spectrum - offset`` with ``offset`` = mean(new standards) - mean(reference standards)."""

    offset: np.ndarray

    @classmethod
    def fit(cls, reference: np.ndarray, new: np.ndarray, *, ref_labels: list[str] | None = None,
            new_labels: list[str] | None = None) -> "MeanOffsetTransfer":
        """Offset from spectra of the same standards on both instruments. With labels, each standard (class) is
        averaged on its own first and the offsets of the standards seen on both are averaged (unequal counts)."""
        reference, new = np.atleast_2d(reference), np.atleast_2d(new)
        if reference.shape[1] != new.shape[1]:
            raise DataError(f"transfer standards on different grids: {reference.shape[1]} vs {new.shape[1]} points")
        if ref_labels is None or new_labels is None:
            return cls(new.mean(axis=0) - reference.mean(axis=0))
        common = sorted(set(ref_labels) & set(new_labels))
        if not common:
            raise DataError("no standard was scanned on both instruments")
        r, n = np.array(ref_labels), np.array(new_labels)
        return cls(np.mean([new[n == c].mean(axis=0) - reference[r == c].mean(axis=0) for c in common], axis=0))

    def apply(self, spectra: np.ndarray) -> np.ndarray:
        x = np.asarray(spectra, dtype=np.float64)
        if x.shape[-1] != self.offset.shape[0]:
            raise DataError(f"spectra have {x.shape[-1]} points, the transfer {self.offset.shape[0]}")
        return x - self.offset

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps({"method": "mean_offset", "offset": self.offset.tolist()}) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "MeanOffsetTransfer":
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if data.get("method") != "mean_offset":
            raise DataError(f"{path}: not a mean-offset transfer file")
        return cls(np.asarray(data["offset"], dtype=np.float64))
