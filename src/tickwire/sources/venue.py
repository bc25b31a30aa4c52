"""A venue's public feed as a market source: ``--source okx+wss://HOST/PATH`` (I/O half).

``binance+wss://``, ``okx+wss://`` and ``kraken+wss://`` (``ws://`` for a local venue,
such as another tickwire gateway's dialect endpoint) follow the venue's public feed of
the chosen symbols over **one** upstream WebSocket connection per source, through the
venue's decoder (:mod:`tickwire.dialects.decode`), which keeps every book verified by
the venue's own rules. What it yields is tickwire's: the engine numbers the updates and
trades, computes the checksums and tickers, and every client -- native or any dialect --
gets tickwire's guarantees on top (snapshot then chained deltas, resume, slow-consumer
handling).

While a symbol's book is not known right -- before its first snapshot, after a hole, a
checksum failure, or while the connection is down -- the symbol is stale
(:meth:`Sink.invalidate`, as a NATS hole): its channels go silent and new subscribers
wait. It is served again with an explicit snapshot once the venue's book is rebuilt
(:meth:`Sink.restore`, one seq past the last so no resume chains across). Resyncs
follow the venue: OKX and Kraken resubscribe the symbol's book (a fresh snapshot),
Binance fetches its REST snapshot again (``--venue-rest``). A lost connection is
retried with capped exponential backoff and full jitter; a connection that goes silent
is detected by WebSocket pings (``--ping-timeout`` after ``--ping-interval``), and one
that answers pings but sends nothing by the data watchdog (``--venue-idle-timeout``,
:class:`~tickwire.dialects.decode.Watchdog`): nothing from the venue for that long
(data, heartbeat, or the answer to its application ping, sent at a third of it) and the
connection is dropped -- its symbols stale -- and replaced with backoff. A shutdown
notice (Binance ``serverShutdown``, OKX notice 64008, Kraken's maintenance status)
makes the source replace the connection at once, without waiting for the close.

Frames are queued as they arrive and decoded by :meth:`VenueSource.poll` in the tick
loop (the sink is only ever touched there), waking it as the bus does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from ..client.backoff import Backoff
from ..dialects.decode import (
    IDLE_TIMEOUTS,
    VENUES,
    Delta,
    Event,
    Hole,
    Notice,
    Snapshot,
    SnapshotWanted,
    Trades,
    VenueDecoder,
    Watchdog,
    make_decoder,
)
from ..exceptions import ConfigError
from . import Batch, RawTrade, Sink

__all__ = ["MAX_INBOX_BYTES", "VenueSource", "is_venue_spec", "parse_venue_spec"]

log = logging.getLogger("tickwire.venue")

#: Bytes of frames held for the tick loop at most; past it the connection is dropped
#: and resynced (a stalled loop cannot grow memory, and no frame is silently lost).
MAX_INBOX_BYTES = 64 << 20
#: Largest frame accepted from a venue.
MAX_FRAME = 16 << 20
#: Seconds after a symbol's last hole within which a new one continues its streak
#: (resynced with backoff, logged at debug level).
RESYNC_STREAK_S = 60.0
#: Seconds a reloaded book must stay verified (with at least one verified update) to
#: prove its resync worked: the next hole then starts a new streak (resynced at once)
#: instead of backing off further. A book that never verifies makes no such progress;
#: a feed that merely loses a message now and then (independent holes, each healed) is
#: not a storm to back off from -- and at most one resync a second is immediate.
RESYNC_HEALTHY_S = 1.0
#: Levels a side of Binance's REST snapshot (its maximum).
BINANCE_SNAPSHOT_LIMIT = 5000
#: Seconds without a frame after which the venue's application ping is sent (OKX
#: closes a connection silent for 30 s).
KEEPALIVE_AFTER = 15.0
#: The longest ``Retry-After`` of a refused handshake honoured (seconds).
MAX_RETRY_AFTER = 300.0


def retry_after(exc: BaseException) -> float:
    """The ``Retry-After`` seconds of a handshake the venue refused (HTTP 429, 418,
    503 with the header), or 0."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return 0.0
    try:
        value = float(headers.get("Retry-After", ""))
    except ValueError:  # absent, or an HTTP date: the backoff alone
        return 0.0
    return min(max(value, 0.0), MAX_RETRY_AFTER)


def is_venue_spec(spec: str) -> bool:
    """Whether ``spec`` names a venue feed (``okx+wss://...``)."""
    venue, plus, rest = spec.partition("+")
    return bool(plus) and venue in VENUES and rest.startswith(("ws://", "wss://"))


def parse_venue_spec(spec: str) -> tuple[str, str]:
    """Split ``okx+wss://HOST/PATH`` into ``("okx", "wss://HOST/PATH")``.

    Raises:
        ConfigError: not a venue spec.
    """
    if not is_venue_spec(spec):
        raise ConfigError(
            f"--source {spec!r}: a venue feed is binance+wss://..., okx+wss://... or "
            "kraken+wss://... (ws:// for a local venue)"
        )
    venue, _, url = spec.partition("+")
    return venue, url


class _Upstream(WSListener):
    """One upstream connection: queues text frames for the tick loop."""

    def __init__(self, source: VenueSource, gone: asyncio.Future[None]) -> None:
        super().__init__()
        self.source = source
        self.gone = gone
        self.fragments: list[bytes] | None = None
        self.close_code: int | None = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        for frame in self.source.decoder.subscribe():
            transport.send(WSMsgType.TEXT, frame)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        if kind == WSMsgType.TEXT:
            if frame.fin:
                self.source.arrived(frame.get_payload_as_bytes())
            else:
                self.fragments = [frame.get_payload_as_bytes()]
        elif kind == WSMsgType.CONTINUATION and self.fragments is not None:
            self.fragments.append(frame.get_payload_as_bytes())
            if frame.fin:
                data, self.fragments = b"".join(self.fragments), None
                self.source.arrived(data)
        elif kind == WSMsgType.CLOSE:
            code = frame.get_close_code()
            self.close_code = None if code is None else int(code.value)
            with contextlib.suppress(Exception):
                transport.send_close(code)
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if not self.gone.done():
            self.gone.set_result(None)


class VenueSource:
    """Follows one venue's feed (see the module docstring).

    Args:
        spec: ``okx+wss://HOST/PATH`` (or ``binance+``, ``kraken+``; ``ws://`` too).
        symbols: the tickwire symbols to follow (``BTC-USDT``: spelled per venue).
        rest: the venue's REST base; Binance needs it for its depth snapshots
            (``https://api.binance.com``, or a tickwire gateway's
            ``http://HOST:ADMIN_PORT/binance``).
        depth: Kraken's book depth (10, 25, 100, 500, 1000; 0: 100).
        timeout: seconds :meth:`start` waits for every book before serving anyway
            (the missing ones stay stale until they arrive).
        ping_interval, ping_timeout: WebSocket pings to a silent upstream, and how long
            its pong may take before the connection counts as dead.
        backoff: reconnect delays (default 0.2 s doubling up to 15 s, full jitter).
        keepalive_after: seconds without a frame before the venue's application ping
            (OKX ``ping``, Kraken ``{"method":"ping"}``).

    Raises:
        ConfigError: a malformed spec, no symbol, or Binance without ``rest``.
    """

    def __init__(
        self,
        spec: str,
        symbols: Iterable[str],
        *,
        rest: str | None = None,
        depth: int = 0,
        timeout: float = 30.0,
        ping_interval: float = 20.0,
        ping_timeout: float = 20.0,
        backoff: Backoff | None = None,
        keepalive_after: float = KEEPALIVE_AFTER,
        idle_timeout: float = 0.0,
    ) -> None:
        self.venue, self.url = parse_venue_spec(spec)
        self.keepalive_after = keepalive_after
        self.idle_timeout = idle_timeout or IDLE_TIMEOUTS[self.venue]
        self._watchdog = Watchdog(self.idle_timeout, time.monotonic())
        self._replace_now = False
        self.symbols = list(symbols)
        if not self.symbols:
            raise ConfigError(f"--source {spec}: name the symbols to follow with --symbols")
        if self.venue == "binance" and not rest:
            raise ConfigError(
                "--source binance+...: give --venue-rest, the REST base of its depth "
                "snapshots (https://api.binance.com, or http://HOST:ADMIN_PORT/binance)"
            )
        self.rest = (rest or "").rstrip("/")
        # Binance: the deepest REST snapshot (5,000 levels a side); deeper levels are
        # known only from the diffs that touch them, Binance's own limit.
        self.decoder: VenueDecoder = make_decoder(
            self.venue, self.symbols, depth=depth, snapshot_limit=BINANCE_SNAPSHOT_LIMIT
        )
        self.timeout = timeout
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.backoff = backoff or Backoff(0.2, 15.0)
        self.sink: Sink | None = None
        self._inbox: list[bytes | tuple[str, bytes] | None] = []
        self._inbox_bytes = 0
        self._wake: Callable[[], None] | None = None
        self._transport: WSTransport | None = None
        self._task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._http: Any = None
        self._closing = False
        self._loaded = asyncio.Event()
        self._logged: set[str] = set()
        self._last_frame = 0.0
        # Per symbol: when its last hole was, and the backoff of its resyncs; the
        # verified updates since its last load; the delay of its pending REST resync.
        self._streaks: dict[str, tuple[float, Backoff]] = {}
        self._progress: dict[str, tuple[float, int]] = {}
        self.resync_healthy_s = RESYNC_HEALTHY_S
        self._rest_delay: dict[str, float] = {}
        # OKX, Kraken: an in-band snapshot waits for the first update that continues
        # it (OKX: its prevSeqId is the snapshot's seqId; Kraken: its checksum verifies
        # on the snapshot) before it is served: a snapshot older than the stream (a
        # venue's race, or the snapshot-race scenario) is only seen then, and serving
        # it first would put an older book in front of clients as the current one.
        self._unconfirmed: dict[str, Snapshot] = {}
        self._confirm = self.venue in ("okx", "kraken")
        # Counters (stats, exit line).
        self.generated = 0
        self.skipped = 0
        self.trades = 0
        self.frames = 0
        self.bytes = 0
        self.connects = 0
        self.disconnects = 0
        self.loads = 0
        self.holes: dict[str, int] = {}
        self.venue_errors = 0
        self.snapshot_requests = 0
        self.snapshot_failures = 0
        self.resyncs_delayed = 0
        self.connect_failures = 0
        self.idle_timeouts = 0
        self.shutdown_notices = 0

    # -- the Source protocol ---------------------------------------------------------------

    async def start(self, sink: Sink) -> None:
        """Connect, subscribe, and wait (up to ``timeout``) until every book is loaded."""
        self.sink = sink
        for symbol in self.symbols:
            if symbol not in sink.engine.symbols:
                sink.add_symbol(symbol)
            sink.invalidate(symbol)
        self._task = asyncio.create_task(self._run(), name=f"tickwire-venue-{self.venue}")
        deadline = time.monotonic() + self.timeout
        while sink.incomplete & set(self.symbols):
            left = deadline - time.monotonic()
            if left <= 0:
                log.warning(
                    "%s: no complete book yet for %s after %.0f s; serving the others, "
                    "these stay stale until they load",
                    self.venue,
                    ", ".join(sorted(sink.incomplete & set(self.symbols))),
                    self.timeout,
                )
                return
            # The tick loop does not run yet: drain the inbox here.
            for batch in self.poll(time.monotonic()):
                sink.publish(*batch)
            self._loaded.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._loaded.wait(), min(left, 0.05))

    def poll(self, now: float) -> Iterator[Batch]:
        """Decode what arrived, apply holes and snapshots to the sink in order, and
        yield the batches for the tick loop to publish."""
        if not self._inbox:
            return
        inbox, self._inbox = self._inbox, []
        self._inbox_bytes = 0
        decoder = self.decoder
        for item in inbox:
            now_ns = time.time_ns()
            if item is None:
                self._unconfirmed.clear()
                events: list[Event] = decoder.disconnected()
                # Symbols never loaded on this connection are stale already.
            elif isinstance(item, tuple):
                symbol, body = item
                events = decoder.snapshot(symbol, body, now_ns)
            else:
                events = decoder.feed(item, now_ns)
            yield from self._apply(events)

    def on_arrival(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` whenever a frame arrives (the tick loop polls at once)."""
        self._wake = callback

    def burst(self, now: float) -> None:
        """A venue's flow is what it is."""

    async def stop(self) -> None:
        """Close the upstream connection and any REST request."""
        self._closing = True
        if self._transport is not None:
            with contextlib.suppress(Exception):
                self._transport.send_close()
                self._transport.disconnect()
        for task in [self._task, *self._tasks]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self._http is not None:
            await self._http.close()

    def stats(self) -> dict[str, Any]:
        """Counters for the exit stats and the admin API."""
        d = self.decoder
        return {
            "kind": "venue",
            "venue": self.venue,
            "url": self.url,
            "connected": self._transport is not None,
            "connects": self.connects,
            "disconnects": self.disconnects,
            "frames": self.frames,
            "bytes": self.bytes,
            "updates": self.generated,
            "trades": self.trades,
            "loads": self.loads,
            "holes": dict(self.holes),
            "checksum_failures": d.checksum_failures,
            "gaps": d.gaps,
            "bad_frames": d.bad_frames,
            "venue_errors": self.venue_errors,
            "snapshot_requests": self.snapshot_requests,
            "snapshot_failures": self.snapshot_failures,
            "resyncs_delayed": self.resyncs_delayed,
            "connect_failures": self.connect_failures,
            "idle_timeouts": self.idle_timeouts,
            "shutdown_notices": self.shutdown_notices,
            "stale": sorted(self.sink.incomplete & set(self.symbols)) if self.sink else [],
        }

    def metrics(self) -> Iterator[Any]:
        """``tickwire_venue_*`` for the gateway's ``/metrics``."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        labels = ["venue"]
        v = [self.venue]

        def counter(name: str, text: str, value: float) -> Any:
            m = CounterMetricFamily(name, text, labels=labels)
            m.add_metric(v, value)
            return m

        connected = GaugeMetricFamily(
            "tickwire_venue_connected", "1 while the upstream connection is open.", labels=labels
        )
        connected.add_metric(v, float(self._transport is not None))
        yield connected
        yield counter("tickwire_venue_connects", "Upstream connections made.", self.connects)
        yield counter("tickwire_venue_disconnects", "Upstream connections lost.", self.disconnects)
        yield counter("tickwire_venue_frames", "Frames received from the venue.", self.frames)
        yield counter("tickwire_venue_loads", "Books loaded (first loads and resyncs).", self.loads)
        yield counter(
            "tickwire_venue_checksum_failures",
            "Venue checksums that did not match the book.",
            self.decoder.checksum_failures,
        )
        holes = CounterMetricFamily(
            "tickwire_venue_holes",
            "Books dropped until resynced, by reason (gap, checksum, stale_snapshot, "
            "bad_frame, disconnect).",
            labels=["venue", "reason"],
        )
        for reason, n in sorted(self.holes.items()):
            holes.add_metric([self.venue, reason], float(n))
        yield holes
        up = GaugeMetricFamily(
            "tickwire_venue_up",
            "1 when the symbol's book is known right and served, 0 while stale.",
            labels=["venue", "symbol"],
        )
        stale = self.sink.incomplete if self.sink is not None else set(self.symbols)
        for symbol in self.symbols:
            up.add_metric([self.venue, symbol], float(symbol not in stale))
        yield up

    # -- events -> sink ----------------------------------------------------------------------

    def _apply(self, events: list[Event]) -> Iterator[Batch]:
        sink = self.sink
        assert sink is not None
        for e in events:
            if isinstance(e, Delta):
                pending = self._unconfirmed.pop(e.symbol, None)
                if pending is not None:  # it continues the snapshot: serve both
                    self._load(sink, pending)
                if not e.updates or e.symbol in sink.incomplete:
                    continue  # no change (OKX seqId == prevSeqId), or not loaded
                self.generated += len(e.updates)
                loaded = self._progress.get(e.symbol)
                if loaded is not None:
                    self._progress[e.symbol] = (loaded[0], loaded[1] + 1)
                yield e.symbol, e.updates, []
            elif isinstance(e, Trades):
                # Trades are served whatever the state of the book.
                raw: list[RawTrade] = [(t.price, t.qty, t.side, t.ts) for t in e.trades]
                self.trades += len(raw)
                if e.symbol not in sink.incomplete:
                    yield e.symbol, [], raw
            elif isinstance(e, Snapshot):
                if self._confirm:
                    self._unconfirmed[e.symbol] = e
                else:  # Binance: checked against the buffered stream already
                    self._load(sink, e)
            elif isinstance(e, Hole):
                self._unconfirmed.pop(e.symbol, None)
                self.holes[e.reason] = self.holes.get(e.reason, 0) + 1
                sink.invalidate(e.symbol)
                if e.reason == "disconnect":
                    log.info("%s %s: book stale (connection lost)", self.venue, e.symbol)
                    continue
                delay, first = self._resync_delay(e.symbol)
                log.log(
                    logging.WARNING if first else logging.DEBUG,
                    "%s %s: book stale (%s: %s); resyncing%s",
                    self.venue,
                    e.symbol,
                    e.reason,
                    e.detail,
                    f" in {delay:.2f} s (holes repeat)" if delay else "",
                )
                frames = self.decoder.resubscribe(e.symbol)
                if not frames:  # Binance: the REST snapshot the next diff asks for waits
                    self._rest_delay[e.symbol] = delay
                if frames and delay:
                    asyncio.get_running_loop().call_later(delay, self._send, frames)
                else:
                    self._send(frames)
            elif isinstance(e, SnapshotWanted):
                self._fetch(e)
            elif isinstance(e, Notice):
                self._notice(e)

    def _load(self, sink: Sink, snap: Snapshot) -> None:
        from .ingest import load_book

        load_book(sink, snap.symbol, snap.bids, snap.asks, snap.ts)
        self._progress[snap.symbol] = (time.monotonic(), 0)
        self.loads += 1
        self._loaded.set()
        self.backoff.reset()  # a book arrived: the connection proved healthy

    def _resync_delay(self, symbol: str) -> tuple[float, bool]:
        """How long to wait before resyncing ``symbol`` after a hole, and whether this
        hole starts a streak. The first resync is immediate; holes that keep coming
        (a venue sending a book that never verifies) are resynced with capped
        exponential backoff, never in a storm, and logged once per streak. A hole
        after the reloaded book stayed verified ``resync_healthy_s`` (the resync
        worked: an independent loss, not a loop) starts a new streak."""
        now = time.monotonic()
        streak = self._streaks.get(symbol)
        loaded_at, verified = self._progress.pop(symbol, (now, 0))
        healed = verified > 0 and now - loaded_at >= self.resync_healthy_s
        if streak is None or now - streak[0] > RESYNC_STREAK_S or healed:
            backoff = Backoff(0.5, 30.0)
            self._streaks[symbol] = (now, backoff)
            return 0.0, True
        self._streaks[symbol] = (now, streak[1])
        self.resyncs_delayed += 1
        return streak[1].next_delay(), False

    def _notice(self, n: Notice) -> None:
        if n.kind == "shutdown":
            # The venue will close this connection: replace it now, not after the
            # close and a backoff.
            self.shutdown_notices += 1
            log.warning("%s: %s; reconnecting at once", self.venue, n.detail)
            self._replace_now = True
            if self._transport is not None:
                self._transport.disconnect()
            return
        if n.kind in ("error", "bad"):
            self.venue_errors += 1
            # Once per kind of message, not per frame: a venue can repeat it forever.
            key = n.detail[:60]
            if key not in self._logged and len(self._logged) < 100:
                self._logged.add(key)
                log.error("%s: %s", self.venue, n.detail)

    def _send(self, frames: list[bytes]) -> None:
        t = self._transport
        if t is None:
            return  # reconnecting: the subscription on reconnect resyncs everything
        for frame in frames:
            t.send(WSMsgType.TEXT, frame)

    # -- I/O -------------------------------------------------------------------------------

    def arrived(self, data: bytes) -> None:
        """A text frame from the venue (called by the connection)."""
        size = len(data)
        self._last_frame = now = time.monotonic()
        self._watchdog.seen(now)
        self.frames += 1
        self.bytes += size
        if self._inbox_bytes + size > MAX_INBOX_BYTES:
            # The tick loop stalled: drop the connection rather than a frame; the
            # reconnect resyncs every book.
            self.skipped += 1
            if self._transport is not None:
                self._transport.disconnect()
            return
        self._inbox.append(data)
        self._inbox_bytes += size
        if self._wake is not None:
            self._wake()

    def _queue(self, item: tuple[str, bytes] | None) -> None:
        self._inbox.append(item)
        self._loaded.set()
        if self._wake is not None:
            self._wake()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        failures = 0
        while not self._closing:
            gone: asyncio.Future[None] = loop.create_future()
            listener: _Upstream | None = None

            def factory(gone: asyncio.Future[None] = gone) -> _Upstream:
                nonlocal listener
                listener = _Upstream(self, gone)
                return listener

            try:
                transport, _ = await ws_connect(
                    factory,
                    self.url,
                    websocket_handshake_timeout=10,
                    max_frame_size=MAX_FRAME,
                    logger_name="tickwire.venue.picows",
                    enable_auto_ping=self.ping_interval > 0,
                    auto_ping_idle_timeout=self.ping_interval or 20.0,
                    auto_ping_reply_timeout=self.ping_timeout or 20.0,
                )
            except Exception as exc:  # refused, timeout, handshake: retry with backoff
                # A refusal that says when to come back (429 + Retry-After: a venue's
                # connection limit or maintenance) is not retried sooner; the jittered
                # backoff on top spreads a fleet of followers.
                delay = retry_after(exc) + self.backoff.next_delay()
                failures += 1
                self.connect_failures += 1
                # Once per outage (then every 100th attempt), not at every retry.
                level = logging.WARNING if failures % 100 == 1 else logging.DEBUG
                log.log(
                    level,
                    "%s: cannot connect to %s (%s: %s); retrying with backoff, next in %.2f s",
                    self.venue,
                    self.url,
                    type(exc).__name__,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                continue
            failures = 0
            self.connects += 1
            self._transport = transport
            self._last_frame = time.monotonic()
            self._watchdog = Watchdog(self.idle_timeout, self._last_frame)
            self._replace_now = False
            log.info(
                "%s: connected to %s, following %s", self.venue, self.url, ", ".join(self.symbols)
            )
            await self._keepalive(gone)
            self._transport = None
            if self._closing:
                return
            self.disconnects += 1
            self._queue(None)  # every book stale until resynced
            delay = self.backoff.next_delay()
            if self._replace_now:  # a shutdown notice: the venue asked for it
                self._replace_now, delay = False, 0.0
            code = listener.close_code if listener is not None else None
            log.warning(
                "%s: connection to %s lost (close code %s); reconnecting in %.2f s",
                self.venue,
                self.url,
                code,
                delay,
            )
            await asyncio.sleep(delay)

    async def _keepalive(self, gone: asyncio.Future[None]) -> None:
        """Wait for the connection to end, pinging the venue when it is quiet."""
        ping = self.decoder.keepalive()
        dog = self._watchdog
        step = min(self.keepalive_after, self.idle_timeout) / 5
        while not gone.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(gone), step)
            t = self._transport
            if t is None or gone.done():
                continue
            now = time.monotonic()
            if dog.expired(now):
                self.idle_timeouts += 1
                log.warning(
                    "%s: nothing from %s for %.1f s (pings answered, no data); its "
                    "books are stale, replacing the connection",
                    self.venue,
                    self.url,
                    self.idle_timeout,
                )
                t.disconnect()
                continue
            if ping is not None and dog.ping_due(now, self.keepalive_after):
                t.send(WSMsgType.TEXT, ping)

    def _fetch(self, want: SnapshotWanted) -> None:
        task = asyncio.ensure_future(self._get_snapshot(want))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _get_snapshot(self, want: SnapshotWanted) -> None:
        url = f"{self.rest}/api/v3/depth?symbol={want.venue_symbol}&limit={want.limit}"
        # Resyncing after a hole: the REST request waits the delay the hole was given
        # (none for the first of a streak; holes that repeat back off), sparing the
        # venue's REST weight limits.
        delay = self._rest_delay.pop(want.symbol, 0.0)
        if delay:
            await asyncio.sleep(delay)
        self.snapshot_requests += 1
        try:
            if self._http is None:
                import aiohttp

                self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
            async with self._http.get(url) as resp:
                body = await resp.read()
                if resp.status != 200:
                    raise ValueError(f"HTTP {resp.status}: {body[:200]!r}")
        except Exception as exc:  # the next diff asks again, after a pause
            self.snapshot_failures += 1
            detail = f"{type(exc).__name__}: {exc}"
            self._notice(Notice("error", f"REST snapshot {url} failed: {detail}"))
            await asyncio.sleep(self.backoff.next_delay())
            self.decoder.snapshot_failed(want.symbol, detail)  # the next diff asks again
            return
        self._queue((want.symbol, body))
