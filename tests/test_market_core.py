"""The compiled market core (``tickwire._market``) against the pure-Python reference.

For a seed, the core must produce byte for byte the ``delta`` and ``trades`` messages
that the Python path builds (simulator.SymbolFlow -> Engine -> the hub's encoding, as
``sources.bus.leader_batch`` does), the same engine state and the same ticker; and a
real gateway serving from it must keep clients' books verified.
"""

from __future__ import annotations

import asyncio
import os
import random
import zlib
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import ServerProcess
from tickwire.book import Book
from tickwire.client import Client
from tickwire.engine import Engine
from tickwire.exceptions import ConfigError
from tickwire.protocol import delta_updates
from tickwire.server import Gateway, GatewayConfig
from tickwire.simulator import (
    HAVE_CORE,
    CoreBatch,
    MarketSimulator,
    SymbolFlow,
    SyntheticAccounts,
    core_state,
)
from tickwire.sources.bus import leader_batch

#: Set on a machine that has no C compiler: the compiled-core items then skip, loudly.
#: Anywhere else a missing core is a failure: it is the server's default market, so
#: without it every other server test ran the pure-Python one instead.
NO_CORE = os.environ.get("TICKWIRE_NO_CORE") == "1"


def require_core() -> None:
    """Fail (or, under ``TICKWIRE_NO_CORE=1``, skip) when ``tickwire._market`` is missing."""
    if HAVE_CORE:
        return
    if NO_CORE:
        pytest.skip("TICKWIRE_NO_CORE=1: the compiled core (the default market) is untested")
    pytest.fail(
        "tickwire._market did not build (setup.py builds it optionally): install a C "
        "compiler and the Python headers, reinstall, or set TICKWIRE_NO_CORE=1 to say "
        "that this machine cannot build it"
    )


@pytest.fixture(autouse=True)
def _compiled_core(request: pytest.FixtureRequest) -> None:
    # The --market-core python gateway runs need no core: they run regardless.
    callspec = getattr(request.node, "callspec", None)
    if callspec is None or callspec.params.get("core") != "python":
        require_core()


def test_the_compiled_core_is_built() -> None:
    import tickwire._market  # noqa: F401  (fails here when the build was skipped)

    assert HAVE_CORE


def run_both(
    symbol: str,
    seed: int,
    sizes: Callable[[random.Random], int],
    batches: int,
    mid: int | None = None,
) -> int:
    """Drive the reference and the core with the same batch sizes; compare everything.

    ``mid``: start the market there (ticks) instead of at the symbol's own price.
    """
    reference = SymbolFlow(symbol, seed)
    twin = SymbolFlow(symbol, seed)
    for flow in (reference, twin):
        if mid is not None:
            flow.mid0 = flow.fair = mid
            flow.best_bid, flow.best_ask = mid - 1, mid + 1
            flow.fair_floor = max(mid // 2, 256)
    core = twin.compiled()
    lowest = reference.fair
    engine = Engine([symbol], epoch="e1")
    ts = 1_795_000_000_000_000_000
    expected = leader_batch(engine, symbol, reference.seed_book(ts), [])
    fields = (expected.prev_book, expected.book, expected.prev_trade, expected.trade)
    assert (*fields, expected.book_json, expected.trades_json) == core.seed(ts)
    pick = random.Random(seed)
    checked = 0
    for i in range(batches):
        n, ts = sizes(pick), ts + 1_000_000
        updates: list = []
        trades: list = []
        reference.run(n, ts, updates, trades)
        lowest = min(lowest, reference.fair)
        assert all(not u.price.startswith("-") for u in updates)
        expected = leader_batch(engine, symbol, updates, trades)
        got = core.run(n, ts)
        want = (
            expected.prev_book,
            expected.book,
            expected.prev_trade,
            expected.trade,
            expected.book_json,
            expected.trades_json,
        )
        assert got == want, f"batch {i} of {symbol!r} seed {seed}"
        if i % 97 == 0:
            assert core_state(symbol, core, "e1") == engine.export(symbol)
            ticker = engine.symbols[symbol].ticker("", 0, 0)
            assert CoreBatch(symbol, core, got, ts).leader_ticker() == ticker
            checked += 1
    assert core.seqs == (engine.symbols[symbol].book_seq, engine.symbols[symbol].trade_seq)
    if mid is not None:
        assert lowest == reference.fair_floor, "the walk never reached the floor"
    return checked


@pytest.mark.parametrize(
    ("symbol", "seed"),
    [("BTC-USD", 1), ("SYM0", 0), ("ETH-USD", 12_345_678_901), ('q"\\é', 7), ("X", 2**70 + 5)],
)
def test_core_writes_the_reference_messages_byte_for_byte(symbol: str, seed: int) -> None:
    # Seeds of one, two and three 32-bit words; a symbol that JSON must escape.
    assert run_both(symbol, seed, lambda r: r.randint(1, 60), 3000) > 0


def test_core_matches_on_huge_batches_that_drain_the_book() -> None:
    # A stalled loop asks for a backlog at once: sweeps drain a side to its 5-level
    # floor, and the book refills; trades come in long runs.
    assert run_both("SOL-USD", 3, lambda r: r.choice((1, 2000, 20_000)), 200) > 0


def test_fair_price_reflects_at_its_floor_so_prices_stay_positive() -> None:
    # Started just above the floor (2.56), the walk hits it; both paths reflect alike
    # and no price goes to zero or below (a bid rests up to 1.21 below the fair price).
    assert run_both("LOW", 5, lambda r: r.randint(20, 80), 3000, mid=262) > 0


def test_core_refuses_misuse() -> None:
    from tickwire import _market

    with pytest.raises(RuntimeError, match="__init__"):
        _market.Flow.__new__(_market.Flow).run(10, 0)
    flow = SymbolFlow("A", 1)
    with pytest.raises(ValueError, match="32-bit"):
        _market.Flow([2**32], flow.mid0, 2, 4, flow.sizes, [0] * 4096, [0] * 4096, b'"b"', b'"t"')
    core = flow.compiled()
    with pytest.raises(RuntimeError, match="once"):
        core.__init__([1], flow.mid0, 2, 4, flow.sizes, [0] * 4096, [0] * 4096, b'"b"', b'"t"')


def test_core_checksum_is_the_book_checksum_of_the_decoded_updates() -> None:
    # Independent of the engine: a plain Book fed the core's own updates.
    core = SymbolFlow("ADA-USD", 9).compiled()
    book = Book()
    for i in range(500):
        _, _, _, _, book_json, _ = core.seed(1) if i == 0 else core.run(25, i)
        book.apply_updates(delta_updates(book_json))
        checksum = int(book_json.split(b'"checksum":')[1].split(b",")[0])
        assert checksum == book.checksum()
    assert zlib.crc32(b"") == 0  # the empty-book case the C table also gives


def test_simulator_core_keeps_the_exact_rate_and_batches_lazily() -> None:
    sim = MarketSimulator(["A", "B"], rate=1000.0, seed=2)
    sim.use_core()
    seeds = sim.core_seeds()
    assert [b.symbol for b in seeds] == ["A", "B"] and all(b.book == 50 for b in seeds)
    assert sim.due(0.0) == 0
    made = 0
    for step in range(1, 101):
        made += sum(b.book - b.prev_book for b in sim.core_batches(sim.due(step * 0.01)))
    # Events are never split: a batch may overshoot; the excess is taken off next time.
    assert 2000 <= made < 2000 + 2 * 10
    assert sim.generated == made


def test_core_refuses_what_it_cannot_serve() -> None:
    with pytest.raises(ConfigError, match="decimals"):
        SymbolFlow("A", 1, price_decimals=0).compiled()
    gw = Gateway(GatewayConfig(symbols=["A"], batch_ms=0, market_core="c"))
    with pytest.raises(ConfigError, match="--batch-ms"):
        asyncio.run(gw.source.start(gw.hub))


def test_gateway_follows_the_core_without_applying_updates() -> None:
    # The engine's book is loaded from the core only when read, and matches the seqs.
    gw = Gateway(GatewayConfig(symbols=["A", "B"], rate=5000.0, market_core="c"))
    asyncio.run(gw.source.start(gw.hub))
    source = gw.source
    source.poll(0.0)
    source.poll(0.5)
    state = gw.engine.symbols["A"]
    assert state.behind and state.book_seq > 50
    assert state.book.depth()[0] > 5 and not state.behind
    book_ch = gw.hub.channels["book.A"]
    assert book_ch.seq == state.book_seq and book_ch.history
    last = book_ch.history[-1][2]
    assert f'"checksum":{state.book.checksum()}'.encode() in last
    assert source.stats()["core"] == "c"


@pytest.mark.parametrize(
    ("core", "pacing"), [("c", "pause"), ("c", "clock"), ("python", "pause"), ("python", "clock")]
)
def test_real_gateway_serves_verified_books_from_either_market(
    server_factory: Callable[..., ServerProcess], core: str, pacing: str
) -> None:
    srv = server_factory(
        "--symbols", "A,B", "--rate", "2000", "--market-core", core, "--tick-pacing", pacing,
        "--pass-share", "0.8",
    )  # fmt: skip

    async def run() -> None:
        channels = ["book.A", "trades.A", "ticker.A", "book.B"]
        async with Client(srv.url, channels) as client:
            async with asyncio.timeout(20):
                await client.wait_until(
                    lambda: all(client.channel(c).counters.messages > 40 for c in channels)
                )
            for name in channels:
                counters = client.channel(name).counters
                assert counters.gaps == counters.checksum_failures == counters.resyncs == 0
            assert client.book("A").depth()[0] > 5

    asyncio.run(run())
    stats = srv.stop()
    assert stats is not None and stats["source"]["core"] == core
    assert stats["ticks"]["pacing"] == pacing and stats["ticks"]["passes"] > 0
    assert stats["ticks"]["pass_share"] == 0.8


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(min_value=-(2**96), max_value=2**96),
    sizes=st.lists(st.integers(min_value=1, max_value=400), min_size=1, max_size=40),
)
def test_core_matches_for_any_seed_and_batch_sizes(seed: int, sizes: list[int]) -> None:
    # Any seed (negative too: random.Random seeds with abs), any batch sizes.
    cycle = iter(sizes * 5)
    run_both("HYP-USD", seed, lambda _r: next(cycle), len(sizes) * 5)


def test_synthetic_accounts_see_the_same_orders_with_the_core() -> None:
    # The accounts read each batch's events; decoded from the core's JSON they are the
    # Python path's, so every user's order events are identical too.
    def run(core: bool) -> list[tuple[str, list]]:
        events: list[tuple[str, list]] = []
        sim = MarketSimulator(["A", "B"], rate=20_000.0, seed=4)
        sim.clock = iter(range(10**6)).__next__
        sim.accounts = SyntheticAccounts(
            ["alice", "bob"], 4, fraction=0.05, emit=lambda u, e: events.append((u, e))
        )
        if core:
            sim.use_core()
            sim.core_seeds()
        else:
            sim.seed_books()
        sim.due(0.0)
        for step in range(1, 300):
            n = sim.due(step * 0.001)
            list(sim.core_batches(n)) if core else list(sim.batches(n))
        return events

    python = run(False)
    assert len(python) > 50
    assert run(True) == python


# -- the ingest book (_market.Levels against ingest.PyLevels) ---------------------------

_DECIMALS = [
    "99",
    "099.50",
    "99.5",
    "100",
    "100.000",
    "100.5",
    "101",
    "0.000000000000000001",
    "9" * 24 + "." + "9" * 18,
    "0",
    "0.0",
    "-1",
    "1e5",
    "1.",
    ".5",
    "",
    " 1",
    "1 ",
    "١",
    "1" * 25,
    "1." + "1" * 19,
    "\ud800",
]
_change = st.one_of(
    st.tuples(
        st.sampled_from(["bid", "ask"]),
        st.sampled_from(_DECIMALS[:10]),
        st.sampled_from(_DECIMALS[:10]),
    ),
    st.tuples(
        st.sampled_from(["bid", "ask", "x"]), st.sampled_from(_DECIMALS), st.sampled_from(_DECIMALS)
    ),
    st.just(("bid", "1")),
)
_op = st.one_of(
    st.tuples(st.just("apply"), st.lists(_change, max_size=6), st.integers(0, 2**62)),
    st.tuples(st.just("check"), st.lists(_change, max_size=4), st.just(0)),
    st.tuples(
        st.just("load"),
        st.tuples(
            st.lists(
                st.tuples(st.sampled_from(_DECIMALS[:12]), st.sampled_from(_DECIMALS[:12])),
                max_size=6,
            ),
            st.lists(
                st.tuples(st.sampled_from(_DECIMALS[:12]), st.sampled_from(_DECIMALS[:12])),
                max_size=6,
            ),
        ),
        st.just(0),
    ),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_op, max_size=25))
def test_ingest_levels_match_the_python_reference(ops: list[tuple[str, object, int]]) -> None:
    """Every result, fault and byte of the compiled ingest book is the reference's:
    decimals validated and canonicalized alike, a rejected message undone, the same
    delta JSON and checksum."""
    from tickwire import _market
    from tickwire.ingest import PyLevels

    ch = b'"book.X-1/Y"'
    core, ref = _market.Levels(ch), PyLevels(ch)
    seq = 0
    for kind, arg, ts in ops:
        if kind == "apply":
            got, want = core.apply(arg, ts, seq), ref.apply(arg, ts, seq)  # type: ignore[arg-type]
            if isinstance(want, bytes):
                seq += len(arg)  # type: ignore[arg-type]
        elif kind == "check":
            got, want = core.check(arg), ref.check(arg)  # type: ignore[arg-type]
        else:
            bids, asks = arg  # type: ignore[misc]
            got, want = core.load(bids, asks), ref.load(bids, asks)
        assert got == want, (kind, arg)
        assert core.bids() == ref.bids() and core.asks() == ref.asks()
        assert core.top() == ref.top() and core.depth() == ref.depth()
        assert core.checksum() == ref.checksum()
    assert core.bids(3) == ref.bids(3) and core.asks(0) == ref.asks(0) == []


def _ingest_stream(kind: str) -> list[tuple[str, bytes]]:
    """A feeder's messages with faults a broken source sends, and snapshots that heal."""
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples" / "ingest"))
    from feeder import Feeder

    f = Feeder(None, "IN", kind=kind, seed=3)
    out = [("IN", json.dumps(f.snapshot()).encode())]
    for i in range(300):
        msg = f.next_message(1 + i % 40)
        if kind == "l2" and i % 37 == 5:
            msg["changes"].append(["bid", "1e5", "1"])  # decimal: stale until a snapshot
        if kind == "l2" and i % 41 == 7:
            msg["changes"].append(["bid", "100000", "1"])  # crossed
        if i % 29 != 3:  # else lost: a gap
            out.append(("IN", json.dumps(msg).encode()))
        if i % 10 == 9:  # heals whatever came before
            out.append(("IN", json.dumps(f.snapshot()).encode()))
    return out


@pytest.mark.parametrize("kind", ["l2", "l3"])
def test_an_ingest_feed_writes_the_same_bytes_with_either_book(kind: str) -> None:
    """The same stream through a compiled and a pure-Python feed: the same actions,
    rejections, messages byte for byte, tickers and engine states."""
    from tickwire.ingest import IngestFeed, Publish

    stream = _ingest_stream(kind)
    feeds = [IngestFeed(core=True), IngestFeed(core=False)]
    published = 0
    for i, (symbol, data) in enumerate(stream):
        outs = []
        for feed in feeds:
            feed.receive(symbol, data, i * 0.01)
            out, feed.out = feed.out, []
            outs.append(out)
        a, b = outs
        assert [type(x) for x in a] == [type(x) for x in b]
        for x, y in zip(a, b, strict=True):
            if isinstance(x, Publish):
                assert isinstance(y, Publish)
                assert (x.prev_book, x.book, x.prev_trade, x.trade) == (
                    y.prev_book,
                    y.book,
                    y.prev_trade,
                    y.trade,
                )
                assert x.book_json == y.book_json and x.trades_json == y.trades_json
                assert x.leader_ticker() == y.leader_ticker()
                published += 1
            else:
                assert x == y
        assert feeds[0].rejected == feeds[1].rejected
        assert feeds[0].feeds["IN"].export("e") == feeds[1].feeds["IN"].export("e")
    assert published > 100
    assert feeds[0].rejected["gap"] > 0 and feeds[0].loads > 3
    if kind == "l2":
        assert feeds[0].rejected["decimal"] > 0 and feeds[0].rejected["crossed"] > 0
