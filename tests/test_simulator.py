"""The embedded market: deterministic per seed, exact long-run rate, a sane book."""

from __future__ import annotations

from decimal import Decimal

import pytest

from tickwire.book import Book, is_zero
from tickwire.exceptions import ConfigError
from tickwire.protocol import BookUpdate
from tickwire.simulator import MarketSimulator, parse_symbols

TS0 = 1_700_000_000_000_000_000


def _sim(symbols: list[str], rate: float = 10_000, seed: int = 7, **kw: float) -> MarketSimulator:
    sim = MarketSimulator(symbols, rate, seed, **kw)
    ticks = iter(range(TS0, TS0 + 10**12, 1000))
    sim.clock = ticks.__next__  # a fake event clock: deterministic ts
    return sim


Batch = tuple[str, list[BookUpdate], list[tuple[str, str, str, int]]]


def _run(
    sim: MarketSimulator, seconds: float, step: float = 0.001, t0: float = 100.0
) -> list[Batch]:
    """Seed the books (as the gateway does) and run ``seconds`` of flow in ``step`` ticks."""
    out = sim.seed_books()
    now = t0
    sim.due(now)
    for _ in range(round(seconds / step)):
        now += step
        out.extend(sim.generate(sim.due(now)))
    return out


# -- --symbols ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "symbols"),
    [
        ("3", ["SYM0", "SYM1", "SYM2"]),
        (" 1 ", ["SYM0"]),
        ("BTC-USD,ETH-USD", ["BTC-USD", "ETH-USD"]),
        ("BTC-USD", ["BTC-USD"]),
        (" BTC-USD , ETH-USD ,", ["BTC-USD", "ETH-USD"]),
    ],
)
def test_parse_symbols(spec: str, symbols: list[str]) -> None:
    assert parse_symbols(spec) == symbols


@pytest.mark.parametrize("spec", ["0", "", " ", ",", ",,", "A,B,A"])
def test_parse_symbols_rejects(spec: str) -> None:
    with pytest.raises(ConfigError):
        parse_symbols(spec)


def test_negative_rate_rejected() -> None:
    with pytest.raises(ConfigError):
        MarketSimulator(["A"], -1)


# -- determinism --------------------------------------------------------------------------


def test_same_seed_same_flow() -> None:
    a = _run(_sim(["BTC-USD", "ETH-USD"], seed=3), 0.2)
    b = _run(_sim(["BTC-USD", "ETH-USD"], seed=3), 0.2)
    assert a == b and len(a) > 100
    c = _run(_sim(["BTC-USD", "ETH-USD"], seed=4), 0.2)
    assert a != c


def test_seed_books_deterministic_and_uncrossed() -> None:
    a, b = _sim(["X", "Y"], seed=1), _sim(["X", "Y"], seed=1)
    sa, sb = a.seed_books(), b.seed_books()
    assert sa == sb
    for _symbol, updates, trades in sa:
        assert trades == []
        book = Book()
        for x in updates:
            book.apply(x.side, x.price, x.qty)
        assert book.depth() == (25, 25)
        bid, ask = book.best_bid(), book.best_ask()
        assert bid is not None and ask is not None and Decimal(bid[0]) < Decimal(ask[0])
    # Different symbols trade at different prices.
    assert sa[0][1][0].price != sa[1][1][0].price


def test_symbols_are_independent_of_each_other() -> None:
    # A symbol's flow depends on the seed and its name, not on the other symbols.
    def levels(batches: list[Batch], symbol: str) -> list[list[tuple[str, str, str]]]:
        # Event times differ (one clock read per symbol batch); the flow must not.
        return [[(x.side, x.price, x.qty) for x in u] for s, u, _ in batches if s == symbol]

    alone = _run(_sim(["ETH-USD"], seed=9), 0.1)
    mixed = _run(_sim(["BTC-USD", "ETH-USD"], seed=9), 0.1)
    assert levels(alone, "ETH-USD") == levels(mixed, "ETH-USD")
    assert len(levels(alone, "ETH-USD")) > 50


# -- rate ---------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [1, 50, 997, 20_000, 100_000])
def test_due_is_exact_over_time(rate: float) -> None:
    sim = _sim(["A"], rate=rate)
    now = 5.0
    assert sim.due(now) == 0  # the first call only starts the clock
    total = 0
    for i in range(1, 2001):
        total += sim.due(now + i * 0.0005)  # 1 s in 0.5 ms ticks
    assert abs(total - rate) <= 1
    assert sim.skipped == 0


def test_generate_long_run_rate_is_exact() -> None:
    rate = 20_000
    sim = _sim(["A", "B", "C"], rate=rate)
    out = _run(sim, 1.0)[len(sim.flows) :]  # without the seed books
    per_symbol: dict[str, int] = {}
    for symbol, updates, _ in out:
        per_symbol[symbol] = per_symbol.get(symbol, 0) + len(updates)
    for flow in sim.flows:
        # Overshoot is carried as excess and taken off the next call: bounded forever.
        assert 0 <= flow.excess < 10
        assert abs(per_symbol[flow.symbol] - flow.excess - rate) <= 1
    assert sim.generated == sum(per_symbol.values())  # seed not counted


def test_generate_n_is_at_least_n_minus_excess() -> None:
    sim = _sim(["A"])
    [(_, updates, _)] = sim.generate(100)
    assert len(updates) >= 100 and sim.flows[0].excess == len(updates) - 100
    assert sim.generate(0) == [] and sim.generate(-5) == []


def test_excess_larger_than_demand_skips_the_symbol() -> None:
    sim = _sim(["A"])
    sim.flows[0].excess = 5
    assert sim.generate(3) == []
    assert sim.flows[0].excess == 2
    [(_, updates, _)] = sim.generate(10)
    assert len(updates) >= 8


def test_rate_zero_pauses() -> None:
    sim = _sim(["A"], rate=0)
    assert _run(sim, 0.5)[1:] == []


def test_backlog_is_capped_and_counted() -> None:
    sim = _sim(["A", "B"], rate=1000, max_backlog=0.1)
    sim.due(0.0)
    n = sim.due(10.0)  # 10 s late: only 0.1 s of demand is produced
    assert n == 100
    assert sim.skipped == (10_000 - 100) * 2


def test_burst_multiplies_rate_then_ends() -> None:
    sim = _sim(["A"], rate=100, burst_every=1.0, burst_factor=10, burst_seconds=0.5)
    now = 0.0
    sim.due(now)
    counts = []
    for _ in range(6):  # six 0.5 s windows in 10 ms ticks
        n = 0
        for _ in range(50):
            now += 0.01
            n += sim.due(now)
        counts.append(n)
    # Bursts start at t=1.0 and t=2.0 (every 1 s) and last 0.5 s: windows 2 and 4.
    assert counts[2] > 400 and counts[4] > 400
    assert max(counts[0], counts[1], counts[3], counts[5]) < 70
    assert abs(sum(counts) - (4 * 50 + 2 * 500)) <= 30
    assert sim.burst is None


def test_manual_burst() -> None:
    sim = _sim(["A"], rate=100)
    sim.due(0.0)
    sim.start_burst(0.0, factor=4, seconds=1)
    total = sum(sim.due(i * 0.01) for i in range(1, 101))
    # The tick reaching t=1.0 is already past the burst: 99 ticks x 4 + 1.
    assert abs(total - 397) <= 1 and sim.burst is None
    total = sum(sim.due(1.0 + i * 0.01) for i in range(1, 101))
    assert abs(total - 100) <= 1


# -- the book it produces -----------------------------------------------------------------


def test_book_never_crossed_and_matches_simulator_state() -> None:
    sim = _sim(["BTC-USD", "SOL-USD"], rate=50_000, seed=11)
    books = {f.symbol: Book() for f in sim.flows}
    trades_seen = 0
    for symbol, updates, trades in _run(sim, 0.5):
        book = books[symbol]
        for x in updates:
            assert x.side in ("bid", "ask")
            assert x.price.count(".") == 1 and len(x.price.split(".")[1]) == 2
            assert x.qty == "0" or (x.qty.count(".") == 1 and len(x.qty.split(".")[1]) == 4)
            assert x.ts >= TS0
            book.apply(x.side, x.price, x.qty)
            bid, ask = book.best_bid(), book.best_ask()
            if bid is not None and ask is not None:  # (the seed fills one side first)
                assert Decimal(bid[0]) < Decimal(ask[0]), f"crossed: {bid} {ask}"
        for price, qty, side, ts in trades:
            assert side in ("buy", "sell") and not is_zero(qty) and ts >= TS0
            assert Decimal(price) > 0
        trades_seen += len(trades)
        nb, na = book.depth()
        assert 5 <= nb <= 100 and 5 <= na <= 100
    assert trades_seen > 100
    for flow in sim.flows:
        book = books[flow.symbol]
        assert dict(book.bids()) == {flow.price(p): flow.qty(q) for p, q in flow.bids.items()}
        assert dict(book.asks()) == {flow.price(p): flow.qty(q) for p, q in flow.asks.items()}


def test_mid_price_moves() -> None:
    sim = _sim(["A"], rate=50_000, seed=2)
    book = Book()
    mids = set()
    for _, updates, _ in _run(sim, 1.0, step=0.01):
        for x in updates:
            book.apply(x.side, x.price, x.qty)
        bid = book.best_bid()
        assert bid is not None
        mids.add(bid[0])
    assert len(mids) > 3
