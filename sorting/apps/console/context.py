"""What the console's pages read: :class:`ConsoleContext` (shared by the Live, History and Relabel pages)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from sorting.apps.console.logview import LogView
from sorting.apps.console.security import Access
from sorting.serving.live import LiveFeed
from sorting.taxonomy import Taxonomy

MAX_STREAMS = 4  # concurrent MJPEG viewers; more get 503 (each holds a server thread)


@dataclass
class ConsoleContext:
    """The decision log, the live line (None: reviewing a log), the access rules and the taxonomy."""

    view: LogView
    feed: LiveFeed | None
    access: Access
    taxonomy: Taxonomy
    stopping: threading.Event = field(default_factory=threading.Event)
    streams: threading.BoundedSemaphore = field(default_factory=lambda: threading.BoundedSemaphore(MAX_STREAMS))
