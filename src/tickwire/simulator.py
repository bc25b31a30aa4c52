"""The embedded market simulator: realistic L2 order flow, deterministic per seed (Sans-I/O).

Each symbol has a limit order book kept in integer ticks and lots. Events are drawn from
a seeded :class:`random.Random`: limit orders resting around a latent fair price that
random-walks above a floor (50%), cancels near the touch, mostly partial (40%), and
market orders that sweep one or more levels and print trades (10%). The touch moves
because it is consumed and refilled, and because the fair price drifts. The book is held
to a bounded depth by deleting the levels that fall furthest from the touch.

Synthetic accounts (:class:`SyntheticAccounts`) give a few users orders that rest in and
trade against this book, for the private ``orders.<USER>`` channels. They look at each
generated batch after the fact, outside the event loop of :meth:`SymbolFlow.run`, so the
public flow costs and produces exactly what it did without them.

Time is passed in: :meth:`MarketSimulator.due` turns a monotonic clock reading into the
number of book updates to generate, so the offered rate is exact however late the
caller's ticks are, and the same seed always yields the same sequence of events.

The compiled core (:mod:`tickwire._market`, built from ``_market.c`` when a C compiler
is present) runs the same flow *and* the engine's work for it -- book, checksum, trade
numbering, the ``delta`` and ``trades`` JSON -- in one call per symbol per tick
(:meth:`MarketSimulator.core_batches`). It draws the same random stream, so for a seed
it produces byte for byte the messages of the Python path (``tests/test_market_core.py``),
at about a twentieth of the CPU per update. :class:`SymbolFlow` stays the reference.
"""

from __future__ import annotations

import random
import time
import zlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import msgspec

from .exceptions import ConfigError
from .protocol import BookUpdate, Side, Ticker, delta_updates, trade_tuples

try:
    from . import _market
except ImportError:  # built without a C compiler: the pure-Python market runs
    _market = None  # type: ignore[assignment]

#: Whether the compiled market core was built.
HAVE_CORE = _market is not None

if TYPE_CHECKING:
    from .engine import RawTrade, StateSnapshot
    from .hub import RawOrder
    from .sources import Batch

__all__ = [
    "HAVE_CORE",
    "Burst",
    "CoreBatch",
    "MarketSimulator",
    "SymbolFlow",
    "SyntheticAccounts",
    "parse_symbols",
]


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


def _inverse_cdf_table(sample: Callable[[float], int], size: int = 4096) -> list[int]:
    """Tabulate a distribution so that one uniform draw picks a value: ``t[int(u * size)]``."""
    return [sample((i + 0.5) / size) for i in range(size)]


def _geometric(p_continue: float, cap: int) -> Callable[[float], int]:
    def sample(u: float) -> int:
        # Smallest d with P(D <= d) >= u for P(D = d) = (1 - p) p^d.
        d, cdf, mass = 0, 1.0 - p_continue, 1.0 - p_continue
        while cdf < u and d < cap:
            d += 1
            mass *= p_continue
            cdf += mass
        return d

    return sample


#: Distance of a new limit order from the fair price, in ticks (geometric, mean ~5.7).
_ADD_DISTANCE = _inverse_cdf_table(_geometric(0.85, 120))
#: Distance of a cancel from the touch, in ticks (geometric, mean ~5.7). With these
#: two, a symbol holds about 40-60 levels a side and a spread of a few ticks.
_CANCEL_DISTANCE = _inverse_cdf_table(_geometric(0.85, 120))
_TABLE = 4096


class SymbolFlow:
    """Order flow of one symbol: an integer book and the event generator around it.

    Prices are integer ticks and sizes integer lots; sizes are multiples of a size step
    (0.01 with 4 qty decimals), so the string forms repeat and are formatted once.
    Distributions are tabulated: one uniform draw per choice keeps an event at about a
    microsecond, which matters because the simulator shares the gateway's core.
    """

    #: Levels kept per side; deeper levels are deleted (and the deletion published).
    MAX_LEVELS = 100
    #: Levels per side seeded at start.
    START_LEVELS = 25

    def __init__(self, symbol: str, seed: int, price_decimals: int = 2, qty_decimals: int = 4):
        self.symbol = symbol
        # zlib.crc32 rather than hash(): str hashes are salted per process.
        self.rng_seed = seed * 1_000_003 + zlib.crc32(symbol.encode())
        self.rng = random.Random(self.rng_seed)
        self.pscale = 10**price_decimals
        self.qscale = 10**qty_decimals
        self.pdec = price_decimals
        self.qdec = qty_decimals
        step = max(1, self.qscale // 100)
        # Heavy-tailed order sizes: mostly small, sometimes large; multiples of ``step``.
        self.sizes = _inverse_cdf_table(
            lambda u: step * (1 + int(self.qscale * (0.01 + 2.0 * u**3)) // step)
        )
        self.step = step
        self.bids: dict[int, int] = {}
        self.asks: dict[int, int] = {}
        self._pstr: dict[int, str] = {}
        self._qstr: dict[int, str] = {}
        base = 50 + zlib.crc32(symbol.encode()) % 50_000
        self.mid0 = base * self.pscale
        self.best_bid = self.mid0 - 1
        self.best_ask = self.mid0 + 1
        self.fair = self.mid0
        # Updates generated beyond what was due (events are never split).
        self.excess = 0
        #: The fair price reflects here: half the starting mid, and more than the
        #: distance tables' cap (120 ticks) above zero, so every price stays positive.
        self.fair_floor = max(self.mid0 // 2, 256)
        #: The compiled core generating in this flow's place (None: this flow does).
        self.core: _market.Flow | None = None

    def rests(self, bid: bool, px: int) -> bool:
        """Whether a level rests at ``px`` ticks on the bid (or ask) side."""
        if self.core is not None:
            return self.core.rests(bid, px)
        return px in (self.bids if bid else self.asks)

    def compiled(self) -> _market.Flow:
        """Return the compiled core of this flow, starting where it starts.

        Call it before this flow draws anything: the core then generates exactly the
        events this flow would, and numbers and encodes them as the engine and hub do.

        Raises:
            ConfigError: the core was not built, or cannot format these decimals.
        """
        if _market is None:
            raise ConfigError("the compiled market core is not built (no C compiler?)")
        if not (1 <= self.pdec <= 9 and 1 <= self.qdec <= 9):
            raise ConfigError("the compiled market core needs 1 to 9 decimals")
        # random.Random(n) seeds with abs(n) in 32-bit words, least significant first.
        n = abs(self.rng_seed)
        words = [(n >> 32 * i) & 0xFFFFFFFF for i in range(max(1, (n.bit_length() + 31) // 32))]
        return _market.Flow(
            words,
            self.mid0,
            self.pdec,
            self.qdec,
            self.sizes,
            _ADD_DISTANCE,
            _CANCEL_DISTANCE,
            msgspec.json.encode(f"book.{self.symbol}"),
            msgspec.json.encode(f"trades.{self.symbol}"),
        )

    # -- formatting (cached: prices and sizes repeat constantly) ------------------------

    def price(self, ticks: int) -> str:
        """Return the canonical price string of ``ticks``."""
        s = self._pstr.get(ticks)
        if s is None:
            if len(self._pstr) > 100_000:
                self._pstr.clear()
            q, r = divmod(ticks, self.pscale)
            s = self._pstr[ticks] = f"{q}.{r:0{self.pdec}d}"
        return s

    def qty(self, lots: int) -> str:
        """Return the canonical quantity string of ``lots``."""
        s = self._qstr.get(lots)
        if s is None:
            if len(self._qstr) > 100_000:
                self._qstr.clear()
            q, r = divmod(lots, self.qscale)
            s = self._qstr[lots] = f"{q}.{r:0{self.qdec}d}"
        return s

    def _level(self, side: Side, px: int, lots: int, ts: int) -> BookUpdate:
        p = self._pstr.get(px) or self.price(px)
        q = self._qstr.get(lots) or self.qty(lots)
        return BookUpdate(side, p, q, ts)

    # -- events ------------------------------------------------------------------------

    def seed_book(self, ts: int) -> list[BookUpdate]:
        """Return the initial levels around the starting mid as ordinary updates."""
        out: list[BookUpdate] = []
        rnd = self.rng.random
        for i in range(self.START_LEVELS):
            sides: tuple[tuple[Side, dict[int, int], int], ...] = (
                ("bid", self.bids, self.best_bid - i),
                ("ask", self.asks, self.best_ask + i),
            )
            for side, book, px in sides:
                lots = self.sizes[int(rnd() * _TABLE)] * (1 + i // 5)
                book[px] = lots
                out.append(self._level(side, px, lots, ts))
        return out

    def run(self, n: int, ts: int, updates: list[BookUpdate], trades: list[RawTrade]) -> None:
        """Generate events until ``updates`` holds at least ``n`` level updates.

        Event mix: 50% limit orders resting around the fair price, 40% cancels near the
        touch (75% partial), 10% market orders sweeping from the touch. One function
        with locals rather than a method per event kind: this loop runs once per book
        update and attribute lookups were half its cost.
        """
        rnd = self.rng.random
        bids, asks = self.bids, self.asks
        best_bid, best_ask, fair = self.best_bid, self.best_ask, self.fair
        sizes, step, max_levels = self.sizes, self.step, self.MAX_LEVELS
        pstr, qstr, price, qty = self._pstr, self._qstr, self.price, self.qty
        add_distance, cancel_distance = _ADD_DISTANCE, _CANCEL_DISTANCE
        fair_floor = self.fair_floor
        append = updates.append
        side: Side
        while len(updates) < n:
            r = rnd()
            u = rnd()
            is_bid = u < 0.5
            if 0.5 <= r < 0.9:
                # Cancel near the touch; where no order rests, it becomes a new order.
                book = bids if is_bid else asks
                d = cancel_distance[int(rnd() * _TABLE)]
                px = best_bid - d if is_bid else best_ask + d
                lots = book.get(px)
                if lots is not None and len(book) > 5:
                    side = "bid" if is_bid else "ask"
                    left = (int(lots * rnd()) // step) * step if u % 0.5 < 0.375 else 0
                    if left <= 0:
                        del book[px]
                        append(BookUpdate(side, pstr.get(px) or price(px), "0", ts))
                        if px == best_bid and is_bid:
                            best_bid = max(bids)
                        elif px == best_ask and not is_bid:
                            best_ask = min(asks)
                    else:
                        book[px] = left
                        q = qstr.get(left) or qty(left)
                        append(BookUpdate(side, pstr.get(px) or price(px), q, ts))
                    continue
                r = 0.0  # fall through to a new limit order
            if r < 0.5:
                # Limit order around the latent fair price, which random-walks a tick now
                # and then, so a spread opened by a sweep refills from the inside. It
                # reflects at fair_floor: prices stay positive however long the market
                # runs (at 20,000 updates/s a walk from 50.00 would otherwise reach 0
                # within days).
                if u < 0.02:
                    fair += 1 if u < 0.01 or fair <= fair_floor else -1
                d = add_distance[int(rnd() * _TABLE)]
                lots = sizes[int(rnd() * _TABLE)]
                if is_bid:
                    book = bids
                    px = min(fair - 1 - d, best_ask - 1)
                    if px > best_bid:
                        best_bid = px
                    side = "bid"
                else:
                    book = asks
                    px = max(fair + 1 + d, best_bid + 1)
                    if px < best_ask:
                        best_ask = px
                    side = "ask"
                lots += book.get(px, 0)
                book[px] = lots
                q = qstr.get(lots) or qty(lots)
                append(BookUpdate(side, pstr.get(px) or price(px), q, ts))
                if len(book) > max_levels:
                    worst = min(book) if is_bid else max(book)
                    del book[worst]
                    append(BookUpdate(side, pstr.get(worst) or price(worst), "0", ts))
                continue
            # Market order: sweep from the touch, one trade per level consumed.
            buy = is_bid
            book = asks if buy else bids
            want = sizes[int(rnd() * _TABLE)] * (5 if u % 0.5 < 0.05 else 1)
            side = "ask" if buy else "bid"
            taker = "buy" if buy else "sell"
            while want > 0 and len(book) > 5:
                px = best_ask if buy else best_bid
                lots = book.get(px)
                if lots is None:  # unseeded start: the touch was never filled
                    px = min(book) if buy else max(book)
                    lots = book[px]
                fill = min(lots, want)
                want -= fill
                p = pstr.get(px) or price(px)
                trades.append((p, qstr.get(fill) or qty(fill), taker, ts))
                if fill == lots:
                    del book[px]
                    append(BookUpdate(side, p, "0", ts))
                    if buy:
                        best_ask = min(asks)
                    else:
                        best_bid = max(bids)
                else:
                    book[px] = lots - fill
                    q = qstr.get(lots - fill) or qty(lots - fill)
                    append(BookUpdate(side, p, q, ts))
        self.best_bid, self.best_ask, self.fair = best_bid, best_ask, fair


class CoreBatch:
    """One batch of a compiled flow, as an :class:`~tickwire.engine.LeaderBatch`.

    It holds the encoded messages only; the updates and trades are decoded on demand.
    :meth:`leader_ticker` reads the core's current state, which is this batch's as long
    as it is the newest: the engine asks only the last batch it was given.
    """

    __slots__ = (
        "symbol",
        "prev_book",
        "book",
        "prev_trade",
        "trade",
        "book_json",
        "trades_json",
        "core",
        "ts",
    )

    def __init__(
        self,
        symbol: str,
        core: _market.Flow,
        batch: tuple[int, int, int, int, bytes, bytes],
        ts: int,
    ) -> None:
        self.symbol = symbol
        self.core = core
        self.ts = ts
        (
            self.prev_book,
            self.book,
            self.prev_trade,
            self.trade,
            self.book_json,
            self.trades_json,
        ) = batch

    def book_updates(self) -> list[BookUpdate]:
        """Decode the book updates (from the ``delta`` message)."""
        return delta_updates(self.book_json)

    def raw_trades(self) -> list[RawTrade]:
        """Decode the trades, without their ids (from the ``trades`` message)."""
        return trade_tuples(self.trades_json)

    def event_time(self) -> int:
        """The batch's event time (every update of a batch has the same ``ts``)."""
        return self.ts

    def size(self) -> int:
        """Book updates in the batch."""
        return self.book - self.prev_book

    def leader_ticker(self) -> Ticker | None:
        """The symbol's ticker after this batch (its ``ch`` and seqs left empty).

        None once the core has generated past this batch: its state is no longer the
        batch's (the engine then settles and builds the ticker itself).
        """
        if self.core.seqs != (self.book, self.trade):
            return None
        return Ticker("", 0, 0, *self.core.ticker())


def core_state(symbol: str, core: _market.Flow, epoch: str) -> StateSnapshot:
    """Return the engine state a compiled core holds, as the engine exports it."""
    from .engine import StateSnapshot
    from .protocol import Trade

    book_seq, trade_seq, bids, asks, trades, last, open_, high, low, volume, count, ts = (
        core.export()
    )
    return StateSnapshot(
        epoch,
        symbol,
        book_seq,
        trade_seq,
        bids,
        asks,
        [Trade(i, price, qty, side, t) for i, price, qty, side, t in trades],  # type: ignore[arg-type]
        last,
        open_,
        high,
        low,
        volume,
        count,
        ts,
    )


class _Order:
    """A synthetic user's open order: resting at ``px`` ticks with ``left`` lots."""

    __slots__ = ("oid", "user", "buy", "px", "price", "left")

    def __init__(self, oid: str, user: str, buy: bool, px: int, price: str, left: int) -> None:
        self.oid = oid
        self.user = user
        self.buy = buy
        self.px = px
        self.price = price
        self.left = left


class SyntheticAccounts:
    """A few users trading in the simulated market, for the private ``orders`` channels.

    Per generated batch, a ``fraction`` of the book updates that add size become a
    user's limit order resting at that level (``new``); the batch's trades at a price
    where a user's order rests on the maker side fill it (``fill``); an order whose level
    is gone from the book was withdrawn (``cancel``), as is a user's oldest order past
    ``max_open``. The work is per sampled update, per trade, and per open order of the
    batch's symbol -- not per book update -- so the public flow is not slowed down.

    Args:
        users: user ids (each gets ``orders.<user>``).
        seed: makes the attribution reproducible (its own RNG: the public flow is the
            same with or without accounts).
        fraction: share of size-adding book updates that become a user order.
        max_open: open orders per user at most.
        emit: called with ``(user, events)`` once per batch per user with events
            (the gateway passes :meth:`tickwire.hub.Hub.publish_orders`).
    """

    def __init__(
        self,
        users: list[str],
        seed: int = 1,
        *,
        fraction: float = 0.01,
        max_open: int = 8,
        emit: Callable[[str, list[RawOrder]], None] | None = None,
    ) -> None:
        if not users:
            raise ConfigError("synthetic accounts need at least one user")
        if not 0 <= fraction <= 1:
            raise ConfigError("--sim-order-fraction must be within [0, 1]")
        self.users = users
        self.rng = random.Random(seed * 7_919 + 17)
        self.fraction = fraction
        self.max_open = max_open
        self.emit = emit
        self._credit = 0.0
        self._ids = 0
        # Open orders per symbol, and per user (oldest first) for the max_open cap.
        self.open: dict[str, dict[str, _Order]] = {}
        self._of_user: dict[str, dict[str, str]] = {u: {} for u in users}
        self.events = 0

    def observe(self, flow: SymbolFlow, updates: list[BookUpdate], trades: list[RawTrade]) -> None:
        """Attribute part of one generated batch of ``flow`` to the users."""
        symbol = flow.symbol
        book = self.open.get(symbol)
        self._credit += len(updates) * self.fraction
        if self._credit < 1.0 and not book:
            return
        out: dict[str, list[RawOrder]] = {}
        ts = updates[0].ts if updates else trades[0][3] if trades else 0
        if book is None:
            book = self.open[symbol] = {}
        rnd = self.rng.random
        while self._credit >= 1.0 and updates:
            self._credit -= 1.0
            u = updates[int(rnd() * len(updates))]
            if u.qty == "0":
                continue
            self._new(flow, book, u, out)
        if book and trades:
            self._fills(flow, book, trades, out)
        if book:
            self._cancels(flow, book, ts, out)
        emit = self.emit
        for user, events in out.items():
            self.events += len(events)
            if emit is not None:
                emit(user, events)

    def _new(
        self,
        flow: SymbolFlow,
        book: dict[str, _Order],
        u: BookUpdate,
        out: dict[str, list[RawOrder]],
    ) -> None:
        user = self.users[int(self.rng.random() * len(self.users))]
        px = int(u.price.replace(".", ""))
        lots = flow.sizes[int(self.rng.random() * _TABLE)]
        buy = u.side == "bid"
        self._ids += 1
        order = _Order(f"{user}-{self._ids}", user, buy, px, u.price, lots)
        book[order.oid] = order
        mine = self._of_user[user]
        mine[order.oid] = flow.symbol
        q = flow.qty(lots)
        side = "buy" if buy else "sell"
        events = out.setdefault(user, [])
        events.append((order.oid, flow.symbol, "new", side, u.price, q, q, u.ts))
        if len(mine) > self.max_open:
            oldest, symbol = next(iter(mine.items()))
            old = self.open[symbol].pop(oldest)
            del mine[oldest]
            # Every flow formats quantities alike (same decimals): any flow's cache does.
            left = flow.qty(old.left)
            side = "buy" if old.buy else "sell"
            events.append((old.oid, symbol, "cancel", side, old.price, left, "0", u.ts))

    def _fills(
        self,
        flow: SymbolFlow,
        book: dict[str, _Order],
        trades: list[RawTrade],
        out: dict[str, list[RawOrder]],
    ) -> None:
        for price, qty, taker, ts in trades:
            maker_buy = taker == "sell"
            lots = int(qty.replace(".", ""))
            for order in list(book.values()):
                if lots <= 0:
                    break
                if order.price != price or order.buy != maker_buy:
                    continue
                fill = min(order.left, lots)
                lots -= fill
                order.left -= fill
                side = "buy" if order.buy else "sell"
                left = flow.qty(order.left) if order.left else "0"
                out.setdefault(order.user, []).append(
                    (order.oid, flow.symbol, "fill", side, price, flow.qty(fill), left, ts)
                )
                if not order.left:
                    del book[order.oid]
                    del self._of_user[order.user][order.oid]

    def _cancels(
        self, flow: SymbolFlow, book: dict[str, _Order], ts: int, out: dict[str, list[RawOrder]]
    ) -> None:
        for order in list(book.values()):
            if flow.rests(order.buy, order.px):
                continue
            # The level is gone: the book deleted it, so our order was withdrawn with it.
            del book[order.oid]
            del self._of_user[order.user][order.oid]
            side = "buy" if order.buy else "sell"
            q = flow.qty(order.left)
            out.setdefault(order.user, []).append(
                (order.oid, flow.symbol, "cancel", side, order.price, q, "0", ts)
            )


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
        #: Synthetic users' orders, attributed after each batch (None: off).
        self.accounts: SyntheticAccounts | None = None
        #: The flows' compiled cores, in the order of :attr:`flows` (None: not in use).
        self.cores: list[_market.Flow] | None = None

    def use_core(self) -> None:
        """Generate with the compiled cores from now on (:meth:`core_batches`).

        Call it before anything is generated.

        Raises:
            ConfigError: the core is not built.
        """
        if self.cores is not None:
            raise ConfigError("the compiled cores are in use already")
        self.cores = [flow.compiled() for flow in self.flows]
        for flow, core in zip(self.flows, self.cores, strict=True):
            flow.core = core

    def start_burst(
        self, now: float, factor: float | None = None, seconds: float | None = None
    ) -> None:
        """Multiply the rate by ``factor`` for ``seconds`` from ``now`` (monotonic)."""
        self.burst = Burst(factor or self.burst_factor, now + (seconds or self.burst_seconds))

    def seed_books(self) -> list[Batch]:
        """Return the initial book of every symbol as updates."""
        ts = self.clock()
        return [(f.symbol, f.seed_book(ts), []) for f in self.flows]

    def core_seeds(self) -> list[CoreBatch]:
        """:meth:`seed_books` on the compiled cores: each initial book as one batch."""
        assert self.cores is not None, "use_core() first"
        ts = self.clock()
        return [
            CoreBatch(flow.symbol, core, core.seed(ts), ts)
            for flow, core in zip(self.flows, self.cores, strict=True)
        ]

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

    def generate(self, n: int) -> list[Batch]:
        """Generate about ``n`` book updates per symbol (all symbols, as a list)."""
        return list(self.batches(n))

    def batches(self, n: int) -> Iterator[Batch]:
        """Yield about ``n`` book updates per symbol, one symbol at a time.

        Lazily: a symbol's batch is produced (and its event time stamped) only when the
        caller asks for it, so the gateway can send one symbol's batch before the next
        one is generated, and ``ts`` is not older than the work in between. Events are
        never split, so a batch may overshoot; the excess is taken off the next call,
        which keeps the long-run rate exact.
        """
        if n <= 0:
            return
        clock = self.clock
        accounts = self.accounts
        for flow in self.flows:
            target = n - flow.excess
            if target <= 0:
                flow.excess = -target
                continue
            updates: list[BookUpdate] = []
            trades: list[RawTrade] = []
            # One event time per symbol batch: the whole batch is produced at this instant.
            flow.run(target, clock(), updates, trades)
            flow.excess = len(updates) - target
            self.generated += len(updates)
            if accounts is not None:
                accounts.observe(flow, updates, trades)
            yield flow.symbol, updates, trades

    def core_batches(self, n: int) -> Iterator[CoreBatch]:
        """:meth:`batches` on the compiled cores: the same events, numbered and encoded."""
        assert self.cores is not None, "use_core() first"
        if n <= 0:
            return
        clock = self.clock
        accounts = self.accounts
        for flow, core in zip(self.flows, self.cores, strict=True):
            target = n - flow.excess
            if target <= 0:
                flow.excess = -target
                continue
            ts = clock()
            batch = CoreBatch(flow.symbol, core, core.run(target, ts), ts)
            made = batch.book - batch.prev_book
            flow.excess = made - target
            self.generated += made
            if accounts is not None:
                # The accounts read the batch's events as objects: decoded only for them.
                accounts.observe(flow, batch.book_updates(), batch.raw_trades())
            yield batch
