"""Client-side decoders: a venue's own feed turned into tickwire's events (Sans-I/O).

The encoders next door (:mod:`tickwire.dialects.binance`, ``okx``, ``kraken``) render
tickwire's market in a venue's formats; these decoders read a venue's formats -- the
real venue's public feed, or tickwire's own dialect endpoints -- and keep a verified
book per symbol by the venue's own rules:

============  ===========================================  ============================
venue         sync rule                                    integrity
============  ===========================================  ============================
Binance spot  REST snapshot ``lastUpdateId``; buffered     ``U`` == previous ``u`` + 1
              diffs with ``u <= lastUpdateId`` dropped;    (no checksum)
              the first applied has ``U <= lid+1 <= u``
OKX v5        ``books`` snapshot (``prevSeqId`` -1), then  signed CRC32 of 25 + 25
              ``prevSeqId`` == the last applied ``seqId``  (0 = not sent: not checked)
Kraken v2     ``book`` snapshot, book truncated to the     unsigned CRC32 of the top 10
              subscribed depth after every update          (no sequence numbers)
============  ===========================================  ============================

Every decoder takes frames as bytes (``feed(data, now_ns)``) and returns events from one
vocabulary, whatever the venue: :class:`Snapshot` (a complete book: replace yours),
:class:`Delta` (level changes applied to the verified book, with the venue's ids),
:class:`Trades`, :class:`Quote` (best bid/ask), :class:`Hole` (the book of a symbol is
no longer known right, and precisely why), :class:`SnapshotWanted` (Binance: fetch the
REST snapshot and hand it to :meth:`VenueDecoder.snapshot`) and :class:`Notice` (acks,
venue errors). Prices and quantities stay the venue's exact decimal strings (Kraken's
JSON numbers are read as decimals, never floats). Times are integer nanoseconds since
the epoch: the venue's event time (:data:`LATENCY_DEFINITION` says which field).

The decoders never raise on a venue's input: a frame they cannot use becomes a
:class:`Notice` of kind ``"bad"`` (and, when it concerned a book, a :class:`Hole`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Literal

import msgspec

from ...book import Book
from ...exceptions import ConfigError
from ...protocol import BookUpdate
from ..markets import Markets

__all__ = [
    "DEFAULT_KINDS",
    "HOLE_REASONS",
    "IDLE_TIMEOUTS",
    "LATENCY_DEFINITION",
    "VENUES",
    "Delta",
    "Event",
    "Hole",
    "Notice",
    "Quote",
    "Snapshot",
    "SnapshotWanted",
    "Trades",
    "Watchdog",
    "VenueDecoder",
    "VenueTrade",
    "invalid_level",
    "make_decoder",
]

#: The venues a decoder exists for.
VENUES = ("binance", "okx", "kraken")

#: What is followed unless told otherwise: the book and the trades.
DEFAULT_KINDS = ("book", "trades")

#: Why a book stopped being known (:attr:`Hole.reason`).
HOLE_REASONS = ("gap", "checksum", "stale_snapshot", "bad_frame", "disconnect", "overflow")

#: Which venue field each decoder takes as an event's time (the bench's latency).
LATENCY_DEFINITION = {
    "binance": "receive time minus the event time `E` (ms) of a depthUpdate, the trade "
    "time `T` (ms) of a trade; bookTicker carries no time and has no latency",
    "okx": "receive time minus `ts` (ms): a books push's generation time, a trade's "
    "time, a ticker's time",
    "kraken": "receive time minus `timestamp` (RFC 3339, us): a book frame's last "
    "update, a trade's time; tickers carry no time and have no latency",
}

MS = 1_000_000


class Snapshot(msgspec.Struct, frozen=True, gc=False):
    """A complete book of ``symbol`` at the venue's ``seq`` (-1: the venue has none)."""

    symbol: str
    bids: list[tuple[str, str]]
    asks: list[tuple[str, str]]
    seq: int
    ts: int


class Delta(msgspec.Struct, frozen=True, gc=False):
    """Level changes, in order, taking the verified book from ``prev_seq`` to ``seq``.

    Binance: ``prev_seq`` = ``U`` - 1 (the snapshot's id for the first), ``seq`` = ``u``;
    OKX: ``prevSeqId`` / ``seqId``; Kraken (no ids): the decoder's own frame count.
    """

    symbol: str
    updates: list[BookUpdate]
    prev_seq: int
    seq: int
    ts: int


class VenueTrade(msgspec.Struct, frozen=True, gc=False):
    """One trade: the venue's id, exact price and quantity, the taker's side."""

    id: str
    price: str
    qty: str
    side: Literal["buy", "sell"]
    ts: int


class Trades(msgspec.Struct, frozen=True, gc=False):
    symbol: str
    trades: list[VenueTrade]


class Quote(msgspec.Struct, frozen=True, gc=False):
    """The best bid and ask (a venue ticker); ``ts`` 0 when the venue sends no time."""

    symbol: str
    bid: str | None
    bid_qty: str | None
    ask: str | None
    ask_qty: str | None
    ts: int


class Hole(msgspec.Struct, frozen=True, gc=False):
    """``symbol``'s book is no longer known right; ``reason`` in :data:`HOLE_REASONS`.

    ``detail`` says exactly what was seen (ids, checksums) for a log line. The decoder
    has already dropped the book; it comes back with a :class:`Snapshot` after a resync
    (:meth:`VenueDecoder.resubscribe`, or a REST snapshot for Binance).
    """

    symbol: str
    reason: str
    detail: str


class SnapshotWanted(msgspec.Struct, frozen=True, gc=False):
    """Binance: fetch ``GET /api/v3/depth?symbol=<venue_symbol>&limit=<limit>``."""

    symbol: str
    venue_symbol: str
    limit: int


class Notice(msgspec.Struct, frozen=True, gc=False):
    """Not market data: ``kind`` is ``ack``, ``error`` (the venue refused something),
    ``bad`` (a frame that could not be used), ``shutdown`` (the venue announced it
    will close the connection: Binance ``serverShutdown``, OKX notice 64008, Kraken's
    ``maintenance`` status) or ``info``."""

    kind: str
    detail: str


Event = Snapshot | Delta | Trades | Quote | Hole | SnapshotWanted | Notice


_DECIMAL = re.compile(r"\d+(?:\.\d+)?").fullmatch


def invalid_level(pairs: Iterable[tuple[str, str]]) -> str | None:
    """The first level whose price or quantity is not a plain non-negative decimal
    (``"100.25"``: no sign, exponent or spaces), described for a log line; None if all
    are. A venue's garbage must never reach a served book."""
    for price, qty in pairs:
        if not _DECIMAL(price) or not _DECIMAL(qty):
            return f"level {price!r} x {qty!r} is not a plain decimal"
    return None


def clip(data: bytes | memoryview | str, n: int = 160) -> str:
    """A frame shortened for a log line."""
    text = data if isinstance(data, str) else bytes(data).decode("utf-8", "replace")
    return text if len(text) <= n else text[:n] + "..."


class VenueDecoder:
    """What every venue's decoder shares: the symbols, the verified books, counters.

    Subclasses implement :meth:`subscribe`, :meth:`resubscribe` and :meth:`feed`.

    Attributes:
        venue: ``binance``, ``okx`` or ``kraken``.
        markets: the followed symbols and their venue spellings.
        books: the verified book of each symbol whose book is known right now.
        checksum_failures, gaps: :class:`Hole` events of those reasons so far.
    """

    venue = ""

    def __init__(self, symbols: Iterable[str], kinds: Iterable[str] = DEFAULT_KINDS) -> None:
        self.markets = Markets(symbols)
        if not len(self.markets):
            raise ConfigError("a venue decoder needs at least one symbol")
        self.kinds = tuple(kinds)
        for kind in self.kinds:
            if kind not in ("book", "trades", "ticker"):
                raise ConfigError(f"unknown kind {kind!r}: use book, trades, ticker")
        self.books: dict[str, Book] = {}
        self.checksum_failures = 0
        self.gaps = 0
        self.bad_frames = 0

    # -- the venue's side of the connection -------------------------------------------

    def subscribe(self) -> list[bytes]:
        """The text frames to send once connected."""
        raise NotImplementedError

    def resubscribe(self, symbol: str) -> list[bytes]:
        """The text frames that resync ``symbol``'s book after a :class:`Hole`
        (Binance: none, the next diff asks for a REST snapshot)."""
        raise NotImplementedError

    def feed(self, data: bytes | memoryview, now_ns: int) -> list[Event]:
        """Decode one text frame; return its events (never raises on bad input)."""
        raise NotImplementedError

    def keepalive(self) -> bytes | None:
        """The venue's application-level ping, for a connection idle a while (OKX
        closes one silent for 30 s; WebSocket pings do not count), or None."""
        return None

    def snapshot(self, symbol: str, body: bytes, now_ns: int) -> list[Event]:
        """A REST snapshot arrived (Binance); other venues have none to take."""
        return [Notice("bad", f"{self.venue} takes no REST snapshot")]

    def snapshot_failed(self, symbol: str, detail: str) -> list[Event]:
        """The REST snapshot could not be fetched; the next diff asks again."""
        return []

    def disconnected(self) -> list[Event]:
        """The connection is gone: every known book becomes unknown."""
        out: list[Event] = [Hole(s, "disconnect", "connection lost") for s in self.books]
        self.books.clear()
        self._reset_state()
        return out

    def _reset_state(self) -> None:
        """Forget per-connection state (subclasses)."""

    # -- shared helpers ---------------------------------------------------------------

    def hole(self, symbol: str, reason: str, detail: str) -> Hole:
        """Drop ``symbol``'s book and say why."""
        self.books.pop(symbol, None)
        if reason == "checksum":
            self.checksum_failures += 1
        elif reason in ("gap", "stale_snapshot"):
            self.gaps += 1
        return Hole(symbol, reason, detail)

    def bad(self, data: bytes | memoryview, why: str) -> Notice:
        self.bad_frames += 1
        return Notice("bad", f"{why}: {clip(data)}")


def make_decoder(
    venue: str,
    symbols: Iterable[str],
    kinds: Iterable[str] = DEFAULT_KINDS,
    *,
    depth: int = 0,
    precisions: Mapping[str, tuple[int, int]] | None = None,
    snapshot_limit: int = 1000,
) -> VenueDecoder:
    """The decoder of ``venue`` for ``symbols`` (tickwire spellings, ``BTC-USDT``).

    Args:
        venue: ``binance``, ``okx`` or ``kraken``.
        symbols: the symbols to follow.
        kinds: among ``book``, ``trades``, ``ticker``.
        depth: Kraken's subscribed depth (10, 25, 100, 500, 1000; 0: 100).
        precisions: Kraken: ``{symbol: (price_decimals, qty_decimals)}`` to write a
            number the venue shortened (real Kraken can send ``0.1`` for ``0.10000000``)
            back with its instrument's decimals before the checksum; without it the
            number's own digits are used (tickwire's endpoints send every digit).
        snapshot_limit: Binance's REST ``limit``.

    Raises:
        ConfigError: an unknown venue, kind or depth, or no symbol.
    """
    if venue == "binance":
        from .binance import BinanceDecoder

        return BinanceDecoder(symbols, kinds, snapshot_limit=snapshot_limit)
    if venue == "okx":
        from .okx import OkxDecoder

        return OkxDecoder(symbols, kinds)
    if venue == "kraken":
        from .kraken import KrakenDecoder

        return KrakenDecoder(symbols, kinds, depth=depth or 100, precisions=precisions)
    raise ConfigError(f"unknown venue {venue!r}: use {', '.join(VENUES)}")


#: Seconds without any frame from the venue after which a connection counts as dead
#: (``--venue-idle-timeout`` 0). Binance has no application ping: silence only, long
#: enough for a quiet symbol's depth stream (pushed only when the book changes).
#: OKX answers the application ``ping`` sent after a third of it; Kraken v2 sends a
#: heartbeat every second while a channel is quiet.
IDLE_TIMEOUTS = {"binance": 30.0, "okx": 30.0, "kraken": 10.0}


class Watchdog:
    """The data watchdog of one connection, sans I/O: told when frames arrive, asked
    with the time whether to ping (the venue's application ping, at a third of the
    timeout: two pings may go unanswered before it expires)
    and whether the connection is dead (nothing for ``timeout`` seconds)."""

    def __init__(self, timeout: float, now: float) -> None:
        self.timeout = timeout
        self.last = now
        self.pinged = now

    def seen(self, now: float) -> None:
        """A frame arrived (data, heartbeat, pong: the venue is alive)."""
        self.last = now

    def ping_due(self, now: float, after: float) -> bool:
        """Whether to send the application ping now (quiet for ``after`` seconds, or
        a third of the timeout if less, and not pinged since)."""
        quiet = min(after, self.timeout / 3) if self.timeout > 0 else after
        if now - max(self.last, self.pinged) >= quiet:
            self.pinged = now
            return True
        return False

    def expired(self, now: float) -> bool:
        """Whether nothing arrived for ``timeout`` seconds (0: never)."""
        return self.timeout > 0 and now - self.last >= self.timeout
