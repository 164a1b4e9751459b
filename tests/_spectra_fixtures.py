"""Small synthetic spectra and spectrum files made at test time (never the real data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

NIRSCAN_HEADER = """Method:,Hadamard 1,,
Host Date-Time:,28/4/26 @ 17:48:45,,
System Temp (C):,31.43,,
Serial Number:,1234567,,
Start wavelength (nm):,900,,
End wavelength (nm):,1700,,
Digital Resolution:,228,,
Wavelength (nm),Absorbance (AU),Reference Signal (unitless),Sample Signal (unitless)
"""
NANO_WL = np.linspace(901.5, 1700.6, 228)
# absorption bands (centre nm, width nm) per synthetic class: distinct shapes, like fibres' C-H / O-H / N-H bands
BANDS = {
    "cotton": [(1490, 40), (1200, 30)],
    "polyester": [(1660, 15), (1130, 20)],
    "polyamide": [(1540, 25), (1180, 25)],
    "background": [(1400, 200)],
}


def synthetic_spectrum(cls: str, rng: np.random.Generator, wl: np.ndarray = NANO_WL, *, noise: float = 0.002) -> np.ndarray:
    """Absorbance of one scan of class ``cls``: its bands, a random baseline offset/slope and scale, noise."""
    y = np.zeros_like(wl)
    for centre, width in BANDS[cls]:
        y += 0.1 * np.exp(-0.5 * ((wl - centre) / width) ** 2)
    scale = rng.uniform(0.7, 1.4)
    baseline = rng.uniform(-0.05, 0.3) + rng.uniform(-5e-5, 5e-5) * (wl - 1300)
    return scale * y + baseline + rng.normal(0, noise, wl.shape)


def write_nirscan(path: Path, absorbance: np.ndarray, wl: np.ndarray = NANO_WL) -> Path:
    """A NIRscan Nano CSV as the instrument writes it."""
    ref = np.linspace(20000, 60000, len(wl))
    rows = "".join(f"{w:.6f},{a:.6f},{r:.6f},{r * 10 ** -a:.6f}\n" for w, a, r in zip(wl, absorbance, ref))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(NIRSCAN_HEADER + rows, encoding="utf-8")
    return path


def make_swatch_folder(root: Path, *, swatches: int = 3, scans: int = 4, seed: int = 0,
                       classes: tuple[str, ...] = ("cotton", "polyester", "polyamide")) -> Path:
    """NIRscan files named like the real set: ``<Fibre>_<Swatch>_<Pose>_<n>.csv`` plus a few background scans."""
    rng = np.random.default_rng(seed)
    names = {"cotton": "Cotton", "polyester": "Polyester", "polyamide": "Nylon"}
    poses = ("Pos1", "Fold4", "Rot90", "Back")
    for cls in classes:
        for s in range(swatches):
            offset = rng.uniform(-0.05, 0.05)  # a swatch's own colour/thickness
            for n in range(scans):
                y = synthetic_spectrum(cls, rng) + offset
                write_nirscan(root / f"{names[cls]}_{names[cls][0]}{s + 1:02d}_{poses[n % 4]}_{n + 1:02d}.csv", y)
    for n in range(max(4, scans)):
        write_nirscan(root / f"Background_PVC_Single_{n + 1:02d}.csv", synthetic_spectrum("background", rng) + 1.0)
    return root


def tiny_spectral_model(root: Path, *, seed: int = 1) -> tuple[Path, Path]:
    """A small linear spectral model trained on synthetic swatches (cotton, polyester, polyamide, background),
    exported to ONNX, and its manifest split by swatch (``train`` / ``test``: the simulator's part).
    Returns ``(model.onnx, manifest)``; a few seconds on two cores."""
    from sorting.datasets.spectra_import import SpectraImport, import_spectra
    from sorting.datasets.split import split_rows
    from sorting.datasets.manifest import read_manifest, write_manifest
    from sorting.datasets.spectra_store import copy_spectra
    from sorting.models.spectral_export import export_spectral_checkpoint
    from sorting.training.spectral import fit_spectral
    from sorting.training.spectral_config import load_spectral_config

    make_swatch_folder(root / "scans", swatches=4, scans=4, seed=seed)
    report = import_spectra([root / "scans"], root / "nir.csv", SpectraImport(progress=False))
    rows = split_rows(read_manifest(report.manifest_path).rows, fractions=(0.7, 0.0, 0.3), seed=0, group_by="garment")
    manifest = root / "nir-line.csv"
    write_manifest(rows, manifest)
    copy_spectra(report.manifest_path, manifest)
    recipe = root / "nir-tiny.yaml"
    recipe.write_text(f"""task: spectral
name: nir-tiny
output_dir: {root / 'train'}
progress: false
data: {{train: [{manifest}], split: train}}
preprocess: {{snv: true, savgol_window: 11, savgol_polyorder: 2, derivative: 1}}
model: {{family: linear}}
calibration: {{folds: 2}}
tracking: {{enabled: false}}
""")
    result = fit_spectral(load_spectral_config(recipe))
    onnx_path, _, _ = export_spectral_checkpoint(result.checkpoint, root / "nir-tiny.onnx")
    return onnx_path, manifest
