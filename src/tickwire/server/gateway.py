"""The gateway process: picows listener, tick loop and request dispatch (the I/O layer).

Everything protocol-shaped lives in the Sans-I/O core (:mod:`tickwire.protocol`,
:mod:`tickwire.hub`); this module only moves bytes: it feeds client frames to the core,
drives the tick (source → hub → a direct write per single-channel connection, one
joined ``write`` per multi-channel connection), and handles
connection life (ping/pong through picows, going-away close on shutdown).

Slow consumers: each transport gets the configured high/low write-buffer watermarks;
crossing them calls :meth:`Connection.pause_writing` / :meth:`Connection.resume_writing`,
which tell the hub to conflate that connection's books and tickers (see
:mod:`tickwire.hub`). The tick loop checks paused connections against the hard budget
(``max_buffer_bytes``) and the stall timeout, and a periodic sweep enforces the
server-wide cap (``max_total_buffer_bytes``); past any of them the connection is closed
with :attr:`~tickwire.protocol.CloseCode.SLOW_CONSUMER` after what it was sent so far,
and aborted if it does not drain within ``slow_close_grace_s``.

Hostile clients (``docs/security.md``): connections are accepted through
:mod:`tickwire.server.guard` (per-IP connection and handshake limits, allowed origins,
tokens at connect, TLS); inbound messages are charged to a per-connection token bucket
(:mod:`tickwire.limits`) in :meth:`Connection.admit`, and the periodic sweep closes
connections whose token expired or that stay idle without a subscription. None of it
runs per delivered update.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from picows import (
    WSUpgradeRequest,
    WSUpgradeResponse,
    WSUpgradeResponseWithListener,
)

from ..codec import Wire, negotiate
from ..dialects import DialectFeed
from ..engine import Engine
from ..exceptions import AuthError, ConfigError, RequestError
from ..faults import FaultListener
from ..hotpath import relax_gc
from ..hub import Channel, Hub
from ..pacing import ArrivalPacing, next_clock_pass
from ..protocol import (
    PRIVATE_KINDS,
    Ack,
    CloseCode,
    ErrorCode,
    Pong,
    Request,
    Snapshot,
    decode_request,
    encode,
    parse_channel,
)
from ..sources import Source, make_source
from .config import GatewayConfig
from .connection import Connection
from .faults import FaultManager
from .guard import Guard, create_ws_server
from .metrics import TickStats
from .venues import venue_listener

if TYPE_CHECKING:
    from .admin import AdminServer

__all__ = ["Gateway"]


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


log = logging.getLogger("tickwire.server")


class Gateway:
    """A tickwire server: embedded market, hub, and WebSocket listener.

    Args:
        config: the options; ``port`` 0 picks a free port (read :attr:`port`).
        source: the market source (None: the one ``config.source`` names); e.g. a
            :class:`~tickwire.sources.ingest.StreamIngestSource` on the caller's own
            async iterator of ingest messages (``docs/ingest.md``).
    """

    def __init__(self, config: GatewayConfig, source: Source | None = None) -> None:
        self.config = config
        self.engine = Engine(config.symbols)
        self.hub = Hub(
            self.engine,
            history_bytes=config.history_bytes,
            batch=config.batch_ms > 0,
            max_subscriptions=config.max_subscriptions,
            heartbeat_interval=config.heartbeat_s,
            resume_wait=config.resume_wait_s if config.source.startswith("nats") else 0.0,
            deflate_level=config.deflate_level,
        )
        self.source = source if source is not None else make_source(config)
        # The venue dialects (Binance, OKX, Kraken) tap the hub's native channels.
        self.feed = DialectFeed(self.hub)
        # Private channels: tokens, and the simulator's synthetic users' orders.
        self.verifier = config.verifier
        self.guard = Guard(self._listener, config.limits, config.verifier)
        self.rate_limited = 0
        self.logins = 0
        self._attach_accounts()
        self.connections: dict[int, Connection] = {}
        self._ids = itertools.count(1)
        self.accepted = 0
        self.rejected = 0
        self.rejected_by_code: dict[str, int] = {}
        self.closes_by_code: dict[int, int] = {}
        # Measured once per tick by the tick loop (latency, batch size, loop lag).
        self.tick_stats = TickStats()
        # Symbols whose book is not complete yet (/readyz): the simulator seeds all of
        # them in start(); a bus source would clear each on its first full snapshot.
        self.incomplete_books: set[str] = self.hub.incomplete
        self.admin: AdminServer | None = None  # started by _start_admin
        # Connections accepted per non-default wire (encoding, deflate).
        self.wires: dict[Wire, int] = {}
        # Slow consumers: closes by cause, and the buffered bytes seen by the sweeps.
        self.slow_closes = {"budget": 0, "stall": 0, "total": 0}
        self.buffered_total = 0
        self.max_buffered_total = 0
        # The largest one connection's buffer: a true maximum, since a buffer grows past
        # the high watermark only while paused, which is recorded at the pause and
        # after every tick's writes (and the sweep samples the unpaused ones).
        self.max_buffered = 0
        self.port = config.port
        self.started = time.monotonic()
        self._server: asyncio.Server | None = None
        self._stopping: asyncio.Event | None = None
        # Set while shutting down; fires when the last connection is gone.
        self.draining: asyncio.Event | None = None
        # The tick loop's wait, and whether the source reported news since it began.
        self._waiter: asyncio.Future[None] | None = None
        self._arrived = False
        # True while the clock is quiet because the source keeps pushing data.
        self._quiet = False
        self.source.on_arrival(self._wake)
        #: Called on SIGHUP when set (``tickwire serve`` reloads its configuration);
        #: None leaves SIGHUP's default action.
        self.on_hangup: Callable[[], None] | None = None
        #: Scripted faults (``--faults``, the admin API; docs/connectivity-testing.md):
        #: None unless enabled, and then checked per connection, never per delivery.
        self.faults: FaultManager | None = None
        #: Told of every application of a fault (the connectivity report).
        self.fault_listener: FaultListener | None = None

    # -- requests ----------------------------------------------------------------------

    def handle_request(self, conn: Connection, data: bytes, binary: bool = False) -> None:
        """Decode one client request and act on it, answering with an ack or error.

        ``binary``: ``data`` is a msgpack map (a binary frame on a msgpack connection).
        """
        try:
            req = decode_request(data, binary)
            if req.op == "ping":
                conn.send(encode(Pong(req.id)))
            elif req.op == "subscribe":
                self._subscribe(conn, req)
            elif req.op == "unsubscribe":
                self._unsubscribe(conn, req)
            elif req.op == "login":
                self._login(conn, req)
            else:
                self._fault(conn, req)
        except RequestError as exc:
            conn.reject(exc)
        if self._quiet and self.hub.dirty:
            self._wake()  # the clock is quiet while the bus flows: reply within a period

    def _subscribe(self, conn: Connection, req: Request) -> None:
        hub = self.hub
        channels = [self._channel(conn, name, req.id) for name in req.channels]
        new = sum(1 for ch in channels if ch.name not in conn.channels)
        if len(conn.channels) + new > hub.max_subscriptions:
            raise RequestError(
                ErrorCode.TOO_MANY_CHANNELS,
                f"at most {hub.max_subscriptions} subscriptions per connection",
                req.id,
            )
        conn.send(encode(Ack("subscribe", req.id, req.channels, self.engine.epoch)))
        for ch in channels:
            hub.subscribe(conn, ch, req.epoch, req.since.get(ch.name), req.id)

    def _channel(self, conn: Connection, name: str, request_id: int | str | None) -> Channel:
        """Resolve a channel name for ``conn``, authorizing private channels.

        Raises:
            RequestError: as :meth:`Hub.channel`; ``auth_required`` for a private
                channel without a login, ``forbidden`` for another user's.
        """
        if name.partition(".")[0] not in PRIVATE_KINDS:
            return self.hub.channel(name, request_id)
        _, user = parse_channel(name, request_id)
        if conn.user is None:
            raise AuthError(
                ErrorCode.AUTH_REQUIRED, "log in (op 'login') for private channels", request_id
            )
        if user != conn.user:
            raise AuthError(ErrorCode.FORBIDDEN, "not your private channel", request_id)
        return self.hub.private_channel(user)

    def _login(self, conn: Connection, req: Request) -> None:
        """Verify a ``login`` token; authenticate ``conn`` or refresh its expiry."""
        if self.verifier is None:
            raise AuthError(
                ErrorCode.AUTH_REQUIRED, "this server accepts no tokens (no keys set)", req.id
            )
        claims = self.verifier.verify(req.token or "", time.time(), req.id)
        if conn.user is not None and conn.user != claims.user:
            raise AuthError(
                ErrorCode.FORBIDDEN, "already logged in as another user; reconnect", req.id
            )
        conn.authenticate(claims)
        self.logins += 1
        channels = [f"{kind}.{claims.user}" for kind in PRIVATE_KINDS]
        conn.send(encode(Ack("login", req.id, channels, self.engine.epoch)))

    def _police(self) -> None:
        """Close connections whose token expired, and idle ones (every sweep)."""
        wall = time.time()
        now = time.monotonic()
        idle = self.config.limits.idle_timeout_s
        for conn in list(self.connections.values()):
            if conn.expires and conn.expires <= wall:
                conn.fail(CloseCode.AUTH_EXPIRED, "token expired; log in again with a new one")
            elif idle and not conn.has_subscriptions() and now - conn.last_seen > idle:
                conn.fail(CloseCode.IDLE_TIMEOUT, f"idle for {idle:g}s without a subscription")

    def _attach_accounts(self) -> None:
        """Feed ``orders.<user>`` from the simulator's synthetic users (auth on only)."""
        cfg = self.config
        if self.verifier is None or not cfg.sim_users or cfg.sim_order_fraction <= 0:
            return
        simulator = getattr(self.source, "simulator", None)
        if simulator is None:
            return  # not the embedded simulator: private data comes from the source
        from ..simulator import SyntheticAccounts

        simulator.accounts = SyntheticAccounts(
            cfg.sim_users,
            cfg.seed,
            fraction=cfg.sim_order_fraction,
            emit=self.hub.publish_orders,
        )

    def _unsubscribe(self, conn: Connection, req: Request) -> None:
        missing = [name for name in req.channels if name not in conn.channels]
        if missing:
            raise RequestError(
                ErrorCode.NOT_SUBSCRIBED, f"not subscribed to {missing[0][:48]!r}", req.id
            )
        for name in req.channels:
            self.hub.unsubscribe(conn, name)
        conn.send(encode(Ack("unsubscribe", req.id, req.channels, self.engine.epoch)))

    def _fault(self, conn: Connection, req: Request) -> None:
        if not self.config.test_faults:
            raise RequestError(ErrorCode.UNKNOWN_OP, "unknown op 'fault'", req.id)
        for name in req.channels:
            try:
                self.hub.inject_fault(self.hub.channel(name, req.id), req.fault or "")
            except ValueError as exc:
                raise RequestError(ErrorCode.BAD_REQUEST, str(exc), req.id) from None
        conn.send(encode(Ack("fault", req.id, req.channels, self.engine.epoch)))

    # -- lifecycle ---------------------------------------------------------------------

    def _listener(self, request: WSUpgradeRequest) -> Connection | WSUpgradeResponseWithListener:
        self.accepted += 1
        conn_id = next(self._ids)
        if self.faults is not None:
            raw = request.path
            path = raw.decode("latin-1") if isinstance(raw, bytes) else raw
            refused = self.faults.refuse_handshake(path, conn_id)
            if refused is not None:
                response = WSUpgradeResponse.create_error_response(
                    refused.status, refused.body, refused.headers
                )
                return WSUpgradeResponseWithListener(response, None)
        venue = venue_listener(self, request, conn_id)
        if venue is not None:
            return venue
        return self._negotiate(request, conn_id)

    def _negotiate(
        self, request: WSUpgradeRequest, conn_id: int
    ) -> Connection | WSUpgradeResponseWithListener:
        """Choose the connection's encoding and compression from its handshake.

        A client that offers neither gets the plain 101 response and JSON, as before
        encodings existed (see :func:`tickwire.codec.negotiate`).
        """
        headers = request.headers
        wire, extra = negotiate(
            headers.getall("Sec-WebSocket-Protocol", ()),
            headers.getall("Sec-WebSocket-Extensions", ()),
            self.config.deflate,
        )
        conn = Connection(self, conn_id, wire)
        if not extra:
            return conn
        self.wires[wire] = self.wires.get(wire, 0) + 1
        response = WSUpgradeResponse.create_101_response(extra_headers=extra)
        return WSUpgradeResponseWithListener(response, conn)

    def books_complete(self) -> bool:
        """True once every served book holds a complete state (``/readyz``).

        With the embedded simulator that is as soon as :meth:`start` seeded them; a
        source that joins a running market (NATS) reports a book complete only after
        its first full snapshot, by discarding it from :attr:`incomplete_books`.
        """
        return self._server is not None and not self.incomplete_books

    def book_snapshot(self, symbol: str, depth: int | None = None) -> Snapshot:
        """Return the book of ``symbol`` exactly as a WebSocket subscription would start now.

        Like :meth:`tickwire.hub.Hub.subscribe`, it first sends what is pending on the
        channel, so the snapshot's ``seq`` is the ``prev_seq`` of the channel's next delta
        and its ``checksum`` matches that ``seq`` (REST snapshots, native and venue).

        Args:
            symbol: a served symbol, e.g. ``BTC-USD``.
            depth: levels per side to include (None: all); the checksum always covers the
                top 10 levels of the whole book, as on the WebSocket.

        Raises:
            KeyError: ``symbol`` is not served.
        """
        hub = self.hub
        ch = hub.channels[f"book.{symbol}"]
        if ch.pending:
            # Between ticks nothing is pending (the tick publishes and flushes at once);
            # with --batch-ms 0 or a source that publishes between ticks, send it.
            hub.flush(time.monotonic())
        snap = hub.snapshot(ch)
        if depth is not None:
            snap.bids = (snap.bids or [])[:depth]
            snap.asks = (snap.asks or [])[:depth]
        return snap

    def uptime(self) -> float:
        """Seconds since this gateway was created."""
        return time.monotonic() - self.started

    async def start(self) -> None:
        """Seed the books and start listening; returns once the port is bound."""
        await self.source.start(self.hub)
        self.hub.flush(time.monotonic())
        relax_gc()
        cfg = self.config
        if cfg.faults_file or cfg.test_faults:
            self.enable_faults()  # before the first connection can be accepted
        self._server = await create_ws_server(
            self.guard,
            cfg.host,
            cfg.port,
            enable_auto_ping=cfg.ping_interval_s > 0,
            auto_ping_idle_timeout=max(cfg.ping_interval_s, cfg.ping_timeout_s, 0.001),
            auto_ping_reply_timeout=max(cfg.ping_timeout_s, 0.001),
            max_frame_size=cfg.max_message_bytes,
            # Clients send a few small requests; picows grows the buffer for a larger
            # frame. Its 16 KiB default was most of a connection's memory (bench/
            # memory_per_conn.sh).
            read_buffer_init_size=2048,
            ssl=cfg.ssl_context(),
            backlog=4096,
            reuse_port=cfg.reuse_port,
            logger_name="tickwire.picows",
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._stopping = asyncio.Event()
        # Before anyone can learn the port: a SIGTERM right after start must drain.
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        loop.add_signal_handler(signal.SIGUSR1, self.burst)
        if self.on_hangup is not None:
            loop.add_signal_handler(signal.SIGHUP, self.on_hangup)
        if cfg.admin_port is not None:
            await self._start_admin(cfg.admin_host or cfg.host, cfg.admin_port)

    def enable_faults(self) -> FaultManager:
        """The fault manager (made on first use), with ``--faults``'s scenario loaded.

        Raises:
            ScenarioError: the scenario file is unreadable or wrong.
        """
        if self.faults is None:
            manager = FaultManager(self)
            if self.config.faults_file:
                manager.load(self.config.faults_file)
            self.faults = manager
        return self.faults

    async def _start_admin(self, host: str, port: int) -> None:
        """Start the admin HTTP listener (see :mod:`tickwire.server.admin`).

        Imported here, not at the top: aiohttp and prometheus_client take ~0.3 s to
        import, which a gateway without an admin port (``--port 0``, workers behind a
        supervisor's, every test server) should not pay at each start.
        """
        from .admin import AdminServer

        admin = AdminServer(self)
        try:
            await admin.start(host, port)
        except OSError as exc:
            if not self.config.admin_optional:
                raise ConfigError(f"admin port {host}:{port}: {exc.strerror or exc}") from None
            log.warning("admin listener off: cannot bind %s:%d: %s", host, port, exc)
            return
        self.admin = admin

    async def run(self) -> None:
        """Serve until :meth:`stop` (SIGTERM/SIGINT) or ``max_seconds``."""
        if self._server is None:
            await self.start()
        assert self._stopping is not None
        loop = asyncio.get_running_loop()
        if self.config.max_seconds > 0:
            loop.call_later(self.config.max_seconds, self.stop)
        ticker = asyncio.create_task(self._tick_loop())
        await self._stopping.wait()
        ticker.cancel()
        await self._shutdown()

    #: The :class:`GatewayConfig` fields :meth:`apply_config` changes while serving.
    RELOADABLE = (
        "limits",
        "max_subscriptions",
        "heartbeat_s",
        "test_faults",
        "max_buffer_bytes",
        "max_total_buffer_bytes",
        "stall_timeout_s",
        "stats_path",
        "deflate",
        "faults_file",
    )

    def apply_config(self, new: GatewayConfig) -> None:
        """Take the :attr:`RELOADABLE` fields of ``new`` while serving (a reload).

        Limits apply at once: open connections' message buckets take the new rate and
        burst, the guard the new per-IP limits, origins, proxies and exemptions (its
        handshake timeout applies to the next connections); the slow-consumer budgets
        and the idle timeout at the next sweep; the subscription cap and heartbeat at
        the next request and pass. Every other field needs a restart and is left as
        it is.
        """
        cfg = self.config
        for name in self.RELOADABLE:
            setattr(cfg, name, getattr(new, name))
        self.hub.max_subscriptions = cfg.max_subscriptions
        self.hub.heartbeat_interval = cfg.heartbeat_s
        limits = cfg.limits
        self.guard.reconfigure(limits)
        for conn in self.connections.values():
            bucket = conn.bucket
            if bucket is not None:
                bucket.rate = limits.max_messages_per_s
                bucket.burst = limits.message_burst
        if cfg.faults_file:
            # SIGHUP reads the scenario again: its faults replace the file's previous ones.
            try:
                if self.faults is None:
                    self.enable_faults()
                else:
                    self.faults.load(cfg.faults_file)
            except ConfigError as exc:
                log.error("faults: reload failed, keeping the running faults: %s", exc)

    def stop(self) -> None:
        """Begin a graceful shutdown."""
        if self._stopping is not None:
            self._stopping.set()

    def burst(self) -> None:
        """Start a simulator burst now (``--burst-factor`` for ``--burst-seconds``).

        Bound to SIGUSR1, so an operator or a test can spike the feed on demand.
        """
        log.info("burst: x%g for %gs", self.config.burst_factor, self.config.burst_seconds)
        self.source.burst(time.monotonic())

    # -- slow consumers ----------------------------------------------------------------

    def slow_close(self, conn: Connection, cause: str, reason: str) -> None:
        """Close ``conn`` with SLOW_CONSUMER after what is buffered; abort after a grace.

        The close frame queues behind the data already in the transport, so a client
        that reads again gets every message it was sent, then the close code, and can
        resume from exactly its last ``seq``. One that does not read within
        ``slow_close_grace_s`` is aborted, which frees its buffer.
        """
        if conn.closed:
            return
        self.slow_closes[cause] += 1
        conn.fail(CloseCode.SLOW_CONSUMER, reason)
        asyncio.get_running_loop().call_later(self.config.slow_close_grace_s, conn.abort)

    def _check_paused(self, now: float) -> None:
        """Enforce the hard budget and the stall timeout on paused connections."""
        cfg = self.config
        paused = [*self.hub.paused.items(), *self.feed.paused.items()]
        for sub, since in paused:
            conn = cast(Connection, sub)
            size = conn.buffered()
            if size > conn.max_buffered:
                conn.max_buffered = size
                if size > self.max_buffered:
                    self.max_buffered = size
            if size > cfg.max_buffer_bytes:
                self.slow_close(
                    conn,
                    "budget",
                    f"slow consumer: {size} bytes buffered, over {cfg.max_buffer_bytes};"
                    " resume with epoch and since",
                )
            elif now - since > cfg.stall_timeout_s:
                self.slow_close(
                    conn,
                    "stall",
                    f"slow consumer: not reading for {cfg.stall_timeout_s:g}s;"
                    " resume with epoch and since",
                )

    def _sweep(self) -> None:
        """Sum every connection's buffer; past the server-wide cap close the largest."""
        sizes = [(conn.buffered(), conn) for conn in self.connections.values()]
        total = sum(size for size, _ in sizes)
        self.buffered_total = total
        if total > self.max_buffered_total:
            self.max_buffered_total = total
        for size, conn in sizes:
            if size > conn.max_buffered:
                conn.max_buffered = size
                if size > self.max_buffered:
                    self.max_buffered = size
        cap = self.config.max_total_buffer_bytes
        if total <= cap:
            return
        sizes.sort(key=lambda item: item[0], reverse=True)
        for size, conn in sizes:
            if total <= cap:
                break
            if not conn.closed:
                self.slow_close(
                    conn,
                    "total",
                    f"slow consumer: server buffer cap {cap} bytes reached;"
                    " resume with epoch and since",
                )
            total -= size

    async def _tick_loop(self) -> None:
        hub = self.hub
        poll = self.source.poll
        publish = hub.publish
        flush_symbol = hub.flush_symbol
        feed_flush = self.feed.flush
        dirty = cast(list[Connection], hub.dirty)
        tick = self.config.batch_ms / 1000.0 if self.config.batch_ms > 0 else 0.001
        monotonic = time.monotonic
        next_heartbeat = deadline = monotonic()
        next_sweep = next_heartbeat
        paused = hub.paused
        venue_paused = self.feed.paused
        sleep = asyncio.sleep
        time_ns = time.time_ns
        record = self.tick_stats.tick
        batched = hub.batch
        wait = self._wait_for_tick
        share = self.config.pass_share
        pacing = ArrivalPacing(tick, share)
        pause = self.config.tick_pacing == "pause"
        while True:
            # Clock passes (the embedded market) either follow a pause of one tick after
            # the previous pass ends ("pause", as the peers' ``sleep(tick)`` loops do: a
            # longer pass means a longer batch and fewer writes; on uvloop 1 ms comes to
            # a pass every 1.2 ms idle, 1.6-1.8 ms at S1) or start one tick apart however
            # long the work took ("clock": 1,000 writes per subscriber per second at
            # 1 ms, a tick late by more than one period is not made up). A push source
            # (the bus) ends the wait when its data arrives: that data is relayed at
            # once, paced by ArrivalPacing (at most one relayed write per subscriber
            # per period; the clock quiet while data flows -- an empty pass in
            # between cost 3-7% of a core at 1,000 bundles/s); a request that queues
            # a reply meanwhile wakes the loop as an arrival does (handle_request).
            deadline += tick
            target = deadline
            now = monotonic()
            arrived = False
            if deadline > now:
                arrived = await wait(deadline - now)
                if arrived:
                    now = monotonic()
                    earliest = pacing.earliest()
                    if now < earliest:
                        await sleep(earliest - now)
                        now = monotonic()
                    target = now
                self._quiet = arrived
            else:
                await sleep(0)
                if now - deadline > tick:
                    deadline = now
            now = monotonic()
            # Telemetry is per tick, never per delivery: the first book batch of the
            # tick gives the oldest event time and one delta message's size; frames_out
            # tells whether anything was sent (direct writes bypass ``dirty``).
            first = None
            frames = hub.frames_out
            self._arrived = False  # this pass takes whatever has arrived
            for symbol, updates, trades in poll(now):
                if first is None and updates:
                    first = updates
                publish(symbol, updates, trades)
                flush_symbol(symbol, now)
            hub.flush(now)
            feed_flush(now)
            if now >= next_heartbeat:
                hub.heartbeats(now)
                next_heartbeat = now + min(0.25, self.config.heartbeat_s)
            for conn in dirty:
                outbox = conn.outbox
                if outbox:
                    conn.write(b"".join(outbox) if len(outbox) > 1 else outbox[0])
                    outbox.clear()
            dirty.clear()
            relayed = hub.first_relayed
            if first is not None and hub.frames_out != frames:
                record(now - target, time_ns() - first[0].ts, len(first) if batched else 1)
            elif relayed is not None and hub.frames_out != frames:
                record(now - target, time_ns() - relayed.event_time(), relayed.size())
            else:
                record(now - target, -1, 0)
            hub.first_relayed = None
            if paused or venue_paused:
                self._check_paused(now)
            if now >= next_sweep:
                self._sweep()
                self._police()
                next_sweep = now + 0.5
            # The pass ends here, housekeeping included (a pause counts from after it).
            end = monotonic()
            if arrived:
                deadline = pacing.passed(now, end)
            elif pause or end - now > tick:
                # Pause after the pass; or it overran, is write-bound, and the next one
                # is spaced as a relayed pass would be (the loop adds one period).
                deadline = next_clock_pass(now, end, tick, pause, share) - tick

    async def _wait_for_tick(self, delay: float) -> bool:
        """Sleep ``delay`` seconds; return True early if :meth:`_wake` was called."""
        if not self._arrived:
            loop = asyncio.get_running_loop()
            self._waiter = waiter = loop.create_future()
            timer = loop.call_later(delay, _resolve, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
        arrived, self._arrived = self._arrived, False
        return arrived

    def _wake(self) -> None:
        """End the tick loop's wait: the source has data (its callback), or a reply is
        queued while the clock is quiet."""
        self._arrived = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        self.draining = asyncio.Event()
        for conn in list(self.connections.values()):
            conn.fail(CloseCode.GOING_AWAY, "server shutting down; reconnect")
        if self.connections:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.draining.wait(), 2.0)
        if self.admin is not None:
            await self.admin.stop()
        if self.faults is not None:
            await self.faults.stop()
        await self.source.stop()
        self.write_stats()

    def stats(self) -> dict[str, Any]:
        """Counters since start (also printed as one JSON line on stderr at exit)."""
        elapsed = time.monotonic() - self.started
        hub = self.hub
        return {
            "server": "tickwire",
            "pid": os.getpid(),
            "elapsed_s": round(elapsed, 3),
            "epoch": self.engine.epoch,
            "symbols": len(self.engine.symbols),
            "generated": self.source.generated,
            "skipped": self.source.skipped,
            "gen_per_s": round(self.source.generated / max(elapsed, 1e-9), 1),
            "source": self.source.stats(),
            "ticks": {
                "pacing": self.config.tick_pacing,
                "pass_share": self.config.pass_share,
                "passes": self.tick_stats.ticks,
                "per_s": round(self.tick_stats.ticks / max(elapsed, 1e-9), 1),
            },
            "restores": hub.restores,
            "messages_built": hub.messages_built,
            "frames_out": hub.frames_out,
            "bytes_out": hub.bytes_out,
            "updates_out": hub.updates_out,
            "connections": len(self.connections),
            "wires": {
                f"{w.encoding}{'+deflate' if w.deflate else ''}": n for w, n in self.wires.items()
            },
            "rejected": self.rejected,
            "rejected_by_code": dict(self.rejected_by_code),
            "slow": self.slow_stats(),
            "venues": self.feed.stats(),
            "faults": self.faults.stats() if self.faults is not None else None,
            "security": {
                **self.guard.stats(),
                "logins": self.logins,
                "rate_limited": self.rate_limited,
                "closes_by_code": {str(k): v for k, v in self.closes_by_code.items()},
            },
        }

    def slow_stats(self, limit: int = 20) -> dict[str, Any]:
        """Slow-consumer counters, and the ``limit`` subscriptions lagging the most."""
        hub = self.hub
        now = time.monotonic()
        lagging = hub.lagging_subscriptions(now, limit)
        for row in lagging:
            conn = cast(Connection, row.pop("sub"))
            row["conn"] = conn.id
        return {
            "paused_now": len(hub.paused),
            "pauses": hub.pauses,
            "conflated": hub.conflated,
            "conflated_snapshots": hub.conflated_snapshots,
            "updates_skipped": hub.updates_skipped,
            "closes": dict(self.slow_closes),
            "buffered_total": self.buffered_total,
            "max_buffered_total": self.max_buffered_total,
            "max_buffered": self.max_buffered,
            "lagging": lagging,
        }

    def write_stats(self) -> None:
        line = json.dumps(self.stats())
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
        if self.config.stats_path:
            with open(self.config.stats_path, "w") as f:
                f.write(line + "\n")
