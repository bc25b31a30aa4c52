"""The gateway process: picows listener, tick loop and request dispatch (the I/O layer).

Everything protocol-shaped lives in the Sans-I/O core (:mod:`tickwire.protocol`,
:mod:`tickwire.hub`); this module only moves bytes: it feeds client frames to the core,
drives the tick (source → hub → one ``write`` per dirty connection), and handles
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
import gc
import itertools
import json
import logging
import os
import signal
import socket
import ssl
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from picows import (
    WSCloseCode,
    WSFrame,
    WSListener,
    WSMsgType,
    WSTransport,
    WSUpgradeRequest,
    WSUpgradeResponse,
    WSUpgradeResponseWithListener,
)

from ..auth import Claims, TokenVerifier
from ..codec import JSON_WIRE, Encoding, Wire, inflate, negotiate, transcode
from ..engine import Engine
from ..exceptions import AuthError, ConfigError, MessageTooBig, ProtocolError, RequestError
from ..framing import text_frame
from ..hub import Channel, Hub, SubscriptionStats
from ..limits import Limits, TokenBucket
from ..protocol import (
    PRIVATE_KINDS,
    Ack,
    CloseCode,
    Error,
    ErrorCode,
    Pong,
    Request,
    decode_request,
    encode,
    parse_channel,
)
from ..sources import make_source
from .guard import Guard, create_ws_server
from .metrics import TickStats

if TYPE_CHECKING:
    from .admin import AdminServer

__all__ = ["Connection", "Gateway", "GatewayConfig"]

log = logging.getLogger("tickwire.server")


def _discard(_data: bytes) -> None:
    """Stand-in ``write`` until the transport is connected."""


def _no_buffer() -> int:
    """Stand-in ``get_write_buffer_size`` until the transport is connected."""
    return 0


@dataclass
class GatewayConfig:
    """Options of ``tickwire serve``; see ``tickwire serve --help`` for each."""

    host: str = "127.0.0.1"
    port: int = 8765
    symbols: list[str] = field(default_factory=lambda: ["BTC-USD", "ETH-USD", "SOL-USD"])
    rate: float = 200.0
    seed: int = 1
    batch_ms: float = 1.0
    history_bytes: int = 2 << 20
    heartbeat_s: float = 1.0
    ping_interval_s: float = 20.0
    ping_timeout_s: float = 20.0
    max_message_bytes: int = 64 << 10
    max_subscriptions: int = 1024
    max_bad_requests: int = 100
    burst_every_s: float = 0.0
    burst_factor: float = 10.0
    burst_seconds: float = 2.0
    max_seconds: float = 0.0
    stats_path: str | None = None
    test_faults: bool = False
    # Slow consumers: per-connection write-buffer watermarks and hard budget, the
    # server-wide cap, how long a connection may stay paused, and how long a closed
    # slow consumer may take to drain before it is aborted.
    high_watermark_bytes: int = 256 << 10
    low_watermark_bytes: int = 64 << 10
    max_buffer_bytes: int = 4 << 20
    max_total_buffer_bytes: int = 512 << 20
    stall_timeout_s: float = 30.0
    slow_close_grace_s: float = 5.0
    # SO_SNDBUF of accepted sockets (0: kernel autotuning, up to tcp_wmem's 4 MiB, which
    # would hide a slow reader from the watermarks for seconds of stale data).
    sndbuf_bytes: int = 256 << 10
    # Market source (docs/scaling.md): "sim" (embedded), "nats://HOST:PORT" (follow a
    # `tickwire publish`), or an NDJSON recording path played at replay_speed.
    source: str = "sim"
    replay_speed: str = "1"
    bus_prefix: str = "tickwire"
    source_timeout_s: float = 30.0
    # A resume ahead of this gateway (from a faster one on the same bus) waits this long.
    resume_wait_s: float = 1.0
    # SO_REUSEPORT: several gateway processes share the port (tickwire serve --workers).
    reuse_port: bool = False
    # Admin HTTP listener (metrics, health, REST snapshots, dashboard): None is off, 0
    # any free port; with admin_optional a port already taken only logs a warning.
    admin_host: str | None = None
    admin_port: int | None = None
    admin_optional: bool = False
    # Hostile clients (docs/security.md): per-IP, per-connection and handshake limits;
    # the token verifier of private channels (None: no login possible); TLS files
    # (both or neither: wss://); the simulator's synthetic users (orders.<user>, fed
    # only when a verifier exists) and the share of book updates that become theirs.
    limits: Limits = field(default_factory=Limits)
    verifier: TokenVerifier | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    sim_users: list[str] = field(default_factory=lambda: ["alice", "bob", "carol"])
    sim_order_fraction: float = 0.01
    # permessage-deflate (RFC 7692) for clients that offer it; off by default (market
    # data is CPU-bound, docs/benchmarks.md "Encodings"), and its zlib level.
    deflate: bool = False
    deflate_level: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.low_watermark_bytes <= self.high_watermark_bytes:
            raise ConfigError("need 0 <= --low-watermark-kb <= --high-watermark-kb")
        if self.max_buffer_bytes < self.high_watermark_bytes:
            raise ConfigError("--max-buffer-kb must be at least --high-watermark-kb")
        if self.max_total_buffer_bytes < self.max_buffer_bytes:
            raise ConfigError("--max-total-buffer-mb must be at least --max-buffer-kb")
        if self.stall_timeout_s <= 0:
            raise ConfigError("--stall-timeout must be positive")
        if self.sndbuf_bytes < 0:
            raise ConfigError("--sndbuf-kb must be >= 0")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("--tls-cert and --tls-key go together")

    def ssl_context(self) -> ssl.SSLContext | None:
        """The server TLS context of ``tls_cert``/``tls_key``, or None for plain ws://.

        Raises:
            ConfigError: the files cannot be read or do not hold a matching pair.
        """
        if self.tls_cert is None or self.tls_key is None:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            ctx.load_cert_chain(self.tls_cert, self.tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"--tls-cert/--tls-key: {exc}") from None
        return ctx


class Connection(WSListener):
    """One client connection: a hub subscriber backed by a picows transport."""

    def __init__(self, gateway: Gateway, conn_id: int, wire: Wire = JSON_WIRE) -> None:
        super().__init__()
        self.gateway = gateway
        self.id = conn_id
        # Encoding and compression negotiated at the handshake (tickwire.codec).
        self.wire = wire
        self.outbox: list[bytes] = []
        self.channels: dict[str, Channel] = {}
        # Direct transport write while on exactly one channel (see Subscriber.deliver).
        self.deliver: Callable[[bytes], object] | None = None
        self.slow: dict[str, SubscriptionStats] = {}
        self.transport: WSTransport | None = None
        self.write: Callable[[bytes], object] = _discard
        self.buffered: Callable[[], int] = _no_buffer
        self.max_buffered = 0
        self.peer = "?"
        self.closed = False
        self.bad_requests = 0
        self._logged_codes: set[str] = set()
        self._fragments: list[bytes] | None = None
        self._fragments_size = 0
        # Security (docs/security.md): the address per-IP limits count (set by the
        # guard), the logged-in user and its token's expiry (wall clock, 0: none), the
        # inbound message bucket (made at the first message) and consecutive messages
        # refused by it, and the monotonic time of the last request (idle timeout).
        self.client_ip = "?"
        self.user: str | None = None
        self.expires = 0.0
        self.bucket: TokenBucket | None = None
        self.strikes = 0
        self.last_seen = time.monotonic()
        # (binary, compressed) of the message being reassembled from fragments.
        self._fragments_kind = (False, False)

    # -- picows callbacks --------------------------------------------------------------

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        underlying = transport.underlying_transport
        self.write = underlying.write
        self.buffered = underlying.get_write_buffer_size
        cfg = self.gateway.config
        underlying.set_write_buffer_limits(
            high=cfg.high_watermark_bytes, low=cfg.low_watermark_bytes
        )
        if cfg.sndbuf_bytes:
            sock = underlying.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, cfg.sndbuf_bytes)
        peer = underlying.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        self.update_delivery()
        if self.wire != JSON_WIRE:
            self.gateway.hub.set_wire(self, self.wire)
        self.gateway.connections[self.id] = self
        log.debug(
            "conn %d %s: connected", self.id, self.peer, extra={"conn": self.id, "peer": self.peer}
        )

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        msg_type = frame.msg_type
        if msg_type == WSMsgType.TEXT or (
            msg_type == WSMsgType.BINARY and self.wire.encoding is Encoding.MSGPACK
        ):
            binary = msg_type == WSMsgType.BINARY
            compressed = frame.rsv1
            if compressed and not self.wire.deflate:
                # RFC 6455 §5.2: RSV1 without a negotiated extension fails the connection.
                self.fail(CloseCode.PROTOCOL_ERROR, "RSV1 set without permessage-deflate")
            elif self._fragments is not None:
                # RFC 6455 §5.4: a new message may not start inside a fragmented one.
                self._fragments = None
                self.fail(CloseCode.PROTOCOL_ERROR, "new message inside a fragmented one")
            elif frame.fin:
                if binary or compressed:
                    self._message(frame.get_payload_as_bytes(), binary, compressed)
                else:
                    self._text(frame.get_payload_as_bytes())
            else:
                self._fragments = [frame.get_payload_as_bytes()]
                self._fragments_size = frame.payload_size
                self._fragments_kind = (binary, compressed)
        elif msg_type == WSMsgType.CONTINUATION:
            self._continuation(frame)
        elif msg_type == WSMsgType.BINARY:
            # Say why in a message the client can read, then close (fail flushes it first).
            reason = "binary frames are not accepted; send JSON text"
            self.send(encode(Error(ErrorCode.UNSUPPORTED_DATA, reason)))
            self.fail(CloseCode.UNSUPPORTED_DATA, reason)
        elif msg_type == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code(), frame.get_close_message())
            transport.disconnect()

    def update_delivery(self) -> None:
        """Write frames directly while on one channel, else queue them for the tick.

        Call after the channel set changed, with the outbox already flushed.
        """
        direct = len(self.channels) == 1 and self.transport is not None and not self.closed
        self.deliver = self.write if direct else None

    def pause_writing(self) -> None:
        """The write buffer crossed the high watermark: conflate books and tickers."""
        if not self.closed:
            self.gateway.hub.pause(self, time.monotonic())

    def resume_writing(self) -> None:
        """The write buffer drained below the low watermark: catch up at the next tick."""
        if not self.closed:
            self.gateway.hub.resume(self)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        log.debug(
            "conn %d %s: disconnected",
            self.id,
            self.peer,
            extra={"conn": self.id, "peer": self.peer},
        )
        self.closed = True
        self.deliver = None
        self.outbox.clear()
        self.gateway.hub.drop(self)
        gateway = self.gateway
        gateway.connections.pop(self.id, None)
        if not gateway.connections and gateway.draining is not None:
            gateway.draining.set()

    # -- input -------------------------------------------------------------------------

    def _continuation(self, frame: WSFrame) -> None:
        if self._fragments is None:
            self.fail(CloseCode.PROTOCOL_ERROR, "continuation frame without a first fragment")
            return
        self._fragments_size += frame.payload_size
        if self._fragments_size > self.gateway.config.max_message_bytes:
            self._fragments = None
            self.fail(CloseCode.MESSAGE_TOO_BIG, "message too big")
            return
        self._fragments.append(frame.get_payload_as_bytes())
        if frame.fin:
            data = b"".join(self._fragments)
            self._fragments = None
            self._message(data, *self._fragments_kind)

    def _message(self, data: bytes, binary: bool, compressed: bool) -> None:
        """Handle one whole client message: inflate it if compressed, then decode it."""
        if compressed:
            try:
                data = inflate(data, self.gateway.config.max_message_bytes)
            except MessageTooBig:
                self.fail(CloseCode.MESSAGE_TOO_BIG, "message too big once decompressed")
                return
            except ProtocolError:
                self.fail(CloseCode.PROTOCOL_ERROR, "invalid permessage-deflate data")
                return
        if not binary:
            self._text(data)
            return
        if len(data) > self.gateway.config.max_message_bytes:
            self.fail(CloseCode.MESSAGE_TOO_BIG, "message too big")
            return
        if not self.admit():
            return
        self.gateway.handle_request(self, data, binary=True)
        self.flush()
        self.update_delivery()

    def authenticate(self, claims: Claims) -> None:
        """Log this connection in as ``claims.user`` until ``claims.expires``.

        A later login of the same user moves the expiry (refresh); the gateway checks
        that it is the same user.
        """
        self.user = claims.user
        self.expires = claims.expires
        log.info(
            "conn %d %s: logged in as %s",
            self.id,
            self.peer,
            claims.user,
            extra={"conn": self.id, "peer": self.peer, "user": claims.user},
        )

    def admit(self) -> bool:
        """Charge one inbound message to the rate limit; False: it must be dropped.

        A message over the limit is answered with a ``rate_limited`` error and not
        processed; after ``message_burst`` of them in a row the connection is closed
        with :attr:`~tickwire.protocol.CloseCode.RATE_LIMITED`.
        """
        now = time.monotonic()
        self.last_seen = now
        limits = self.gateway.config.limits
        if limits.max_messages_per_s <= 0:
            return True
        bucket = self.bucket
        if bucket is None:
            bucket = self.bucket = TokenBucket(limits.max_messages_per_s, limits.message_burst, now)
        if bucket.take(now):
            self.strikes = 0
            return True
        self.strikes += 1
        gateway = self.gateway
        gateway.rate_limited += 1
        if self.strikes > limits.message_burst:
            self.fail(CloseCode.RATE_LIMITED, "rate limited: too many messages per second")
            return False
        reason = f"over {limits.max_messages_per_s:g} messages/s: request dropped"
        self.send(encode(Error(ErrorCode.RATE_LIMITED, reason)))
        self.flush()
        return False

    def _text(self, data: bytes) -> None:
        if not self.admit():
            return
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            self.fail(CloseCode.INVALID_TEXT, "text frame is not valid UTF-8")
            return
        if len(data) > self.gateway.config.max_message_bytes:
            self.fail(CloseCode.MESSAGE_TOO_BIG, "message too big")
            return
        self.gateway.handle_request(self, data)
        self.flush()
        self.update_delivery()

    # -- output ------------------------------------------------------------------------

    def send(self, payload: bytes) -> None:
        """Queue one message (its JSON ``payload``); it is written at the next flush.

        On a msgpack or deflate connection it is re-encoded for the connection's wire
        (acks and errors are rare; the feed itself is encoded once per wire by the hub).
        """
        if not self.outbox:
            self.gateway.hub.dirty.append(self)
        wire = self.wire
        if wire == JSON_WIRE:
            self.outbox.append(text_frame(payload))
        else:
            self.outbox.append(transcode(payload, wire, self.gateway.hub.deflater))

    def flush(self) -> None:
        """Write everything queued in one ``write`` call."""
        outbox = self.outbox
        if outbox and not self.closed:
            self.write(b"".join(outbox) if len(outbox) > 1 else outbox[0])
        outbox.clear()

    def reject(self, exc: RequestError, channel: str | None = None) -> None:
        """Answer a bad request with an error message; close after too many of them."""
        self.send(encode(Error(exc.code, exc.message, exc.request_id, channel)))
        gateway = self.gateway
        gateway.rejected += 1
        gateway.rejected_by_code[exc.code] = gateway.rejected_by_code.get(exc.code, 0) + 1
        if exc.code not in self._logged_codes:
            self._logged_codes.add(exc.code)
            log.info(
                "conn %d %s: rejected request: %s: %s",
                self.id,
                self.peer,
                exc.code,
                exc.message,
                extra={"conn": self.id, "peer": self.peer, "code": str(exc.code)},
            )
        self.bad_requests += 1
        if self.bad_requests > self.gateway.config.max_bad_requests:
            self.flush()
            self.fail(CloseCode.POLICY_VIOLATION, "too many bad requests")

    def fail(self, code: CloseCode, reason: str) -> None:
        """Close this connection with ``code``, flushing what is queued first."""
        if self.closed or self.transport is None:
            return
        log.info(
            "conn %d %s: closing with %d: %s",
            self.id,
            self.peer,
            code,
            reason,
            extra={"conn": self.id, "peer": self.peer, "close_code": int(code)},
        )
        closes = self.gateway.closes_by_code
        closes[int(code)] = closes.get(int(code), 0) + 1
        self.flush()
        self.closed = True
        self.deliver = None
        self.gateway.hub.drop(self)
        self.transport.send_close(WSCloseCode(code), reason.encode())
        self.transport.disconnect()

    def abort(self) -> None:
        """Drop the socket and whatever is still buffered for it, without waiting."""
        if self.transport is not None:
            self.transport.disconnect(graceful=False)

    def stats(self, now: float | None = None) -> dict[str, Any]:
        """Slow-consumer telemetry of this connection and of its subscriptions."""
        now = time.monotonic() if now is None else now
        hub = self.gateway.hub
        paused_since = hub.paused.get(self)
        subs: dict[str, Any] = {}
        for name, st in self.slow.items():
            ch = self.channels.get(name)
            lag = ch.lagging.get(self) if ch is not None else None
            subs[name] = {
                "lagging": lag is not None,
                "lag_seq": ch.seq - lag.seq if ch is not None and lag is not None else 0,
                "lag_ms": round((now - lag.since) * 1000, 1) if lag is not None else 0.0,
                "lags": st.lags,
                "conflated": st.conflated,
                "snapshots": st.snapshots,
                "skipped": st.skipped,
                "max_lag_seq": st.max_lag_seq,
                "max_lag_ms": round(st.max_lag_s * 1000, 1),
            }
        return {
            "id": self.id,
            "peer": self.peer,
            "buffered": self.buffered(),
            "max_buffered": self.max_buffered,
            "paused_ms": round((now - paused_since) * 1000, 1) if paused_since else 0.0,
            "subscriptions": subs,
        }


class Gateway:
    """A tickwire server: embedded market, hub, and WebSocket listener.

    Args:
        config: the options; ``port`` 0 picks a free port (read :attr:`port`).
    """

    def __init__(self, config: GatewayConfig) -> None:
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
        self.source = make_source(config)
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
        self.admin: AdminServer | None = None
        # Connections accepted per non-default wire (encoding, deflate).
        self.wires: dict[Wire, int] = {}
        # Slow consumers: closes by cause, and the buffered bytes seen by the sweeps.
        self.slow_closes = {"budget": 0, "stall": 0, "total": 0}
        self.buffered_total = 0
        self.max_buffered_total = 0
        self.max_buffered = 0
        self.port = config.port
        self.started = time.monotonic()
        self._server: asyncio.Server | None = None
        self._stopping: asyncio.Event | None = None
        # Set while shutting down; fires when the last connection is gone.
        self.draining: asyncio.Event | None = None

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
            elif idle and not conn.channels and now - conn.last_seen > idle:
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
        return self._negotiate(request, next(self._ids))

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

    def uptime(self) -> float:
        """Seconds since this gateway was created."""
        return time.monotonic() - self.started

    async def start(self) -> None:
        """Seed the books and start listening; returns once the port is bound."""
        await self.source.start(self.hub)
        self.hub.flush(time.monotonic())
        # The hot path allocates many short-lived containers and builds no reference
        # cycles; the default gen-0 threshold (700) spent ~20% of the core in the
        # collector (bench/core_hotpath.py). Freeze what start-up built and collect
        # rarely.
        gc.collect()
        gc.freeze()
        gc.set_threshold(100_000, 50, 100)
        cfg = self.config
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
            websocket_handshake_timeout=cfg.limits.handshake_timeout_s,
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
        if cfg.admin_port is not None:
            await self._start_admin(cfg.admin_host or cfg.host, cfg.admin_port)

    async def _start_admin(self, host: str, port: int) -> None:
        """Start the admin HTTP listener (see :mod:`tickwire.server.admin`)."""
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
        for sub, since in list(self.hub.paused.items()):
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
        dirty = cast(list[Connection], hub.dirty)
        tick = self.config.batch_ms / 1000.0 if self.config.batch_ms > 0 else 0.001
        monotonic = time.monotonic
        next_heartbeat = deadline = monotonic()
        next_sweep = next_heartbeat
        paused = hub.paused
        sleep = asyncio.sleep
        time_ns = time.time_ns
        record = self.tick_stats.tick
        batched = hub.batch
        while True:
            # Sleep to a deadline, not for a fixed time: the period stays one tick however
            # long the work took, so batches (and latency) do not stretch under load. A
            # tick that is late by more than one period is not made up.
            deadline += tick
            target = deadline
            now = monotonic()
            if deadline > now:
                await sleep(deadline - now)
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
            for symbol, updates, trades in poll(now):
                if first is None and updates:
                    first = updates
                publish(symbol, updates, trades)
                flush_symbol(symbol, now)
            hub.flush(now)
            if now >= next_heartbeat:
                hub.heartbeats(now)
                next_heartbeat = now + min(0.25, self.config.heartbeat_s)
            for conn in dirty:
                outbox = conn.outbox
                if outbox:
                    conn.write(b"".join(outbox) if len(outbox) > 1 else outbox[0])
                    outbox.clear()
            dirty.clear()
            if first is not None and hub.frames_out != frames:
                record(now - target, time_ns() - first[0].ts, len(first) if batched else 1)
            else:
                record(now - target, -1, 0)
            if paused:
                self._check_paused(now)
            if now >= next_sweep:
                self._sweep()
                self._police()
                next_sweep = now + 0.5

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
            "symbols": len(self.config.symbols),
            "generated": self.source.generated,
            "skipped": self.source.skipped,
            "gen_per_s": round(self.source.generated / max(elapsed, 1e-9), 1),
            "source": self.source.stats(),
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
