"""The engine: authoritative books, trade sequence and tickers per symbol (Sans-I/O).

Sources (the simulator, a replay file, the NATS bus) hand the engine batches of level
updates and trades; the engine applies them and numbers them. Sequence numbers are the
engine's: one per book update on ``book.<SYM>``, one per trade on ``trades.<SYM>``, so
every gateway fed the same events emits the same ``seq`` for the same update.

A gateway that follows another engine over a bus (:mod:`tickwire.sources.nats`) adopts
that engine's numbering: it applies only batches that chain from its own ``seq``, and
when it cannot (it joined late, or missed messages) it loads a :class:`StateSnapshot`
exported by the leading engine with :meth:`Engine.restore`, epoch included.

Such a follower relays the leader's encoded messages and does not need its own state
for them, so it may *defer* batches (:meth:`Engine.defer`): their seqs take effect at
once, but the book and trade statistics are brought up to date only when something
reads them (:meth:`SymbolState.settle`, called by the ``book`` property and by every
reader of the statistics). The leader's periodic states (:meth:`Engine.rebase`) let a
follower drop what it deferred without ever applying it, so a relaying gateway pays
per bus message, not per book update.

The embedded market's compiled core (:mod:`tickwire._market`) is such a leader inside
the gateway's own process: it keeps the authoritative state itself, so the engine
follows it *live* (:meth:`Engine.follow`): relayed batches only move the seqs, and a
read loads the core's current state (:attr:`SymbolState.live`) instead of applying
anything.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import Protocol

import msgspec

from .book import Book, Level
from .exceptions import IntegrityError
from .protocol import BookUpdate, Ticker, Trade

__all__ = ["LeaderBatch", "Engine", "RawTrade", "StateSnapshot", "SymbolState", "new_epoch"]

#: A trade before the engine numbers it: ``(price, qty, taker side, ts)``.
RawTrade = tuple[str, str, str, int]

#: Recent trades kept per symbol for trade-channel snapshots.
RECENT_TRADES = 50

#: Deferred batches per symbol at most; past it they are applied (bounded memory when
#: the leader sends no states).
MAX_DEFERRED = 4096


class LeaderBatch(Protocol):
    """A leading engine's numbered batch with its encoded messages (a ``BusBatch``).

    ``book_json`` / ``trades_json`` are the ``delta`` and ``trades`` messages the
    leader built for it (empty when it has no updates / trades); the rest is decoded
    only on demand (the leader's ticker after it, too).
    """

    @property
    def symbol(self) -> str: ...
    @property
    def prev_book(self) -> int: ...
    @property
    def book(self) -> int: ...
    @property
    def prev_trade(self) -> int: ...
    @property
    def trade(self) -> int: ...
    def book_updates(self) -> list[BookUpdate]: ...
    def raw_trades(self) -> list[RawTrade]: ...
    def event_time(self) -> int: ...
    def size(self) -> int: ...
    def leader_ticker(self) -> Ticker | None: ...
    @property
    def book_json(self) -> bytes: ...
    @property
    def trades_json(self) -> bytes: ...


_decimals: dict[str, Decimal] = {}


def _decimal(text: str) -> Decimal:
    """``Decimal(text)``, cached: trade prices and sizes repeat constantly."""
    value = _decimals.get(text)
    if value is None:
        if len(_decimals) > 100_000:
            _decimals.clear()
        value = _decimals[text] = Decimal(text)
    return value


def new_epoch() -> str:
    """Return a fresh epoch id: changes whenever engine state starts from scratch."""
    return f"{time.time_ns() // 1_000_000:x}-{os.urandom(3).hex()}"


class StateSnapshot(msgspec.Struct, frozen=True):
    """The complete engine state of one symbol at ``(book_seq, trade_seq)``.

    What a following engine needs to continue exactly where the leading one is: the
    book, the sequence numbers of both chains, the recent trades (for trade-channel
    snapshots) and the ticker statistics. ``epoch`` is the leading engine's.
    """

    epoch: str
    symbol: str
    book_seq: int
    trade_seq: int
    bids: list[tuple[str, str]]
    asks: list[tuple[str, str]]
    trades: list[Trade] = []
    last: str | None = None
    open: str | None = None
    high: str | None = None
    low: str | None = None
    volume: str = "0"
    trade_count: int = 0
    last_ts: int = 0
    #: The trading status its source reported (None: none; docs/ingest.md).
    status: str | None = None


class SymbolState:
    """Everything the engine knows about one symbol.

    ``book_seq`` and ``trade_seq`` are always current. The book and the trade
    statistics may lag behind them while batches are deferred (a relaying follower):
    read them through :attr:`book` (which settles) or after :meth:`settle`.
    """

    __slots__ = (
        "symbol",
        "_book",
        "book_seq",
        "trade_seq",
        "recent_trades",
        "last",
        "open",
        "high",
        "low",
        "volume",
        "trade_count",
        "last_ts",
        "base",
        "deferred",
        "leader",
        "live",
        "behind",
        "status",
    )

    def __init__(self, symbol: str) -> None:
        self.symbol = symbol
        # A leader in this process that holds the state at the current seqs (None:
        # none); ``behind`` says batches were relayed since the state was last loaded.
        self.live: Callable[[], StateSnapshot] | None = None
        self.clear()

    def clear(self) -> None:
        """Forget everything: an empty book at seq 0 (a new epoch starts from here)."""
        self._book = Book()
        self.book_seq = 0
        self.trade_seq = 0
        self.recent_trades: deque[Trade] = deque(maxlen=RECENT_TRADES)
        self.last: str | None = None
        self.open: str | None = None
        self.high: Decimal | None = None
        self.low: Decimal | None = None
        self.volume = Decimal(0)
        self.trade_count = 0
        self.last_ts = 0
        # Lazy state of a relaying follower: the leader's state to load first (None:
        # the book is the base), then the batches deferred since, in order.
        self.base: StateSnapshot | None = None
        self.deferred: list[LeaderBatch] = []
        # The last batch deferred (its leader ticker is the state's; None: none).
        self.leader: LeaderBatch | None = None
        self.behind = False
        #: The trading status the source reported (None: none), carried by tickers.
        self.status: str | None = None

    @property
    def book(self) -> Book:
        """The book at ``book_seq`` (deferred batches are applied first)."""
        if self.deferred or self.base is not None or self.behind:
            self.settle()
        return self._book

    def settled_depth(self) -> tuple[int, int]:
        """The book's ``(bids, asks)`` level counts as last settled (nothing applied)."""
        return self._book.depth()

    def settle(self) -> None:
        """Apply what was deferred, so the book and statistics match the seqs.

        Raises:
            IntegrityError: a live leader's state is not at this state's seqs.
        """
        if self.behind and self.live is not None:
            snap = self.live()
            if (snap.book_seq, snap.trade_seq) != (self.book_seq, self.trade_seq):
                raise IntegrityError(
                    self.symbol,
                    f"the live state is at {snap.book_seq}/{snap.trade_seq}, "
                    f"the engine at {self.book_seq}/{self.trade_seq}",
                )
            self.load(snap)
            return
        base, deferred = self.base, self.deferred
        if base is None and not deferred:
            return
        self.base, self.deferred = None, []
        if base is not None:
            self.load(base)
        elif deferred:
            # Number the deferred trades from where they started.
            self.trade_seq = deferred[0].prev_trade
        book = self._book
        for batch in deferred:
            updates = batch.book_updates()
            book.apply_updates(updates)
            if updates:
                self.last_ts = updates[-1].ts
            self.number_trades(batch.raw_trades())
        if deferred:
            self.book_seq, self.trade_seq = deferred[-1].book, deferred[-1].trade

    def ticker(self, ch: str, seq: int, prev_seq: int) -> Ticker:
        """Build this symbol's ticker as message ``seq`` of channel ``ch``.

        While batches are deferred, the leader's ticker after the last of them (which
        the settled state would reproduce) is used, so tickers cost no settling.
        """
        if (self.deferred or self.base is not None or self.behind) and self.leader is not None:
            ticker = self.leader.leader_ticker()
            if ticker is not None:
                return msgspec.structs.replace(
                    ticker, ch=ch, seq=seq, prev_seq=prev_seq, status=self.status
                )
        book = self.book
        bid = book.best_bid()
        ask = book.best_ask()
        return Ticker(
            ch,
            seq,
            prev_seq,
            self.last_ts,
            bid=bid[0] if bid else None,
            bid_qty=bid[1] if bid else None,
            ask=ask[0] if ask else None,
            ask_qty=ask[1] if ask else None,
            last=self.last,
            open=self.open,
            high=str(self.high) if self.high is not None else None,
            low=str(self.low) if self.low is not None else None,
            volume=str(self.volume),
            trades=self.trade_count,
            status=self.status,
        )

    def export(
        self, epoch: str, levels: tuple[list[Level], list[Level]] | None = None
    ) -> StateSnapshot:
        """This state as a :class:`StateSnapshot` in ``epoch`` (settled first).

        ``levels``: the book's ``(bids, asks)`` when another object keeps the book (an
        ingest feed leading the symbol, :class:`tickwire.ingest.SymbolFeed`).
        """
        if levels is None:
            self.settle()
            levels = self._book.bids(), self._book.asks()
        return StateSnapshot(
            epoch,
            self.symbol,
            self.book_seq,
            self.trade_seq,
            levels[0],
            levels[1],
            list(self.recent_trades),
            self.last,
            self.open,
            None if self.high is None else str(self.high),
            None if self.low is None else str(self.low),
            str(self.volume),
            self.trade_count,
            self.last_ts,
            self.status,
        )

    def load(self, snap: StateSnapshot) -> None:
        """Replace the content with ``snap`` (nothing stays deferred)."""
        self.base, self.deferred, self.leader, self.behind = None, [], None, False
        self._book.load(snap.bids, snap.asks)
        self.book_seq = snap.book_seq
        self.trade_seq = snap.trade_seq
        self.recent_trades.clear()
        self.recent_trades.extend(snap.trades)
        self.last = snap.last
        self.open = snap.open
        self.high = None if snap.high is None else Decimal(snap.high)
        self.low = None if snap.low is None else Decimal(snap.low)
        self.volume = Decimal(snap.volume)
        self.trade_count = snap.trade_count
        self.last_ts = snap.last_ts
        self.status = snap.status

    def number_trades(self, trades: Iterable[RawTrade]) -> list[Trade]:
        """Number raw ``(price, qty, side, ts)`` trades and update the statistics."""
        out: list[Trade] = []
        seq = self.trade_seq
        for price, qty, side, ts in trades:
            seq += 1
            trade = Trade(seq, price, qty, side, ts)  # type: ignore[arg-type]
            out.append(trade)
            px = _decimal(price)
            if self.open is None:
                self.open = price
            if self.high is None or px > self.high:
                self.high = px
            if self.low is None or px < self.low:
                self.low = px
            self.volume += _decimal(qty)
            self.last = price
            self.last_ts = ts
        self.trade_count += len(out)
        self.trade_seq = seq
        self.recent_trades.extend(out)
        return out


class Engine:
    """Applies source events to per-symbol state and assigns sequence numbers.

    Args:
        symbols: the symbols this engine serves; others are rejected by the hub.
        epoch: the epoch id; a new one is generated when omitted.
    """

    def __init__(self, symbols: Iterable[str], epoch: str | None = None) -> None:
        self.epoch = epoch or new_epoch()
        self.symbols: dict[str, SymbolState] = {s: SymbolState(s) for s in symbols}

    def add_symbol(self, symbol: str) -> SymbolState:
        """Start keeping ``symbol`` (a source found it at run time): empty, at seq 0.

        Returns its state (the existing one if it is kept already).
        """
        state = self.symbols.get(symbol)
        if state is None:
            state = self.symbols[symbol] = SymbolState(symbol)
        return state

    def export(self, symbol: str) -> StateSnapshot:
        """Return the complete state of ``symbol`` (the snapshot service's answer)."""
        return self.symbols[symbol].export(self.epoch)

    def restore(self, snap: StateSnapshot) -> None:
        """Replace the state of ``snap.symbol`` with ``snap`` (same objects, new content).

        The :class:`SymbolState` object is kept (channels hold it); only its content
        changes. The epoch is not touched: see :meth:`reset`.
        """
        self.symbols[snap.symbol].load(snap)

    def reset(self, epoch: str) -> None:
        """Start epoch ``epoch`` from empty state (the leading engine restarted)."""
        self.epoch = epoch
        for st in self.symbols.values():
            st.clear()

    def apply_book(self, symbol: str, updates: list[BookUpdate]) -> int:
        """Apply level updates in order and return the book's new ``seq``."""
        state = self.symbols[symbol]
        state.book.apply_updates(updates)
        state.book_seq += len(updates)
        if updates:
            state.last_ts = updates[-1].ts
        return state.book_seq

    def apply_trades(self, symbol: str, trades: Iterable[RawTrade]) -> list[Trade]:
        """Number raw ``(price, qty, side, ts)`` trades and update the ticker statistics."""
        state = self.symbols[symbol]
        state.settle()
        return state.number_trades(trades)

    def defer(self, symbol: str, batch: LeaderBatch) -> None:
        """Take a leader's batch that chains from the current seqs, applying it later.

        The seqs move to the batch's at once; the book and statistics catch up when
        read, or when :data:`MAX_DEFERRED` batches are waiting.
        """
        state = self.symbols[symbol]
        state.leader = batch
        state.book_seq = batch.book
        state.trade_seq = batch.trade
        if state.live is not None:
            state.behind = True
            return
        state.deferred.append(batch)
        if len(state.deferred) > MAX_DEFERRED:
            state.settle()

    def follow(self, symbol: str, live: Callable[[], StateSnapshot]) -> None:
        """Follow a leader in this process that keeps ``symbol``'s state itself.

        ``live()`` returns that state at the leader's current seqs. From now on,
        :meth:`defer` keeps no batches for the symbol: a read loads ``live()``.
        """
        self.symbols[symbol].live = live

    def rebase(self, snap: StateSnapshot) -> bool:
        """Adopt the leader's state at the current seqs instead of what was deferred.

        Nothing is applied now; a later read loads ``snap``. Returns False (and does
        nothing) when ``snap`` is not at this engine's seqs of the symbol.
        """
        state = self.symbols[snap.symbol]
        if (snap.book_seq, snap.trade_seq) != (state.book_seq, state.trade_seq):
            return False
        state.base = snap
        state.deferred = []
        state.status = snap.status
        return True
