"""The demo's spectrometer: the line's spectral model and the simulator's spectra, made from the real data.

The simulated spectrometer returns real NIR spectra (``../shared/data/nir-spectra``), so the demo can only show it
where that data is, or where a previous demo made the model and the spectra from it:

* ``<out>/nir-line.onnx`` and ``<out>/nir-line.csv`` (+ spectra) exist: reused;
* else, with the NIRscan Nano swatches at ``$TEXTILE_SORTER_SHARED_DATA/nir-spectra/nirscan-nano-swatches``
  (default ``../shared/data``): imported, cut by swatch into the model's part and the simulator's (0.7 / 0.3,
  seed 0: ``data split --group-by garment --fractions 0.7 0 0.3``) and the linear recipe
  (``training/nir-line.yaml`` without its cotton-share head, to stay quick) trained on the model's part only:
  about 15 s on two cores;
* else the demo sorts without the spectrometer, and says so.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from sorting.datasets.spectra_import import SpectraImport, import_spectra
from sorting.datasets.spectra_store import copy_spectra
from sorting.datasets.split import split_manifest
from sorting.models.spectral_export import export_spectral_checkpoint
from sorting.paths import project_root
from sorting.training.spectral import fit_spectral
from sorting.training.spectral_config import load_spectral_config

log = logging.getLogger(__name__)

LINE_RECIPE = "training/nir-line.yaml"
SWATCHES = Path("nir-spectra") / "nirscan-nano-swatches"
HOLDOUT = (0.7, 0.0, 0.3)


@dataclass(frozen=True)
class DemoSpectrometer:
    """The spectral model of the demo's line and the spectra its simulator draws from (split ``test``)."""

    model: Path
    spectra: Path
    made_now: bool


def shared_data() -> Path:
    """The real data folder (``$TEXTILE_SORTER_SHARED_DATA``, default ``../shared/data`` beside the project)."""
    return Path(os.environ.get("TEXTILE_SORTER_SHARED_DATA", project_root().parent / "shared" / "data"))


def demo_spectrometer(out_dir: Path, *, retrain: bool = False, progress: bool = True) -> DemoSpectrometer | None:
    """The demo's spectral model and simulator spectra (see the module docstring); None when there is no data."""
    model, spectra = out_dir / "nir-line.onnx", out_dir / "nir-line.csv"
    if model.is_file() and spectra.is_file() and not retrain:
        log.info("reusing the demo's spectral model %s", model)
        return DemoSpectrometer(model, spectra, made_now=False)
    swatches = shared_data() / SWATCHES
    if not swatches.is_dir():
        log.warning("no spectral model in %s and no NIR swatches at %s: the demo sorts without the spectrometer",
                    out_dir, swatches)
        return None
    imported = import_spectra([swatches], out_dir / "nir-swatches.csv", SpectraImport(progress=progress))
    split_manifest(imported.manifest_path, spectra, fractions=HOLDOUT, seed=0, group_by="garment")
    copy_spectra(imported.manifest_path, spectra)
    recipe = load_spectral_config(project_root() / LINE_RECIPE, [
        f"data.train=[{spectra.resolve()}]", f"output_dir={(out_dir / 'train-nir').resolve()}", "composition=null",
        "tracking.enabled=false", f"progress={str(progress).lower()}"])
    log.info("training the demo line's spectral model (%s, the swatches' train part)", LINE_RECIPE)
    result = fit_spectral(recipe)
    export_spectral_checkpoint(result.checkpoint, model)
    return DemoSpectrometer(model, spectra, made_now=True)
