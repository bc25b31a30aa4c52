"""Binance spot's public streams, decoded (Sans-I/O).

Streams followed: ``<sym>@depth@100ms`` (book), ``<sym>@trade`` (trades),
``<sym>@bookTicker`` (ticker), subscribed with one ``SUBSCRIBE`` request; frames may be
raw or wrapped ``{"stream":..,"data":..}`` (``/stream`` URLs).

The book follows Binance's documented procedure for a local order book:

1. diffs of a symbol without a book are buffered; the first one asks for a REST
   snapshot (:class:`SnapshotWanted`);
2. the snapshot's ``lastUpdateId`` must not be older than the stream: when
   ``lastUpdateId < U - 1`` of the first buffered diff, updates between them are in
   neither, so it is refused (``stale_snapshot``) and asked for again (Binance's guide
   refetches while ``lastUpdateId < U``; ``lastUpdateId == U - 1`` is continuous too);
3. buffered diffs with ``u <= lastUpdateId`` are dropped; the first applied one has
   ``U <= lastUpdateId + 1 <= u``;
4. then every diff must have ``U`` == the previous ``u`` + 1; ``u <=`` the book's id is
   an old diff (ignored); ``U >`` the book's id + 1 is a gap: the book is dropped
   (:class:`Hole`) and rebuilt from a new snapshot.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import msgspec

from ...book import Book
from ...protocol import BookUpdate
from . import (
    DEFAULT_KINDS,
    MS,
    Delta,
    Event,
    Notice,
    Quote,
    Snapshot,
    SnapshotWanted,
    Trades,
    VenueDecoder,
    VenueTrade,
    invalid_level,
)

__all__ = ["MAX_BUFFERED", "BinanceDecoder"]

#: Diffs buffered per symbol while its snapshot is fetched; past it the buffer restarts.
MAX_BUFFERED = 5000

_STREAM = {"book": "depth@100ms", "trades": "trade", "ticker": "bookTicker"}


class _Event(msgspec.Struct, gc=False):
    e: str = ""
    E: int = 0
    s: str = ""
    U: int = 0
    u: int = 0
    # depthUpdate: level lists; bookTicker: the best bid/ask prices.
    b: list[tuple[str, str]] | str | None = None
    a: list[tuple[str, str]] | str | int | None = None
    B: str = ""
    A: str = ""
    t: int = 0
    p: str = ""
    q: str = ""
    T: int = 0
    m: bool = False
    # Replies to requests.
    id: Any = None
    result: Any = None
    error: Any = None


class _Combined(msgspec.Struct, gc=False):
    stream: str
    data: _Event


class _Depth(msgspec.Struct, gc=False):
    lastUpdateId: int  # noqa: N815 - Binance's field name
    bids: list[tuple[str, str]]
    asks: list[tuple[str, str]]


_decode = msgspec.json.Decoder(_Event).decode
_decode_combined = msgspec.json.Decoder(_Combined).decode
_decode_depth = msgspec.json.Decoder(_Depth).decode


class _Sym:
    """One symbol's sync state: its book (once synced), its id, the buffered diffs."""

    __slots__ = ("book", "last", "buffer", "wanted")

    def __init__(self) -> None:
        self.book: Book | None = None
        self.last = -1
        self.buffer: list[_Event] = []
        self.wanted = False


class BinanceDecoder(VenueDecoder):
    """Binance spot (see the module docstring)."""

    venue = "binance"

    def __init__(
        self,
        symbols: Iterable[str],
        kinds: Iterable[str] = DEFAULT_KINDS,
        snapshot_limit: int = 1000,
    ) -> None:
        super().__init__(symbols, kinds)
        self.limit = snapshot_limit
        self.state = {m.symbol: _Sym() for m in self.markets}
        self.snapshots_refused = 0

    def _reset_state(self) -> None:
        self.state = {m.symbol: _Sym() for m in self.markets}

    def streams(self) -> list[str]:
        """The stream names followed (``btcusdt@depth@100ms`` ...)."""
        return [f"{m.binance_stream}@{_STREAM[k]}" for m in self.markets for k in self.kinds]

    def subscribe(self) -> list[bytes]:
        return [msgspec.json.encode({"method": "SUBSCRIBE", "params": self.streams(), "id": 1})]

    def resubscribe(self, symbol: str) -> list[bytes]:
        return []  # the next diff asks for a REST snapshot

    # -- frames ---------------------------------------------------------------------------

    def feed(self, data: bytes | memoryview, now_ns: int) -> list[Event]:
        try:
            if b'"stream"' in bytes(data[:16]):
                ev = _decode_combined(data).data
            else:
                ev = _decode(data)
        except msgspec.DecodeError as exc:
            return [self.bad(data, f"undecodable frame ({exc})")]
        kind = ev.e
        if kind == "depthUpdate":
            return self._depth(ev, data)
        if kind in ("trade", "aggTrade"):
            return self._trade(ev, data)
        if not kind and isinstance(ev.b, str) and ev.s:
            m = self.markets.by_binance.get(ev.s)
            if m is None:
                return [self.bad(data, f"unknown symbol {ev.s!r}")]
            ask = ev.a if isinstance(ev.a, str) else None
            return [Quote(m.symbol, ev.b, ev.B or None, ask, ev.A or None, 0)]
        if kind == "serverShutdown":
            return [Notice("shutdown", f"binance serverShutdown at {ev.E}")]
        if ev.error is not None:
            return [Notice("error", f"binance refused request {ev.id}: {ev.error}")]
        if ev.id is not None:
            return [Notice("ack", f"request {ev.id} accepted")]
        return [Notice("info", f"ignored: {bytes(data[:120]).decode('utf-8', 'replace')}")]

    def _trade(self, ev: _Event, data: bytes | memoryview) -> list[Event]:
        m = self.markets.by_binance.get(ev.s)
        if m is None:
            return [self.bad(data, f"unknown symbol {ev.s!r}")]
        tid = ev.t if ev.e == "trade" else ev.a
        if not ev.p or not ev.q or not isinstance(tid, int):
            return [self.bad(data, "trade without id, price or quantity")]
        wrong = invalid_level([(ev.p, ev.q)])
        if wrong is not None:
            return [self.bad(data, f"trade {tid}: {wrong}")]
        # ``m``: the buyer was the maker, so the taker sold.
        side: Literal["buy", "sell"] = "sell" if ev.m else "buy"
        return [Trades(m.symbol, [VenueTrade(str(tid), ev.p, ev.q, side, ev.T * MS)])]

    def _depth(self, ev: _Event, data: bytes | memoryview) -> list[Event]:
        m = self.markets.by_binance.get(ev.s)
        if m is None:
            return [self.bad(data, f"unknown symbol {ev.s!r}")]
        if not isinstance(ev.b, list) or not isinstance(ev.a, list) or ev.U > ev.u:
            return [self.bad(data, "depthUpdate without U <= u and b/a level lists")]
        wrong = invalid_level(ev.b) or invalid_level(ev.a)
        if wrong is not None:
            symbol = m.symbol
            if self.state[symbol].book is None:
                return [self.bad(data, wrong)]
            return [self.bad(data, wrong), self._gap(symbol, f"unusable diff u={ev.u}: {wrong}")]
        symbol = m.symbol
        st = self.state[symbol]
        if st.book is None:
            out: list[Event] = []
            if len(st.buffer) >= MAX_BUFFERED:
                st.buffer.clear()  # the snapshot never came: start the episode again
                st.wanted = False
            st.buffer.append(ev)
            if not st.wanted:
                st.wanted = True
                out.append(SnapshotWanted(symbol, m.binance, self.limit))
            return out
        if ev.u <= st.last:
            return []  # an old diff (a resubscribed duplicate)
        if ev.U > st.last + 1:
            return [
                self._gap(
                    symbol, f"U={ev.U} after u={st.last}: ids {st.last + 1}..{ev.U - 1} missing"
                )
            ]
        try:
            return [self._apply(symbol, st, ev)]
        except ValueError as exc:  # BookError: a price that is not a positive decimal
            gap = self._gap(symbol, f"unusable level at u={ev.u}: {exc}")
            return [self.bad(data, str(exc)), gap]

    def _gap(self, symbol: str, detail: str) -> Event:
        st = self.state[symbol]
        st.book, st.last, st.buffer, st.wanted = None, -1, [], False
        return self.hole(symbol, "gap", detail)

    def _apply(self, symbol: str, st: _Sym, ev: _Event) -> Delta:
        book = st.book
        assert book is not None and isinstance(ev.b, list) and isinstance(ev.a, list)
        ts = ev.E * MS
        updates = [BookUpdate("bid", p, q, ts) for p, q in ev.b]
        updates += [BookUpdate("ask", p, q, ts) for p, q in ev.a]
        book.apply_updates(updates)
        prev, st.last = st.last, ev.u
        return Delta(symbol, updates, prev, ev.u, ts)

    # -- the REST snapshot ----------------------------------------------------------------

    def snapshot(self, symbol: str, body: bytes, now_ns: int) -> list[Event]:
        st = self.state.get(symbol)
        if st is None:
            return [Notice("bad", f"snapshot of an unfollowed symbol {symbol!r}")]
        try:
            depth = _decode_depth(body)
        except msgspec.DecodeError as exc:
            st.wanted = False
            return [self.bad(body, f"REST depth of {symbol} undecodable ({exc})")]
        if st.book is not None:
            return []  # already synced (a late answer)
        wrong = invalid_level(depth.bids) or invalid_level(depth.asks)
        if wrong is not None:
            st.wanted = False
            return [self.bad(body, f"REST depth of {symbol}: {wrong}")]
        lid = depth.lastUpdateId
        first = st.buffer[0] if st.buffer else None
        if first is not None and lid < first.U - 1:
            # Older than the stream: updates lid+1..U-1 are in neither. Ask again.
            self.snapshots_refused += 1
            st.wanted = False
            detail = f"lastUpdateId={lid} older than the first buffered U={first.U}"
            return [self.hole(symbol, "stale_snapshot", detail)]
        book = Book()
        try:
            book.load(depth.bids, depth.asks)
        except ValueError as exc:
            st.wanted = False
            return [self.bad(body, f"REST depth of {symbol}: {exc}")]
        st.book, st.last, st.wanted = book, lid, False
        self.books[symbol] = book
        out: list[Event] = [Snapshot(symbol, depth.bids, depth.asks, lid, now_ns)]
        buffered, st.buffer = st.buffer, []
        for ev in buffered:
            if ev.u <= st.last:
                continue
            if ev.U > st.last + 1:
                out.append(
                    self._gap(
                        symbol, f"U={ev.U} after u={st.last}: ids {st.last + 1}..{ev.U - 1} missing"
                    )
                )
                break
            try:
                out.append(self._apply(symbol, st, ev))
            except ValueError as exc:
                out.append(self._gap(symbol, f"unusable level at u={ev.u}: {exc}"))
                break
        return out

    def snapshot_failed(self, symbol: str, detail: str) -> list[Event]:
        st = self.state.get(symbol)
        if st is not None:
            st.wanted = False
        return [Notice("error", f"REST depth of {symbol} failed: {detail}")]
