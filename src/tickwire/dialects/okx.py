"""OKX v5 (spot, public channels), as ccxt.pro and cryptofeed read it (Sans-I/O).

WebSocket paths (on the gateway's port): ``/okx/ws/v5/public`` (books, trades,
tickers) and ``/okx/ws/v5/business`` (candles). Requests::

    {"op": "subscribe",   "args": [{"channel": "books", "instId": "BTC-USDT"}, ...]}
    {"op": "unsubscribe", "args": [...]}
    ping                   (a text frame) -> pong

Each arg is acked ``{"event":"subscribe","arg":{...},"connId":"<8 hex>"}`` (``id``
echoed when the request had one), before its first data. A request is all or nothing:
one unknown channel or instrument refuses it with one error and subscribes nothing.
Subscriptions are idempotent per (connection, channel, instId): a repeated subscribe is
acked and never streams a channel twice (cryptofeed resends every arg it subscribed
before, dialects.md §4.1); a repeated book subscribe sends a fresh snapshot.

Channels: ``books`` (a snapshot of up to 400 levels a side, then an update every
100 ms), ``books5`` (the top 5, every 100 ms when they changed), ``bbo-tbt`` (the top
level, every pass), ``trades`` (one push per trade), ``tickers`` (at most every 100 ms);
``candle<bar>`` on the business socket (bars aligned on UTC only).

Sequencing: ``seqId`` is the native ``book.<SYM>`` channel's seq; an update's
``prevSeqId`` is the ``seqId`` of the previous books push of the connection (-1 on a
snapshot), and ``checksum`` is OKX's signed CRC32 of the top 25 + 25 levels after the
push. A lagging subscriber gets one merged update from what it has (or a snapshot); a
book replaced upstream sends every subscriber a snapshot.

Errors have OKX's shape ``{"event":"error","code":"60012","msg":..,"connId":..}``;
REST answers ``{"code":"0","msg":"","data":[...]}`` or OKX's error codes.
"""

from __future__ import annotations

import re
import secrets
import zlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import msgspec

from ..book import Book, is_zero
from ..framing import text_frame
from ..protocol import Ticker, Trade
from .candles import INTERVALS, Candle, Candles, ms, now_ms, rolling_stats
from .feed import (
    DialectFeed,
    DialectSubscriber,
    LevelKey,
    Renderer,
    Stream,
    Tap,
    Window,
    reply,
)
from .markets import Market, Markets
from .rest import MarketView, RestError, RestResponse, Route, answer, int_param, precision, step

__all__ = ["FAULT_HOOKS", "CHANNELS", "OkxSession", "checksum", "open_session", "rest"]

_json = msgspec.json.Encoder()
_decode = msgspec.json.Decoder()

#: Levels a side of a ``books`` snapshot (and of the window its updates keep).
BOOK_DEPTH = 400

#: Levels a side in the checksum.
CHECKSUM_DEPTH = 25

#: The public channels served.
CHANNELS = ("books", "books5", "bbo-tbt", "trades", "tickers")

_BOOK_CHANNELS = ("books", "books5", "bbo-tbt")

#: ``/api/v5/public/instruments`` instrument types (only SPOT has instruments).
_INST_TYPES = ("SPOT", "MARGIN", "SWAP", "FUTURES", "OPTION")

#: OKX candle bars served and the candle interval each is built from: the ones aligned
#: on UTC (OKX's ``6H``, ``12H``, ``1D``, ``1W``, ``1M`` open at UTC+8 midnight: not
#: served; their ``utc`` variants are, but for ``1Wutc``).
BARS = {
    "1s": "1s",
    "1m": "1m",
    "3m": "3m",
    "5m": "5m",
    "15m": "15m",
    "30m": "30m",
    "1H": "1h",
    "2H": "2h",
    "4H": "4h",
    "6Hutc": "6h",
    "12Hutc": "12h",
    "1Dutc": "1d",
    "1Mutc": "1M",
}

#: The channels of the ``/ws/v5/business`` socket: ``candle<bar>``.
CANDLE_CHANNELS = tuple(f"candle{bar}" for bar in BARS)

_DAY_MS = 24 * 3600 * 1000
_UTC8_MS = 8 * 3600 * 1000


def checksum(bids: list[tuple[str, str]], asks: list[tuple[str, str]]) -> int:
    """OKX's book checksum: CRC32 of ``bid:qty:ask:qty:...`` over 25 + 25, signed.

    ``bids`` and ``asks`` are best first, with the strings as sent. Levels alternate
    bid, ask; when one side runs out the other continues alone.
    """
    parts: list[str] = []
    nb, na = min(len(bids), CHECKSUM_DEPTH), min(len(asks), CHECKSUM_DEPTH)
    for i in range(max(nb, na)):
        if i < nb:
            parts += bids[i]
        if i < na:
            parts += asks[i]
    crc = zlib.crc32(":".join(parts).encode())
    return crc - (1 << 32) if crc >= 1 << 31 else crc


_Level = tuple[str, str, str, str]


def _levels(pairs: Iterable[tuple[str, str]]) -> list[_Level]:
    """OKX levels ``[px, sz, "0", orders]`` (a deleted level: ``sz`` and orders "0")."""
    return [(p, "0", "0", "0") if is_zero(q) else (p, q, "0", "1") for p, q in pairs]


# -- pushes --------------------------------------------------------------------------------


class _Arg(msgspec.Struct):
    channel: str
    instId: str  # noqa: N815 - OKX's field name


class _BookData(msgspec.Struct):
    asks: list[_Level]
    bids: list[_Level]
    ts: str
    checksum: int
    prevSeqId: int  # noqa: N815 - OKX's field name
    seqId: int  # noqa: N815 - OKX's field name


class _BookPush(msgspec.Struct):
    arg: _Arg
    action: str
    data: list[_BookData]


class _TopData(msgspec.Struct, omit_defaults=True):
    asks: list[_Level]
    bids: list[_Level]
    ts: str
    seqId: int  # noqa: N815 - OKX's field name
    instId: str | None = None  # noqa: N815 - OKX's field name


class _TopPush(msgspec.Struct):
    arg: _Arg
    data: list[_TopData]


class _TradeData(msgspec.Struct):
    instId: str  # noqa: N815 - OKX's field name
    tradeId: str  # noqa: N815 - OKX's field name
    px: str
    sz: str
    side: str
    ts: str
    count: str


class _TradePush(msgspec.Struct):
    arg: _Arg
    data: list[_TradeData]


# -- renderers -----------------------------------------------------------------------------


class _Okx(Renderer):
    def __init__(self, market: Market, channel: str) -> None:
        self.market = market
        self.arg = _Arg(channel, market.okx)

    @staticmethod
    def ts(tap: Tap) -> str:
        return str(ms(tap.ts) or now_ms())


class Books(_Okx):
    """``books``: a snapshot on subscribe, then the changes of every 100 ms window.

    The stream keeps OKX's 400-level window: while a side is deeper than that, an
    update also carries the levels that entered the top 400 and deletes (``"0"``) for
    those that left it, so a client's book is always the top 400.

    State shared by every subscriber (they all hold the same book at ``last``):
    ``last`` is the ``seqId`` of the latest push (None before the book is known), and
    ``shown`` the levels a client holds (the top 400 at ``last``).
    """

    interval = 0.1

    def __init__(self, market: Market) -> None:
        super().__init__(market, "books")
        self.last: int | None = None
        self.shown: tuple[dict[str, str], dict[str, str]] = ({}, {})
        self.deep = False
        # After a snapshot for everyone at a seq past the window's ``prev``: a
        # subscriber lagging from that ``prev`` holds the snapshot's seq.
        self.alias: tuple[int, int] | None = None

    def _push(self, tap: Tap, action: str, data: _BookData) -> bytes:
        return text_frame(_json.encode(_BookPush(self.arg, action, [data])))

    def _snapshot(self, tap: Tap, seq: int) -> bytes:
        book = tap.book
        bids, asks = book.bids(BOOK_DEPTH), book.asks(BOOK_DEPTH)
        nb, na = book.depth()
        self.deep = nb > BOOK_DEPTH or na > BOOK_DEPTH
        self.shown = (dict(bids), dict(asks))
        self.last = seq
        data = _BookData(_levels(asks), _levels(bids), self.ts(tap), checksum(bids, asks), -1, seq)
        return self._push(tap, "snapshot", data)

    def _update(
        self, tap: Tap, prev: int, seq: int, changes: Iterable[tuple[LevelKey, str]]
    ) -> bytes:
        book = tap.book
        nb, na = book.depth()
        shown_bids, shown_asks = self.shown
        if not self.deep and nb <= BOOK_DEPTH and na <= BOOK_DEPTH:
            bids: list[tuple[str, str]] = []
            asks: list[tuple[str, str]] = []
            for (side, price), qty in changes:
                if side == "bid":
                    bids.append((price, qty))
                    shown = shown_bids
                else:
                    asks.append((price, qty))
                    shown = shown_asks
                if is_zero(qty):
                    shown.pop(price, None)
                else:
                    shown[price] = qty
        else:
            top_bids, top_asks = book.bids(BOOK_DEPTH), book.asks(BOOK_DEPTH)
            bids = _window_diff(shown_bids, top_bids)
            asks = _window_diff(shown_asks, top_asks)
            self.shown = (dict(top_bids), dict(top_asks))
            self.deep = nb > BOOK_DEPTH or na > BOOK_DEPTH
        self.last = seq
        cs = checksum(book.bids(CHECKSUM_DEPTH), book.asks(CHECKSUM_DEPTH))
        data = _BookData(_levels(asks), _levels(bids), self.ts(tap), cs, prev, seq)
        return self._push(tap, "update", data)

    def book(self, tap: Tap, window: Window) -> bytes | None:
        last = self.last
        if last is None or window.seq <= last:
            return None
        return self._update(tap, last, window.seq, window.levels.items())

    def join(self, tap: Tap) -> bytes | None:
        if not tap.loaded:
            return None  # the snapshot comes with reset(first=True)
        return self._snapshot(tap, tap.windows[self.interval].seq)

    def reset(self, tap: Tap, first: bool) -> bytes | None:
        if first and self.last is not None:
            return None  # every subscriber joined with a snapshot
        w = tap.windows[self.interval]
        self.alias = (w.prev, w.seq)
        return self._snapshot(tap, w.seq)

    def catch_up(
        self, tap: Tap, since: int, levels: list[tuple[LevelKey, str]] | None
    ) -> bytes | None:
        seq = tap.windows[self.interval].seq
        if levels is None or self.deep or self.last is None or since < 0:
            return self._snapshot(tap, seq)
        alias = self.alias
        prev = alias[1] if alias is not None and since == alias[0] else since
        if prev >= seq:
            return None
        frame = self._update(tap, prev, seq, levels)
        # No subscriber may have been rendered to while this one lagged: re-base.
        book = tap.book
        self.shown = (dict(book.bids(BOOK_DEPTH)), dict(book.asks(BOOK_DEPTH)))
        return frame


def _window_diff(shown: dict[str, str], top: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Levels taking a client from ``shown`` to ``top``: changes, entries, exits."""
    out = [(p, q) for p, q in top if shown.get(p) != q]
    inside = {p for p, _ in top}
    out += [(p, "0") for p in shown if p not in inside]
    return out


class TopBooks(_Okx):
    """``books5`` (every 100 ms) and ``bbo-tbt`` (every pass): the top N levels, whole,
    whenever they changed."""

    def __init__(self, market: Market, channel: str, depth: int, interval: float) -> None:
        super().__init__(market, channel)
        self.depth = depth
        self.interval = interval
        self.inst = market.okx if channel == "books5" else None
        self.sent: tuple[list[tuple[str, str]], list[tuple[str, str]]] | None = None

    def _top(self, tap: Tap, force: bool) -> bytes | None:
        if not tap.loaded:
            return None
        book = tap.book
        top = (book.bids(self.depth), book.asks(self.depth))
        if top == self.sent and not force:
            return None
        self.sent = top
        bids, asks = top
        seq = tap.windows[self.interval].seq
        data = _TopData(_levels(asks), _levels(bids), self.ts(tap), seq, self.inst)
        return text_frame(_json.encode(_TopPush(self.arg, [data])))

    def book(self, tap: Tap, window: Window) -> bytes | None:
        return self._top(tap, False)

    def join(self, tap: Tap) -> bytes | None:
        return self._top(tap, True)

    def reset(self, tap: Tap, first: bool) -> bytes | None:
        return self._top(tap, not first)

    def catch_up(
        self, tap: Tap, since: int, levels: list[tuple[LevelKey, str]] | None
    ) -> bytes | None:
        return self._top(tap, True)


class Trades(_Okx):
    """``trades``: one push per trade (``side``: the taker's)."""

    source = "trades"
    conflates = False

    def __init__(self, market: Market) -> None:
        super().__init__(market, "trades")

    def trades(self, tap: Tap, trades: list[Trade]) -> bytes | None:
        arg, inst, encode = self.arg, self.market.okx, _json.encode
        return b"".join(
            text_frame(
                encode(
                    _TradePush(
                        arg,
                        [_TradeData(inst, str(t.id), t.price, t.qty, t.side, str(ms(t.ts)), "1")],
                    )
                )
            )
            for t in trades
        )


def ticker_data(market: Market, candles: Candles, ticker: Ticker, last_sz: str) -> dict[str, str]:
    """An OKX ticker (24 h rolling statistics from the minute candles)."""
    now = now_ms()
    stats = rolling_stats(candles, ticker, now)
    return {
        "instType": "SPOT",
        "instId": market.okx,
        "last": stats["lastPrice"],
        "lastSz": last_sz,
        "askPx": ticker.ask or "",
        "askSz": ticker.ask_qty or "",
        "bidPx": ticker.bid or "",
        "bidSz": ticker.bid_qty or "",
        "open24h": stats["openPrice"],
        "high24h": stats["highPrice"],
        "low24h": stats["lowPrice"],
        "volCcy24h": stats["quoteVolume"],
        "vol24h": stats["volume"],
        "sodUtc0": _day_open(candles, now, 0) or stats["openPrice"],
        "sodUtc8": _day_open(candles, now, _UTC8_MS) or stats["openPrice"],
        "ts": str(now),
    }


def _day_open(candles: Candles, now_ms: int, offset_ms: int) -> str | None:
    """The first price of the day (UTC + ``offset_ms``) from the minute candles."""
    start = (now_ms + offset_ms) // _DAY_MS * _DAY_MS - offset_ms
    first = candles.series("1m", start, None, 1)
    return first[0].open if first else None


class Tickers(_Okx):
    """``tickers``: the ticker whenever it changes, at most every 100 ms."""

    source = "ticker"

    def __init__(self, market: Market) -> None:
        super().__init__(market, "tickers")
        self.next = 0.0

    def ticker(self, tap: Tap, ticker: Ticker, now: float) -> bytes | None:
        if now and now < self.next:
            return None
        self.next = now + 0.1
        last_sz = tap.recent[-1].qty if tap.recent else "0"
        data = ticker_data(self.market, tap.candles, ticker, last_sz)
        return text_frame(_json.encode({"arg": self.arg, "data": [data]}))


def candle_row(candles: Candles, c: Candle, interval: str, now_ms: int) -> list[str]:
    """``[ts, o, h, l, c, vol, volCcy, volCcyQuote, confirm]`` (confirm "1": closed)."""
    quote = candles.quote(c.quote_volume)
    closed = c.start + INTERVALS[interval] <= now_ms
    vol = candles.volume(c.volume)
    return [str(c.start), c.open, c.high, c.low, c.close, vol, quote, quote, "1" if closed else "0"]


class CandleStream(_Okx):
    """``candle<bar>`` (business socket): the open candle every 500 ms, and each candle
    once more with ``confirm: "1"`` when the next one opens."""

    source = "timer"
    interval = 0.5

    def __init__(self, market: Market, channel: str) -> None:
        super().__init__(market, channel)
        self.candle_interval = BARS[channel[len("candle") :]]
        self.open_start = -1

    def timer(self, tap: Tap, now: float) -> bytes | None:
        candles = tap.candles
        series = candles.series(self.candle_interval, limit=2)
        if not series:
            return None
        stamp = now_ms()
        rows = []
        last = series[-1]
        if self.open_start >= 0 and last.start != self.open_start:
            rows += [c for c in series if c.start == self.open_start]
        self.open_start = last.start
        rows.append(last)
        return b"".join(
            text_frame(
                _json.encode(
                    {
                        "arg": self.arg,
                        "data": [candle_row(candles, c, self.candle_interval, stamp)],
                    }
                )
            )
            for c in rows
        )


def _factory(market: Market, channel: str) -> Callable[[], Renderer] | None:
    if channel in CANDLE_CHANNELS:
        return lambda: CandleStream(market, channel)
    if channel == "books":
        return lambda: Books(market)
    if channel == "books5":
        return lambda: TopBooks(market, "books5", 5, 0.1)
    if channel == "bbo-tbt":
        return lambda: TopBooks(market, "bbo-tbt", 1, 0.0)
    if channel == "trades":
        return lambda: Trades(market)
    if channel == "tickers":
        return lambda: Tickers(market)
    return None


# -- a connection ----------------------------------------------------------------------------


def _clip(text: str, n: int = 200) -> str:
    return text if len(text) <= n else text[:n] + "..."


class OkxSession:
    """One OKX WebSocket connection's requests and subscriptions."""

    venue = "okx"

    def __init__(self, feed: DialectFeed, channels: tuple[str, ...] = CHANNELS) -> None:
        self.feed = feed
        self.channels = channels
        self.conn_id = secrets.token_hex(4)
        # (channel, instId) -> stream.
        self.subs: dict[tuple[str, str], Stream] = {}

    def open(self, sub: DialectSubscriber) -> None:
        """Nothing is sent first."""

    def rate_limited(self, reason: str) -> bytes:
        """OKX's "Requests too frequent" (60014)."""
        body = {
            "event": "error",
            "code": "60014",
            "msg": "Requests too frequent.",
            "connId": self.conn_id,
        }
        return text_frame(_json.encode(body))

    def _error(
        self, sub: DialectSubscriber, code: str, msg: str, reason: str, rid: str | None
    ) -> None:
        sub.rejected(code, reason)
        body: dict[str, Any] = {"event": "error", "code": code, "msg": msg, "connId": self.conn_id}
        if rid is not None:
            body = {"id": rid, **body}
        reply(sub, text_frame(_json.encode(body)))

    def receive(self, sub: DialectSubscriber, text: bytes) -> None:
        """Handle one text frame from the client."""
        if text == b"ping":
            reply(sub, text_frame(b"pong"))
            return
        shown = _clip(text.decode("utf-8", "replace"))
        try:
            req = _decode.decode(text)
        except msgspec.DecodeError:
            self._error(sub, "60012", f"Invalid request: {shown}", "malformed JSON", None)
            return
        if not isinstance(req, dict):
            self._error(sub, "60012", f"Invalid request: {shown}", "not an object", None)
            return
        rid = req.get("id")
        if rid is not None and not isinstance(rid, str):
            self._error(sub, "60012", f"Invalid request: {shown}", "id must be a string", None)
            return
        op, args = req.get("op"), req.get("args")
        if not isinstance(op, str):
            self._error(sub, "60012", f"Invalid request: {shown}", "missing op", rid)
            return
        if op not in ("subscribe", "unsubscribe"):
            self._error(sub, "60019", f"Invalid op: {_clip(op, 32)}", "unknown op", rid)
            return
        if not isinstance(args, list) or not args:
            self._error(sub, "60012", f"Invalid request: {shown}", "args must be a list", rid)
            return
        keys: list[tuple[str, str, Market]] = []
        markets = self.feed.refresh_markets()
        for arg in args:
            if not isinstance(arg, dict) or not isinstance(arg.get("channel"), str):
                self._error(sub, "60012", f"Invalid request: {shown}", "bad arg", rid)
                return
            channel = arg["channel"]
            inst = arg.get("instId")
            market = markets.by_okx.get(inst) if isinstance(inst, str) else None
            if channel not in self.channels or market is None:
                msg = (
                    f"Wrong URL or channel:{_clip(channel, 32)},instId:{_clip(str(inst), 32)} "
                    "doesn't exist. Please use the correct URL, channel and parameters "
                    "referring to API document."
                )
                self._error(sub, "60018", msg, "unknown channel or instId", rid)
                return
            keys.append((channel, market.okx, market))
        if op == "subscribe":
            self._subscribe(sub, keys, rid)
        else:
            self._unsubscribe(sub, keys, rid)

    def _ack(
        self, sub: DialectSubscriber, event: str, channel: str, inst: str, rid: str | None
    ) -> None:
        body: dict[str, Any] = {
            "event": event,
            "arg": {"channel": channel, "instId": inst},
            "connId": self.conn_id,
        }
        if rid is not None:
            body = {"id": rid, **body}
        reply(sub, text_frame(_json.encode(body)))

    def _subscribe(
        self, sub: DialectSubscriber, keys: list[tuple[str, str, Market]], rid: str | None
    ) -> None:
        feed = self.feed
        for channel, inst, market in keys:
            self._ack(sub, "subscribe", channel, inst, rid)
            stream = self.subs.get((channel, inst))
            if stream is not None:
                if channel in _BOOK_CHANNELS:
                    # A fresh snapshot at the stream's seq, never a second stream.
                    feed.leave(sub, stream.key)
                    feed.join(sub, stream)
                continue
            make = _factory(market, channel)
            assert make is not None
            stream = feed.stream(f"okx|{channel}|{inst}", market, make)
            self.subs[(channel, inst)] = stream
            feed.join(sub, stream)

    def _unsubscribe(
        self, sub: DialectSubscriber, keys: list[tuple[str, str, Market]], rid: str | None
    ) -> None:
        for channel, inst, _ in keys:
            stream = self.subs.pop((channel, inst), None)
            if stream is not None:
                self.feed.leave(sub, stream.key)
            self._ack(sub, "unsubscribe", channel, inst, rid)


def open_session(feed: DialectFeed, path: str, query: Mapping[str, str]) -> OkxSession | None:
    """The session for an ``/okx/...`` connect path, or None.

    ``/ws/v5/public``: books, trades, tickers; ``/ws/v5/business``: candles.
    """
    path = path.rstrip("/")
    if path == "/ws/v5/public":
        return OkxSession(feed)
    if path == "/ws/v5/business":
        return OkxSession(feed, CANDLE_CHANNELS)
    return None


# -- REST ------------------------------------------------------------------------------------


def _ok(data: list[Any]) -> bytes:
    return _json.encode({"code": "0", "msg": "", "data": data})


def _rest_error(code: str, msg: str, status: int = 400) -> RestError:
    return RestError(status, _json.encode({"code": code, "msg": msg, "data": []}))


def _market(view: MarketView, params: Mapping[str, str]) -> Market:
    inst = params.get("instId")
    if not inst:
        raise _rest_error("50014", "Parameter instId can not be empty.")
    market = view.markets.by_okx.get(inst)
    if market is None:
        raise _rest_error("51001", "Instrument ID does not exist.", 200)
    return market


def _spot(params: Mapping[str, str]) -> bool:
    """Whether ``instType`` asks for spot instruments (the only ones served).

    Raises:
        RestError: ``instType`` is missing or not one of OKX's.
    """
    inst_type = params.get("instType")
    if not inst_type:
        raise _rest_error("50014", "Parameter instType can not be empty.")
    if inst_type not in _INST_TYPES:
        raise _rest_error("51000", "Parameter instType error")
    return inst_type == "SPOT"


def instruments(view: MarketView, params: Mapping[str, str]) -> bytes:
    """``GET /api/v5/public/instruments?instType=SPOT[&instId=]``."""
    if not _spot(params):
        return _ok([])
    chosen = [_market(view, params)] if params.get("instId") else list(view.markets)
    data = []
    for m in chosen:
        pdec, qdec = precision(view, m)
        data.append(
            {
                "alias": "",
                "baseCcy": m.base,
                "category": "1",
                "ctMult": "",
                "ctType": "",
                "ctVal": "",
                "ctValCcy": "",
                "expTime": "",
                "instFamily": "",
                "instId": m.okx,
                "instType": "SPOT",
                "lever": "",
                "listTime": "1600000000000",
                "lotSz": step(qdec),
                "maxIcebergSz": "9999999999",
                "maxLmtAmt": "20000000",
                "maxLmtSz": "9999999999",
                "maxMktAmt": "1000000",
                "maxMktSz": "1000000",
                "maxStopSz": "1000000",
                "maxTriggerSz": "9999999999",
                "maxTwapSz": "9999999999",
                "minSz": step(qdec),
                "optType": "",
                "quoteCcy": m.quote,
                "settleCcy": "",
                "state": "live",
                "stk": "",
                "tickSz": step(pdec),
                "uly": "",
            }
        )
    return _ok(data)


def books(view: MarketView, params: Mapping[str, str]) -> bytes:
    """``GET /api/v5/market/books?instId=&sz=`` (1-400, default 1), with ``seqId``."""
    market = _market(view, params)
    sz = int_param(params, "sz", 1, _rest_error("51000", "Parameter sz error"), 1, BOOK_DEPTH)
    book = view.book(market.symbol, sz)
    return _ok(
        [
            {
                "asks": _levels(book.asks),
                "bids": _levels(book.bids),
                "ts": str(view.now_ms()),
                "seqId": book.seq,
            }
        ]
    )


def _last_sz(view: MarketView, market: Market) -> str:
    recent = view.trades(market.symbol)
    return recent[-1].qty if recent else "0"


def ticker(view: MarketView, params: Mapping[str, str]) -> bytes:
    """``GET /api/v5/market/ticker?instId=``."""
    m = _market(view, params)
    return _ok([ticker_data(m, view.candles(m.symbol), view.ticker(m.symbol), _last_sz(view, m))])


def tickers(view: MarketView, params: Mapping[str, str]) -> bytes:
    """``GET /api/v5/market/tickers?instType=SPOT``."""
    if not _spot(params):
        return _ok([])
    return _ok(
        [
            ticker_data(m, view.candles(m.symbol), view.ticker(m.symbol), _last_sz(view, m))
            for m in view.markets
        ]
    )


def trades(view: MarketView, params: Mapping[str, str]) -> bytes:
    """``GET /api/v5/market/trades?instId=&limit=`` (1-500, default 100), newest first."""
    m = _market(view, params)
    limit = int_param(params, "limit", 100, _rest_error("51000", "Parameter limit error"), 1, 500)
    assert limit is not None
    recent = view.trades(m.symbol)[-limit:]
    return _ok(
        [
            {
                "instId": m.okx,
                "side": t.side,
                "sz": t.qty,
                "px": t.price,
                "source": "0",
                "tradeId": str(t.id),
                "ts": str(ms(t.ts)),
            }
            for t in reversed(recent)
        ]
    )


def _candles(view: MarketView, params: Mapping[str, str], most: int) -> bytes:
    """``GET /api/v5/market/candles`` (``history-candles``): newest first.

    ``after``: candles opening before it; ``before``: after it; ``limit`` the newest.
    """
    m = _market(view, params)
    bar = params.get("bar") or "1m"
    interval = BARS.get(bar)
    if interval is None:
        raise _rest_error("51000", "Parameter bar error")
    bad = _rest_error("51000", "Parameter limit error")
    limit = int_param(params, "limit", 100, bad, 1, None)
    after = int_param(params, "after", None, _rest_error("51000", "Parameter after error"))
    before = int_param(params, "before", None, _rest_error("51000", "Parameter before error"))
    assert limit is not None
    limit = min(limit, most)
    candles = view.candles(m.symbol)
    start = before + 1 if before is not None else None
    end = after - 1 if after is not None else None
    chosen = candles.series(interval, start, end, 1 << 30)[-limit:]
    now = view.now_ms()
    return _ok([candle_row(candles, c, interval, now) for c in reversed(chosen)])


_ROUTES: dict[str, Route] = {
    "/api/v5/market/candles": lambda view, params: _candles(view, params, 300),
    "/api/v5/market/history-candles": lambda view, params: _candles(view, params, 100),
    "/api/v5/public/time": lambda view, params: _ok([{"ts": str(view.now_ms())}]),
    "/api/v5/public/instruments": instruments,
    "/api/v5/market/books": books,
    "/api/v5/market/ticker": ticker,
    "/api/v5/market/tickers": tickers,
    "/api/v5/market/trades": trades,
}

#: The REST paths served (under ``/okx`` on the admin port).
REST_PATHS = tuple(_ROUTES)


def rest(view: MarketView, path: str, params: Mapping[str, str]) -> RestResponse:
    """Answer ``GET /okx<path>``: the body, or OKX's error with its status."""
    return answer(
        _ROUTES, view, path, params, _json.encode({"code": "404", "msg": "Not Found", "data": []})
    )


# -- fault hooks (tickwire.faults): how the fault engine sees OKX's messages ------------

_INST = re.compile(rb'"instId":"([^"]+)"')
_SEQ_ID = re.compile(rb'"seqId":(-?\d+)')
_CHECKSUM = re.compile(rb'"checksum":(-?\d+)')


class FaultHooks:
    """OKX's ``books``, ``books5`` and ``bbo-tbt`` pushes, its ``64008`` notice and REST
    ``50011`` (see ``docs/connectivity-testing.md``)."""

    venue = "okx"
    has_checksum = True

    def classify(self, payload: bytes, markets: Markets) -> tuple[str, str, int | None] | None:
        if b'"channel":"books"' in payload:
            if b'"action":' not in payload:
                return None
            kind = "snapshot" if b'"action":"snapshot"' in payload else "update"
        elif b'"data":' not in payload:
            return None  # an event (a subscribe's answer ...)
        elif b'"channel":"books5"' in payload:
            kind = "books5"  # the top 5, whole, each push: no checksum
        elif b'"channel":"bbo-tbt"' in payload:
            kind = "bbo-tbt"
        else:
            return None
        m = _INST.search(payload)
        market = markets.by_okx.get(m.group(1).decode()) if m else None
        if market is None:
            return None
        s = _SEQ_ID.search(payload)
        return market.symbol, kind, int(s.group(1)) if s else None

    def corrupt_checksum(self, payload: bytes) -> bytes | None:
        m = _CHECKSUM.search(payload)
        if m is None:
            return None
        value = str(int(m.group(1)) ^ 1).encode()
        return payload[: m.start(1)] + value + payload[m.end(1) :]

    def is_heartbeat(self, payload: bytes) -> bool:
        return False

    def notice(self, session: object, now_ms: int) -> bytes | None:
        """The ``64008`` service-upgrade notice OKX pushes before it closes."""
        conn_id = getattr(session, "conn_id", "")
        return _json.encode(
            {
                "event": "notice",
                "code": "64008",
                "msg": "The connection will soon be closed for a service upgrade. "
                "Please reconnect.",
                "connId": conn_id,
            }
        )

    def rest_limited(self, status: int, retry_after: float, until_ms: int) -> RestResponse:
        """HTTP 429 with ``50011`` (OKX has no 418: a ban is more 429s)."""
        body = _json.encode({"code": "50011", "msg": "Too Many Requests", "data": []})
        return RestResponse(body, 429, {"Retry-After": str(max(1, round(retry_after)))})

    def stale_snapshot(self, payload: bytes, seq: int, book: Book) -> bytes | None:
        """A ``books`` snapshot of ``book`` at ``seqId`` ``seq`` (its top 400, OKX's
        checksum), keeping the original's ``arg`` and ``ts``."""
        push = msgspec.json.decode(payload, type=_BookPush)
        bids, asks = book.bids(BOOK_DEPTH), book.asks(BOOK_DEPTH)
        cs = checksum(bids[:CHECKSUM_DEPTH], asks[:CHECKSUM_DEPTH])
        data = _BookData(_levels(asks), _levels(bids), push.data[0].ts, cs, -1, seq)
        return _json.encode(_BookPush(push.arg, "snapshot", [data]))


FAULT_HOOKS = FaultHooks()
