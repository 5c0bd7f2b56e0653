"""Structured logging: one JSON object per line in production, plain text for people at a terminal.

Log calls use %-style arguments and ``extra={...}`` fields. Callers must never pass payloads, keys
or secrets; this module adds nothing that could carry them.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from rampart.config import LoggingConfig

__all__ = ["JsonFormatter", "RateLimitFilter", "setup_logging"]

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line with ts, level, logger, msg and any ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            out["error"] = record.exc_info[0].__name__
        return json.dumps(out, default=str, ensure_ascii=False)


class RateLimitFilter(logging.Filter):
    """Lets through at most ``per_minute`` records a minute and says how many it held back.

    For loggers any client can trigger at will (aiohttp logs every malformed request at ERROR):
    without a cap, a stream of garbage requests floods the log and hides everything else.
    """

    def __init__(self, per_minute: int = 10) -> None:
        super().__init__()
        self._per_minute = per_minute
        self._window_start = 0.0
        self._passed = 0
        self._held = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.created - self._window_start >= 60:
            if self._held:
                record.msg = f"{record.msg} ({self._held} similar records held back in the last minute)"
            self._window_start, self._passed, self._held = record.created, 0, 0
        if self._passed < self._per_minute:
            self._passed += 1
            return True
        self._held += 1
        return False


def setup_logging(config: LoggingConfig) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if config.format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(config.level)
    for name in ("aiohttp.server", "ingest.http_protocol"):
        logging.getLogger(name).addFilter(RateLimitFilter())
