"""Figures of a spectral model on labelled spectra (torch-free: ``bench``, ``evaluate`` and ``cross-validate`` share it).

:func:`score_spectra` turns true labels + :class:`~sorting.models.spectral_onnx.SpectralPredictions` into accuracy,
macro-F1, calibration, purity at reject, per-class recall and what each class was called, OOD flags of classes the
model never learnt, the background kept apart from the fibres, and the cotton share of cotton/polyester items.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from sorting.datasets.spectra_labels import BACKGROUND
from sorting.models.metrics import (
    classification_metrics,
    expected_calibration_error,
    purity_at_reject,
)
from sorting.models.spectral_onnx import SpectralPredictions

WITHIN_POINTS = 10.0  # the industry's working tolerance of a blend's declared share
COMPOSITION_CLASSES = ("cotton", "polyester", "polycotton")  # the items the share applies to


def cotton_share(composition: str | None) -> float | None:
    """Cotton % of a ``cotton:55,polyester:45`` composition made of cotton and/or polyester only, else None."""
    if not composition:
        return None
    shares = {}
    for part in composition.split(","):
        name, _, value = part.partition(":")
        shares[name.strip()] = float(value)
    if not set(shares) <= {"cotton", "polyester"}:
        return None
    return shares.get("cotton", 0.0)



def _per_class(truth: np.ndarray, called: np.ndarray, ood: np.ndarray) -> dict[str, dict[str, Any]]:
    out = {}
    for name in sorted(set(truth)):
        mask = truth == name
        calls = Counter(called[mask])
        out[name] = {"n": int(mask.sum()), "recall": float(np.mean(called[mask] == name)), "ood_rate": float(np.mean(ood[mask])),
                     "called": dict(calls.most_common())}
    return out


def score_spectra(truth: list[str], pred: SpectralPredictions, compositions: list[str | None] | None = None,
                  known: np.ndarray | None = None) -> dict[str, Any]:
    """The figures of one evaluation (see module docstring). ``known``: whether the model that scored each row
    learnt its class (pooled cross-validation; default: the class is one of ``pred.labels``)."""
    labels = list(pred.labels)
    t = np.array(truth, dtype=object)
    called = np.array(pred.top1(), dtype=object)
    known = np.isin(t, labels) if known is None else np.asarray(known, dtype=bool)
    m: dict[str, Any] = {"n": int(len(t)), "n_known": int(known.sum()), "n_unseen_class": int((~known).sum())}
    if known.any():
        y = np.array([labels.index(v) for v in t[known]])
        cls = classification_metrics(y, pred.probs[known].argmax(1), len(labels))
        m.update(accuracy=float(cls["accuracy"]), macro_f1=float(cls["macro_f1"]),
                 ece=float(expected_calibration_error(pred.probs[known], y)),
                 purity_at_reject={f"{k:g}": v["purity"] for k, v in purity_at_reject(pred.probs[known], y).items()},
                 ood_rate_known=float(np.mean(pred.ood[known])))
    m["unseen_flagged_ood"] = float(np.mean(pred.ood[~known])) if (~known).any() else None
    m["per_class"] = _per_class(t, called, pred.ood)
    is_bg = t == BACKGROUND
    m["background_called_fibre"] = int(np.sum(is_bg & (called != BACKGROUND)))
    m["fibre_called_background"] = int(np.sum(~is_bg & (called == BACKGROUND)))
    if compositions is not None and pred.cotton_share is not None:
        share = np.array([cotton_share(c) if v in COMPOSITION_CLASSES else None for c, v in zip(compositions, t)], dtype=object)
        has = np.array([s is not None for s in share])
        if has.any():
            err = np.abs(pred.cotton_share[has] - share[has].astype(float))
            m["composition"] = {"n": int(has.sum()), "mae": float(err.mean()), "within_10": float(np.mean(err <= WITHIN_POINTS))}
    all_labels = labels + sorted(set(t) - set(labels))
    idx = {name: i for i, name in enumerate(all_labels)}
    confusion = np.zeros((len(all_labels), len(all_labels)), dtype=int)
    for a, b in zip(t, called):
        confusion[idx[a], idx[b]] += 1
    m["confusion"] = {"labels": all_labels, "matrix": confusion.tolist()}
    return m


def summary_lines(m: dict[str, Any]) -> list[str]:
    """Markdown lines of a score dict: totals then one row per class."""
    lines = [f"- spectra: {m['n']} ({m['n_known']} of classes the model knows, {m['n_unseen_class']} of other classes)"]
    if "accuracy" in m:
        lines.append(f"- accuracy {m['accuracy']:.1%}, macro-F1 {m['macro_f1']:.3f}, ECE {m['ece']:.3f}, "
                     f"flagged OOD {m['ood_rate_known']:.1%} (known classes)")
    if m.get("unseen_flagged_ood") is not None:
        lines.append(f"- spectra of classes the model never learnt flagged OOD: {m['unseen_flagged_ood']:.1%}")
    lines.append(f"- background called a fibre: {m['background_called_fibre']}; a fibre called background: "
                 f"{m['fibre_called_background']}")
    if "composition" in m:
        c = m["composition"]
        lines.append(f"- cotton share ({c['n']} cotton/polyester spectra): MAE {c['mae']:.1f} points, "
                     f"{c['within_10']:.1%} within {WITHIN_POINTS:g} points")
    lines += ["", "| class | spectra | right | flagged OOD | called |", "|---|---:|---:|---:|---|"]
    for name, c in m["per_class"].items():
        calls = ", ".join(f"{k} {v}" for k, v in c["called"].items())
        lines.append(f"| {name} | {c['n']} | {c['recall']:.1%} | {c['ood_rate']:.1%} | {calls} |")
    return lines
