"""Venue connections and REST: the I/O side of :mod:`tickwire.dialects` (thin).

A WebSocket handshake whose path starts with a venue prefix (``/binance``, ``/okx``,
``/kraken``) gets a :class:`VenueConnection`: the same picows listener as a native
connection (limits, rate limit, slow-consumer budget, close handling), whose text
messages go to the venue's Sans-I/O session instead of the native protocol, and whose
frames come from the dialect feed. REST requests under the same prefixes on the admin
port are answered by the venue modules from a :class:`GatewayView`.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Protocol
from urllib.parse import parse_qsl, urlsplit

from picows import (
    WSTransport,
    WSUpgradeRequest,
    WSUpgradeResponse,
    WSUpgradeResponseWithListener,
)

from ..dialects import DialectFeed, Session, open_session, venue_of
from ..dialects.candles import Candles
from ..dialects.markets import Markets
from ..dialects.rest import BookView
from ..engine import Engine
from ..hub import Hub
from ..protocol import CloseCode, Snapshot, Ticker, Trade
from .connection import Connection, Host

if TYPE_CHECKING:
    from ..dialects.feed import Stream
    from .faults import FaultManager

__all__ = ["MarketHost", "VenueConnection", "VenueHost", "VenueView", "venue_listener"]

log = logging.getLogger("tickwire.server")


class VenueHost(Host, Protocol):
    """What venue connections use of the gateway besides a :class:`Host`'s."""

    @property
    def feed(self) -> DialectFeed: ...


class MarketHost(Protocol):
    """What venue REST reads of the gateway."""

    @property
    def feed(self) -> DialectFeed: ...
    @property
    def engine(self) -> Engine: ...
    @property
    def hub(self) -> Hub: ...
    @property
    def faults(self) -> FaultManager | None: ...

    def book_snapshot(self, symbol: str, depth: int | None = None) -> Snapshot:
        """The book as a subscription would start now."""


class VenueConnection(Connection):
    """A client speaking a venue's protocol (see :mod:`tickwire.dialects`)."""

    __slots__ = ("session", "streams", "host")

    def __init__(self, gateway: VenueHost, conn_id: int, session: Session) -> None:
        super().__init__(gateway, conn_id)
        self.host = gateway
        self.session = session
        self.streams: dict[str, Stream] = {}

    def on_ws_connected(self, transport: WSTransport) -> None:
        super().on_ws_connected(transport)
        self.session.open(self)

    def update_delivery(self) -> None:
        # Venue frames are always written at once: the feed renders them once per
        # stream and each connection's streams are few.
        self.deliver = self.write if self.transport is not None and not self.closed else None

    def has_subscriptions(self) -> bool:
        return bool(self.streams)

    def _text(self, data: bytes) -> None:
        if self.accept_text(data):
            faults = self.host.faults
            if faults is not None and faults.refuse_message(self, data):
                return
            self.session.receive(self, data)

    def reply_rate_limited(self, reason: str) -> None:
        if not self.closed:
            self.write(self.session.rate_limited(reason))

    def _message(self, data: bytes, binary: bool, compressed: bool) -> None:
        self.fail(CloseCode.UNSUPPORTED_DATA, "binary frames are not accepted")

    def rejected(self, code: str, reason: str) -> None:
        """Count a bad request (the session answered it); log each code once."""
        gateway = self.host
        key = f"{self.session.venue}:{code}"
        gateway.rejected += 1
        gateway.rejected_by_code[key] = gateway.rejected_by_code.get(key, 0) + 1
        if key not in self._logged_codes:
            self._logged_codes.add(key)
            log.info(
                "conn %d %s: rejected %s request: %s: %s",
                self.id,
                self.peer,
                self.session.venue,
                code,
                reason,
                extra={"conn": self.id, "peer": self.peer, "code": key},
            )
        self.bad_requests += 1
        if self.bad_requests > gateway.config.max_bad_requests:
            self.fail(CloseCode.POLICY_VIOLATION, "too many bad requests")

    def close(self, code: int, reason: str) -> None:
        """End the connection with ``code`` (the feed's venue-level closes)."""
        self.fail(CloseCode(code), reason)

    def pause_subscriptions(self) -> None:
        self.host.feed.pause(self, time.monotonic())

    def resume_subscriptions(self) -> None:
        self.host.feed.resume(self)

    def drop_subscriptions(self) -> None:
        super().drop_subscriptions()
        self.host.feed.drop(self)


def venue_listener(
    gateway: VenueHost, request: WSUpgradeRequest, conn_id: int
) -> VenueConnection | WSUpgradeResponseWithListener | None:
    """The listener for a venue path, an HTTP 404 for an unknown one under a venue
    prefix, or None when the path is not a venue's (a native connection)."""
    raw = request.path
    target = raw.decode("latin-1") if isinstance(raw, bytes) else raw
    parts = urlsplit(target)
    found = venue_of(parts.path)
    if found is None:
        return None
    venue, path = found
    query = dict(parse_qsl(parts.query))
    session = open_session(gateway.feed, venue, path, query)
    if session is None:
        body = f'{{"error":"no {venue} endpoint at {parts.path[:64]}"}}'.encode()
        response = WSUpgradeResponse.create_error_response(404, body)
        return WSUpgradeResponseWithListener(response, None)
    return VenueConnection(gateway, conn_id, session)


class _Book:
    __slots__ = ("seq", "bids", "asks")

    def __init__(self, snap: Snapshot) -> None:
        self.seq = snap.seq
        self.bids = snap.bids or []
        self.asks = snap.asks or []


class VenueView:
    """The gateway's live market as the venues' REST endpoints read it."""

    def __init__(self, gateway: MarketHost, venue: str = "") -> None:
        self.gateway = gateway
        self.venue = venue

    @property
    def markets(self) -> Markets:
        return self.gateway.feed.refresh_markets()

    def book(self, symbol: str, depth: int | None) -> BookView:
        faults = self.gateway.faults
        if faults is not None and symbol in self.gateway.engine.symbols:
            stale = faults.stale_rest(self.venue, symbol, depth)
            if stale is not None:
                return _Book(stale)
        return _Book(self.gateway.book_snapshot(symbol, depth))

    def trades(self, symbol: str) -> list[Trade]:
        feed = self.gateway.feed
        tap = feed.taps.get(symbol)
        if tap is None:
            return list(self.gateway.engine.symbols[symbol].recent_trades)
        return list(tap.recent)

    def candles(self, symbol: str) -> Candles:
        tap = self.gateway.feed.taps.get(symbol)
        return tap.candles if tap is not None else Candles()

    def ticker(self, symbol: str) -> Ticker:
        state = self.gateway.engine.symbols[symbol]
        ch = self.gateway.hub.channels[f"ticker.{symbol}"]
        return state.ticker(ch.name, ch.seq, ch.seq)

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000
