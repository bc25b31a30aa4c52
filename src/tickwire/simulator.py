"""The embedded market simulator: realistic L2 order flow, deterministic per seed (Sans-I/O).

Each symbol has a limit order book kept in integer ticks and lots. Events are drawn from
a seeded :class:`random.Random`: limit orders joining a level near the touch (sometimes
improving the spread), cancels near the top, and market orders that sweep one or more
levels and print trades. The mid price moves because the touch is consumed and refilled,
not because it is forced. The book is held to a bounded depth by deleting the levels
that fall furthest from the touch.

Time is passed in: :meth:`MarketSimulator.due` turns a monotonic clock reading into the
number of book updates to generate, so the offered rate is exact however late the
caller's ticks are, and the same seed always yields the same sequence of events.
"""

from __future__ import annotations

import random
import time
import zlib
from collections.abc import Callable

from .exceptions import ConfigError
from .protocol import BookUpdate

__all__ = ["Burst", "MarketSimulator", "SymbolFlow", "parse_symbols"]

RawTrade = tuple[str, str, str, int]


def parse_symbols(spec: str) -> list[str]:
    """Turn ``"BTC-USD,ETH-USD"`` into that list, or ``"3"`` into SYM0..SYM2.

    Raises:
        ConfigError: the spec is empty, a count below 1, or names a symbol twice.
    """
    spec = spec.strip()
    if spec.isdigit():
        n = int(spec)
        if n < 1:
            raise ConfigError("--symbols count must be at least 1")
        return [f"SYM{i}" for i in range(n)]
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise ConfigError("--symbols needs a list like BTC-USD,ETH-USD or a count")
    if len(set(names)) != len(names):
        raise ConfigError("--symbols names a symbol twice")
    return names


class SymbolFlow:
    """Order flow of one symbol: an integer book and the event generator around it."""

    #: Levels kept per side; deeper levels are deleted (and the deletion published).
    MAX_LEVELS = 100
    #: Levels per side seeded at start.
    START_LEVELS = 25

    def __init__(self, symbol: str, seed: int, price_decimals: int = 2, qty_decimals: int = 4):
        self.symbol = symbol
        # zlib.crc32 rather than hash(): str hashes are salted per process.
        self.rng = random.Random(seed * 1_000_003 + zlib.crc32(symbol.encode()))
        self.pscale = 10**price_decimals
        self.qscale = 10**qty_decimals
        self.pdec = price_decimals
        self.qdec = qty_decimals
        self.bids: dict[int, int] = {}
        self.asks: dict[int, int] = {}
        self._pstr: dict[int, str] = {}
        self._qstr: dict[int, str] = {}
        base = 50 + zlib.crc32(symbol.encode()) % 50_000
        self.mid0 = base * self.pscale
        self.best_bid = self.mid0 - 1
        self.best_ask = self.mid0 + 1
        # Updates generated beyond what was due (events are never split).
        self.excess = 0

    # -- formatting (cached: prices and sizes repeat constantly) ------------------------

    def price(self, ticks: int) -> str:
        s = self._pstr.get(ticks)
        if s is None:
            q, r = divmod(ticks, self.pscale)
            s = self._pstr[ticks] = f"{q}.{r:0{self.pdec}d}"
            if len(self._pstr) > 100_000:
                self._pstr.clear()
        return s

    def qty(self, lots: int) -> str:
        s = self._qstr.get(lots)
        if s is None:
            q, r = divmod(lots, self.qscale)
            s = self._qstr[lots] = f"{q}.{r:0{self.qdec}d}"
            if len(self._qstr) > 100_000:
                self._qstr.clear()
        return s

    # -- events ------------------------------------------------------------------------

    def seed_book(self, ts: int) -> list[BookUpdate]:
        """Return the initial levels around the starting mid as ordinary updates."""
        out: list[BookUpdate] = []
        rnd = self.rng.random
        for i in range(self.START_LEVELS):
            for side, book, px in (
                ("bid", self.bids, self.best_bid - i),
                ("ask", self.asks, self.best_ask + i),
            ):
                lots = self._lots(rnd) * (1 + i // 5)
                book[px] = lots
                out.append(BookUpdate(side, self.price(px), self.qty(lots), ts))  # type: ignore[arg-type]
        return out

    def _lots(self, rnd: Callable[[], float]) -> int:
        # Heavy-tailed order sizes: mostly small, sometimes large.
        return int(self.qscale * (0.01 + 2.0 * rnd() ** 3)) + 1

    def step(self, ts: int, updates: list[BookUpdate], trades: list[RawTrade]) -> None:
        """Generate one market event, appending its level updates and trades."""
        rnd = self.rng.random
        r = rnd()
        if r < 0.5:
            self._add(ts, rnd, updates)
        elif r < 0.9:
            self._cancel(ts, rnd, updates)
        else:
            self._market(ts, rnd, updates, trades)

    def _emit(self, side: str, px: int, lots: int, ts: int, updates: list[BookUpdate]) -> None:
        updates.append(BookUpdate(side, self.price(px), self.qty(lots), ts))  # type: ignore[arg-type]

    def _add(self, ts: int, rnd: Callable[[], float], updates: list[BookUpdate]) -> None:
        is_bid = rnd() < 0.5
        spread = self.best_ask - self.best_bid
        # Distance from the touch: geometric, so most activity sits at the top.
        d = 0
        while rnd() < 0.7 and d < 40:
            d += 1
        if spread > 1 and rnd() < 0.3:
            d = -1  # improve the touch inside the spread
        if is_bid:
            px = self.best_bid - d
            book = self.bids
        else:
            px = self.best_ask + d
            book = self.asks
        lots = book.get(px, 0) + self._lots(rnd)
        book[px] = lots
        if is_bid:
            if px > self.best_bid:
                self.best_bid = px
        elif px < self.best_ask:
            self.best_ask = px
        self._emit("bid" if is_bid else "ask", px, lots, ts, updates)
        if len(book) > self.MAX_LEVELS:
            worst = min(book) if is_bid else max(book)
            del book[worst]
            self._emit("bid" if is_bid else "ask", worst, 0, ts, updates)

    def _cancel(self, ts: int, rnd: Callable[[], float], updates: list[BookUpdate]) -> None:
        is_bid = rnd() < 0.5
        book = self.bids if is_bid else self.asks
        if len(book) <= 5:
            self._add(ts, rnd, updates)
            return
        d = 0
        while rnd() < 0.75 and d < 60:
            d += 1
        px = self.best_bid - d if is_bid else self.best_ask + d
        lots = book.get(px)
        if lots is None:
            # Nothing there: cancel the nearest resting level further out, else the touch.
            if is_bid:
                px = max((p for p in book if p <= px), default=self.best_bid)
            else:
                px = min((p for p in book if p >= px), default=self.best_ask)
            lots = book[px]
        left = int(lots * rnd() * 0.9) if rnd() < 0.6 else 0
        side = "bid" if is_bid else "ask"
        if left <= 0:
            del book[px]
            self._emit(side, px, 0, ts, updates)
            self._retouch(is_bid)
        else:
            book[px] = left
            self._emit(side, px, left, ts, updates)

    def _market(
        self,
        ts: int,
        rnd: Callable[[], float],
        updates: list[BookUpdate],
        trades: list[RawTrade],
    ) -> None:
        buy = rnd() < 0.5
        book = self.asks if buy else self.bids
        want = self._lots(rnd) * (1 + int(rnd() < 0.1) * 4)
        side = "ask" if buy else "bid"
        taker = "buy" if buy else "sell"
        while want > 0 and len(book) > 5:
            px = self.best_ask if buy else self.best_bid
            lots = book[px]
            fill = min(lots, want)
            want -= fill
            trades.append((self.price(px), self.qty(fill), taker, ts))
            if fill == lots:
                del book[px]
                self._emit(side, px, 0, ts, updates)
                self._retouch(not buy)
            else:
                book[px] = lots - fill
                self._emit(side, px, lots - fill, ts, updates)

    def _retouch(self, is_bid: bool) -> None:
        if is_bid:
            self.best_bid = max(self.bids)
        else:
            self.best_ask = min(self.asks)


class Burst:
    """A temporary rate multiplier: ``factor`` times the rate for ``seconds``."""

    __slots__ = ("factor", "until")

    def __init__(self, factor: float, until: float) -> None:
        self.factor = factor
        self.until = until


class MarketSimulator:
    """Order flow for many symbols at a fixed rate of book updates per symbol per second.

    Args:
        symbols: symbol names.
        rate: book updates per second per symbol (0 pauses the flow).
        seed: makes the event sequence reproducible.
        burst_every: seconds between automatic bursts (0: none).
        burst_factor: rate multiplier during a burst.
        burst_seconds: length of a burst.
        max_backlog: seconds of backlog generated at most in one call; older demand is
            dropped (counted in :attr:`skipped`) rather than produced late.
    """

    def __init__(
        self,
        symbols: list[str],
        rate: float,
        seed: int = 1,
        *,
        burst_every: float = 0.0,
        burst_factor: float = 10.0,
        burst_seconds: float = 2.0,
        max_backlog: float = 0.1,
    ) -> None:
        if rate < 0:
            raise ConfigError("--rate must be >= 0")
        self.flows = [SymbolFlow(s, seed) for s in symbols]
        self.rate = rate
        self.burst_every = burst_every
        self.burst_factor = burst_factor
        self.burst_seconds = burst_seconds
        self.max_backlog = max_backlog
        self.burst: Burst | None = None
        self._t_last: float | None = None
        self._credit = 0.0
        self._next_burst = 0.0
        self.generated = 0
        self.skipped = 0
        self.clock: Callable[[], int] = time.time_ns

    def start_burst(
        self, now: float, factor: float | None = None, seconds: float | None = None
    ) -> None:
        """Multiply the rate by ``factor`` for ``seconds`` from ``now`` (monotonic)."""
        self.burst = Burst(factor or self.burst_factor, now + (seconds or self.burst_seconds))

    def seed_books(self) -> list[tuple[str, list[BookUpdate], list[RawTrade]]]:
        """Return the initial book of every symbol as updates."""
        ts = self.clock()
        return [(f.symbol, f.seed_book(ts), []) for f in self.flows]

    def due(self, now: float) -> int:
        """Return how many book updates per symbol are due at monotonic time ``now``."""
        if self._t_last is None:
            self._t_last = now
            self._next_burst = now + self.burst_every
            return 0
        dt = now - self._t_last
        self._t_last = now
        rate = self.rate
        if self.burst_every and now >= self._next_burst:
            self.start_burst(now)
            self._next_burst = now + self.burst_every
        if self.burst is not None:
            if now < self.burst.until:
                rate *= self.burst.factor
            else:
                self.burst = None
        self._credit += dt * rate
        cap = max(1.0, rate * self.max_backlog)
        if self._credit > cap:
            self.skipped += int(self._credit - cap) * len(self.flows)
            self._credit = cap
        n = int(self._credit)
        self._credit -= n
        return n

    def generate(self, n: int) -> list[tuple[str, list[BookUpdate], list[RawTrade]]]:
        """Generate about ``n`` book updates per symbol.

        Events are never split, so a call may overshoot; the excess is taken off the next
        call, which keeps the long-run rate exact.
        """
        if n <= 0:
            return []
        out = []
        clock = self.clock
        total = 0
        for flow in self.flows:
            target = n - flow.excess
            if target <= 0:
                flow.excess = -target
                continue
            updates: list[BookUpdate] = []
            trades: list[RawTrade] = []
            step = flow.step
            while len(updates) < target:
                step(clock(), updates, trades)
            flow.excess = len(updates) - target
            total += len(updates)
            out.append((flow.symbol, updates, trades))
        self.generated += total
        return out
