"""The labeller: correct a boxes CSV (``propose-labels``' proposals, or a new one) in the browser, photo by photo.

:mod:`~sorting.apps.labeller.box_file` reads and writes the file; :mod:`~sorting.apps.labeller.app` serves the page.
"""

from sorting.apps.labeller.app import create_app, start_labeller
from sorting.apps.labeller.box_file import KINDS, BoxFile

__all__ = ["KINDS", "BoxFile", "create_app", "start_labeller"]
