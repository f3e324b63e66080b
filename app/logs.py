"""Operator logs: one line per event that matters, as text or JSON (``ONCEFLOW_LOG_FORMAT``)."""

from __future__ import annotations

import logging
import sys
import time

import orjson

__all__ = ["configure_logging"]


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


class _RepeatFilter(logging.Filter):
    """Lets one line of each aiokafka message template through per ``interval`` seconds.

    While a broker is down aiokafka logs an ERROR on every retry (ten a second); operators need
    one line per event, with a count of what was held back.
    """

    def __init__(self, interval: float = 30.0) -> None:
        super().__init__()
        self._interval = interval
        self._last: dict[tuple[str, object], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("aiokafka"):
            return True
        key = (record.name, record.msg)
        now = time.monotonic()
        last, held = self._last.get(key, (0.0, 0))
        if now - last < self._interval:
            self._last[key] = (last, held + 1)
            return False
        self._last[key] = (now, 0)
        if held:
            record.msg = f"{record.msg} ({held} similar lines held back)"
        return True


def configure_logging(fmt: str = "text", level: str = "INFO") -> None:
    """Log to stderr; aiokafka's own chatter is kept at WARNING and rate-limited."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_RepeatFilter())
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, root.level))
    # httpx logs every proxied query at INFO: per-request lines are not operator events.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, root.level))
