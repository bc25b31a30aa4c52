"""The connectivity report's I/O side: hooks from connections, the feed and REST, the
``/api/v1/report`` route, and the JSON file written at exit (``--report FILE``).

The gateway holds one :class:`Reporter` in ``Gateway.report`` when ``--report`` is
given or faults are in use, else None. Every hook runs at a connect, a close, a
subscribe or a REST request, never per delivered message; the Sans-I/O derivation is
:mod:`tickwire.faults.report`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qsl, urlsplit

from ..faults.report import Report

if TYPE_CHECKING:
    from aiohttp import web
    from picows import WSUpgradeRequest

    from ..dialects.feed import DialectSubscriber, Stream
    from ..dialects.markets import Markets
    from .connection import Connection

__all__ = ["CLIENT_HEADER", "Reporter", "add_routes"]

#: The request header naming a client (as ``?client=NAME`` on its URL).
CLIENT_HEADER = "X-Tickwire-Client"


class _HasReport(Protocol):
    @property
    def report(self) -> Reporter | None: ...


def _header(headers: Any, name: str) -> str:
    value = headers.get(name)
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    return str(value or "")[:200]


def handshake_identity(request: WSUpgradeRequest) -> tuple[str, str, str | None]:
    """The path, User-Agent and given client name of a WebSocket upgrade request."""
    raw = request.path
    target = raw.decode("latin-1") if isinstance(raw, bytes) else str(raw)
    parts = urlsplit(target)
    name = dict(parse_qsl(parts.query)).get("client") or _header(request.headers, CLIENT_HEADER)
    return parts.path[:200], _header(request.headers, "User-Agent"), (name or None)


class Reporter:
    """The gateway's report and the hooks that feed it.

    Args:
        path: where to write the report's JSON at exit (None: only served live).
    """

    def __init__(self, path: str | None = None, report: Report | None = None) -> None:
        self.path = path
        self.report = report if report is not None else Report()
        #: The handshake being decided: its connection id and (path, User-Agent, name).
        self.handshake: tuple[int, tuple[str, str, str | None]] | None = None
        self._cached: tuple[float, dict[str, Any]] | None = None

    # -- WebSocket connections -------------------------------------------------------------

    def opened(self, conn: Connection, venue: str) -> None:
        """``conn`` is connected (its handshake identity was kept in ``conn.origin``)."""
        path, user_agent, name = conn.origin or ("", "", None)
        self.report.opened(
            conn.id, venue, path, conn.peer, user_agent, name, time.monotonic(), time.time()
        )

    def closed(self, conn: Connection) -> None:
        """``conn`` is gone: who closed it and with which code."""
        by = conn.closed_by or "network"
        self.report.closed(conn.id, conn.close_code, by, conn.close_reason, time.monotonic())

    def subscribed(self, conn: Connection, channel: str) -> None:
        """A native subscribe (or resume) of ``channel``."""
        kind, _, symbol = channel.partition(".")
        self.report.subscribed(conn.id, channel, symbol or None, kind == "book", time.monotonic())

    def unsubscribed(self, conn: Connection, channel: str) -> None:
        self.report.unsubscribed(conn.id, channel, time.monotonic())

    def fault(
        self, conn_id: int | None, kind: str, detail: Mapping[str, object], now: float | None = None
    ) -> None:
        """A fault applied to ``conn_id`` (the fault engine's listener)."""
        now = time.monotonic() if now is None else now
        pending = self.handshake
        if pending is not None and pending[0] == conn_id and conn_id not in self.report.conns:
            # A refused handshake: it never becomes a connection, but it was an attempt.
            path, user_agent, name = pending[1]
            status = detail.get("status")
            code = status if isinstance(status, int) else None
            venue = str(detail.get("venue") or path.strip("/").partition("/")[0] or "native")
            self.report.refused(conn_id, venue, path, user_agent, name, code, now, time.time())
        self.report.fault(conn_id, kind, detail, now)

    # -- the dialect feed (DialectFeed.observer) ----------------------------------------------

    def joined(self, sub: DialectSubscriber, stream: Stream) -> None:
        """A venue subscribe of ``stream`` (also a repeated one)."""
        conn_id = getattr(sub, "id", None)
        if conn_id is None:
            return
        symbol = stream.tap.symbol if stream.tap.market.symbol != "*" else None
        book = stream.renderer.source == "book"
        self.report.subscribed(conn_id, stream.key, symbol, book, time.monotonic())

    def left(self, sub: DialectSubscriber, key: str) -> None:
        conn_id = getattr(sub, "id", None)
        if conn_id is None or getattr(sub, "closed", False):
            return
        self.report.unsubscribed(conn_id, key, time.monotonic())

    def resynced(self, sub: DialectSubscriber, stream: Stream, closed: bool) -> None:
        """The feed replaced ``stream``'s book (a hole upstream): ``sub`` was closed
        (a venue without in-band snapshots) or sent a fresh snapshot."""
        conn_id = getattr(sub, "id", None)
        if conn_id is None:
            return
        symbol = stream.tap.symbol
        venue = stream.key.partition("|")[0]
        detail: dict[str, object]
        if closed:
            detail = {
                "symbol": symbol,
                "venue": venue,
                "stream": stream.key,
                "done": "closed 1011: the book was resynchronised upstream",
            }
            self.report.fault(conn_id, "disconnect", detail, time.monotonic())
        else:
            detail = {
                "symbol": symbol,
                "venue": venue,
                "stream": stream.key,
                "done": "fresh snapshot sent in-band after a hole upstream",
                "resynced_in_band": True,
            }
            self.report.fault(conn_id, "upstream_resync", detail, time.monotonic())

    # -- venue REST ----------------------------------------------------------------------------

    def rest(
        self,
        venue: str,
        path: str,
        params: Mapping[str, str],
        headers: Mapping[str, str],
        remote: str | None,
        status: int,
        markets: Markets,
    ) -> None:
        """A venue REST request on the admin port, answered with ``status``."""
        raw = params.get("symbol") or params.get("instId") or params.get("pair") or ""
        market = (
            markets.by_binance.get(raw.upper())
            or markets.by_okx.get(raw)
            or markets.by_kraken_pair.get(raw)
            or markets.by_kraken.get(raw)
            or markets.by_kraken_v1.get(raw)
        )
        name = params.get("client") or _header(headers, CLIENT_HEADER) or None
        self.report.rest(
            venue,
            path,
            market.symbol if market is not None else None,
            f"{remote or '?'}:0",
            _header(headers, "User-Agent"),
            name,
            status,
            time.monotonic(),
        )

    # -- output ----------------------------------------------------------------------------------

    def summary(self, max_age: float = 0.0) -> dict[str, Any]:
        """The report's JSON; one derived less than ``max_age`` seconds ago will do
        (``/metrics`` scrapes: the derivation reads every client's events)."""
        now = time.monotonic()
        cached = self._cached
        if cached is not None and now - cached[0] < max_age:
            return cached[1]
        data = self.report.summary(now)
        self._cached = (now, data)
        return data

    def write(self) -> None:
        """Write the report's JSON to :attr:`path` (atomically: a reader never sees half)."""
        if not self.path:
            return
        tmp = f"{self.path}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.summary(), f, indent=1)
            f.write("\n")
        os.replace(tmp, self.path)


def add_routes(app: web.Application, gateway: _HasReport) -> None:
    """``GET /api/v1/report``: the live report (404 when the gateway keeps none)."""
    from aiohttp import web

    async def handler(request: web.Request) -> web.Response:
        reporter = gateway.report
        if reporter is None:
            body = {
                "error": "no_report",
                "message": "this gateway keeps no report: start it with --report FILE "
                "(or with faults)",
            }
            return web.json_response(body, status=404)
        return web.json_response(reporter.summary())

    app.router.add_get("/api/v1/report", handler)
