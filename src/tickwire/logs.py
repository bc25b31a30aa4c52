"""Structured logs: one JSON object per line (``tickwire serve --log-json``).

Log shippers (Loki, Elasticsearch, CloudWatch) index fields, not sentences, so each
record carries the connection id and peer as their own keys (``conn``, ``peer``) when
the gateway logs about a connection, next to the usual ``ts``, ``level``, ``logger``
and ``msg``.

No secrets: only the fields named in :data:`FIELDS` leave the process, so an ``extra``
someone adds later (a token, a signature, a request body) is dropped unless it is added
here on purpose; and any field whose name looks like a credential is masked even then.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

__all__ = ["FIELDS", "JsonFormatter", "configure_logging", "set_level"]

#: ``extra`` fields copied into JSON records; everything else is left out.
FIELDS = ("conn", "peer", "code", "close_code", "channel", "cause", "event")

_SECRET_HINTS = ("token", "secret", "password", "passwd", "authorization", "signature", "key")


def _masked(name: str) -> bool:
    lowered = name.lower()
    return any(hint in lowered for hint in _SECRET_HINTS)


class JsonFormatter(logging.Formatter):
    """Format records as single-line JSON objects with UTC ISO-8601 timestamps."""

    def format(self, record: logging.LogRecord) -> str:
        seconds = int(record.created)
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        out: dict[str, Any] = {
            "ts": f"{ts}.{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name in FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                out[name] = "***" if _masked(name) else value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, separators=(",", ":"))


def configure_logging(level: str, json_lines: bool) -> None:
    """Send logs to stderr at ``level``, as JSON lines or as readable text.

    Args:
        level: ``DEBUG``, ``INFO``, ``WARNING`` or ``ERROR``.
        json_lines: True for :class:`JsonFormatter`, False for the text format.
    """
    handler = logging.StreamHandler()
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    # Like logging.basicConfig (which this calls): a no-op when the root logger already
    # has handlers, e.g. when main() runs inside a test that captures logs.
    logging.basicConfig(level=level.upper(), handlers=[handler])
    _quiet_picows(level)


def set_level(level: str) -> None:
    """Change the log level of a running process (``SIGHUP`` reload)."""
    logging.getLogger().setLevel(level.upper())
    _quiet_picows(level)


def _quiet_picows(level: str) -> None:
    # picows logs every connect and disconnect at INFO; tickwire's own connection
    # records carry the same at DEBUG with ids, so keep picows to warnings.
    debug = logging.getLevelName(level.upper()) == logging.DEBUG
    logging.getLogger("picows").setLevel(logging.NOTSET if debug else logging.WARNING)
