"""Kraken's WebSocket v2 public channels, decoded (Sans-I/O).

Channels followed: ``book`` (at the chosen depth), ``trade``, ``ticker``, one
``{"method":"subscribe","params":{...}}`` per channel.

Kraken's book has no sequence numbers; its integrity is the CRC32 over the top 10
levels, sent on snapshots and updates. The decoder follows Kraken's guide: apply every
level of a frame (``qty`` 0 deletes), truncate the book to the subscribed depth (Kraken
sends no delete for a level pushed out of it), then compare
:meth:`tickwire.book.Book.checksum` (the same string form: asks low to high, then bids
high to low, ``.`` and leading zeros removed) with ``checksum``. Numbers are read as
decimals with every digit the venue wrote; when the instrument's decimals are given
(``precisions``) a number is written back with them first (the guide's rule for a venue
that sends ``0.1`` for ``0.10000000``). A failed checksum drops the book (:class:`Hole`)
and :meth:`KrakenDecoder.resubscribe` asks for a new snapshot.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Literal

import msgspec

from ...book import Book
from ...exceptions import ConfigError
from ...protocol import BookUpdate
from . import (
    DEFAULT_KINDS,
    Delta,
    Event,
    Notice,
    Quote,
    Snapshot,
    Trades,
    VenueDecoder,
    VenueTrade,
    invalid_level,
)

__all__ = ["DEPTHS", "KrakenDecoder", "parse_time"]

#: The depths Kraken's book channel accepts.
DEPTHS = (10, 25, 100, 500, 1000)

_CHANNEL = {"book": "book", "trades": "trade", "ticker": "ticker"}
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


class _Level(msgspec.Struct, gc=False):
    price: Decimal
    qty: Decimal


class _Data(msgspec.Struct, gc=False):
    symbol: str = ""
    bids: list[_Level] | None = None
    asks: list[_Level] | None = None
    checksum: int | None = None
    timestamp: str = ""
    side: str = ""
    price: Decimal | None = None
    qty: Decimal | None = None
    trade_id: int | None = None
    bid: Decimal | None = None
    bid_qty: Decimal | None = None
    ask: Decimal | None = None
    ask_qty: Decimal | None = None


class _Frame(msgspec.Struct, gc=False):
    channel: str = ""
    type: str = ""
    data: list[_Data] | None = None
    method: str = ""
    success: bool | None = None
    error: str = ""


_decode = msgspec.json.Decoder(_Frame).decode


def parse_time(text: str) -> int:
    """Kraken's RFC 3339 time (``2023-09-25T07:49:37.708706Z``) in ns; 0 if malformed."""
    try:
        t = datetime.datetime.fromisoformat(text)
    except ValueError:
        return 0
    if t.tzinfo is None:
        t = t.replace(tzinfo=datetime.UTC)
    d = t - _EPOCH
    return (d.days * 86400 + d.seconds) * 1_000_000_000 + d.microseconds * 1000


class KrakenDecoder(VenueDecoder):
    """Kraken v2 (see the module docstring).

    Args:
        depth: the subscribed book depth (one of :data:`DEPTHS`).
        precisions: ``{symbol: (price_decimals, qty_decimals)}``, optional.
    """

    venue = "kraken"

    def __init__(
        self,
        symbols: Iterable[str],
        kinds: Iterable[str] = DEFAULT_KINDS,
        depth: int = 100,
        precisions: Mapping[str, tuple[int, int]] | None = None,
    ) -> None:
        super().__init__(symbols, kinds)
        if depth not in DEPTHS:
            raise ConfigError(f"Kraken book depth must be one of {DEPTHS}, not {depth}")
        self.depth = depth
        self.quantum: dict[str, tuple[Decimal, Decimal]] = {
            s: (Decimal(1).scaleb(-p), Decimal(1).scaleb(-q))
            for s, (p, q) in (precisions or {}).items()
        }
        self.frames: dict[str, int] = {}
        self.checked = 0

    def _reset_state(self) -> None:
        self.frames.clear()

    def _request(self, method: str, kind: str, symbols: list[str], req_id: int) -> bytes:
        params: dict[str, object] = {"channel": _CHANNEL[kind], "symbol": symbols}
        if kind == "book":
            params["depth"] = self.depth
        return msgspec.json.encode({"method": method, "params": params, "req_id": req_id})

    def subscribe(self) -> list[bytes]:
        names = [m.kraken for m in self.markets]
        return [self._request("subscribe", k, names, i + 1) for i, k in enumerate(self.kinds)]

    def resubscribe(self, symbol: str) -> list[bytes]:
        name = [self.markets.by_symbol[symbol].kraken]
        return [
            self._request("unsubscribe", "book", name, 98),
            self._request("subscribe", "book", name, 99),
        ]

    def _text(self, symbol: str, value: Decimal, qty: bool) -> str:
        q = self.quantum.get(symbol)
        if q is not None:
            value = value.quantize(q[1] if qty else q[0])
        return format(value, "f")

    def keepalive(self) -> bytes | None:
        return b'{"method":"ping"}'

    def feed(self, data: bytes | memoryview, now_ns: int) -> list[Event]:
        try:
            frame = _decode(data)
        except (msgspec.DecodeError, ArithmeticError) as exc:
            return [self.bad(data, f"undecodable frame ({exc})")]
        channel = frame.channel
        if channel == "book":
            out: list[Event] = []
            for item in frame.data or ():
                out += self._book(frame.type, item, data)
            return out
        if channel == "trade":
            return self._trades(frame, data)
        if channel == "ticker":
            return self._ticker(frame, data)
        if frame.method:
            if frame.success is False or frame.error:
                return [Notice("error", f"kraken {frame.method}: {frame.error}")]
            return [
                Notice(
                    "ack" if frame.method in ("subscribe", "unsubscribe") else "info", frame.method
                )
            ]
        if channel == "status" and b'"maintenance"' in bytes(data):
            return [Notice("shutdown", "kraken status: maintenance")]
        return []  # heartbeat, status

    def _symbol(self, item: _Data) -> str | None:
        m = self.markets.by_kraken.get(item.symbol)
        return m.symbol if m is not None else None

    def _book(self, kind: str, item: _Data, data: bytes | memoryview) -> list[Event]:
        symbol = self._symbol(item)
        if symbol is None:
            return [self.bad(data, f"unknown symbol {item.symbol!r}")]
        ts = parse_time(item.timestamp)
        text = self._text
        bids = [
            (text(symbol, lv.price, False), text(symbol, lv.qty, True)) for lv in item.bids or ()
        ]
        asks = [
            (text(symbol, lv.price, False), text(symbol, lv.qty, True)) for lv in item.asks or ()
        ]
        wrong = invalid_level(bids) or invalid_level(asks)
        if wrong is not None:
            self.frames.pop(symbol, None)
            return [self.bad(data, wrong), self.hole(symbol, "bad_frame", wrong)]
        if kind == "snapshot":
            book = Book()
            try:
                book.load(bids, asks)
            except ValueError as exc:
                return [self.bad(data, str(exc)), self.hole(symbol, "bad_frame", str(exc))]
            self._truncate(book)
            self.books[symbol] = book
            self.frames[symbol] = 0
            failed = self._verify(symbol, book, item)
            if failed is not None:
                return [failed]
            return [Snapshot(symbol, book.bids(), book.asks(), 0, ts)]
        if kind != "update":
            return [self.bad(data, f"unknown book type {kind!r}")]
        known = self.books.get(symbol)
        if known is None:
            return []  # waiting for the snapshot a resubscribe asked for
        book = known
        updates = [BookUpdate("bid", p, q, ts) for p, q in bids]
        updates += [BookUpdate("ask", p, q, ts) for p, q in asks]
        try:
            book.apply_updates(updates)
        except ValueError as exc:
            return [self.bad(data, str(exc)), self.hole(symbol, "bad_frame", str(exc))]
        updates += self._truncate(book, ts)
        failed = self._verify(symbol, book, item)
        if failed is not None:
            return [failed]
        prev = self.frames[symbol]
        self.frames[symbol] = prev + 1
        return [Delta(symbol, updates, prev, prev + 1, ts)]

    def _truncate(self, book: Book, ts: int = 0) -> list[BookUpdate]:
        """Remove the levels beyond the subscribed depth; return them as deletes."""
        out: list[BookUpdate] = []
        nb, na = book.depth()
        n = self.depth
        if nb > n:
            for price, _ in book.bids()[n:]:
                book.apply("bid", price, "0")
                out.append(BookUpdate("bid", price, "0", ts))
        if na > n:
            for price, _ in book.asks()[n:]:
                book.apply("ask", price, "0")
                out.append(BookUpdate("ask", price, "0", ts))
        return out

    def _verify(self, symbol: str, book: Book, item: _Data) -> Event | None:
        if item.checksum is None:
            return None
        self.checked += 1
        mine = book.checksum()
        if mine == item.checksum:
            return None
        self.frames.pop(symbol, None)
        return self.hole(symbol, "checksum", f"checksum {item.checksum} sent, {mine} computed")

    def _trades(self, frame: _Frame, data: bytes | memoryview) -> list[Event]:
        by: dict[str, list[VenueTrade]] = {}
        for t in frame.data or ():
            symbol = self._symbol(t)
            if symbol is None:
                return [self.bad(data, f"unknown symbol {t.symbol!r}")]
            if t.price is None or t.qty is None or t.side not in ("buy", "sell"):
                return [self.bad(data, "trade without price, qty or side")]
            side: Literal["buy", "sell"] = "buy" if t.side == "buy" else "sell"
            trade = VenueTrade(
                str(t.trade_id if t.trade_id is not None else ""),
                self._text(symbol, t.price, False),
                self._text(symbol, t.qty, True),
                side,
                parse_time(t.timestamp),
            )
            wrong = invalid_level([(trade.price, trade.qty)])
            if wrong is not None:
                return [self.bad(data, f"trade {trade.id}: {wrong}")]
            by.setdefault(symbol, []).append(trade)
        return [Trades(s, ts) for s, ts in by.items()]

    def _ticker(self, frame: _Frame, data: bytes | memoryview) -> list[Event]:
        out: list[Event] = []
        for t in frame.data or ():
            symbol = self._symbol(t)
            if symbol is None:
                return [self.bad(data, f"unknown symbol {t.symbol!r}")]

            def txt(v: Decimal | None, qty: bool, symbol: str = symbol) -> str | None:
                return None if v is None else self._text(symbol, v, qty)

            out.append(
                Quote(
                    symbol,
                    txt(t.bid, False),
                    txt(t.bid_qty, True),
                    txt(t.ask, False),
                    txt(t.ask_qty, True),
                    0,
                )
            )
        return out
