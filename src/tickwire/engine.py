"""The engine: authoritative books, trade sequence and tickers per symbol (Sans-I/O).

Sources (the simulator, a replay file, the NATS bus) hand the engine batches of level
updates and trades; the engine applies them and numbers them. Sequence numbers are the
engine's: one per book update on ``book.<SYM>``, one per trade on ``trades.<SYM>``, so
every gateway fed the same events emits the same ``seq`` for the same update.

A gateway that follows another engine over a bus (:mod:`tickwire.sources.nats`) adopts
that engine's numbering: it applies only batches that chain from its own ``seq``, and
when it cannot (it joined late, or missed messages) it loads a :class:`StateSnapshot`
exported by the leading engine with :meth:`Engine.restore`, epoch included.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Iterable
from decimal import Decimal

import msgspec

from .book import Book
from .protocol import BookUpdate, Trade

__all__ = ["Engine", "RawTrade", "StateSnapshot", "SymbolState", "new_epoch"]

#: A trade before the engine numbers it: ``(price, qty, taker side, ts)``.
RawTrade = tuple[str, str, str, int]

#: Recent trades kept per symbol for trade-channel snapshots.
RECENT_TRADES = 50


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


class SymbolState:
    """Everything the engine knows about one symbol."""

    __slots__ = (
        "symbol",
        "book",
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
    )

    def __init__(self, symbol: str) -> None:
        self.symbol = symbol
        self.clear()

    def clear(self) -> None:
        """Forget everything: an empty book at seq 0 (a new epoch starts from here)."""
        self.book = Book()
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


class Engine:
    """Applies source events to per-symbol state and assigns sequence numbers.

    Args:
        symbols: the symbols this engine serves; others are rejected by the hub.
        epoch: the epoch id; a new one is generated when omitted.
    """

    def __init__(self, symbols: Iterable[str], epoch: str | None = None) -> None:
        self.epoch = epoch or new_epoch()
        self.symbols: dict[str, SymbolState] = {s: SymbolState(s) for s in symbols}

    def export(self, symbol: str) -> StateSnapshot:
        """Return the complete state of ``symbol`` (the snapshot service's answer)."""
        st = self.symbols[symbol]
        return StateSnapshot(
            self.epoch,
            symbol,
            st.book_seq,
            st.trade_seq,
            st.book.bids(),
            st.book.asks(),
            list(st.recent_trades),
            st.last,
            st.open,
            None if st.high is None else str(st.high),
            None if st.low is None else str(st.low),
            str(st.volume),
            st.trade_count,
            st.last_ts,
        )

    def restore(self, snap: StateSnapshot) -> None:
        """Replace the state of ``snap.symbol`` with ``snap`` (same objects, new content).

        The :class:`SymbolState` object is kept (channels hold it); only its content
        changes. The epoch is not touched: see :meth:`reset`.
        """
        st = self.symbols[snap.symbol]
        st.book.load(snap.bids, snap.asks)
        st.book_seq = snap.book_seq
        st.trade_seq = snap.trade_seq
        st.recent_trades.clear()
        st.recent_trades.extend(snap.trades)
        st.last = snap.last
        st.open = snap.open
        st.high = None if snap.high is None else Decimal(snap.high)
        st.low = None if snap.low is None else Decimal(snap.low)
        st.volume = Decimal(snap.volume)
        st.trade_count = snap.trade_count
        st.last_ts = snap.last_ts

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
        out: list[Trade] = []
        seq = state.trade_seq
        for price, qty, side, ts in trades:
            seq += 1
            trade = Trade(seq, price, qty, side, ts)  # type: ignore[arg-type]
            out.append(trade)
            px = _decimal(price)
            if state.open is None:
                state.open = price
            if state.high is None or px > state.high:
                state.high = px
            if state.low is None or px < state.low:
                state.low = px
            state.volume += _decimal(qty)
            state.last = price
            state.last_ts = ts
        state.trade_count += len(out)
        state.trade_seq = seq
        state.recent_trades.extend(out)
        return out
