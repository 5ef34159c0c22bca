"""Structured JSON logs on stderr, with secrets scrubbed from every line.

Every resolved secret value is registered with ``register_secret``; the
formatter replaces any occurrence in the message or the structured fields
before the line is written, so a token pasted into an exception text by a
library still never reaches the log.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson

_SECRETS: set[str] = set()
_MASK = "**********"

# Attributes every LogRecord has; anything else came from ``extra={...}``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message", "asctime", "taskName"}


def register_secret(value: str) -> None:
    """Never print ``value`` in a log line (short values would mask too much; skip them)."""
    if len(value) >= 6:
        _SECRETS.add(value)


def scrub(text: str) -> str:
    for secret in _SECRETS:
        if secret in text:
            text = text.replace(secret, _MASK)
    return text


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(_fields(record))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        line = orjson.dumps(entry, default=str).decode()
        return scrub(line)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(f"{k}={v}" for k, v in _fields(record).items())
        base = f"{record.levelname.lower():7} {record.name}: {record.getMessage()}"
        line = f"{base} {extras}" if extras else base
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return scrub(line)


class _RiposteHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler ``configure`` installed, so a second call replaces only it."""


def configure(level: str = "INFO", fmt: str = "json") -> None:
    handler = _RiposteHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    # Handlers someone else installed (a test harness, an embedding program) stay.
    root.handlers[:] = [h for h in root.handlers if not isinstance(h, _RiposteHandler)]
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("botocore", "aiobotocore", "urllib3", "werkzeug", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
