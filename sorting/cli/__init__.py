"""The ``textile-sorter`` command: thin argument parsing over the library.

Each command module exposes ``register(subparsers)`` and sets ``func`` on its parser;
``func(args) -> int`` is the exit code. User errors (:class:`SortingError`) and bad
arguments print one line and exit non-zero without a traceback.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence

from sorting import __version__
from sorting.cli import apps, console, data, export, serve, train
from sorting.cli.common import OneLineErrorParser
from sorting.errors import SortingError
from sorting.logs import MaskCredentials, mask_credentials

COMMAND_MODULES = (data, train, export, serve, console, apps)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="textile-sorter",
        description="Sort post-consumer textiles by fibre and colour: data, training, export and the conveyor sorter.",
        epilog="Start with `textile-sorter demo`; every command has --help with examples.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineErrorParser)
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def _terminated(signum: int, _frame: object) -> None:
    """SIGTERM ends a command like Ctrl-C does: its ``finally`` blocks run (outputs cleared, files closed)."""
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _terminated)  # serve replaces it with its graceful drain while it runs
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2) if args.verbose else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(MaskCredentials())
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args) or 0)
    except SortingError as exc:
        sys.stderr.write(f"textile-sorter: error: {mask_credentials(str(exc))}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("textile-sorter: interrupted\n")
        return 130

