"""The operator's console: a web page beside the belt (Live, History, Relabel), served by the sorter.

``start_console(feed, db_path, ...)`` runs it inside ``serve`` (the loop feeds a
:class:`~sorting.serving.live.LiveFeed`); ``run_console(db_path, ...)`` opens a decision log on its
own (``textile-sorter console DB``). Flask pages rendered on the server, a little plain JavaScript
shipped in ``static/``, no build step, nothing fetched from the internet.
"""

from sorting.apps.console.security import TOKEN_ENV
from sorting.apps.console.server import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    ConsoleHandle,
    run_console,
    start_console,
)

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "TOKEN_ENV", "ConsoleHandle", "run_console", "start_console"]
