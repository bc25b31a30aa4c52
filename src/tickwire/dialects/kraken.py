"""Kraken spot, as cryptofeed (WebSocket v1), ccxt.pro (v2) and REST clients read it (Sans-I/O).

WebSocket paths (on the gateway's port)::

    /kraken       WebSocket v1 (``wss://ws.kraken.com``): what cryptofeed 2.4.1 speaks
    /kraken/v2    WebSocket v2 (``wss://ws.kraken.com/v2``): what ccxt.pro speaks

Channels: ``book`` (depth 10, 25, 100, 500 or 1000), ``trade``, ``ticker``; heartbeats
about once a second; a status message on connect; ``ping`` answered at once.

Book contract (Kraken has no sequence numbers: the top-10 CRC32 is the only integrity
check). A book stream is one (symbol, depth, version): after each pass in which the
book changed it sends the levels that changed inside the top ``depth`` window, the
levels that entered it (v1 marks those that did not change themselves ``"r"``,
republished) and an explicit delete for every level pushed out of it, deletes first;
so a client that applies each frame and truncates to the depth holds exactly the
server's top ``depth``. Every update carries the checksum of the top 10 after it
(:meth:`tickwire.book.Book.checksum`, defined as Kraken's). Prices and quantities are
the native feed's strings, digit for digit: v1 as JSON strings, v2 as JSON number
literals written from those strings (never a re-formatted float), because the checksum
is over the digits. A subscriber that falls behind gets a fresh snapshot.

Errors have Kraken's shapes: v1 ``{"event":"subscriptionStatus","status":"error",
"errorMessage":..}`` (``{"event":"error",..}`` for a malformed request), v2
``{"method":..,"success":false,"error":..}``; REST ``{"error":["EQuery:Unknown asset
pair"]}``.
"""

from __future__ import annotations

import datetime
import itertools
import re
import time
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

import msgspec

from ..book import Book, is_zero
from ..framing import text_frame
from ..protocol import Ticker, Trade
from .candles import Candles, decimals, rolling_stats
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
from .rest import MarketView, RestError, RestResponse, int_param, precision

__all__ = ["FAULT_HOOKS", "DEPTHS", "KrakenV1Session", "KrakenV2Session", "open_session", "rest"]

_json = msgspec.json.Encoder()
_decode = msgspec.json.Decoder()
# Numbers kept as written (v2 prices are JSON number literals whose digits count).
_decode_exact = msgspec.json.Decoder(float_hook=str)

#: The book depths a subscription may ask for (10 when it names none).
DEPTHS = (10, 25, 100, 500, 1000)

#: Trades a v2 ``trade`` subscription with ``snapshot: true`` starts with.
TRADE_SNAPSHOT = 50

#: Seconds between two ticker frames of one stream (the latest state is sent).
TICKER_INTERVAL = 0.2

#: Seconds between heartbeats.
HEARTBEAT_INTERVAL = 1.0

_channel_ids = itertools.count(1)
_connection_ids = itertools.count(1)

#: One level as a renderer sends it: price, quantity, republished.
_Change = tuple[str, str, bool]


def _v1_time(ns: int) -> str:
    """Kraken v1's timestamps: epoch seconds with microseconds, as a string."""
    us = ns // 1000
    return f"{us // 1_000_000}.{us % 1_000_000:06d}"


def _iso(ns: int) -> str:
    """RFC 3339 with microseconds, as Kraken v2 writes times."""
    us = ns // 1000
    t = datetime.datetime.fromtimestamp(us // 1_000_000, datetime.UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{us % 1_000_000:06d}Z"


def _now_iso() -> str:
    return _iso(time.time_ns())


def _zero(qty: str) -> str:
    """A zero written with ``qty``'s decimals (a delete, in the level's own format)."""
    point = qty.find(".")
    return "0" if point < 0 else "0." + "0" * (len(qty) - point - 1)


# -- the depth window ----------------------------------------------------------------------


class _Book(Renderer):
    """A book stream of one depth: keeps the top ``depth`` its subscribers hold.

    Every subscriber of the stream holds the same levels (``shown``): each one joins
    with a snapshot of the window, and every frame moves all of them alike.
    """

    source = "book"
    interval = 0.0

    def __init__(self, market: Market, depth: int) -> None:
        self.market = market
        self.depth = depth
        self.shown: dict[str, dict[str, str]] = {"bid": {}, "ask": {}}
        # The worst shown price of a full side (None while the side has fewer levels).
        self.worst: dict[str, Decimal | None] = {"bid": None, "ask": None}
        # A subscriber joined before the book's first load: it waits for reset().
        self.waiting = False
        # The window seq the subscribers' levels are at.
        self.synced = -1

    def _load(self, tap: Tap) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """The window now (asks, bids), which every subscriber then holds."""
        book = tap.book
        n = self.depth
        asks, bids = book.asks(n), book.bids(n)
        w = tap.windows.get(self.interval)
        self.synced = w.seq if w is not None else tap.seq
        for side, top in (("ask", asks), ("bid", bids)):
            self.shown[side] = dict(top)
            self.worst[side] = Decimal(top[-1][0]) if len(top) == n else None
        return asks, bids

    def _side(
        self, tap: Tap, side: str, changed: list[tuple[str, str]], window: Window
    ) -> list[_Change]:
        shown = self.shown[side]
        worst = self.worst[side]
        out: list[_Change] = []
        # Fast path: every change is a new quantity of a shown level, or lies beyond
        # a full window (the window's levels stay the same).
        for price, qty in changed:
            had = shown.get(price)
            if had is not None:
                if is_zero(qty):
                    break
                if had != qty:
                    out.append((price, qty, False))
                continue
            if is_zero(qty):
                continue  # not in the book at the last frame, nor now
            if worst is not None and (
                Decimal(price) > worst if side == "ask" else Decimal(price) < worst
            ):
                continue
            break
        else:
            for price, qty, _ in out:
                shown[price] = qty
            return out
        # The window's levels changed: compare it with the book's top ``depth``.
        book = tap.book
        n = self.depth
        top = book.asks(n) if side == "ask" else book.bids(n)
        new = dict(top)
        out = [(p, _zero(q), False) for p, q in shown.items() if p not in new]
        levels = window.levels
        for price, qty in top:
            had = shown.get(price)
            if had is None:
                out.append((price, qty, (side, price) not in levels))
            elif had != qty:
                out.append((price, qty, False))
        self.shown[side] = new
        self.worst[side] = Decimal(top[-1][0]) if len(top) == n else None
        return out

    def _changes(self, tap: Tap, window: Window) -> tuple[list[_Change], list[_Change]] | None:
        """The (asks, bids) changes that take the subscribers to the window now."""
        if not tap.loaded or self.waiting:
            return None  # reset() sends every subscriber a snapshot first
        self.synced = window.seq
        asks: list[tuple[str, str]] = []
        bids: list[tuple[str, str]] = []
        for (side, price), qty in window.levels.items():
            (asks if side == "ask" else bids).append((price, qty))
        a = self._side(tap, "ask", asks, window) if asks else []
        b = self._side(tap, "bid", bids, window) if bids else []
        if not a and not b:
            return None
        return a, b

    def book(self, tap: Tap, window: Window) -> bytes | None:
        changes = self._changes(tap, window)
        if changes is None:
            return None
        return self.update(tap, *changes)

    def join(self, tap: Tap) -> bytes | None:
        if not tap.loaded:
            self.waiting = True  # the first load sends it a snapshot (reset)
            return None
        return self.snapshot(tap, *self._load(tap))

    def reset(self, tap: Tap, first: bool) -> bytes | None:
        w = tap.windows.get(self.interval)
        if first and not self.waiting and w is not None and self.synced == w.prev:
            # Every subscriber joined after the load, with a snapshot the window
            # continues. (A reload after a broken chain also comes as ``first``:
            # the window then restarted from the new book's seq, and all resync.)
            return None
        self.waiting = False
        return self.snapshot(tap, *self._load(tap))

    def catch_up(
        self, tap: Tap, since: int, levels: list[tuple[LevelKey, str]] | None
    ) -> bytes | None:
        # Kraken has no sequence to continue: a laggard restarts from a snapshot.
        return self.join(tap)

    def snapshot(self, tap: Tap, asks: list[tuple[str, str]], bids: list[tuple[str, str]]) -> bytes:
        raise NotImplementedError

    def update(self, tap: Tap, asks: list[_Change], bids: list[_Change]) -> bytes:
        raise NotImplementedError


# -- v1 renderers ----------------------------------------------------------------------------


class _V1(Renderer):
    """A v1 channel: frames ``[channelID, payload..., channelName, pair]``."""

    def _init_v1(self, market: Market, name: str) -> None:
        self.channel_id = next(_channel_ids)
        self.name = name
        self.tail = b',"' + name.encode() + b'","' + market.kraken_v1.encode() + b'"]'
        self.head = b"[" + str(self.channel_id).encode() + b","

    def frame(self, *payloads: object) -> bytes:
        body = b",".join(_json.encode(p) for p in payloads)
        return text_frame(self.head + body + self.tail)


class BookV1(_Book, _V1):
    """v1 ``book-<depth>``: snapshot ``{"as","bs"}``, updates ``{"a"}``/``{"b"}`` + ``"c"``."""

    def __init__(self, market: Market, depth: int) -> None:
        _Book.__init__(self, market, depth)
        self._init_v1(market, f"book-{depth}")

    def snapshot(self, tap: Tap, asks: list[tuple[str, str]], bids: list[tuple[str, str]]) -> bytes:
        ts = _v1_time(tap.ts or time.time_ns())
        return self.frame(
            {"as": [[p, q, ts] for p, q in asks], "bs": [[p, q, ts] for p, q in bids]}
        )

    def update(self, tap: Tap, asks: list[_Change], bids: list[_Change]) -> bytes:
        ts = _v1_time(tap.ts or time.time_ns())
        dicts: list[dict[str, Any]] = []
        for key, changes in (("a", asks), ("b", bids)):
            if changes:
                dicts.append({key: [[p, q, ts, "r"] if r else [p, q, ts] for p, q, r in changes]})
        dicts[-1]["c"] = str(tap.book.checksum())
        return self.frame(*dicts)


class TradeV1(_V1):
    """v1 ``trade``: ``[price, volume, time, side, orderType, misc]``, six fields."""

    source = "trades"
    conflates = False

    def __init__(self, market: Market) -> None:
        self._init_v1(market, "trade")

    def trades(self, tap: Tap, trades: list[Trade]) -> bytes | None:
        return self.frame(
            [
                [t.price, t.qty, _v1_time(t.ts), "b" if t.side == "buy" else "s", "l", ""]
                for t in trades
            ]
        )


def _stats(tap: Tap, ticker: Ticker) -> dict[str, Any]:
    stats = rolling_stats(tap.candles, ticker, time.time_ns() // 1_000_000)
    if tap.recent:
        stats["lastQty"] = tap.recent[-1].qty
    return stats


class _Ticker(Renderer):
    """A ticker stream: the latest state at most every :data:`TICKER_INTERVAL`."""

    source = "ticker"
    next_at = 0.0

    def _due(self, now: float) -> bool:
        if not now:
            return True  # a laggard's catch-up
        if now < self.next_at:
            return False
        self.next_at = now + TICKER_INTERVAL
        return True

    def join(self, tap: Tap) -> bytes | None:
        ticker = tap.last_ticker
        return self.render(tap, ticker, True) if ticker is not None else None

    def ticker(self, tap: Tap, ticker: Ticker, now: float) -> bytes | None:
        return self.render(tap, ticker, False) if self._due(now) else None

    def render(self, tap: Tap, ticker: Ticker, first: bool) -> bytes | None:
        raise NotImplementedError


class TickerV1(_Ticker, _V1):
    """v1 ``ticker``: ``{a, b, c, v, p, t, l, h, o}`` (today's values are the 24 h ones)."""

    def __init__(self, market: Market) -> None:
        self._init_v1(market, "ticker")

    def render(self, tap: Tap, ticker: Ticker, first: bool) -> bytes | None:
        if ticker.bid is None or ticker.ask is None:
            return None
        s = _stats(tap, ticker)
        return self.frame(_ticker_fields(s, ticker, ws=True))


def _ticker_fields(s: dict[str, Any], ticker: Ticker, ws: bool) -> dict[str, Any]:
    """Kraken's ticker object (v1 WebSocket and REST ``Ticker``)."""
    ask, bid = ticker.ask or "0", ticker.bid or "0"
    ask_qty, bid_qty = ticker.ask_qty or "0", ticker.bid_qty or "0"
    lot = (lambda q: max(1, int(float(q)))) if ws else (lambda q: str(max(1, int(float(q)))))
    return {
        "a": [ask, lot(ask_qty), ask_qty],
        "b": [bid, lot(bid_qty), bid_qty],
        "c": [s["lastPrice"], s["lastQty"]],
        "v": [s["volume"], s["volume"]],
        "p": [s["weightedAvgPrice"], s["weightedAvgPrice"]],
        "t": [s["count"], s["count"]],
        "l": [s["lowPrice"], s["lowPrice"]],
        "h": [s["highPrice"], s["highPrice"]],
        "o": [s["openPrice"], s["openPrice"]] if ws else s["openPrice"],
    }


class HeartbeatV1(Renderer):
    """v1 ``{"event":"heartbeat"}`` every second, once subscribed to a channel."""

    source = "timer"
    interval = HEARTBEAT_INTERVAL
    conflates = False
    FRAME = text_frame(b'{"event":"heartbeat"}')

    def timer(self, tap: Tap, now: float) -> bytes | None:
        return self.FRAME


# -- v2 renderers ----------------------------------------------------------------------------


def _levels_v2(levels: list[tuple[str, str]] | list[_Change]) -> bytes:
    """``[{"price":N,"qty":N},...]`` with the native strings as number literals."""
    return (
        b"["
        + b",".join(b'{"price":%s,"qty":%s}' % (lv[0].encode(), lv[1].encode()) for lv in levels)
        + b"]"
    )


class BookV2(_Book):
    """v2 ``book``: one symbol per frame, a checksum on snapshots and updates."""

    def __init__(self, market: Market, depth: int) -> None:
        super().__init__(market, depth)
        self.symbol = market.kraken.encode()

    def _frame(
        self,
        tap: Tap,
        kind: bytes,
        asks: list[tuple[str, str]] | list[_Change],
        bids: list[tuple[str, str]] | list[_Change],
    ) -> bytes:
        return text_frame(
            b'{"channel":"book","type":"%s","data":[{"symbol":"%s","bids":%s,"asks":%s,'
            b'"checksum":%d,"timestamp":"%s"}]}'
            % (
                kind,
                self.symbol,
                _levels_v2(bids),
                _levels_v2(asks),
                tap.book.checksum(),
                _iso(tap.ts or time.time_ns()).encode(),
            )
        )

    def snapshot(self, tap: Tap, asks: list[tuple[str, str]], bids: list[tuple[str, str]]) -> bytes:
        return self._frame(tap, b"snapshot", asks, bids)

    def update(self, tap: Tap, asks: list[_Change], bids: list[_Change]) -> bytes:
        return self._frame(tap, b"update", asks, bids)


class TradeV2(Renderer):
    """v2 ``trade``: every trade of the pass in one frame (one symbol per frame)."""

    source = "trades"
    conflates = False

    def __init__(self, market: Market, snapshot: bool) -> None:
        self.symbol = market.kraken.encode()
        self.snapshot = snapshot

    def _frame(self, kind: bytes, trades: list[Trade]) -> bytes:
        sym = self.symbol
        items = b",".join(
            b'{"symbol":"%s","side":"%s","price":%s,"qty":%s,"ord_type":"limit",'
            b'"trade_id":%d,"timestamp":"%s"}'
            % (
                sym,
                t.side.encode(),
                t.price.encode(),
                t.qty.encode(),
                t.id,
                _iso(t.ts).encode(),
            )
            for t in trades
        )
        return text_frame(b'{"channel":"trade","type":"%s","data":[%s]}' % (kind, items))

    def trades(self, tap: Tap, trades: list[Trade]) -> bytes | None:
        return self._frame(b"update", trades)

    def join(self, tap: Tap) -> bytes | None:
        if not self.snapshot:
            return None
        recent = list(tap.recent)[-TRADE_SNAPSHOT:]
        # ccxt reads the symbol from data[0]: never an empty list.
        return self._frame(b"snapshot", recent) if recent else None


class TickerV2(_Ticker):
    """v2 ``ticker``: bid, ask, last and the 24 h statistics, as number literals."""

    def __init__(self, market: Market) -> None:
        self.symbol = market.kraken.encode()

    def render(self, tap: Tap, ticker: Ticker, first: bool) -> bytes | None:
        if ticker.bid is None or ticker.ask is None:
            return None
        s = _stats(tap, ticker)
        fields = (
            ("bid", ticker.bid),
            ("bid_qty", ticker.bid_qty or "0"),
            ("ask", ticker.ask),
            ("ask_qty", ticker.ask_qty or "0"),
            ("last", s["lastPrice"]),
            ("volume", s["volume"]),
            ("vwap", s["weightedAvgPrice"]),
            ("low", s["lowPrice"]),
            ("high", s["highPrice"]),
            ("change", s["priceChange"]),
            ("change_pct", s["priceChangePercent"]),
        )
        body = b",".join(b'"%s":%s' % (k.encode(), _number(v).encode()) for k, v in fields)
        kind = b"snapshot" if first else b"update"
        return text_frame(
            b'{"channel":"ticker","type":"%s","data":[{"symbol":"%s",%s}]}'
            % (kind, self.symbol, body)
        )


def _number(text: str) -> str:
    """A decimal string as a JSON number literal (``-0.000`` stays; ``.5`` gets its 0)."""
    if text.startswith("."):
        return "0" + text
    if text.startswith("-."):
        return "-0" + text[1:]
    return text


class HeartbeatV2(Renderer):
    """v2 ``{"channel":"heartbeat"}`` every second, once subscribed to a channel."""

    source = "timer"
    interval = HEARTBEAT_INTERVAL
    conflates = False
    FRAME = text_frame(b'{"channel":"heartbeat"}')

    def timer(self, tap: Tap, now: float) -> bytes | None:
        return self.FRAME


# -- connections -------------------------------------------------------------------------------


def _reply(sub: DialectSubscriber, payload: Any) -> None:
    reply(sub, text_frame(_json.encode(payload)))


_CHANNELS = ("book", "trade", "ticker")


class _KrakenSession:
    """What both Kraken versions' connections share."""

    venue = "kraken"
    #: The frame a message over the rate limit is answered with (per version).
    RATE_LIMITED = b""

    def __init__(self, feed: DialectFeed) -> None:
        self.feed = feed
        self.connection_id = next(_connection_ids)
        # (channel, pair or symbol as this version names it) -> stream.
        self.subs: dict[tuple[str, str], Stream] = {}

    def rate_limited(self, reason: str) -> bytes:
        """Kraken's "Exceeded msg rate"."""
        return self.RATE_LIMITED


class KrakenV1Session(_KrakenSession):
    """One Kraken WebSocket v1 connection (``/kraken``): cryptofeed's.

    ``subs`` keys are (channel name, v1 pair): ("book-10", "XBT/USD").
    """

    RATE_LIMITED = text_frame(b'{"event":"error","errorMessage":"Exceeded msg rate"}')

    def open(self, sub: DialectSubscriber) -> None:
        _reply(
            sub,
            {
                "connectionID": self.connection_id,
                "event": "systemStatus",
                "status": "online",
                "version": "1.9.5",
            },
        )

    def receive(self, sub: DialectSubscriber, text: bytes) -> None:
        try:
            req = _decode.decode(text)
        except msgspec.DecodeError as exc:
            sub.rejected("invalid_json", str(exc))
            _reply(sub, {"errorMessage": "Malformed request", "event": "error"})
            return
        if not isinstance(req, dict) or not isinstance(req.get("event"), str):
            sub.rejected("missing_event", "no event")
            _reply(sub, {"errorMessage": "Malformed request", "event": "error"})
            return
        event = req["event"]
        reqid = req.get("reqid")
        if event == "ping":
            pong: dict[str, Any] = {"event": "pong"}
            if reqid is not None:
                pong["reqid"] = reqid
            _reply(sub, pong)
        elif event in ("subscribe", "unsubscribe"):
            self._subscription(sub, req, event == "subscribe", reqid)
        else:
            sub.rejected("unknown_event", f"unknown event {event[:32]!r}")
            _reply(sub, {"errorMessage": "Unsupported event", "event": "error"})

    def _status(
        self, sub: DialectSubscriber, reqid: Any, fields: dict[str, Any], error: str | None
    ) -> None:
        msg: dict[str, Any] = {"event": "subscriptionStatus", **fields}
        if reqid is not None:
            msg["reqid"] = reqid
        if error is not None:
            msg["status"] = "error"
            msg["errorMessage"] = error
        _reply(sub, msg)

    def _subscription(
        self, sub: DialectSubscriber, req: dict[str, Any], on: bool, reqid: Any
    ) -> None:
        if not on and "channelID" in req:
            self._unsubscribe_id(sub, req["channelID"], reqid)
            return
        spec = req.get("subscription")
        if not isinstance(spec, dict):
            sub.rejected("missing_subscription", "no subscription object")
            self._status(sub, reqid, {}, "Subscription object missing")
            return
        name = spec.get("name")
        shown_spec = {k: v for k, v in spec.items() if k in ("name", "depth")}
        if name not in _CHANNELS:
            sub.rejected("invalid_name", f"unknown subscription {str(name)[:32]!r}")
            self._status(sub, reqid, {"subscription": shown_spec}, "Subscription name invalid")
            return
        depth = spec.get("depth", 10) if name == "book" else 0
        if name == "book" and depth not in DEPTHS:
            sub.rejected("invalid_depth", f"depth {str(depth)[:16]}")
            self._status(
                sub, reqid, {"subscription": shown_spec}, "Subscription depth not supported"
            )
            return
        pairs = req.get("pair")
        if not isinstance(pairs, list) or not pairs:
            sub.rejected("missing_pair", "pair must be a non-empty array")
            self._status(sub, reqid, {"subscription": shown_spec}, "Pair field must be an array")
            return
        channel = f"book-{depth}" if name == "book" else name
        subscription: dict[str, Any] = {"name": name}
        if name == "book":
            subscription["depth"] = depth
        markets = self.feed.refresh_markets()
        for pair in pairs:
            market = markets.by_kraken_v1.get(pair) if isinstance(pair, str) else None
            shown = pair if isinstance(pair, str) else str(pair)
            if market is None:
                sub.rejected("unknown_pair", f"unknown pair {shown[:32]!r}")
                self._status(
                    sub,
                    reqid,
                    {"pair": shown[:64], "subscription": subscription},
                    f"Currency pair not supported {shown[:64]}",
                )
                continue
            if on:
                self._subscribe(sub, market, name, depth, channel, subscription, reqid)
            else:
                self._unsubscribe(sub, (channel, market.kraken_v1), subscription, reqid)

    def _subscribe(
        self,
        sub: DialectSubscriber,
        market: Market,
        name: str,
        depth: int,
        channel: str,
        subscription: dict[str, Any],
        reqid: Any,
    ) -> None:
        key = f"kraken|v1|{channel}|{market.kraken_v1}"
        make: Callable[[], Renderer]
        if name == "book":
            make = lambda: BookV1(market, depth)  # noqa: E731
        elif name == "trade":
            make = lambda: TradeV1(market)  # noqa: E731
        else:
            make = lambda: TickerV1(market)  # noqa: E731
        stream = self.feed.stream(key, market, make)
        renderer = stream.renderer
        assert isinstance(renderer, _V1)
        self._status(
            sub,
            reqid,
            {
                "channelID": renderer.channel_id,
                "channelName": channel,
                "pair": market.kraken_v1,
                "status": "subscribed",
                "subscription": subscription,
            },
            None,
        )
        if not self.subs:
            # Heartbeats once subscribed (a connection without a subscription stays
            # subject to the gateway's idle timeout).
            self.feed.join(sub, self.feed.clock("kraken|v1|heartbeat", HeartbeatV1))
        self.subs[(channel, market.kraken_v1)] = stream
        if name == "book":
            self.feed.leave(sub, key)  # a repeated subscribe restarts from a snapshot
        self.feed.join(sub, stream)

    def _unsubscribe(
        self,
        sub: DialectSubscriber,
        ident: tuple[str, str],
        subscription: dict[str, Any],
        reqid: Any,
    ) -> None:
        stream = self.subs.pop(ident, None)
        if stream is None:
            sub.rejected("not_subscribed", f"not subscribed to {ident[0]} {ident[1]}")
            self._status(
                sub,
                reqid,
                {"pair": ident[1], "subscription": subscription},
                "Subscription Not Found",
            )
            return
        self.feed.leave(sub, stream.key)
        renderer = stream.renderer
        assert isinstance(renderer, _V1)
        self._status(
            sub,
            reqid,
            {
                "channelID": renderer.channel_id,
                "channelName": ident[0],
                "pair": ident[1],
                "status": "unsubscribed",
                "subscription": subscription,
            },
            None,
        )

    def _unsubscribe_id(self, sub: DialectSubscriber, channel_id: Any, reqid: Any) -> None:
        for ident, stream in self.subs.items():
            renderer = stream.renderer
            if isinstance(renderer, _V1) and renderer.channel_id == channel_id:
                name, _, depth = ident[0].partition("-")
                subscription: dict[str, Any] = {"name": name}
                if depth:
                    subscription["depth"] = int(depth)
                self._unsubscribe(sub, ident, subscription, reqid)
                return
        sub.rejected("not_subscribed", f"no channel {str(channel_id)[:16]}")
        self._status(sub, reqid, {"channelID": channel_id}, "Subscription Not Found")


class KrakenV2Session(_KrakenSession):
    """One Kraken WebSocket v2 connection (``/kraken/v2``): ccxt.pro's."""

    RATE_LIMITED = text_frame(b'{"error":"Exceeded msg rate","success":false}')

    def open(self, sub: DialectSubscriber) -> None:
        _reply(
            sub,
            {
                "channel": "status",
                "type": "update",
                "data": [
                    {
                        "api_version": "v2",
                        "connection_id": self.connection_id,
                        "system": "online",
                        "version": "2.0.10",
                    }
                ],
            },
        )

    def _answer(
        self,
        sub: DialectSubscriber,
        method: str,
        time_in: str,
        req_id: Any,
        result: dict[str, Any] | None = None,
        error: str | None = None,
        symbol: str | None = None,
    ) -> None:
        msg: dict[str, Any] = {"method": method}
        if req_id is not None:
            msg["req_id"] = req_id
        if error is None:
            if result is not None:
                msg["result"] = result
            if method != "pong":
                msg["success"] = True
        else:
            msg["error"] = error
            msg["success"] = False
            if symbol is not None:
                msg["symbol"] = symbol
        msg["time_in"] = time_in
        msg["time_out"] = _now_iso()
        _reply(sub, msg)

    def receive(self, sub: DialectSubscriber, text: bytes) -> None:
        time_in = _now_iso()
        try:
            req = _decode.decode(text)
        except msgspec.DecodeError as exc:
            sub.rejected("invalid_json", str(exc))
            self._answer(sub, "error", time_in, None, error="Malformed request")
            return
        if not isinstance(req, dict) or not isinstance(req.get("method"), str):
            sub.rejected("missing_method", "no method")
            self._answer(sub, "error", time_in, None, error="Malformed request")
            return
        method = req["method"]
        req_id = req.get("req_id")
        if req_id is not None and (isinstance(req_id, bool) or not isinstance(req_id, int)):
            sub.rejected("bad_req_id", "req_id must be an integer")
            self._answer(sub, method[:32], time_in, None, error="req_id must be an integer")
            return
        if method == "ping":
            self._answer(sub, "pong", time_in, req_id)
        elif method in ("subscribe", "unsubscribe"):
            self._subscription(sub, req, method, req_id, time_in)
        else:
            sub.rejected("unknown_method", f"unknown method {method[:32]!r}")
            self._answer(sub, method[:32], time_in, req_id, error="Method not found")

    def _subscription(
        self, sub: DialectSubscriber, req: dict[str, Any], method: str, req_id: Any, time_in: str
    ) -> None:
        params = req.get("params")
        if not isinstance(params, dict):
            sub.rejected("missing_params", "no params object")
            self._answer(sub, method, time_in, req_id, error="Missing field: params")
            return
        channel = params.get("channel")
        if channel not in _CHANNELS:
            sub.rejected("invalid_channel", f"channel {str(channel)[:32]!r}")
            self._answer(
                sub, method, time_in, req_id, error=f"Channel {str(channel)[:32]} not supported"
            )
            return
        depth = params.get("depth", 10) if channel == "book" else 0
        if channel == "book" and depth not in DEPTHS:
            sub.rejected("invalid_depth", f"depth {str(depth)[:16]}")
            self._answer(sub, method, time_in, req_id, error="Invalid depth")
            return
        snapshot = params.get("snapshot", channel != "trade")
        if not isinstance(snapshot, bool):
            sub.rejected("invalid_snapshot", "snapshot must be a boolean")
            self._answer(sub, method, time_in, req_id, error="Invalid snapshot")
            return
        symbols = params.get("symbol")
        if not isinstance(symbols, list) or not symbols:
            sub.rejected("missing_symbol", "symbol must be a non-empty array")
            self._answer(sub, method, time_in, req_id, error="Missing field: symbol")
            return
        markets = self.feed.refresh_markets()
        for symbol in symbols:
            market = markets.by_kraken.get(symbol) if isinstance(symbol, str) else None
            shown = symbol[:64] if isinstance(symbol, str) else str(symbol)[:64]
            if market is None:
                sub.rejected("unknown_pair", f"unknown symbol {shown!r}")
                self._answer(
                    sub,
                    method,
                    time_in,
                    req_id,
                    error=f"Currency pair not supported {shown}",
                    symbol=shown,
                )
                continue
            result: dict[str, Any] = {"channel": channel}
            if channel == "book":
                result["depth"] = depth
            if method == "subscribe":
                result["snapshot"] = snapshot
            result["symbol"] = market.kraken
            ident = (channel, market.kraken)
            if method == "unsubscribe":
                stream = self.subs.pop(ident, None)
                if stream is None:
                    sub.rejected("not_subscribed", f"not subscribed to {channel} {shown}")
                    self._answer(
                        sub,
                        method,
                        time_in,
                        req_id,
                        error="Subscription Not Found",
                        symbol=shown,
                    )
                    continue
                self.feed.leave(sub, stream.key)
                self._answer(sub, method, time_in, req_id, result)
                continue
            self._answer(sub, method, time_in, req_id, result)
            self._subscribe(sub, market, channel, depth, snapshot, ident)

    def _subscribe(
        self,
        sub: DialectSubscriber,
        market: Market,
        channel: str,
        depth: int,
        snapshot: bool,
        ident: tuple[str, str],
    ) -> None:
        feed = self.feed
        make: Callable[[], Renderer]
        if channel == "book":
            key = f"kraken|v2|book-{depth}|{market.kraken}"
            make = lambda: BookV2(market, depth)  # noqa: E731
        elif channel == "trade":
            key = f"kraken|v2|trade-{int(snapshot)}|{market.kraken}"
            make = lambda: TradeV2(market, snapshot)  # noqa: E731
        else:
            key = f"kraken|v2|ticker|{market.kraken}"
            make = lambda: TickerV2(market)  # noqa: E731
        old = self.subs.pop(ident, None)
        if old is not None:
            # A repeated subscribe (another depth, or after a client's resync)
            # replaces the stream and restarts it from a snapshot.
            feed.leave(sub, old.key)
        if not self.subs:
            feed.join(sub, feed.clock("kraken|v2|heartbeat", HeartbeatV2))
        stream = feed.stream(key, market, make)
        self.subs[ident] = stream
        feed.join(sub, stream)


def open_session(
    feed: DialectFeed, path: str, query: Mapping[str, str]
) -> KrakenV1Session | KrakenV2Session | None:
    """The session for a ``/kraken...`` connect path (after ``/kraken``), or None."""
    path = path.rstrip("/")
    if path == "":
        return KrakenV1Session(feed)
    if path == "/v2":
        return KrakenV2Session(feed)
    return None


# -- REST -------------------------------------------------------------------------------------


def _rest_error(message: str, status: int = 200) -> RestError:
    return RestError(status, _json.encode({"error": [message]}))


def _ok(result: Any) -> bytes:
    return _json.encode({"error": [], "result": result})


_UNKNOWN_PAIR = "EQuery:Unknown asset pair"
_BAD_ARGS = "EGeneral:Invalid arguments"


def _market(view: MarketView, params: Mapping[str, str]) -> Market:
    pair = params.get("pair")
    if not pair:
        raise _rest_error(_BAD_ARGS)
    return _pair(view.markets, pair)


def _pair(markets: Markets, pair: str) -> Market:
    name = pair.upper()
    market = (
        markets.by_kraken_pair.get(name)
        or markets.by_kraken_v1.get(name)
        or markets.by_kraken.get(name)
    )
    if market is None:
        raise _rest_error(_UNKNOWN_PAIR)
    return market


def _markets(view: MarketView, params: Mapping[str, str]) -> list[Market]:
    """The markets named by ``pair`` (a comma-separated list), or all of them."""
    pairs = params.get("pair")
    markets = view.markets
    if not pairs:
        return list(markets)
    return [_pair(markets, p) for p in pairs.split(",") if p]


def _assets(market: Market) -> tuple[str, str]:
    """The base and quote asset codes (Kraken's: XBT, XDG)."""
    base, _, quote = market.kraken_v1.partition("/")
    return base, quote


def asset_pairs(view: MarketView, params: Mapping[str, str]) -> bytes:
    """``GET /0/public/AssetPairs[?pair=]``: every served symbol, keyed by its altname."""
    out: dict[str, Any] = {}
    for m in _markets(view, params):
        pdec, qdec = precision(view, m)
        base, quote = _assets(m)
        step = "1" if pdec == 0 else "0." + "0" * (pdec - 1) + "1"
        out[m.kraken_pair] = {
            "altname": m.kraken_pair,
            "wsname": m.kraken_v1,
            "aclass_base": "currency",
            "base": base,
            "aclass_quote": "currency",
            "quote": quote,
            "lot": "unit",
            "cost_decimals": pdec,
            "pair_decimals": pdec,
            "lot_decimals": qdec,
            "lot_multiplier": 1,
            "leverage_buy": [],
            "leverage_sell": [],
            "fees": [[0, 0.4], [10000, 0.35], [50000, 0.24], [100000, 0.22]],
            "fees_maker": [[0, 0.25], [10000, 0.2], [50000, 0.14], [100000, 0.12]],
            "fee_volume_currency": "ZUSD",
            "margin_call": 80,
            "margin_stop": 40,
            "ordermin": "0" if qdec == 0 else "0." + "0" * (qdec - 1) + "1",
            "costmin": "0.5",
            "tick_size": step,
            "status": "online",
        }
    return _ok(out)


def assets(view: MarketView, params: Mapping[str, str]) -> bytes:
    """``GET /0/public/Assets[?asset=]``: the bases and quotes of the served symbols."""
    codes: dict[str, None] = {}
    for m in view.markets:
        for code in _assets(m):
            codes[code] = None
    wanted = params.get("asset")
    if wanted:
        names = [a.upper() for a in wanted.split(",") if a]
        if any(n not in codes for n in names):
            raise _rest_error("EQuery:Unknown asset")
        codes = dict.fromkeys(names)
    return _ok(
        {
            code: {
                "aclass": "currency",
                "altname": code,
                "decimals": 10,
                "display_decimals": 5,
                "collateral_value": 1,
                "status": "enabled",
            }
            for code in codes
        }
    )


def depth(view: MarketView, params: Mapping[str, str]) -> bytes:
    """``GET /0/public/Depth?pair=&count=``: the live book (``count`` 1..500, 100)."""
    market = _market(view, params)
    count = int_param(params, "count", 100, _rest_error(_BAD_ARGS), 0, 500) or 500
    book = view.book(market.symbol, count)
    ts = view.now_ms() // 1000
    return _ok(
        {
            market.kraken_pair: {
                "asks": [[p, q, ts] for p, q in book.asks],
                "bids": [[p, q, ts] for p, q in book.bids],
            }
        }
    )


def ticker(view: MarketView, params: Mapping[str, str]) -> bytes:
    """``GET /0/public/Ticker[?pair=]``."""
    now = view.now_ms()
    out = {}
    for m in _markets(view, params):
        t = view.ticker(m.symbol)
        stats = rolling_stats(view.candles(m.symbol), t, now)
        recent = view.trades(m.symbol)
        if recent:
            stats["lastQty"] = recent[-1].qty
        out[m.kraken_pair] = _ticker_fields(stats, t, False)
    return _ok(out)


def trades(view: MarketView, params: Mapping[str, str]) -> bytes:
    """``GET /0/public/Trades?pair=&since=&count=``: the most recent trades, oldest first.

    Each trade is ``[price, volume, time, side, orderType, misc, trade_id]``; ``last``
    (the next ``since``) is the last trade's time in ns.
    """
    market = _market(view, params)
    bad = _rest_error(_BAD_ARGS)
    count = int_param(params, "count", 1000, bad, 1, 1000)
    since = int_param(params, "since", None, bad)
    assert count is not None
    recent = view.trades(market.symbol)
    if since is not None:
        since_ns = since if since > 10**14 else since * 1_000_000_000
        recent = [t for t in recent if t.ts > since_ns]
    recent = recent[-count:]
    last = recent[-1].ts if recent else (since or 0)
    return _ok(
        {
            market.kraken_pair: [
                [
                    t.price,
                    t.qty,
                    t.ts / 1e9,
                    "b" if t.side == "buy" else "s",
                    "l",
                    "",
                    t.id,
                ]
                for t in recent
            ],
            "last": str(last),
        }
    )


#: OHLC ``interval`` (minutes) -> candle series.
_OHLC = {1: "1m", 5: "5m", 15: "15m", 30: "30m", 60: "1h", 240: "4h", 1440: "1d", 10080: "1w"}


def ohlc(view: MarketView, params: Mapping[str, str]) -> bytes:
    """``GET /0/public/OHLC?pair=&interval=&since=``: up to 720 candles, oldest first.

    Each is ``[time, open, high, low, close, vwap, volume, count]``; ``last`` is the
    start of the last closed candle (the current one is the last entry).
    """
    market = _market(view, params)
    bad = _rest_error(_BAD_ARGS)
    minutes = int_param(params, "interval", 1, bad, 1)
    since = int_param(params, "since", None, bad)
    series = _OHLC.get(minutes or 1)
    if series is None:
        raise bad
    candles: Candles = view.candles(market.symbol)
    start = since * 1000 if since is not None else None
    rows = candles.series(series, start, None, 720)
    out = []
    for c in rows:
        vwap = c.quote_volume / c.volume if c.volume else float(c.close)
        out.append(
            [
                c.start // 1000,
                c.open,
                c.high,
                c.low,
                c.close,
                f"{vwap:.{decimals(c.close)}f}",
                candles.volume(c.volume),
                c.trades,
            ]
        )
    last = rows[-2].start // 1000 if len(rows) > 1 else (rows[0].start // 1000 if rows else 0)
    return _ok({market.kraken_pair: out, "last": last})


def server_time(view: MarketView, params: Mapping[str, str]) -> bytes:
    """``GET /0/public/Time``."""
    now = view.now_ms() / 1000
    stamp = datetime.datetime.fromtimestamp(now, datetime.UTC)
    return _ok({"unixtime": int(now), "rfc1123": stamp.strftime("%a, %d %b %y %H:%M:%S +0000")})


def system_status(view: MarketView, params: Mapping[str, str]) -> bytes:
    """``GET /0/public/SystemStatus``."""
    stamp = datetime.datetime.fromtimestamp(view.now_ms() // 1000, datetime.UTC)
    return _ok({"status": "online", "timestamp": stamp.strftime("%Y-%m-%dT%H:%M:%SZ")})


_ROUTES: dict[str, Callable[[MarketView, Mapping[str, str]], bytes]] = {
    "/0/public/AssetPairs": asset_pairs,
    "/0/public/Assets": assets,
    "/0/public/Depth": depth,
    "/0/public/Ticker": ticker,
    "/0/public/Trades": trades,
    "/0/public/OHLC": ohlc,
    "/0/public/Time": server_time,
    "/0/public/SystemStatus": system_status,
}

#: The REST paths served (under ``/kraken`` on the admin port).
REST_PATHS = tuple(_ROUTES)


def rest(view: MarketView, path: str, params: Mapping[str, str]) -> RestResponse:
    """Answer ``GET /kraken<path>``: the body, or Kraken's ``{"error":[..]}``."""
    route = _ROUTES.get(path)
    if route is None:
        return RestResponse(_json.encode({"error": ["EGeneral:Unknown method"]}), 404)
    try:
        return RestResponse(route(view, params))
    except RestError as exc:
        return RestResponse(exc.body, exc.status)


# -- fault hooks (tickwire.faults): how the fault engine sees Kraken's messages ---------

_V1_PAIR = re.compile(rb',"([^"]+)"\]$')
_V2_SYMBOL = re.compile(rb'"symbol":"([^"]+)"')
_V1_CHECKSUM = re.compile(rb'"c":"(\d+)"')
_V2_CHECKSUM = re.compile(rb'"checksum":(\d+)')


def _flip(payload: bytes, pattern: re.Pattern[bytes]) -> bytes | None:
    m = pattern.search(payload)
    if m is None:
        return None
    value = str(int(m.group(1)) ^ 1).encode()
    return payload[: m.start(1)] + value + payload[m.end(1) :]


class FaultHooks:
    """Kraken's book frames (v1 and v2; no seqs: a hole shows in the checksum), its
    maintenance status and REST limit (see ``docs/connectivity-testing.md``)."""

    venue = "kraken"
    has_checksum = True

    def classify(self, payload: bytes, markets: Markets) -> tuple[str, str, int | None] | None:
        if payload.startswith(b'{"channel":"book","type":"'):
            kind = "snapshot" if payload.startswith(b"snapshot", 26) else "update"
            m = _V2_SYMBOL.search(payload)
            market = markets.by_kraken.get(m.group(1).decode()) if m else None
        elif payload.startswith(b"[") and b',"book-' in payload:
            kind = "snapshot" if b'"as":' in payload else "update"
            m = _V1_PAIR.search(payload)
            market = markets.by_kraken_v1.get(m.group(1).decode()) if m else None
        else:
            return None
        if market is None:
            return None
        return market.symbol, kind, None

    def corrupt_checksum(self, payload: bytes) -> bytes | None:
        if payload.startswith(b"["):
            return _flip(payload, _V1_CHECKSUM)
        return _flip(payload, _V2_CHECKSUM)

    def is_heartbeat(self, payload: bytes) -> bool:
        return payload in (b'{"event":"heartbeat"}', b'{"channel":"heartbeat"}')

    def notice(self, session: object, now_ms: int) -> bytes | None:
        """The system status turning to ``maintenance`` (v1 ``systemStatus``, v2 ``status``)."""
        conn_id = getattr(session, "connection_id", 0)
        if isinstance(session, KrakenV1Session):
            return _json.encode(
                {
                    "connectionID": conn_id,
                    "event": "systemStatus",
                    "status": "maintenance",
                    "version": "1.9.5",
                }
            )
        return _json.encode(
            {
                "channel": "status",
                "type": "update",
                "data": [
                    {
                        "api_version": "v2",
                        "connection_id": conn_id,
                        "system": "maintenance",
                        "version": "2.0.10",
                    }
                ],
            }
        )

    def rest_limited(self, status: int, retry_after: float, until_ms: int) -> RestResponse:
        """HTTP 429 with ``EGeneral:Too many requests`` (Kraken has no 418)."""
        body = _json.encode({"error": ["EGeneral:Too many requests"]})
        return RestResponse(body, 429, {"Retry-After": str(max(1, round(retry_after)))})

    def stale_snapshot(self, payload: bytes, seq: int, book: Book) -> bytes | None:
        """The book snapshot (v1 or v2) rendered from ``book``, at the original's depth
        (Kraken has no seq: the next update's checksum no longer matches)."""
        if payload.startswith(b"["):
            frame = _decode_exact.decode(payload)
            name = frame[-2]
            depth = int(name.rpartition("-")[2])
            levels = frame[1].get("as") or frame[1].get("bs") or [["", "", "0"]]
            ts = levels[0][2]
            body = {
                "as": [[p, q, ts] for p, q in book.asks(depth)],
                "bs": [[p, q, ts] for p, q in book.bids(depth)],
            }
            head = payload[: payload.index(b",") + 1]
            tail = payload[payload.rindex(b',"book-') :]
            return head + _json.encode(body) + tail
        msg = _decode_exact.decode(payload)
        data = msg["data"][0]
        depth = max(len(data["bids"]), len(data["asks"]), 10)
        return b'{"channel":"book","type":"snapshot","data":[{"symbol":"%s","bids":%s,' % (
            data["symbol"].encode(),
            _levels_v2(book.bids(depth)),
        ) + b'"asks":%s,"checksum":%d,"timestamp":"%s"}]}' % (
            _levels_v2(book.asks(depth)),
            book.checksum(),
            data["timestamp"].encode(),
        )


FAULT_HOOKS = FaultHooks()
