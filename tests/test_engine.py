"""The engine: book seq per update, trade ids per trade, ticker statistics, epochs."""

from __future__ import annotations

import re
from decimal import Decimal

from tickwire.engine import RECENT_TRADES, Engine, new_epoch
from tickwire.protocol import BookUpdate

TS = 1_700_000_000_000_000_000


def u(side: str, price: str, qty: str, ts: int = TS) -> BookUpdate:
    return BookUpdate(side, price, qty, ts)  # type: ignore[arg-type]


def test_book_seq_counts_updates() -> None:
    engine = Engine(["A", "B"], epoch="e")
    assert engine.apply_book("A", [u("bid", "1.00", "1"), u("ask", "2.00", "1", TS + 5)]) == 2
    assert engine.apply_book("A", []) == 2
    # Deletes and no-op deletes count too: seq numbers updates, not levels.
    assert engine.apply_book("A", [u("bid", "1.00", "0"), u("bid", "9.00", "0", TS + 9)]) == 4
    state = engine.symbols["A"]
    assert state.book_seq == 4 and state.last_ts == TS + 9
    assert state.book.bids() == [] and state.book.asks() == [("2.00", "1")]
    assert engine.symbols["B"].book_seq == 0


def test_empty_book_batch_keeps_last_ts() -> None:
    engine = Engine(["A"])
    engine.apply_book("A", [u("bid", "1.00", "1", TS + 3)])
    engine.apply_book("A", [])
    assert engine.symbols["A"].last_ts == TS + 3


def test_trade_ids_are_consecutive_per_symbol() -> None:
    engine = Engine(["A", "B"])
    first = engine.apply_trades("A", [("10.00", "1.5000", "buy", TS), ("10.50", "0.5", "sell", TS)])
    assert [(t.id, t.price, t.qty, t.side, t.ts) for t in first] == [
        (1, "10.00", "1.5000", "buy", TS),
        (2, "10.50", "0.5", "sell", TS),
    ]
    assert engine.apply_trades("A", []) == []
    [third] = engine.apply_trades("A", [("9.00", "2", "sell", TS + 1)])
    assert third.id == 3
    [other] = engine.apply_trades("B", [("1.00", "1", "buy", TS)])
    assert other.id == 1


def test_ticker_statistics() -> None:
    engine = Engine(["A"])
    state = engine.symbols["A"]
    assert state.last is None and state.open is None and state.high is None
    engine.apply_trades(
        "A",
        [
            ("10.00", "1.0000", "buy", TS),
            ("12.50", "0.2500", "buy", TS + 1),
            ("9.75", "0.0100", "sell", TS + 2),
            ("11.00", "2.0000", "sell", TS + 3),
        ],
    )
    assert state.open == "10.00" and state.last == "11.00"
    assert state.high == Decimal("12.50") and state.low == Decimal("9.75")
    assert state.volume == Decimal("3.2600") and str(state.volume) == "3.2600"
    assert state.trade_count == 4 and state.trade_seq == 4 and state.last_ts == TS + 3


def test_recent_trades_are_bounded() -> None:
    engine = Engine(["A"])
    engine.apply_trades("A", [("1.00", "1", "buy", TS)] * (RECENT_TRADES + 7))
    recent = engine.symbols["A"].recent_trades
    assert len(recent) == RECENT_TRADES
    assert recent[0].id == 8 and recent[-1].id == RECENT_TRADES + 7


def test_epochs() -> None:
    assert Engine(["A"], epoch="given").epoch == "given"
    epochs = {new_epoch() for _ in range(50)} | {Engine(["A"]).epoch for _ in range(50)}
    assert len(epochs) == 100
    assert all(re.fullmatch(r"[0-9a-f]+-[0-9a-f]{6}", e) for e in epochs)
