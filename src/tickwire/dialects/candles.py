"""Candles (OHLCV) built from a symbol's trades, for the venues' kline endpoints (Sans-I/O).

Two series are kept, one-second and one-minute candles (the last hour and the last week);
every longer interval is aggregated from the minutes on demand, a calendar month by
its UTC dates. Prices stay the trades' own strings; volumes are summed as floats and
written with the decimals of the quantities they add (candles are statistics, not
book state: no checksum covers them).
"""

from __future__ import annotations

import datetime as dt
from collections import deque
from collections.abc import Iterable

from ..protocol import Trade

__all__ = ["INTERVALS", "Candle", "Candles", "interval_ms"]

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

#: Seconds and minutes kept.
_KEEP_SECONDS = 3600
_KEEP_MINUTES = 7 * 24 * 60


def interval_ms(name: str) -> int:
    """Length of the kline interval ``name`` in ms.

    Raises:
        KeyError: not one of :data:`INTERVALS`.
    """
    return INTERVALS[name]


def _decimals(text: str) -> int:
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

    def add(self, trade: Trade, px: float) -> None:
        if px > self.hi:
            self.hi, self.high = px, trade.price
        if px < self.lo:
            self.lo, self.low = px, trade.price
        self.close = trade.price
        qty = float(trade.qty)
        self.volume += qty
        self.quote_volume += qty * px
        if trade.side == "buy":
            self.taker_buy += qty
            self.taker_buy_quote += qty * px
        self.trades += 1
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
    """The one-second and one-minute candles of one symbol."""

    __slots__ = ("seconds", "minutes", "qty_decimals", "quote_decimals")

    def __init__(self) -> None:
        self.seconds: deque[Candle] = deque(maxlen=_KEEP_SECONDS)
        self.minutes: deque[Candle] = deque(maxlen=_KEEP_MINUTES)
        self.qty_decimals = 0
        self.quote_decimals = 0

    def add(self, trades: Iterable[Trade]) -> None:
        """Account trades, in order."""
        seconds, minutes = self.seconds, self.minutes
        for t in trades:
            ms = t.ts // 1_000_000
            px = float(t.price)
            for series, step in ((seconds, _S), (minutes, _M)):
                start = ms - ms % step
                if not series or series[-1].start < start:
                    series.append(Candle(start, t))
                series[-1].add(t, px)
            if not self.qty_decimals:
                self.qty_decimals = max(_decimals(t.qty), 1)
                self.quote_decimals = self.qty_decimals + _decimals(t.price)

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
            out = list(self.minutes)
        else:
            out = []
            for m in self.minutes:
                start = _month_start(m.start) if interval == "1M" else m.start - m.start % step
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
