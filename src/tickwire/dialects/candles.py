"""Candles (OHLCV) built from a symbol's trades, for the venues' kline endpoints (Sans-I/O).

Two series are kept, one-second and one-minute candles (the last hour and the last week);
every longer interval is aggregated from the minutes on demand, a calendar month by
its UTC dates. Prices stay the trades' own strings; volumes are summed as floats and
written with the decimals of the quantities they add (candles are statistics, not
book state: no checksum covers them).
"""

from __future__ import annotations

import datetime as dt
import time
from collections import deque
from collections.abc import Iterable
from typing import Any

from ..protocol import Ticker, Trade

__all__ = [
    "INTERVALS",
    "Candle",
    "Candles",
    "decimals",
    "interval_ms",
    "ms",
    "now_ms",
    "rolling_stats",
]

_S = 1000
_M = 60 * _S
_H = 60 * _M
_D = 24 * _H

#: Binance's kline intervals and their length in milliseconds (``1M``: a calendar month,
#: nominally 30 days).
INTERVALS = {
    "1s": _S,
    "1m": _M,
    "3m": 3 * _M,
    "5m": 5 * _M,
    "15m": 15 * _M,
    "30m": 30 * _M,
    "1h": _H,
    "2h": 2 * _H,
    "4h": 4 * _H,
    "6h": 6 * _H,
    "8h": 8 * _H,
    "12h": 12 * _H,
    "1d": _D,
    "3d": 3 * _D,
    "1w": 7 * _D,
    "1M": 30 * _D,
}

#: The first Monday after the epoch (1970-01-05), in ms: weekly candles open on Mondays.
_MONDAY = 4 * _D

#: Seconds and minutes kept.
_KEEP_SECONDS = 3600
_KEEP_MINUTES = 7 * 24 * 60


def ms(ns: int) -> int:
    """An event time in ns since the epoch, in whole ms (the venues' unit)."""
    return ns // 1_000_000


def now_ms() -> int:
    """The wall clock in whole ms since the epoch."""
    return time.time_ns() // 1_000_000


def interval_ms(name: str) -> int:
    """Length of the kline interval ``name`` in ms.

    Raises:
        KeyError: not one of :data:`INTERVALS`.
    """
    return INTERVALS[name]


def decimals(text: str) -> int:
    """The digits after the point of a decimal string."""
    point = text.find(".")
    return 0 if point < 0 else len(text) - point - 1


class Candle:
    """One interval's open, high, low, close, volumes and trade count."""

    __slots__ = (
        "start",
        "open",
        "high",
        "low",
        "close",
        "hi",
        "lo",
        "volume",
        "quote_volume",
        "taker_buy",
        "taker_buy_quote",
        "trades",
        "first_id",
        "last_id",
        "last_ts",
    )

    def __init__(self, start: int, trade: Trade) -> None:
        self.start = start  # open time, ms since the epoch
        price = trade.price
        self.open = self.high = self.low = self.close = price
        self.hi = self.lo = float(price)
        self.volume = 0.0
        self.quote_volume = 0.0
        self.taker_buy = 0.0
        self.taker_buy_quote = 0.0
        self.trades = 0
        self.first_id = trade.id
        self.last_id = trade.id
        self.last_ts = trade.ts

    def merge(self, other: Candle) -> None:
        """Extend this candle with a later one (aggregating into a longer interval)."""
        if other.hi > self.hi:
            self.hi, self.high = other.hi, other.high
        if other.lo < self.lo:
            self.lo, self.low = other.lo, other.low
        self.close = other.close
        self.volume += other.volume
        self.quote_volume += other.quote_volume
        self.taker_buy += other.taker_buy
        self.taker_buy_quote += other.taker_buy_quote
        self.trades += other.trades
        self.last_id = other.last_id
        self.last_ts = other.last_ts

    def copy(self, start: int) -> Candle:
        c = Candle.__new__(Candle)
        for name in Candle.__slots__:
            setattr(c, name, getattr(self, name))
        c.start = start
        return c


class Candles:
    """The one-second and one-minute candles of one symbol.

    A trade updates only the open second; a second that closes is merged into its
    minute once. The open second joins the minutes when they are read.
    """

    __slots__ = ("seconds", "minutes", "qty_decimals", "quote_decimals")

    def __init__(self) -> None:
        self.seconds: deque[Candle] = deque(maxlen=_KEEP_SECONDS)
        self.minutes: deque[Candle] = deque(maxlen=_KEEP_MINUTES)
        self.qty_decimals = 0
        self.quote_decimals = 0

    def add(self, trades: Iterable[Trade]) -> None:
        """Account trades, in order (this runs once per trade: kept flat)."""
        seconds = self.seconds
        cur = seconds[-1] if seconds else None
        for t in trades:
            ms = t.ts // 1_000_000
            start = ms - ms % _S
            price = t.price
            px = float(price)
            if cur is None or cur.start < start:
                if cur is not None:
                    self._close(cur)
                else:
                    self.qty_decimals = max(decimals(t.qty), 1)
                    self.quote_decimals = self.qty_decimals + decimals(price)
                cur = Candle(start, t)
                seconds.append(cur)
            elif px > cur.hi:
                cur.hi, cur.high = px, price
            elif px < cur.lo:
                cur.lo, cur.low = px, price
            cur.close = price
            qty = float(t.qty)
            quote = qty * px
            cur.volume += qty
            cur.quote_volume += quote
            if t.side == "buy":
                cur.taker_buy += qty
                cur.taker_buy_quote += quote
            cur.trades += 1
            cur.last_id = t.id
            cur.last_ts = t.ts

    def _close(self, second: Candle) -> None:
        """Merge a second that closed into its minute."""
        start = second.start - second.start % _M
        minutes = self.minutes
        if minutes and minutes[-1].start == start:
            minutes[-1].merge(second)
        else:
            minutes.append(second.copy(start))

    def _minutes(self) -> list[Candle]:
        """The minutes, the open second included (in a copy of its minute)."""
        out = list(self.minutes)
        if self.seconds:
            second = self.seconds[-1]
            start = second.start - second.start % _M
            if out and out[-1].start == start:
                out[-1] = out[-1].copy(start)
                out[-1].merge(second)
            else:
                out.append(second.copy(start))
        return out

    def series(
        self,
        interval: str,
        start_ms: int | None = None,
        end_ms: int | None = None,
        limit: int = 500,
    ) -> list[Candle]:
        """The candles of ``interval`` (oldest first) opening in ``[start_ms, end_ms]``.

        At most ``limit``: the first ones from ``start_ms`` if given, else the latest.

        Raises:
            KeyError: ``interval`` is not one of :data:`INTERVALS`.
        """
        step = INTERVALS[interval]
        if step == _S:
            out = list(self.seconds)
        elif step == _M:
            out = self._minutes()
        else:
            out = []
            for m in self._minutes():
                if interval == "1M":
                    start = _month_start(m.start)
                elif interval == "1w":  # weeks open on Monday (the epoch was a Thursday)
                    start = m.start - (m.start - _MONDAY) % step
                else:
                    start = m.start - m.start % step
                if out and out[-1].start == start:
                    out[-1].merge(m)
                else:
                    out.append(m.copy(start))
        if start_ms is not None:
            out = [c for c in out if c.start >= start_ms]
        if end_ms is not None:
            out = [c for c in out if c.start <= end_ms]
        return out[:limit] if start_ms is not None else out[-limit:]

    def volume(self, value: float) -> str:
        """Write a base-asset volume with the trades' quantity decimals."""
        return f"{value:.{self.qty_decimals}f}"

    def quote(self, value: float) -> str:
        """Write a quote-asset volume."""
        return f"{value:.{self.quote_decimals}f}"


def _month_start(ms: int) -> int:
    day = dt.datetime.fromtimestamp(ms / 1000, dt.UTC)
    first = day.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return int(first.timestamp() * 1000)


def rolling_stats(candles: Candles, ticker: Ticker, now_ms: int) -> dict[str, Any]:
    """Binance's 24 h ticker fields from the minute candles and the current ticker."""
    window = candles.series("1m", now_ms - 24 * 3600 * 1000, None, 24 * 60 + 1)
    last = ticker.last or (window[-1].close if window else "0")
    if window:
        first = window[0]
        open_px, high, low = first.open, first.high, first.low
        hi, lo = first.hi, first.lo
        volume = quote = 0.0
        count = 0
        for c in window:
            if c.hi > hi:
                hi, high = c.hi, c.high
            if c.lo < lo:
                lo, low = c.lo, c.low
            volume += c.volume
            quote += c.quote_volume
            count += c.trades
        first_id, last_id, open_time = first.first_id, window[-1].last_id, first.start
    else:
        open_px = high = low = last
        volume = quote = 0.0
        count, first_id, last_id, open_time = 0, -1, -1, now_ms - 24 * 3600 * 1000
    change = float(last) - float(open_px)
    places = decimals(last)
    return {
        "priceChange": f"{change:.{places}f}",
        "priceChangePercent": f"{(change / float(open_px) * 100) if float(open_px) else 0.0:.3f}",
        "weightedAvgPrice": f"{(quote / volume) if volume else float(last):.{places}f}",
        "prevClosePrice": open_px,
        "lastPrice": last,
        "lastQty": "0" if not window else candles.volume(0.0),
        "bidPrice": ticker.bid or "0",
        "bidQty": ticker.bid_qty or "0",
        "askPrice": ticker.ask or "0",
        "askQty": ticker.ask_qty or "0",
        "openPrice": open_px,
        "highPrice": high,
        "lowPrice": low,
        "volume": candles.volume(volume),
        "quoteVolume": candles.quote(quote),
        "openTime": open_time,
        "closeTime": now_ms,
        "firstId": first_id,
        "lastId": last_id,
        "count": count,
    }
