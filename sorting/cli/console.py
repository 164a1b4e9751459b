"""``textile-sorter console DB``: the operator's console over a decision log, without a line.

Also the ``--console*`` flags that ``serve`` shares (:func:`add_console_flags`, :func:`console_options`).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

from sorting.cli.common import add_command

if TYPE_CHECKING:
    from sorting.apps.console import ConsoleHandle
    from sorting.serving.line_config import LineConfig
    from sorting.serving.live import LiveFeed


def add_console_flags(parser: argparse.ArgumentParser, *, prefix: str = "") -> None:
    """``--[prefix]host``, ``--[prefix]port``, ``--[prefix]token`` (the token also from the environment)."""
    from sorting.apps.console import DEFAULT_HOST, DEFAULT_PORT, TOKEN_ENV

    parser.add_argument(f"--{prefix}host", default=DEFAULT_HOST,
                        help=f"address to listen on (default {DEFAULT_HOST}; any other needs a token)")
    parser.add_argument(f"--{prefix}port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    parser.add_argument(f"--{prefix}token", metavar="TOKEN",
                        help=f"access token, 16+ characters (default: ${TOKEN_ENV}); required beyond 127.0.0.1")


def console_token(value: str | None) -> str | None:
    """The token from the flag, else from the environment (empty: none)."""
    from sorting.apps.console import TOKEN_ENV

    return value or os.environ.get(TOKEN_ENV) or None


def start_line_console(args: argparse.Namespace, cfg: LineConfig) -> tuple[ConsoleHandle, LiveFeed] | None:
    """``serve --console``: the console on its thread with the line's live feed (None without the flag)."""
    if not args.console:
        return None
    from sorting.apps.console import start_console
    from sorting.serving.live import live_feed_for_line

    feed = live_feed_for_line(cfg)
    handle = start_console(feed, cfg.log.path, host=args.console_host, port=args.console_port,
                           token=console_token(args.console_token))
    print(f"operator's console on {handle.url}")
    return handle, feed


def _console(args: argparse.Namespace) -> int:
    from sorting.apps.console import run_console
    from sorting.taxonomy import load_taxonomy

    def ready(handle: ConsoleHandle) -> None:
        print(f"operator's console on {handle.url} (reading {args.db}; Ctrl-C stops)")

    run_console(args.db, host=args.host, port=args.port, token=console_token(args.token),
                taxonomy=load_taxonomy(args.taxonomy), on_ready=ready)
    print("console stopped")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Register ``console``."""
    p = add_command(
        sub, "console", "The operator's console over a decision log: history, CSV, relabelling of doubtful crops.",
        """
  textile-sorter console runs/serve/decisions.sqlite                 # http://127.0.0.1:8088/
  TEXTILE_SORTER_CONSOLE_TOKEN=$(python -c 'import secrets; print(secrets.token_urlsafe(24))') \\
      textile-sorter console runs/serve/decisions.sqlite --host 0.0.0.0   # from another machine: /login?token=...
  textile-sorter data import-log runs/serve/decisions.sqlite -o datasets/relabelled.csv   # the answers -> manifest
While sorting, `textile-sorter serve ... --console` serves the same pages with the live view.""",
    )
    p.add_argument("db", type=Path, help="decision log (SQLite) written by `textile-sorter serve`")
    add_console_flags(p)
    p.add_argument("--taxonomy", type=Path, help="taxonomy YAML offered for labels (default: datasets/taxonomy.yaml)")
    p.set_defaults(func=_console)
