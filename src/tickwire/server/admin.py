"""The admin HTTP listener: metrics, health, REST book snapshots and the live dashboard.

It runs on its own port (``tickwire serve --admin-port``) inside the gateway's own
event loop, on aiohttp's web server, so everything it shows is read straight from the
live hub and engine -- no copies, no locks, no second process. It is deliberately kept
off the WebSocket port: operators firewall it separately, and a flood of scrapes can
never be confused with market-data clients.

Routes::

    GET /                            the dashboard (static HTML + JS, no CDN)
    GET /static/...                  its assets, uPlot (MIT) vendored with its LICENSE
    GET /metrics                     Prometheus text (or OpenMetrics, by Accept header)
    GET /healthz                     200 while the process serves
    GET /readyz                      200 once every book is complete, 503 before or
                                     while shutting down
    GET /api/v1/book/{symbol}?depth=N  the book snapshot a WebSocket subscriber would
                                     get now: same seq, checksum and epoch
    GET /api/v1/stats                the gateway's counters (the exit-stats JSON)
    GET /api/v1/replay, POST /api/v1/replay/{pause,resume,speed,seek}
                                     a replay's shared clock (``replay_admin.py``)
    GET /api/v1/stream?symbol=S&depth=N  server-sent events for the dashboard:
                                     ``hello`` (symbols and the last minutes of
                                     samples), ``sample`` every second, ``slow`` every
                                     second, ``book`` four times a second

The dashboard costs the gateway nothing while nobody watches, except one
:meth:`Sampler.sample` a second; each extra viewer costs one ``write`` per event, and
book payloads are built once per (symbol, depth) for all viewers. A viewer whose
events pile up is disconnected (its browser reconnects and starts over with
``hello``), the same rule the gateway applies to slow WebSocket clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from aiohttp import web
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import CollectorRegistry

from ..dialects import VENUES, rest
from ..protocol import encode
from . import faults_api, replay_admin
from .metrics import GatewayView, Sampler, make_registry
from .venues import VenueView

if TYPE_CHECKING:
    from .connection import Connection

__all__ = ["AdminServer"]

log = logging.getLogger("tickwire.admin")

#: Where the dashboard's HTML, JS, CSS and the vendored uPlot live.
STATIC_DIR = Path(__file__).with_name("static")

#: Largest ``depth`` a REST or dashboard request may ask for (a book has fewer levels).
MAX_DEPTH = 10_000

#: Events queued for one dashboard viewer before it counts as slow and is dropped.
MAX_QUEUED_EVENTS = 64

#: The dashboard may load nothing but its own files: no CDN, no inline script.
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'"
)


def _sse(event: str, data: Any) -> bytes:
    """One server-sent event; ``data`` is JSON on a single line."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=json.dumps(data, separators=(",", ":")).encode(),
        status=status,
        content_type="application/json",
    )


def _error(status: int, code: str, message: str) -> web.Response:
    return _json({"error": code, "message": message}, status)


class _Scraped(CollectorRegistry):
    """Metrics already collected, for an encoder to format off the event loop."""

    def __init__(self, metrics: list[Metric]) -> None:
        super().__init__(auto_describe=False)
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        yield from self._metrics


class _Viewer:
    """One dashboard connection: the book it shows and its queue of encoded events."""

    __slots__ = ("symbol", "depth", "queue", "closed")

    def __init__(self, symbol: str, depth: int) -> None:
        self.symbol = symbol
        self.depth = depth
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.closed = False

    def push(self, event: bytes) -> None:
        if self.closed:
            return
        if self.queue.qsize() >= MAX_QUEUED_EVENTS:
            # A viewer that does not read: drop what it has queued and end its stream;
            # EventSource reconnects and gets a fresh ``hello``.
            self.close()
            return
        self.queue.put_nowait(event)

    def close(self) -> None:
        self.closed = True
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(None)


class AdminServer:
    """The admin listener of one gateway.

    Args:
        gateway: the gateway to expose; read only, except that a book snapshot may
            flush that channel's pending updates (as a subscription does).
        sample_interval: seconds between dashboard samples.
        book_interval: seconds between dashboard book updates.
    """

    def __init__(
        self, gateway: GatewayView, *, sample_interval: float = 1.0, book_interval: float = 0.25
    ) -> None:
        self.gateway = gateway
        self.sampler = Sampler()
        self.registry = make_registry(gateway, self.sampler)
        self.view = VenueView(gateway)
        self.views = {venue: VenueView(gateway, venue) for venue in VENUES}
        self.sample_interval = sample_interval
        self.book_interval = book_interval
        self.host = ""
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._task: asyncio.Task[None] | None = None
        self._viewers: set[_Viewer] = set()

    @property
    def url(self) -> str:
        """The dashboard's URL (a wildcard host shows as 127.0.0.1)."""
        host = self.host if self.host not in ("", "0.0.0.0", "::") else "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}/"

    def app(self) -> web.Application:
        """Build the aiohttp application (routes above)."""
        app = web.Application(middlewares=[self._headers])
        app.router.add_get("/", self._index)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/api/v1/book/{symbol:.+}", self._book)
        app.router.add_get("/api/v1/stats", self._stats)
        app.router.add_get("/api/v1/stream", self._stream)
        app.router.add_static("/static/", STATIC_DIR, append_version=False)
        for venue in VENUES:
            app.router.add_get(f"/{venue}/{{path:.*}}", self._venue)
        replay_admin.register(app, self.gateway)
        faults_api.register(app, self.gateway)
        return app

    async def start(self, host: str, port: int) -> None:
        """Bind ``host:port`` (0: any free port, read :attr:`port`) and start sampling.

        Raises:
            OSError: the port cannot be bound.
        """
        runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, host, port, backlog=128, reuse_address=True)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        self.host = host
        self.port = int(runner.addresses[0][1])
        self._task = asyncio.get_running_loop().create_task(self._publish())

    async def stop(self) -> None:
        """End the dashboard streams and close the listener."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for viewer in list(self._viewers):
            viewer.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- periodic work -----------------------------------------------------------------

    async def _publish(self) -> None:
        """Sample every second; feed the dashboard viewers their events."""
        loop = asyncio.get_running_loop()
        next_sample = loop.time()
        while True:
            now = loop.time()
            if now >= next_sample:
                next_sample = now + self.sample_interval
                point = self.sampler.sample(self.gateway, time.monotonic(), time.time())
                if point is not None and self._viewers:
                    sample = _sse("sample", self._sample_data(point.as_dict()))
                    slow = _sse("slow", self.slow_table())
                    for viewer in list(self._viewers):
                        viewer.push(sample)
                        viewer.push(slow)
            if self._viewers:
                books: dict[tuple[str, int], bytes] = {}
                for viewer in list(self._viewers):
                    key = (viewer.symbol, viewer.depth)
                    event = books.get(key)
                    if event is None:
                        event = books[key] = _sse("book", self.book_view(*key))
                    viewer.push(event)
            await asyncio.sleep(self.book_interval)

    def _sample_data(self, point: dict[str, Any]) -> dict[str, Any]:
        gw = self.gateway
        hub = gw.hub
        point["totals"] = {
            "deliveries": hub.updates_out,
            "bytes": hub.bytes_out,
            "source": gw.source.generated,
            "pauses": hub.pauses,
            "conflations": hub.conflated + hub.conflated_snapshots,
            "slow_closes": dict(gw.slow_closes),
            "rejected": gw.rejected,
            "accepted": gw.accepted,
            "ready": gw.books_complete() and gw.draining is None,
            "uptime_s": round(gw.uptime(), 1),
        }
        return point

    def book_view(self, symbol: str, depth: int) -> dict[str, Any]:
        """The dashboard's book payload: ``depth`` levels a side plus the top of book."""
        snap = self.gateway.book_snapshot(symbol, depth)
        state = self.gateway.engine.symbols[symbol]
        bids, asks = state.book.depth()
        best_bid = snap.bids[0] if snap.bids else None
        best_ask = snap.asks[0] if snap.asks else None
        spread = mid = None
        if best_bid and best_ask:
            # Decimal-exact, then shown as text: prices are never floats on the wire.
            bid_px, ask_px = Decimal(best_bid[0]), Decimal(best_ask[0])
            spread = str(ask_px - bid_px)
            mid = str((ask_px + bid_px) / 2)
        return {
            "symbol": symbol,
            "seq": snap.seq,
            "epoch": snap.epoch,
            "checksum": snap.checksum,
            "bids": snap.bids,
            "asks": snap.asks,
            "levels": [bids, asks],
            "best_bid": best_bid,
            "best_ask": best_ask,
            "spread": spread,
            "mid": mid,
            "last": state.last,
            "trades": state.trade_count,
            "volume": str(state.volume),
        }

    def slow_table(self, limit: int = 10) -> list[dict[str, Any]]:
        """The slowest subscriptions: lagging ones first, then the fullest buffers.

        Lagging subscriptions (books and tickers conflating behind a full write buffer)
        come from :meth:`~tickwire.hub.Hub.lagging_subscriptions`; when fewer than
        ``limit`` lag, the connections with the most bytes buffered fill the table,
        since they are the next to lag.
        """
        gw = self.gateway
        now = time.monotonic()
        rows: list[dict[str, Any]] = []
        seen: set[int] = set()
        for lag in gw.hub.lagging_subscriptions(now, limit):
            conn = cast("Connection", lag["sub"])
            st = conn.slow.get(str(lag["ch"]))
            seen.add(conn.id)
            rows.append(
                {
                    "conn": conn.id,
                    "peer": conn.peer,
                    "ch": lag["ch"],
                    "lag_seq": lag["lag_seq"],
                    "lag_ms": lag["lag_ms"],
                    "buffered": conn.buffered(),
                    "conflated": st.conflated + st.snapshots if st else 0,
                    "lagging": True,
                }
            )
        if len(rows) < limit:
            sizes = sorted(
                ((conn.buffered(), conn) for conn in gw.connections.values()),
                key=lambda item: item[0],
                reverse=True,
            )
            for size, conn in sizes:
                if len(rows) >= limit:
                    break
                if conn.id in seen or not size:
                    continue
                rows.append(
                    {
                        "conn": conn.id,
                        "peer": conn.peer,
                        "ch": f"{len(conn.channels)} channels",
                        "lag_seq": 0,
                        "lag_ms": 0.0,
                        "buffered": size,
                        "conflated": sum(s.conflated + s.snapshots for s in conn.slow.values()),
                        "lagging": False,
                    }
                )
        return rows

    # -- handlers ----------------------------------------------------------------------

    @web.middleware
    async def _headers(self, request: web.Request, handler: Any) -> web.StreamResponse:
        response = cast(web.StreamResponse, await handler(request))
        if not response.prepared:
            response.headers.setdefault("Cache-Control", "no-store")
            response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response

    async def _index(self, request: web.Request) -> web.StreamResponse:
        response = web.FileResponse(STATIC_DIR / "index.html")
        response.headers["Content-Security-Policy"] = _CSP
        return response

    async def _metrics(self, request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        # Read the live counters here, in the loop (consistent, ~5 ms for 1000 symbols);
        # format the text in a thread (~20 ms for 1000 symbols), which would otherwise
        # delay that many ticks.
        scraped = _Scraped(list(self.registry.collect()))
        body = await asyncio.get_running_loop().run_in_executor(None, encoder, scraped)
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def _healthz(self, request: web.Request) -> web.Response:
        gw = self.gateway
        return _json({"status": "ok", "epoch": gw.engine.epoch, "uptime_s": round(gw.uptime(), 3)})

    async def _readyz(self, request: web.Request) -> web.Response:
        gw = self.gateway
        incomplete = sorted(gw.incomplete_books)
        draining = gw.draining is not None
        ready = gw.books_complete() and not draining
        body = {"ready": ready, "incomplete_books": incomplete[:100], "draining": draining}
        return _json(body, 200 if ready else 503)

    def _depth(self, request: web.Request) -> int | None:
        raw = request.query.get("depth")
        if raw is None or raw == "":
            return None
        try:
            depth = int(raw)
        except ValueError:
            depth = -1
        if not 1 <= depth <= MAX_DEPTH:
            raise web.HTTPBadRequest(
                text=json.dumps(
                    {"error": "bad_request", "message": f"depth must be 1..{MAX_DEPTH}"}
                ),
                content_type="application/json",
            )
        return depth

    async def _book(self, request: web.Request) -> web.Response:
        symbol = request.match_info["symbol"]
        depth = self._depth(request)
        faults = self.gateway.faults
        if faults is not None:
            refused = faults.refuse_rest("native", request.remote or "?", request.path)
            if refused is not None:
                return web.Response(
                    body=refused.body,
                    status=refused.status,
                    content_type="application/json",
                    headers=refused.headers,
                )
            if symbol in self.gateway.engine.symbols:
                stale = faults.stale_rest("native", symbol, depth)
                if stale is not None:
                    return web.Response(body=encode(stale), content_type="application/json")
        try:
            snap = self.gateway.book_snapshot(symbol, depth)
        except KeyError:
            return _error(404, "unknown_channel", f"no such symbol {symbol[:48]!r}")
        return web.Response(body=encode(snap), content_type="application/json")

    async def _venue(self, request: web.Request) -> web.Response:
        """A venue's REST endpoint (``/binance/api/v3/depth`` ...), in its dialect."""
        venue = request.path.split("/", 2)[1]
        faults = self.gateway.faults
        answer = None
        if faults is not None:
            answer = faults.refuse_rest(venue, request.remote or "?", request.path)
        if answer is None:
            view = self.views.get(venue, self.view)
            answer = rest(view, venue, "/" + request.match_info["path"], request.query)
        return web.Response(
            body=answer.body,
            status=answer.status,
            content_type="application/json",
            headers=answer.headers,
        )

    async def _stats(self, request: web.Request) -> web.Response:
        return _json(self.gateway.stats())

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        gw = self.gateway
        # The engine's: a gateway following a leader (or an ingest source) adds symbols.
        symbols = list(gw.engine.symbols)
        if not symbols:
            return _error(503, "no_symbols", "no symbol served yet: the source sent none")
        symbol = request.query.get("symbol") or symbols[0]
        if symbol not in gw.engine.symbols:
            # A stale link or bookmark: show the first book (``hello`` names it) rather
            # than an error EventSource would retry forever.
            symbol = symbols[0]
        depth = self._depth(request) or 50
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-store",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        viewer = _Viewer(symbol, depth)
        hello = {
            "epoch": gw.engine.epoch,
            "symbols": symbols[:1000],
            "symbol": symbol,
            "depth": depth,
            "ws_port": gw.port,
            "ready": gw.books_complete() and gw.draining is None,
            "samples": [p.as_dict() for p in self.sampler.points],
        }
        try:
            await response.write(_sse("hello", hello))
            await response.write(_sse("book", self.book_view(symbol, depth)))
            await response.write(_sse("slow", self.slow_table()))
            self._viewers.add(viewer)
            while True:
                event = await viewer.queue.get()
                if event is None:
                    break
                await response.write(event)
        except ConnectionError:
            pass  # the viewer went away
        finally:
            self._viewers.discard(viewer)
            viewer.closed = True
        return response
