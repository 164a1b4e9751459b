"""``textile-sorter data import-log``: the sorter's decision log back into training data.

Registered into the ``data`` group by ``sorting/cli/data.py`` (``data_import_log.register(group)``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sorting.cli.common import add_command
from sorting.errors import ConfigError
from sorting.paths import check_output_path
from sorting.serving.decision_log import ImportResult, export_todo, labels_to_manifest, layout_labels_to_csv
from sorting.taxonomy import load_taxonomy

EXAMPLES = """
  # 1. list the saved crops of rejected / low-confidence items, to label
  textile-sorter data import-log runs/serve/decisions.sqlite --export-todo todo.csv
  # 2. fill the fibre and/or colour columns of todo.csv (leave a cell empty if unsure), then
  textile-sorter data import-log runs/serve/decisions.sqlite --labels todo.csv -o datasets/relabelled.csv
  # 3. layout column filled too (single / several: one garment, or several touching)? the line's own pairs
  #    for the layout head (recipe: layout: {crops: [datasets/layout.csv]})
  textile-sorter data import-log runs/serve/decisions.sqlite --labels todo.csv --layout-output datasets/layout.csv
  # or label the crops in the operator's console (Relabel page: `textile-sorter console DB`), then, no CSV:
  textile-sorter data import-log runs/serve/decisions.sqlite -o datasets/relabelled.csv \\
      --layout-output datasets/layout.csv
"""


def register(group: argparse._SubParsersAction) -> None:
    """Add ``import-log`` to the ``data`` command group."""
    parser = add_command(
        group,
        "import-log",
        help="Export a decision log's saved crops for labelling, or turn labelled crops into a manifest.",
        examples=EXAMPLES,
    )
    parser.add_argument("db", type=Path, help="decision log (SQLite) written by `textile-sorter serve`")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--export-todo", type=Path, metavar="CSV", help="write the crops to label to CSV")
    mode.add_argument("--labels", type=Path, metavar="CSV",
                      help="labelled CSV: item_id, fibre, colour (default: the labels given in the console)")
    parser.add_argument("-o", "--output", type=Path, help="manifest to write from the fibre/colour labels")
    parser.add_argument("--layout-output", type=Path, metavar="CSV",
                        help="layout crop list to write from the layout labels")
    parser.add_argument("--taxonomy", type=Path,
                        help="taxonomy YAML for label checks (default: datasets/taxonomy.yaml)")
    parser.add_argument("--split", choices=("train", "val", "test"), help="split for all rows (default: none)")
    parser.add_argument("--crops-dir", type=Path,
                        help="the log's crops folder, when log.crops_dir set one (default: <db name>-crops next to "
                             "it); crops outside it are never taken")
    parser.add_argument("--encoding", default="utf-8",
                        help="text encoding of the --labels CSV (default: %(default)s; e.g. cp1252 for a spreadsheet's)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    for option, path in (("--export-todo", args.export_todo), ("--output", args.output),
                         ("--layout-output", args.layout_output)):
        if path is not None:
            check_output_path(path, option)
    if args.export_todo is not None:
        n = export_todo(args.db, args.export_todo, crops_dir=args.crops_dir)
        print(f"{n} crops to label -> {args.export_todo} (fill the fibre/colour columns, and layout: single / several)")
        return 0
    if args.output is None and args.layout_output is None:
        raise ConfigError("import-log needs -o/--output MANIFEST and/or --layout-output CSV (or --export-todo CSV)")
    if args.output is not None:
        _report(labels_to_manifest(args.db, args.labels, args.output, taxonomy=load_taxonomy(args.taxonomy),
                                   split=args.split, crops_dir=args.crops_dir, encoding=args.encoding),
                "labelled crops")
    if args.layout_output is not None:
        _report(layout_labels_to_csv(args.db, args.labels, args.layout_output, crops_dir=args.crops_dir,
                                     encoding=args.encoding), "layout-labelled crops")
    return 0


def _report(result: ImportResult, what: str) -> None:
    print(f"{result.written} {what} -> {result.manifest} ({len(result.skipped)} rows skipped)")
    for reason in result.skipped[:10]:
        print(f"  skipped {reason}")
    if len(result.skipped) > 10:
        print(f"  ... and {len(result.skipped) - 10} more")
