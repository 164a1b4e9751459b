"""Opening a self-describing ONNX file of the serving side (the belt detector, the textile check): one session on
the CPU with the line's thread count, and the JSON object its exporter wrote under one metadata key, each failure
one :class:`~sorting.errors.ModelFileError` line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sorting.errors import ModelFileError


def open_session(path: Path, *, threads: int, what: str) -> Any:
    """An onnxruntime session of ``path`` on ``threads`` intra-op threads; ``what`` names the file in errors."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for unreadable files
        raise ModelFileError(f"cannot load {what} {path}: {str(exc).splitlines()[0][:200]}") from None


def json_metadata(session: Any, path: Path, *, key: str, version: int, what: str, writer: str) -> dict[str, Any]:
    """The JSON object under ``key`` in the file's metadata, of format ``version``; ``writer`` is the command
    that writes such files (named in the error when the key is missing)."""
    raw = session.get_modelmeta().custom_metadata_map.get(key)
    if raw is None:
        raise ModelFileError(f"{path} is not a {what} (no '{key}' metadata): write one with {writer}")
    meta = json.loads(raw)
    if meta.get("format") != version:
        raise ModelFileError(f"{path}: {what} format {meta.get('format')}, this sorter reads {version}")
    return meta
