"""Binance spot, as ccxt.pro, cryptofeed and freqtrade read it (Sans-I/O).

WebSocket paths (on the gateway's port)::

    /binance/ws                    raw events; SUBSCRIBE / UNSUBSCRIBE / LIST_SUBSCRIPTIONS
    /binance/ws/<stream>           the same, subscribed to <stream> at connect
    /binance/stream?streams=a/b    combined: every event wrapped {"stream":..,"data":..},
                                   streaming the query's streams from the connect
    /binance/stream/<n>            combined, what ccxt opens (it appends an index)

A path suffix that is not a stream name (ccxt's ``/stream/0``) is ignored.

Streams: ``<sym>@depth`` (1000 ms) and ``<sym>@depth@100ms`` / ``@depth@1000ms`` (diff
depth), ``<sym>@depth5|10|20[@100ms|@1000ms]`` (partial book), ``@trade``,
``@aggTrade``, ``@bookTicker``, ``@ticker`` (24 h rolling), ``@miniTicker`` and
``@kline_<interval>``.

Sequencing: a diff event's ``U``/``u`` are the native ``book.<SYM>`` channel's seqs, so
``U`` is always the previous event's ``u`` + 1 and REST ``lastUpdateId`` is the native
snapshot's ``seq``. A lagging subscriber gets one merged event from its first missed
``U`` to the current ``u``; when that cannot be built it is closed (Binance has no
in-band snapshot to resync with), never sent a hole. Spot events carry no ``pu``
(ccxt would switch to the futures rule).

Errors have Binance's shapes: ``{"error":{"code":N,"msg":..},"id":..}`` on the
WebSocket, ``{"code":-1121,"msg":"Invalid symbol."}`` with HTTP 400 on REST.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import msgspec

from ..book import Book
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

__all__ = ["FAULT_HOOKS", "BinanceSession", "open_session", "parse_stream", "rest"]

_json = msgspec.json.Encoder()
_decode = msgspec.json.Decoder(dict[str, Any])

#: Streams one connection may hold (Binance's limit).
MAX_STREAMS = 1024

#: Depth levels a REST snapshot may ask for.
MAX_DEPTH_LIMIT = 5000

_DEPTH_SPEED = {"": 1.0, "@100ms": 0.1, "@1000ms": 1.0}


def _sides(items: Any) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    bids: list[tuple[str, str]] = []
    asks: list[tuple[str, str]] = []
    for (side, price), qty in items:
        (bids if side == "bid" else asks).append((price, qty))
    return bids, asks


# -- events ------------------------------------------------------------------------------


class _DepthUpdate(msgspec.Struct):
    e: str
    E: int
    s: str
    U: int
    u: int
    b: list[tuple[str, str]]
    a: list[tuple[str, str]]


class _PartialDepth(msgspec.Struct):
    lastUpdateId: int  # noqa: N815 - Binance's field name
    bids: list[tuple[str, str]]
    asks: list[tuple[str, str]]


class _Trade(msgspec.Struct):
    e: str
    E: int
    s: str
    t: int
    p: str
    q: str
    T: int
    m: bool
    M: bool


class _AggTrade(msgspec.Struct):
    e: str
    E: int
    s: str
    a: int
    p: str
    q: str
    f: int
    l: int  # noqa: E741 - Binance's field name
    T: int
    m: bool
    M: bool


class _BookTicker(msgspec.Struct):
    u: int
    s: str
    b: str
    B: str
    a: str
    A: str


# -- renderers ---------------------------------------------------------------------------


class _Binance(Renderer):
    """Frames one event payload, wrapped for combined streams."""

    resyncs = False

    def __init__(self, market: Market, name: str, combined: bool) -> None:
        self.market = market
        self.head = b'{"stream":"' + name.encode() + b'","data":' if combined else None

    def frame(self, payload: bytes) -> bytes:
        head = self.head
        if head is None:
            return text_frame(payload)
        return text_frame(head + payload + b"}")


class DiffDepth(_Binance):
    """``<sym>@depth[@100ms|@1000ms]``: the levels changed in each window."""

    def __init__(self, market: Market, name: str, combined: bool, interval: float) -> None:
        super().__init__(market, name, combined)
        self.interval = interval

    def _event(self, tap: Tap, first: int, last: int, items: Any) -> bytes:
        bids, asks = _sides(items)
        event_ms = ms(tap.ts) or now_ms()
        ev = _DepthUpdate("depthUpdate", event_ms, self.market.binance, first, last, bids, asks)
        return self.frame(_json.encode(ev))

    def book(self, tap: Tap, window: Window) -> bytes | None:
        return self._event(tap, window.prev + 1, window.seq, window.levels.items())

    def catch_up(
        self, tap: Tap, since: int, levels: list[tuple[LevelKey, str]] | None
    ) -> bytes | None:
        if levels is None or since >= tap.seq:
            return None
        return self._event(tap, since + 1, tap.seq, levels)


class PartialDepth(_Binance):
    """``<sym>@depth<N>[@100ms|@1000ms]``: the top N levels every interval."""

    source = "timer"

    def __init__(
        self, market: Market, name: str, combined: bool, levels: int, interval: float
    ) -> None:
        super().__init__(market, name, combined)
        self.levels = levels
        self.interval = interval

    def timer(self, tap: Tap, now: float) -> bytes | None:
        book = tap.book
        n = self.levels
        return self.frame(_json.encode(_PartialDepth(tap.seq, book.bids(n), book.asks(n))))


class TradeStream(_Binance):
    """``<sym>@trade`` (or ``@aggTrade``): one event per trade, each its own aggregate;
    ``m``: the buyer was the maker (the taker sold)."""

    source = "trades"
    conflates = False

    def __init__(self, market: Market, name: str, combined: bool, aggregate: bool) -> None:
        super().__init__(market, name, combined)
        self.aggregate = aggregate

    def trades(self, tap: Tap, trades: list[Trade]) -> bytes | None:
        sym = self.market.binance
        encode, frame = _json.encode, self.frame
        now = now_ms()
        if self.aggregate:
            events: list[msgspec.Struct] = [
                _AggTrade(
                    "aggTrade",
                    now,
                    sym,
                    t.id,
                    t.price,
                    t.qty,
                    t.id,
                    t.id,
                    ms(t.ts),
                    t.side == "sell",
                    True,
                )  # fmt: skip
                for t in trades
            ]
        else:
            events = [
                _Trade("trade", now, sym, t.id, t.price, t.qty, ms(t.ts), t.side == "sell", True)
                for t in trades
            ]
        return b"".join(frame(encode(ev)) for ev in events)


class BookTickerStream(_Binance):
    """``<sym>@bookTicker``: the best bid and ask whenever either changes.

    Spot's event has no ``e`` field (cryptofeed tells it apart by that).
    """

    source = "ticker"

    def __init__(self, market: Market, name: str, combined: bool) -> None:
        super().__init__(market, name, combined)
        self.last: tuple[str | None, ...] = ()

    def ticker(self, tap: Tap, ticker: Ticker, now: float) -> bytes | None:
        top = (ticker.bid, ticker.bid_qty, ticker.ask, ticker.ask_qty)
        if top == self.last or ticker.bid is None or ticker.ask is None:
            return None
        self.last = top
        ev = _BookTicker(
            tap.seq,
            self.market.binance,
            ticker.bid,
            ticker.bid_qty or "0",
            ticker.ask,
            ticker.ask_qty or "0",
        )
        return self.frame(_json.encode(ev))


class TickerStream(_Binance):
    """``<sym>@ticker`` (24hrTicker) or ``@miniTicker``, at most once a second."""

    source = "ticker"

    def __init__(self, market: Market, name: str, combined: bool, mini: bool) -> None:
        super().__init__(market, name, combined)
        self.mini = mini
        self.next = 0.0

    def ticker(self, tap: Tap, ticker: Ticker, now: float) -> bytes | None:
        if now and now < self.next:
            return None
        self.next = now + 1.0
        stats = rolling_stats(tap.candles, ticker, now_ms())
        if self.mini:
            ev = {
                "e": "24hrMiniTicker",
                "E": stats["closeTime"],
                "s": self.market.binance,
                "c": stats["lastPrice"],
                "o": stats["openPrice"],
                "h": stats["highPrice"],
                "l": stats["lowPrice"],
                "v": stats["volume"],
                "q": stats["quoteVolume"],
            }
        else:
            ev = {
                "e": "24hrTicker",
                "E": stats["closeTime"],
                "s": self.market.binance,
                "p": stats["priceChange"],
                "P": stats["priceChangePercent"],
                "w": stats["weightedAvgPrice"],
                "x": stats["prevClosePrice"],
                "c": stats["lastPrice"],
                "Q": stats["lastQty"],
                "b": stats["bidPrice"],
                "B": stats["bidQty"],
                "a": stats["askPrice"],
                "A": stats["askQty"],
                "o": stats["openPrice"],
                "h": stats["highPrice"],
                "l": stats["lowPrice"],
                "v": stats["volume"],
                "q": stats["quoteVolume"],
                "O": stats["openTime"],
                "C": stats["closeTime"],
                "F": stats["firstId"],
                "L": stats["lastId"],
                "n": stats["count"],
            }
        return self.frame(_json.encode(ev))


class KlineStream(_Binance):
    """``<sym>@kline_<interval>``: the open candle every second (2 s past 1 s candles),
    and each candle once more with ``x: true`` when the next one opens."""

    source = "timer"
    conflates = True

    def __init__(self, market: Market, name: str, combined: bool, interval: str) -> None:
        super().__init__(market, name, combined)
        self.kline = interval
        self.interval = 1.0 if interval == "1s" else 2.0
        self.open_start = -1

    def timer(self, tap: Tap, now: float) -> bytes | None:
        candles = tap.candles.series(self.kline, limit=2)
        if not candles:
            return None
        out = []
        last = candles[-1]
        if self.open_start >= 0 and last.start != self.open_start:
            closed = [c for c in candles if c.start == self.open_start]
            if closed:
                out.append(self._event(tap.candles, closed[0], True))
        self.open_start = last.start
        out.append(self._event(tap.candles, last, False))
        return b"".join(out)

    def _event(self, candles: Candles, c: Candle, closed: bool) -> bytes:
        step = INTERVALS[self.kline]
        sym = self.market.binance
        k = {
            "t": c.start,
            "T": c.start + step - 1,
            "s": sym,
            "i": self.kline,
            "f": c.first_id,
            "L": c.last_id,
            "o": c.open,
            "c": c.close,
            "h": c.high,
            "l": c.low,
            "v": candles.volume(c.volume),
            "n": c.trades,
            "x": closed,
            "q": candles.quote(c.quote_volume),
            "V": candles.volume(c.taker_buy),
            "Q": candles.quote(c.taker_buy_quote),
            "B": "0",
        }
        return self.frame(_json.encode({"e": "kline", "E": now_ms(), "s": sym, "k": k}))


# -- stream names -------------------------------------------------------------------------


def parse_stream(name: str, markets: Markets) -> tuple[Market, str] | None:
    """Split ``btcusdt@depth@100ms`` into its market and the part after ``@``.

    Returns None when the name is not a stream of a served symbol with a known kind.
    """
    sym, at, kind = name.partition("@")
    if not at or sym != sym.lower():
        return None
    market = markets.by_binance.get(sym.upper())
    if market is None or _factory(market, name, kind, False) is None:
        return None
    return market, kind


def _factory(market: Market, name: str, kind: str, combined: bool) -> Callable[[], Renderer] | None:
    if kind.startswith("depth"):
        rest = kind[5:]
        levels = 0
        for n in ("5", "10", "20"):
            if rest.startswith(n):
                levels, rest = int(n), rest[len(n) :]
                break
        speed = _DEPTH_SPEED.get(rest)
        if speed is None:
            return None
        if levels:
            return lambda: PartialDepth(market, name, combined, levels, speed)
        return lambda: DiffDepth(market, name, combined, speed)
    if kind in ("trade", "aggTrade"):
        return lambda: TradeStream(market, name, combined, kind == "aggTrade")
    if kind == "bookTicker":
        return lambda: BookTickerStream(market, name, combined)
    if kind in ("ticker", "miniTicker"):
        return lambda: TickerStream(market, name, combined, kind == "miniTicker")
    if kind.startswith("kline_") and kind[6:] in INTERVALS:
        return lambda: KlineStream(market, name, combined, kind[6:])
    return None


# -- a connection ---------------------------------------------------------------------------


def _error(code: int, msg: str, rid: Any = None) -> bytes:
    return text_frame(_json.encode({"error": {"code": code, "msg": msg}, "id": rid}))


class BinanceSession:
    """One Binance WebSocket connection's requests and subscriptions.

    Args:
        feed: the gateway's dialect feed.
        combined: every event is wrapped ``{"stream","data"}`` (``/stream`` paths).
    """

    venue = "binance"

    def __init__(self, feed: DialectFeed, combined: bool, streams: list[str]) -> None:
        self.feed = feed
        self.combined = combined
        self.initial = streams
        self.names: dict[str, Stream] = {}

    def _stream(self, name: str) -> Stream | None:
        markets = self.feed.refresh_markets()
        parsed = parse_stream(name, markets)
        if parsed is None:
            return None
        market, kind = parsed
        key = f"binance|{int(self.combined)}|{name}"
        make = _factory(market, name, kind, self.combined)
        assert make is not None
        return self.feed.stream(key, market, make)

    def open(self, sub: DialectSubscriber) -> None:
        """Start the streams named in the connect path."""
        for name in self.initial:
            stream = self._stream(name)
            if stream is not None and len(self.names) < MAX_STREAMS:
                self.names[name] = stream
                self.feed.join(sub, stream)

    def receive(self, sub: DialectSubscriber, text: bytes) -> None:
        """Handle one text frame from the client."""
        try:
            req = _decode.decode(text)
        except msgspec.DecodeError as exc:
            sub.rejected("invalid_json", str(exc))
            reply(sub, _error(3, f"Invalid JSON: {exc}"))
            return
        rid = req.get("id")
        if rid is not None and (isinstance(rid, bool) or not isinstance(rid, int | str)):
            reply(sub, _error(2, "Invalid request: request ID must be an unsigned integer"))
            sub.rejected("bad_id", "request ID must be an unsigned integer")
            return
        method = req.get("method")
        params = req.get("params", [])
        if not isinstance(method, str):
            sub.rejected("missing_method", "missing field method")
            reply(sub, _error(2, "Invalid request: missing field `method`", rid))
            return
        if not isinstance(params, list):
            sub.rejected("bad_params", "params must be an array")
            reply(sub, _error(2, "Invalid request: params must be an array", rid))
            return
        if method == "SUBSCRIBE":
            self._subscribe(sub, params, rid)
        elif method == "UNSUBSCRIBE":
            self._unsubscribe(sub, params, rid)
        elif method == "LIST_SUBSCRIPTIONS":
            reply(sub, text_frame(_json.encode({"result": list(self.names), "id": rid})))
        elif method == "GET_PROPERTY" and params == ["combined"]:
            reply(sub, text_frame(_json.encode({"result": self.combined, "id": rid})))
        elif method == "SET_PROPERTY":
            sub.rejected("unknown_property", "SET_PROPERTY is not supported")
            reply(sub, _error(0, "Unknown property", rid))
        else:
            sub.rejected("unknown_method", f"unknown method {method[:32]!r}")
            reply(
                sub,
                _error(
                    2,
                    f"Invalid request: unknown variant `{method[:32]}`, expected one of "
                    "`SUBSCRIBE`, `UNSUBSCRIBE`, `LIST_SUBSCRIPTIONS`, `SET_PROPERTY`, "
                    "`GET_PROPERTY`",
                    rid,
                ),
            )

    def rate_limited(self, reason: str) -> bytes:
        """Binance's "too many requests" (its own limit is 5 messages a second)."""
        return _error(-1003, f"Too many requests; {reason}")

    def _subscribe(self, sub: DialectSubscriber, params: list[Any], rid: Any) -> None:
        streams: list[tuple[str, Stream]] = []
        for name in params:
            stream = self._stream(name) if isinstance(name, str) else None
            if stream is None:
                shown = name[:64] if isinstance(name, str) else type(name).__name__
                sub.rejected("invalid_stream", f"unknown stream {shown!r}")
                reply(sub, _error(2, f"Invalid request: unknown stream `{shown}`", rid))
                return
            streams.append((name, stream))
        new = {name for name, _ in streams if name not in self.names}
        if len(self.names) + len(new) > MAX_STREAMS:
            sub.rejected("too_many_streams", "over 1024 streams")
            reply(sub, _error(2, f"Invalid request: at most {MAX_STREAMS} streams", rid))
            return
        # The ack first: ccxt creates its book on the ack and drops events before it.
        reply(sub, text_frame(_json.encode({"result": None, "id": rid})))
        for name, stream in streams:
            self.names[name] = stream
            self.feed.join(sub, stream)  # a repeated subscribe keeps the live stream

    def _unsubscribe(self, sub: DialectSubscriber, params: list[Any], rid: Any) -> None:
        for name in params:
            stream = self.names.pop(name, None) if isinstance(name, str) else None
            if stream is not None:
                self.feed.leave(sub, stream.key)
        reply(sub, text_frame(_json.encode({"result": None, "id": rid})))


def open_session(feed: DialectFeed, path: str, query: Mapping[str, str]) -> BinanceSession | None:
    """The session for a ``/binance/...`` connect path, or None if no such endpoint.

    Args:
        path: the path after ``/binance``.
        query: its query parameters (``streams`` on ``/stream``).
    """
    parts = [p for p in path.split("/") if p]
    if not parts or parts[0] not in ("ws", "stream"):
        return None
    combined = parts[0] == "stream"
    names: list[str] = []
    if combined and query.get("streams"):
        names = [n for n in query["streams"].split("/") if n]
    names += [n for n in parts[1:] if "@" in n]
    return BinanceSession(feed, combined, names)


# -- REST ---------------------------------------------------------------------------------


def _rest_error(code: int, msg: str, status: int = 400) -> RestError:
    return RestError(status, _json.encode({"code": code, "msg": msg}))


def _market(view: MarketView, params: Mapping[str, str]) -> Market:
    symbol = params.get("symbol")
    if not symbol:
        raise _rest_error(
            -1102,
            "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.",
        )
    market = view.markets.by_binance.get(symbol.upper())
    if market is None:
        raise _rest_error(-1121, "Invalid symbol.")
    return market


def _markets(view: MarketView, params: Mapping[str, str]) -> list[Market] | None:
    """The markets named by ``symbol`` or ``symbols`` (a JSON list); None: all."""
    if params.get("symbol"):
        return [_market(view, params)]
    names = params.get("symbols")
    if not names:
        return None
    try:
        listed = msgspec.json.decode(names, type=list[str])
    except msgspec.DecodeError:
        raise _rest_error(-1100, "Illegal characters found in parameter 'symbols'.") from None
    return [_market(view, {"symbol": s}) for s in listed]


def exchange_info(view: MarketView, params: Mapping[str, str]) -> bytes:
    """``GET /api/v3/exchangeInfo``: every served symbol as a spot market."""
    chosen = _markets(view, params)
    symbols = []
    for m in chosen if chosen is not None else list(view.markets):
        pdec, qdec = precision(view, m)
        symbols.append(
            {
                "symbol": m.binance,
                "status": "TRADING",
                "baseAsset": m.base,
                "baseAssetPrecision": 8,
                "quoteAsset": m.quote,
                "quotePrecision": 8,
                "quoteAssetPrecision": 8,
                "baseCommissionPrecision": 8,
                "quoteCommissionPrecision": 8,
                "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET"],
                "icebergAllowed": False,
                "ocoAllowed": False,
                "quoteOrderQtyMarketAllowed": True,
                "allowTrailingStop": False,
                "cancelReplaceAllowed": False,
                "isSpotTradingAllowed": True,
                "isMarginTradingAllowed": False,
                # cryptofeed reads the tick size from filters[0]: PRICE_FILTER first.
                "filters": [
                    {
                        "filterType": "PRICE_FILTER",
                        "minPrice": step(pdec),
                        "maxPrice": "1000000000.00",
                        "tickSize": step(pdec),
                    },
                    {
                        "filterType": "LOT_SIZE",
                        "minQty": step(qdec),
                        "maxQty": "9000000.00",
                        "stepSize": step(qdec),
                    },
                ],
                "permissions": ["SPOT"],
                "permissionSets": [["SPOT"]],
                "defaultSelfTradePreventionMode": "NONE",
                "allowedSelfTradePreventionModes": ["NONE"],
            }
        )
    return _json.encode(
        {
            "timezone": "UTC",
            "serverTime": view.now_ms(),
            "rateLimits": [],
            "exchangeFilters": [],
            "symbols": symbols,
        }
    )


def depth(view: MarketView, params: Mapping[str, str]) -> bytes:
    """``GET /api/v3/depth?symbol=&limit=``: the live book (``lastUpdateId`` = seq)."""
    market = _market(view, params)
    limit = int_param(
        params,
        "limit",
        100,
        _rest_error(
            -1100, "Illegal characters found in parameter 'limit'; legal range is '1..5000'."
        ),
        1,
        MAX_DEPTH_LIMIT,
    )
    book = view.book(market.symbol, limit)
    return _json.encode({"lastUpdateId": book.seq, "bids": book.bids, "asks": book.asks})


def trades(view: MarketView, params: Mapping[str, str]) -> bytes:
    """``GET /api/v3/trades?symbol=&limit=``: the most recent trades, oldest first."""
    market = _market(view, params)
    limit = int_param(
        params,
        "limit",
        500,
        _rest_error(-1100, "Illegal characters found in parameter 'limit'."),
        1,
        1000,
    )
    assert limit is not None
    recent = view.trades(market.symbol)[-limit:]
    return _json.encode(
        [
            {
                "id": t.id,
                "price": t.price,
                "qty": t.qty,
                "quoteQty": f"{float(t.price) * float(t.qty):.8f}",
                "time": ms(t.ts),
                "isBuyerMaker": t.side == "sell",
                "isBestMatch": True,
            }
            for t in recent
        ]
    )


def klines(view: MarketView, params: Mapping[str, str]) -> bytes:
    """``GET /api/v3/klines?symbol=&interval=&startTime=&endTime=&limit=``."""
    market = _market(view, params)
    interval = params.get("interval", "")
    if interval not in INTERVALS:
        raise _rest_error(-1120, "Invalid interval.")
    bad = _rest_error(-1100, "Illegal characters found in a parameter.")
    limit = int_param(params, "limit", 500, bad, 1, 1000)
    start = int_param(params, "startTime", None, bad)
    end = int_param(params, "endTime", None, bad)
    assert limit is not None
    candles = view.candles(market.symbol)
    step = INTERVALS[interval]
    return _json.encode(
        [
            [
                c.start,
                c.open,
                c.high,
                c.low,
                c.close,
                candles.volume(c.volume),
                c.start + step - 1,
                candles.quote(c.quote_volume),
                c.trades,
                candles.volume(c.taker_buy),
                candles.quote(c.taker_buy_quote),
                "0",
            ]
            for c in candles.series(interval, start, end, limit)
        ]
    )


def ticker_24hr(view: MarketView, params: Mapping[str, str]) -> bytes:
    """``GET /api/v3/ticker/24hr[?symbol=|symbols=]``."""
    chosen = _markets(view, params)
    now = view.now_ms()
    rows = []
    for m in chosen if chosen is not None else list(view.markets):
        stats = rolling_stats(view.candles(m.symbol), view.ticker(m.symbol), now)
        rows.append({"symbol": m.binance, **stats})
    return _json.encode(rows[0] if params.get("symbol") else rows)


def book_ticker(view: MarketView, params: Mapping[str, str]) -> bytes:
    """``GET /api/v3/ticker/bookTicker[?symbol=|symbols=]``."""
    chosen = _markets(view, params)
    rows = []
    for m in chosen if chosen is not None else list(view.markets):
        book = view.book(m.symbol, 1)
        bid = book.bids[0] if book.bids else ("0", "0")
        ask = book.asks[0] if book.asks else ("0", "0")
        rows.append(
            {
                "symbol": m.binance,
                "bidPrice": bid[0],
                "bidQty": bid[1],
                "askPrice": ask[0],
                "askQty": ask[1],
            }
        )
    return _json.encode(rows[0] if params.get("symbol") else rows)


def ticker_price(view: MarketView, params: Mapping[str, str]) -> bytes:
    """``GET /api/v3/ticker/price[?symbol=|symbols=]``."""
    chosen = _markets(view, params)
    rows = []
    for m in chosen if chosen is not None else list(view.markets):
        t = view.ticker(m.symbol)
        rows.append({"symbol": m.binance, "price": t.last or t.bid or "0"})
    return _json.encode(rows[0] if params.get("symbol") else rows)


_ROUTES: dict[str, Route] = {
    "/api/v3/ping": lambda view, params: b"{}",
    "/api/v3/time": lambda view, params: _json.encode({"serverTime": view.now_ms()}),
    "/api/v3/exchangeInfo": exchange_info,
    "/api/v3/depth": depth,
    "/api/v3/trades": trades,
    "/api/v3/klines": klines,
    "/api/v3/ticker/24hr": ticker_24hr,
    "/api/v3/ticker/bookTicker": book_ticker,
    "/api/v3/ticker/price": ticker_price,
}

#: The REST paths served (under ``/binance`` on the admin port).
REST_PATHS = tuple(_ROUTES)


def rest(view: MarketView, path: str, params: Mapping[str, str]) -> RestResponse:
    """Answer ``GET /binance<path>``: the body, or Binance's error with its status."""
    return answer(
        _ROUTES,
        view,
        path,
        params,
        _json.encode({"code": -1000, "msg": f"Unknown path {path[:64]}."}),
    )


# -- fault hooks (tickwire.faults): how the fault engine sees Binance's messages ---------

_DEPTH_S = re.compile(rb'"s":"([^"]+)"')
_DEPTH_U = re.compile(rb'"u":(\d+)')
#: A partial depth event on a combined stream: the stream's symbol and its kind.
_PARTIAL_STREAM = re.compile(rb'^\{"stream":"([a-z0-9]+)@(depth(?:5|10|20))[@"]')
_LAST_UPDATE = re.compile(rb'"lastUpdateId":(\d+)')


class FaultHooks:
    """Binance's book messages (``depthUpdate``, and partial depth: ``lastUpdateId`` and
    the top N, whole), notice and REST limit (see ``docs/connectivity-testing.md``). No
    checksum, no heartbeat, no in-band snapshot.

    A raw stream's partial depth event names no symbol (as on Binance): the hooks bound
    to a connection (:meth:`for_session`) take it from the connection's one partial
    depth stream; a raw connection with several leaves them unfaulted (neither the
    gateway nor the client can tell them apart).
    """

    venue = "binance"
    has_checksum = False

    def __init__(self, session: BinanceSession | None = None) -> None:
        self.session = session

    def for_session(self, session: object) -> FaultHooks:
        """These hooks for one connection (its session names its raw streams)."""
        return FaultHooks(session if isinstance(session, BinanceSession) else None)

    def _partial(self, payload: bytes, markets: Markets) -> tuple[str, str, int | None] | None:
        """A partial depth event (combined or raw), or None."""
        u = _LAST_UPDATE.search(payload)
        if u is None:
            return None
        m = _PARTIAL_STREAM.match(payload)
        if m is not None:
            market = markets.by_binance.get(m.group(1).decode().upper())
            kind = m.group(2).decode()
        elif payload.startswith(b'{"lastUpdateId":') and self.session is not None:
            found = [
                parsed
                for name in self.session.names
                if (parsed := parse_stream(name, markets)) is not None
                and parsed[1].startswith(("depth5", "depth10", "depth20"))
            ]
            if len(found) != 1:
                return None
            market, kind = found[0][0], found[0][1].partition("@")[0]
        else:
            return None
        if market is None:
            return None
        return market.symbol, kind, int(u.group(1))

    def classify(self, payload: bytes, markets: Markets) -> tuple[str, str, int | None] | None:
        if b'"e":"depthUpdate"' not in payload:
            return self._partial(payload, markets)
        m = _DEPTH_S.search(payload)
        market = markets.by_binance.get(m.group(1).decode()) if m else None
        if market is None:
            return None
        u = _DEPTH_U.search(payload)
        return market.symbol, "update", int(u.group(1)) if u else None

    def corrupt_checksum(self, payload: bytes) -> bytes | None:
        return None

    def is_heartbeat(self, payload: bytes) -> bool:
        return False

    def notice(self, session: object, now_ms: int) -> bytes | None:
        """``serverShutdown``, sent as Binance sends it (unwrapped, also on ``/stream``)."""
        return b'{"e":"serverShutdown","E":%d}' % now_ms

    def rest_limited(self, status: int, retry_after: float, until_ms: int) -> RestResponse:
        """429 (then 418 once banned), ``-1003`` and ``Retry-After``, as Binance answers."""
        if status == 418:
            msg = (
                f"Way too much request weight used; IP banned until {until_ms}. "
                "Please use WebSocket Streams for live updates to avoid bans."
            )
        else:
            msg = (
                "Too many requests; current limit of IP is 6000 requests per minute. "
                "Please use WebSocket Streams for live updates to avoid bans."
            )
        headers = {"Retry-After": str(max(1, round(retry_after)))}
        return RestResponse(_json.encode({"code": -1003, "msg": msg}), status, headers)

    def stale_snapshot(self, payload: bytes, seq: int, book: Book) -> bytes | None:
        return None  # no in-band snapshot: the REST depth is made stale instead


FAULT_HOOKS = FaultHooks()
