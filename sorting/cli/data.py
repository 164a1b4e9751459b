"""``textile-sorter data ...``: import datasets into manifests, split them, inspect them.

The ``data`` group also hosts ``data synth`` and ``data import-log``, registered by their
own modules (:mod:`sorting.cli.data_synth`, :mod:`sorting.cli.data_import_log`).
"""

from __future__ import annotations

import argparse
import os
import time

from sorting.cli import data_import_log, data_synth
from sorting.cli.common import OneLineErrorParser, add_command
from sorting.datasets.images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS
from sorting.datasets.importers import ImportReport, LabelMaps, default_rejects_path, import_csv, import_image_folder
from sorting.datasets.split import DEFAULT_FRACTIONS, split_manifest
from sorting.datasets.stats import check_chart_path, manifest_stats
from sorting.paths import check_output_path
from sorting.taxonomy import HEADS


def _add_import_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", "-o", required=True, help="manifest CSV to write (image paths relative to it)")
    parser.add_argument("--rejects", help="rejects CSV (default: <out stem>.rejects.csv next to the manifest)")
    parser.add_argument("--taxonomy", help="taxonomy YAML (default datasets/taxonomy.yaml)")
    for head in HEADS:
        parser.add_argument(f"--{head}-aliases", metavar="FILE",
                            help=f"{head} alias map YAML (default datasets/aliases/{head}.yaml)")
    parser.add_argument("--source", help="value of the manifest's source column (default: the folder name)")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="threads decoding images (default: %(default)s)")
    parser.add_argument("--max-megapixels", type=float, default=DEFAULT_MAX_PIXELS / 1e6,
                        help="reject larger images (default: %(default)g)")
    parser.add_argument("--max-file-mb", type=float, default=DEFAULT_MAX_BYTES / 1e6,
                        help="reject larger files unread (default: %(default)g)")
    parser.add_argument("--keep-duplicates", action="store_true",
                        help="keep images whose bytes repeat an earlier one (default: reject as duplicate)")


def _import_kwargs(args: argparse.Namespace) -> dict[str, object]:
    check_output_path(args.out, "--out")
    check_output_path(args.rejects or default_rejects_path(args.out), "--rejects")
    return dict(
        labels=LabelMaps.load(args.taxonomy, {h: getattr(args, f"{h}_aliases") for h in HEADS}),
        rejects_path=args.rejects,
        source=args.source,
        workers=args.workers,
        max_pixels=int(args.max_megapixels * 1e6),
        max_bytes=int(args.max_file_mb * 1e6),
        deduplicate=not args.keep_duplicates,
    )


def _print_report(report: ImportReport, started: float) -> int:
    print(report.summary())
    print(f"done in {time.perf_counter() - started:.1f} s")
    return 0


def _import_folder(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    kwargs = _import_kwargs(args)
    report = import_image_folder(args.root, args.out, task=args.task, **kwargs)  # type: ignore[arg-type]
    return _print_report(report, started)


def _import_csv(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    label_cols = {h: getattr(args, f"{h}_col") for h in HEADS if getattr(args, f"{h}_col")}
    report = import_csv(
        args.csv, args.out, image_col=args.image_col, label_cols=label_cols, garment_col=args.garment_col,
        composition_col=args.composition_col, image_root=args.image_root, encoding=args.encoding,
        **_import_kwargs(args),  # type: ignore[arg-type]
    )
    return _print_report(report, started)


def _split(args: argparse.Namespace) -> int:
    from sorting.datasets.spectra_store import copy_spectra

    check_output_path(args.out or args.manifest, "--out")
    out, counts = split_manifest(args.manifest, args.out, fractions=tuple(args.fractions), seed=args.seed,
                                 group_by=args.group_by)
    copy_spectra(args.manifest, out)  # a spectral manifest written elsewhere takes its spectra along
    print(f"train {counts['train']}, val {counts['val']}, test {counts['test']} -> {out}")
    return 0


def _stats(args: argparse.Namespace) -> int:
    from sorting.datasets.spectra_store import is_spectral_manifest

    if args.out:
        check_output_path(check_chart_path(args.out), "--out")
    if is_spectral_manifest(args.manifest):
        from sorting.datasets.spectra_stats import spectral_stats

        spectral, png = spectral_stats(args.manifest, args.out)
        print(spectral.format())
        print(f"mean spectrum per class -> {png}")
        return 0
    stats, png = manifest_stats(args.manifest, args.out)
    print(stats.format())
    print(f"chart -> {png}")
    return 0


def _import_spectra(args: argparse.Namespace) -> int:
    from sorting.datasets.spectra_grid import DEFAULT_NIR_GRID, WavelengthGrid
    from sorting.datasets.spectra_import import SpectraImport, import_spectra, read_label_table
    from sorting.datasets.spectra_labels import NameRules, SpectralLabels

    started = time.perf_counter()
    opts = SpectraImport(
        grid=WavelengthGrid.parse(args.grid) if args.grid else DEFAULT_NIR_GRID,
        labels=SpectralLabels.load(args.taxonomy, args.fibre_aliases),
        names=NameRules.load(args.name_rules),
        label_table=read_label_table(args.labels) if args.labels else {},
        axis=args.axis, source=args.source,
    )
    report = import_spectra(args.inputs, args.out, opts, rejects_path=args.rejects)
    print(f"grid {opts.grid.spec()} ({opts.grid.points} points); spectra beside the manifest")
    return _print_report(report, started)


def _register_import_spectra(group: argparse._SubParsersAction) -> None:
    p = add_command(
        group, "import-spectra",
        "Import spectrum files (NIRscan Nano CSV, FTIR CSV, two-column FT-NIR text, plain CSV tables) onto one grid.",
        """
  textile-sorter data import-spectra ../shared/data/nir-spectra/nirscan-nano-swatches -o runs/data/nir-swatches.csv
  textile-sorter data import-spectra ../shared/data/nir-spectra/ftnir-polycotton-blends -o runs/data/ftnir-blends.csv
  textile-sorter data import-spectra ../shared/data/ftir-spectra --grid 4000:650:4cm-1 -o runs/data/ftir.csv
  textile-sorter data import-spectra scans/ --labels scans/labels.csv -o runs/data/mine.csv   # file,fibre,composition,swatch
""",
    )
    p.add_argument("inputs", nargs="+", help="spectrum files and/or folders (searched recursively)")
    p.add_argument("--out", "-o", required=True, help="manifest CSV to write (spectra go to <stem>.spectra.npz beside it)")
    p.add_argument("--grid", help="START:STOP:STEP[nm|cm-1] every spectrum is resampled onto (default 910:1690:4 nm)")
    p.add_argument("--labels", help="labels CSV: file (relative to the input folder, or a file name), fibre, "
                                    "composition, swatch; wins over labels in file names")
    p.add_argument("--axis", choices=["auto", "nm", "cm-1"], default="auto",
                   help="x unit of two-column files and table headers (auto: cm-1 when above 3000)")
    p.add_argument("--rejects", help="rejects CSV (default: <out stem>.rejects.csv next to the manifest)")
    p.add_argument("--taxonomy", help="taxonomy YAML with its blends rules (default datasets/taxonomy.yaml)")
    p.add_argument("--fibre-aliases", metavar="FILE", help="fibre alias map YAML (default datasets/aliases/fibre.yaml)")
    p.add_argument("--name-rules", metavar="FILE",
                   help="file-name rules YAML (default datasets/aliases/spectra-names.yaml)")
    p.add_argument("--source", help="value of the source column (default: each input folder's name)")
    p.set_defaults(func=_import_spectra)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``data`` command group and its subcommands."""
    data = add_command(
        sub, "data", "Import, split and inspect datasets (manifests).",
        """
  textile-sorter data import-folder ../shared/data/fibre-photos --task fibre -o runs/data/fibre.csv
  textile-sorter data split runs/data/fibre.csv --seed 0
  textile-sorter data stats runs/data/fibre.csv
""",
    )
    group = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND", parser_class=OneLineErrorParser)

    def show_help(_args: argparse.Namespace) -> int:
        data.print_help()
        return 2

    data.set_defaults(func=show_help)

    p = add_command(
        group, "import-folder", "Import an ImageFolder layout (one sub-folder per class) into a manifest.",
        """
  # sorting taxonomy: Denim -> cotton through datasets/aliases/fibre.yaml
  textile-sorter data import-folder ../shared/data/fibre-photos --task fibre -o runs/data/fibre.csv
  # 4-class benchmark taxonomy keeps denim as its own class
  textile-sorter data import-folder ../shared/data/fibre-photos --task fibre \\
      --taxonomy datasets/taxonomies/fibre-photos-4class.yaml -o runs/data/fibre4.csv
""",
    )
    p.add_argument("root", help="folder with one sub-folder per class label")
    p.add_argument("--task", required=True, choices=HEADS, help="which head the folder names label")
    _add_import_options(p)
    p.set_defaults(func=_import_folder)

    p = add_command(
        group, "import-csv", "Import a CSV with one row per image (column mapping + alias maps).",
        """
  textile-sorter data import-csv ../shared/data/colour-catalogue/labels.csv \\
      --image-col image --colour-col colour --garment-col garment -o runs/data/colour.csv
  textile-sorter data import-csv labels.csv --image-col file --fibre-col material --image-root photos/ -o m.csv
""",
    )
    p.add_argument("csv", help="CSV file with a header line")
    p.add_argument("--image-col", default="image", help="column with image paths (default: %(default)s)")
    p.add_argument("--image-root", help="folder image paths are relative to (default: the CSV's folder)")
    for head in HEADS:
        p.add_argument(f"--{head}-col", metavar="COLUMN", help=f"column with {head} labels")
    p.add_argument("--garment-col", metavar="COLUMN", help="column copied into the manifest's garment column")
    p.add_argument("--composition-col", metavar="COLUMN", help="column copied into the composition column")
    p.add_argument("--encoding", default="utf-8",
                   help="text encoding of the CSV (default: %(default)s; e.g. cp1252 for a spreadsheet's)")
    _add_import_options(p)
    p.set_defaults(func=_import_csv)

    p = add_command(
        group, "split", "Assign train/val/test: stratified by label, deterministic, duplicates kept together.",
        """
  textile-sorter data split runs/data/colour.csv                     # 80/10/10, seed 0, in place
  textile-sorter data split runs/data/fibre.csv --fractions 0.7 0.15 0.15 --seed 1 -o runs/data/fibre-s1.csv
  textile-sorter data split photos.csv --group-by garment   # when garment identifies one physical item
""",
    )
    p.add_argument("manifest", help="manifest CSV")
    p.add_argument("--out", "-o", help="write here instead of overwriting the manifest")
    p.add_argument("--fractions", type=float, nargs=3, default=list(DEFAULT_FRACTIONS),
                   metavar=("TRAIN", "VAL", "TEST"), help="fractions summing to 1 (default: 0.8 0.1 0.1)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--group-by", metavar="COLUMN",
                   help="keep rows sharing this column's value in one split (e.g. garment, source)")
    p.set_defaults(func=_split)

    p = add_command(
        group, "stats", "Class counts per head and split, imbalance, image sizes; writes a bar chart PNG "
                        "(spectral manifests: spectra and swatches per class, mean spectrum per class).",
        """
  textile-sorter data stats runs/data/colour.csv                 # chart: runs/data/colour.stats.png
  textile-sorter data stats runs/data/fibre.csv --out runs/fibre-classes.png
  textile-sorter data stats runs/data/nir-swatches.csv           # chart: runs/data/nir-swatches.spectra.png
""",
    )
    p.add_argument("manifest", help="manifest CSV")
    p.add_argument("--out", "-o", help="chart: .png, .svg or .pdf (default: <manifest stem>.stats.png next to it); "
                                        "the counts are printed")
    p.set_defaults(func=_stats)

    _register_import_spectra(group)
    data_synth.register(group)
    data_import_log.register(group)
