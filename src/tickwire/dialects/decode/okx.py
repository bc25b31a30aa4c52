"""OKX v5's public channels, decoded (Sans-I/O).

Channels followed: ``books`` (book), ``trades``, ``tickers`` (ticker), subscribed with
one ``{"op":"subscribe","args":[...]}``.

The book follows OKX's rules: a ``snapshot`` (``prevSeqId`` -1) loads it; an ``update``
applies only when its ``prevSeqId`` equals the ``seqId`` last applied (ids jump by
arbitrary steps; an update with ``seqId == prevSeqId`` carries no change); anything
else is a gap. After each push the signed CRC32 of the best 25 bids and asks
(``bidPx:bidSz:askPx:askSz:...``, the strings as sent) must equal ``checksum``; OKX has
announced a ``checksum`` fixed at 0 on its JSON books, so 0 is taken as "not sent" and
only the ``seqId`` chain is checked then. A gap or a failed checksum drops the book
(:class:`Hole`) and :meth:`OkxDecoder.resubscribe` asks for a new snapshot
(unsubscribe, then subscribe).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import msgspec

from ...book import Book
from ...protocol import BookUpdate
from ..okx import CHECKSUM_DEPTH, checksum
from . import (
    DEFAULT_KINDS,
    MS,
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

__all__ = ["OkxDecoder"]

_CHANNEL = {"book": "books", "trades": "trades", "ticker": "tickers"}


class _Arg(msgspec.Struct, gc=False):
    channel: str = ""
    instId: str = ""  # noqa: N815 - OKX's field name


class _Data(msgspec.Struct, gc=False):
    asks: list[list[str]] | None = None
    bids: list[list[str]] | None = None
    ts: str = "0"
    checksum: int = 0
    prevSeqId: int = -1  # noqa: N815 - OKX's field name
    seqId: int = -1  # noqa: N815 - OKX's field name
    instId: str = ""  # noqa: N815
    tradeId: str = ""  # noqa: N815
    px: str = ""
    sz: str = ""
    side: str = ""
    bidPx: str = ""  # noqa: N815
    bidSz: str = ""  # noqa: N815
    askPx: str = ""  # noqa: N815
    askSz: str = ""  # noqa: N815


class _Push(msgspec.Struct, gc=False):
    arg: _Arg | None = None
    action: str = ""
    data: list[_Data] | None = None
    event: str = ""
    code: str = ""
    msg: str = ""


_decode = msgspec.json.Decoder(_Push).decode


def _ms(ts: str) -> int:
    return int(ts) * MS if ts.isdigit() else 0


def _pairs(levels: list[list[str]] | None) -> list[tuple[str, str]]:
    if levels is None:
        return []
    return [(lv[0], lv[1]) for lv in levels]


class OkxDecoder(VenueDecoder):
    """OKX v5 (see the module docstring)."""

    venue = "okx"

    def __init__(self, symbols: Iterable[str], kinds: Iterable[str] = DEFAULT_KINDS) -> None:
        super().__init__(symbols, kinds)
        self.last: dict[str, int] = {}
        self.checked = 0

    def _reset_state(self) -> None:
        self.last.clear()

    def _args(
        self, kinds: Iterable[str], symbols: Iterable[str] | None = None
    ) -> list[dict[str, str]]:
        ms = (
            [self.markets.by_symbol[s] for s in symbols]
            if symbols is not None
            else list(self.markets)
        )
        return [{"channel": _CHANNEL[k], "instId": m.okx} for m in ms for k in kinds]

    def subscribe(self) -> list[bytes]:
        return [msgspec.json.encode({"op": "subscribe", "args": self._args(self.kinds)})]

    def resubscribe(self, symbol: str) -> list[bytes]:
        args = self._args(("book",), (symbol,))
        return [
            msgspec.json.encode({"op": "unsubscribe", "args": args}),
            msgspec.json.encode({"op": "subscribe", "args": args}),
        ]

    def keepalive(self) -> bytes | None:
        return b"ping"  # answered with a text "pong"

    def feed(self, data: bytes | memoryview, now_ns: int) -> list[Event]:
        if bytes(data[:4]) == b"pong":
            return []
        try:
            push = _decode(data)
        except msgspec.DecodeError as exc:
            return [self.bad(data, f"undecodable frame ({exc})")]
        if push.event:
            if push.event == "notice" and push.code == "64008":
                return [Notice("shutdown", f"okx notice {push.code}: {push.msg}")]
            if push.event == "error":
                return [Notice("error", f"okx error {push.code}: {push.msg}")]
            return [
                Notice("ack" if push.event in ("subscribe", "unsubscribe") else "info", push.event)
            ]
        arg, items = push.arg, push.data
        if arg is None or items is None:
            return [self.bad(data, "a push without arg or data")]
        m = self.markets.by_okx.get(arg.instId)
        if m is None:
            return [self.bad(data, f"unknown instId {arg.instId!r}")]
        symbol = m.symbol
        channel = arg.channel
        if channel == "books":
            out: list[Event] = []
            for item in items:
                out += self._book(symbol, push.action, item, data)
            return out
        if channel == "trades":
            trades = []
            for t in items:
                if not t.px or not t.sz or t.side not in ("buy", "sell"):
                    return [self.bad(data, "trade without px, sz or side")]
                wrong = invalid_level([(t.px, t.sz)])
                if wrong is not None:
                    return [self.bad(data, f"trade {t.tradeId}: {wrong}")]
                side: Literal["buy", "sell"] = "buy" if t.side == "buy" else "sell"
                trades.append(VenueTrade(t.tradeId, t.px, t.sz, side, _ms(t.ts)))
            return [Trades(symbol, trades)]
        if channel == "tickers":
            return [
                Quote(
                    symbol,
                    t.bidPx or None,
                    t.bidSz or None,
                    t.askPx or None,
                    t.askSz or None,
                    _ms(t.ts),
                )
                for t in items
            ]
        return [Notice("info", f"ignored channel {channel!r}")]

    def _book(self, symbol: str, action: str, item: _Data, data: bytes | memoryview) -> list[Event]:
        ts = _ms(item.ts)
        try:
            bids, asks = _pairs(item.bids), _pairs(item.asks)
        except IndexError:
            return [
                self.bad(data, "a level without price and size"),
                *self._drop(symbol, "bad_frame", "malformed level"),
            ]
        wrong = invalid_level(bids) or invalid_level(asks)
        if wrong is not None:
            return [self.bad(data, wrong), *self._drop(symbol, "bad_frame", wrong)]
        if action == "snapshot":
            book = Book()
            try:
                book.load(bids, asks)
            except ValueError as exc:
                return [self.bad(data, str(exc)), *self._drop(symbol, "bad_frame", str(exc))]
            self.books[symbol] = book
            self.last[symbol] = item.seqId
            failed = self._verify(symbol, book, item)
            if failed is not None:
                return [failed]
            return [Snapshot(symbol, book.bids(), book.asks(), item.seqId, ts)]
        if action != "update":
            return [self.bad(data, f"unknown action {action!r}")]
        known = self.books.get(symbol)
        if known is None:
            return []  # waiting for the snapshot a resubscribe asked for
        book = known
        last = self.last[symbol]
        if item.prevSeqId != last:
            detail = (
                f"prevSeqId={item.prevSeqId} but the last applied seqId={last} (seqId={item.seqId})"
            )
            return self._drop(symbol, "gap", detail)
        updates = [BookUpdate("bid", p, q, ts) for p, q in bids]
        updates += [BookUpdate("ask", p, q, ts) for p, q in asks]
        try:
            book.apply_updates(updates)
        except ValueError as exc:
            return [self.bad(data, str(exc)), *self._drop(symbol, "bad_frame", str(exc))]
        self.last[symbol] = item.seqId
        failed = self._verify(symbol, book, item)
        if failed is not None:
            return [failed]
        return [Delta(symbol, updates, last, item.seqId, ts)]

    def _verify(self, symbol: str, book: Book, item: _Data) -> Event | None:
        if item.checksum == 0:
            return None  # not sent (OKX's deprecation): the seqId chain is the check
        self.checked += 1
        mine = checksum(book.bids(CHECKSUM_DEPTH), book.asks(CHECKSUM_DEPTH))
        if mine == item.checksum:
            return None
        detail = f"checksum {item.checksum} sent, {mine} computed at seqId={item.seqId}"
        self.last.pop(symbol, None)
        return self.hole(symbol, "checksum", detail)

    def _drop(self, symbol: str, reason: str, detail: str) -> list[Event]:
        self.last.pop(symbol, None)
        return [self.hole(symbol, reason, detail)]
