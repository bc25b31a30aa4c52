"""One client connection: a hub subscriber backed by a picows transport (I/O layer).

It feeds client frames to the Sans-I/O request decoder, answers through its outbox,
charges inbound messages to its rate limit (:meth:`Connection.admit`), and tells the hub
when its transport's write buffer crosses the watermarks (slow consumers). Frames of
the feed reach it through ``deliver`` (a direct transport write while it is on one
channel) or its outbox (written once per tick).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from picows import (
    WSCloseCode,
    WSFrame,
    WSListener,
    WSMsgType,
    WSTransport,
)

from ..auth import Claims
from ..channels import Channel
from ..codec import JSON_WIRE, Encoding, Wire, inflate, transcode
from ..exceptions import MessageTooBig, ProtocolError, RequestError
from ..framing import text_frame
from ..lag import SubscriptionStats
from ..limits import TokenBucket
from ..protocol import (
    CloseCode,
    Error,
    ErrorCode,
    encode,
)

if TYPE_CHECKING:
    from ..hub import Hub
    from .config import GatewayConfig
    from .faults import FaultManager

__all__ = ["Connection", "Host"]


log = logging.getLogger("tickwire.server")


def _discard(_data: bytes) -> None:
    """Stand-in ``write`` until the transport is connected."""


def _no_buffer() -> int:
    """Stand-in ``get_write_buffer_size`` until the transport is connected."""
    return 0


class Host(Protocol):
    """What a connection needs of its gateway (:class:`~tickwire.server.gateway.Gateway`).

    The gateway creates connections, so this module does not import it: a connection
    is handed its host and uses only this much of it.
    """

    @property
    def config(self) -> GatewayConfig: ...
    @property
    def hub(self) -> Hub: ...
    @property
    def connections(self) -> dict[int, Connection]: ...
    @property
    def draining(self) -> asyncio.Event | None: ...
    @property
    def rejected_by_code(self) -> dict[str, int]: ...
    @property
    def closes_by_code(self) -> dict[int, int]: ...
    @property
    def faults(self) -> FaultManager | None: ...

    rate_limited: int
    rejected: int
    max_buffered: int

    def handle_request(self, conn: Connection, data: bytes, binary: bool = False) -> None:
        """Answer one client message (text, or binary when ``binary``)."""


class Connection(WSListener):
    """One client connection: a hub subscriber backed by a picows transport.

    Slotted: the fan-out reads ``deliver`` from every subscriber on every delivery,
    and a slot is one read in the object itself where an instance dict costs lookups
    in memory the kernel's writes have just pushed out of the cache.
    """

    __slots__ = (
        "deliver",  # first: next to the object's header, on the fan-out's cache line
        "outbox",
        "gateway",
        "id",
        "wire",
        "channels",
        "slow",
        "transport",
        "write",
        "buffered",
        "max_buffered",
        "peer",
        "closed",
        "bad_requests",
        "_logged_codes",
        "_fragments",
        "_fragments_size",
        "client_ip",
        "user",
        "expires",
        "bucket",
        "strikes",
        "last_seen",
        "_fragments_kind",
    )

    def __init__(self, gateway: Host, conn_id: int, wire: Wire = JSON_WIRE) -> None:
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
        faults = self.gateway.faults
        if faults is not None:
            faults.connected(self)
        log.debug(
            "conn %d %s: connected", self.id, self.peer, extra={"conn": self.id, "peer": self.peer}
        )

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        msg_type = frame.msg_type
        if frame.rsv2 or frame.rsv3:
            # RFC 6455 §5.2: no extension defines them; picows passes them through.
            self.fail(CloseCode.PROTOCOL_ERROR, "RSV2/RSV3 set without an extension")
        elif msg_type == WSMsgType.TEXT or (
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

    def has_subscriptions(self) -> bool:
        """True while the connection is subscribed to something (idle timeout)."""
        return bool(self.channels)

    def drop_subscriptions(self) -> None:
        """Forget every subscription (the connection is closing)."""
        self.gateway.hub.drop(self)

    def pause_writing(self) -> None:
        """The write buffer crossed the high watermark: conflate books and tickers."""
        if not self.closed:
            # Its size at the crossing counts towards the maxima; while paused the tick
            # loop records it after every pass (the only state in which it can grow).
            size = self.buffered()
            if size > self.max_buffered:
                self.max_buffered = size
                gateway = self.gateway
                if size > gateway.max_buffered:
                    gateway.max_buffered = size
            self.pause_subscriptions()

    def resume_writing(self) -> None:
        """The write buffer drained below the low watermark: catch up at the next tick."""
        if not self.closed:
            self.resume_subscriptions()

    def pause_subscriptions(self) -> None:
        """Stop sending what can be conflated (the hub's books and tickers)."""
        self.gateway.hub.pause(self, time.monotonic())

    def resume_subscriptions(self) -> None:
        """Catch up what was conflated at the next pass."""
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
        self.drop_subscriptions()
        gateway = self.gateway
        gateway.connections.pop(self.id, None)
        if gateway.faults is not None:
            gateway.faults.disconnected(self)
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
        self.reply_rate_limited(f"over {limits.max_messages_per_s:g} messages/s: request dropped")
        return False

    def reply_rate_limited(self, reason: str) -> None:
        """Tell the client a message was dropped over the rate limit."""
        self.send(encode(Error(ErrorCode.RATE_LIMITED, reason)))
        self.flush()

    def accept_text(self, data: bytes) -> bool:
        """Charge a text message to the rate limit and check it: valid UTF-8, not too
        big. False: it must not be handled (answered or the connection failed)."""
        if not self.admit():
            return False
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            self.fail(CloseCode.INVALID_TEXT, "text frame is not valid UTF-8")
            return False
        if len(data) > self.gateway.config.max_message_bytes:
            self.fail(CloseCode.MESSAGE_TOO_BIG, "message too big")
            return False
        return True

    def _text(self, data: bytes) -> None:
        if not self.accept_text(data):
            return
        faults = self.gateway.faults
        if faults is not None and faults.refuse_message(self, data):
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

    def reject(self, exc: RequestError) -> None:
        """Answer a bad request with an error message; close after too many of them."""
        self.send(encode(Error(exc.code, exc.message, exc.request_id)))
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

    def fail(self, code: int, reason: str) -> None:
        """Close this connection with ``code`` (a :class:`CloseCode`, or any close code
        a server may send), flushing what is queued first."""
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
        self.drop_subscriptions()
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
