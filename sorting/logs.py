"""Log hygiene: credentials in stream URLs never reach a log line or an error message.

An RTSP or HTTP camera URL may carry ``user:password@``; :func:`mask_credentials` replaces the
password with ``***``. The library masks the URLs it names itself; :class:`MaskCredentials`, a
logging filter the CLI installs on its handlers, masks whatever else a log record carries (an
OpenCV or pymodbus message quoting the URL).
"""

from __future__ import annotations

import logging
import re

_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<password>[^@/\s]*)@")


def mask_credentials(text: str) -> str:
    """``rtsp://admin:s3cret@10.0.0.5/stream`` -> ``rtsp://admin:***@10.0.0.5/stream``."""
    return _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)


class MaskCredentials(logging.Filter):
    """Rewrites each record's message with the credentials masked (and drops its args)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_credentials(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True
