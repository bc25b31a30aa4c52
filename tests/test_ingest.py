"""The ingest protocol: the Sans-I/O decoder and state machine, then real processes.

The Sans-I/O half feeds :class:`~tickwire.ingest.IngestFeed` bytes (JSON and msgpack)
and checks the actions, the rejection reasons and the recovery; hypothesis fuzzes it.
The I/O half runs a real nats-server, ``tickwire publish --ingest`` and ``tickwire serve``
processes, the example feeder (``examples/ingest/feeder.py``, nats-py) and WebSocket
clients that verify every message's chain and checksum against the feeder's own book.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import threading
import time
import urllib.request
from collections.abc import Coroutine, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import RawClient, ServerProcess, StreamChecker
from nats_helpers import NatsServer, Proc, free_port, publisher, stream, subscribe
from tickwire.book import Book
from tickwire.exceptions import IngestError
from tickwire.ingest import REASONS, IngestFeed, Invalidate, Load, Publish, canonical, decode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples" / "ingest"))
from feeder import Feeder  # noqa: E402

TS = 1_700_000_000_000_000_000
T = TypeVar("T")


def j(**msg: Any) -> bytes:
    return json.dumps({"v": 1, "ts": TS, **msg}).encode()


def snap(symbol: str = "X", seq: int = 10, bids: Any = None, asks: Any = None) -> bytes:
    return j(
        type="snapshot",
        symbol=symbol,
        seq=seq,
        bids=bids if bids is not None else [["99.50", "1"], ["99", "2.000"]],
        asks=asks if asks is not None else [["100.5", "3"]],
    )


def upd(seq: int, changes: Any = (), trades: Any = (), symbol: str = "X") -> bytes:
    return j(type="update", symbol=symbol, seq=seq, changes=list(changes), trades=list(trades))


def actions(feed: IngestFeed) -> list[Any]:
    out, feed.out = feed.out, []
    return out


# -- Sans-I/O -----------------------------------------------------------------------------


def test_decimals_are_canonical_and_exact() -> None:
    assert canonical("001.500") == "1.5"
    assert canonical("0.000") == "0"
    assert canonical("42") == "42"
    for bad, reason in [
        ("1e5", "decimal"),
        ("1.", "decimal"),
        (".5", "decimal"),
        ("NaN", "decimal"),
        (" 1", "decimal"),
        ("١", "decimal"),  # a Unicode digit
        ("-1", "negative"),
    ]:
        with pytest.raises(IngestError) as err:
            canonical(bad)
        assert err.value.reason == reason, bad


def test_l2_snapshot_then_bundles_become_engine_batches() -> None:
    feed = IngestFeed()
    feed.receive("X", snap(), 0.0)
    (load,) = actions(feed)
    assert isinstance(load, Load)
    assert load.bids == [("99.5", "1"), ("99", "2")] and load.asks == [("100.5", "3")]
    feed.receive("X", upd(11, [["bid", "99.5", "0"], ["ask", "101.00", "4"]]), 0.1)
    feed.receive("X", upd(12, trades=[["100.5", "1", "buy"]]), 0.2)
    b1, b2 = actions(feed)
    assert isinstance(b1, Publish) and isinstance(b2, Publish)
    assert [(u.side, u.price, u.qty, u.ts) for u in b1.updates] == [
        ("bid", "99.5", "0", TS),
        ("ask", "101", "4", TS),
    ]
    assert b2.updates == [] and b2.trades == [("100.5", "1", "buy", TS)]
    assert feed.feeds["X"].seq == 12 and feed.feeds["X"].state == "live"
    # msgpack, same message.
    data = msgspec.msgpack.encode(json.loads(upd(13, [["ask", "102", "1"]])))
    feed.receive("X", data, 0.3)
    (b3,) = actions(feed)
    assert isinstance(b3, Publish) and b3.updates[0].price == "102"


def test_l3_orders_derive_levels_and_trades() -> None:
    feed = IngestFeed()
    orders = [["a", "bid", "99", "1"], ["b", "bid", "99", "2"], ["c", "ask", "101", "5"]]
    feed.receive("X", j(type="orders_snapshot", symbol="X", seq=5, orders=orders), 0.0)
    (load,) = actions(feed)
    assert isinstance(load, Load) and load.bids == [("99", "3")] and load.asks == [("101", "5")]
    events = [
        ["add", "d", "bid", "99.5", "1.5"],
        ["execute", "c", "2"],  # a buyer takes 2 of the resting ask
        ["modify", "a", "0.5"],
        ["cancel", "b"],
        ["execute", "d", "1.5", "99.5"],
    ]
    feed.receive("X", j(type="orders", symbol="X", seq=6, events=events), 0.1)
    (batch,) = actions(feed)
    assert isinstance(batch, Publish)
    assert [(u.side, u.price, u.qty) for u in batch.updates] == [
        ("bid", "99.5", "0"),
        ("ask", "101", "3"),
        ("bid", "99", "0.5"),
    ]
    assert batch.trades == [("101", "2", "buy", TS), ("99.5", "1.5", "sell", TS)]
    book = feed.feeds["X"].book
    assert book.bids() == [("99", "0.5")] and book.asks() == [("101", "3")]


BAD: list[tuple[str, bytes]] = [
    ("schema", b"{not json"),
    ("schema", j(type="update", symbol="X", seq=11, changes=[["bid", 99.5, "1"]])),
    ("schema", j(type="update", symbol="X", seq=11, changes=[["middle", "99", "1"]])),
    ("schema", b"\x93\x01\x02\x03"),
    (
        "version",
        json.dumps({"v": 2, "type": "update", "symbol": "X", "seq": 11, "ts": TS}).encode(),
    ),
    ("time", json.dumps({"v": 1, "type": "update", "symbol": "X", "seq": 11, "ts": 1700}).encode()),
    ("decimal", upd(11, [["bid", "99.5e1", "1"]])),
    ("negative", upd(11, [["bid", "99", "-1"]])),
    ("negative", upd(11, [["bid", "0", "1"]])),
    ("crossed", upd(11, [["bid", "100.5", "1"]])),
    ("gap", upd(13, [["bid", "98", "1"]])),
    ("symbol", upd(11, [["bid", "98", "1"]], symbol="Y")),
    ("kind", j(type="orders", symbol="X", seq=11, events=[["cancel", "z"]])),
]


@pytest.mark.parametrize(("reason", "data"), BAD, ids=[f"{r}-{i}" for i, (r, _) in enumerate(BAD)])
def test_each_bad_input_is_counted_makes_the_symbol_stale_and_a_snapshot_heals(
    reason: str, data: bytes
) -> None:
    feed = IngestFeed()
    feed.receive("X", snap(seq=10), 0.0)
    actions(feed)
    feed.receive("X", data, 1.0)
    assert feed.rejected[reason] == 1, feed.rejected
    assert sum(feed.rejected.values()) == 1
    assert actions(feed) == [Invalidate("X", reason)]
    assert feed.feeds["X"].state == "stale" and "X" in feed.requests
    # Data while stale is held, not served.
    feed.receive("X", upd(12, [["bid", "98.5", "1"]]), 1.1)
    assert actions(feed) == []
    # The snapshot (a reply) loads, and what was held after it applies.
    feed.receive("X", snap(seq=11), 1.2, reply=True)
    out = actions(feed)
    assert isinstance(out[0], Load) and isinstance(out[1], Publish)
    assert feed.feeds["X"].state == "live" and feed.feeds["X"].seq >= 12
    assert "X" not in feed.requests


def test_l3_order_faults_are_rejected() -> None:
    for events in (
        [["cancel", "nope"]],
        [["add", "a", "bid", "99", "1"]],  # already resting
        [["execute", "a", "5"]],  # more than is left
        [["modify", "zz", "1"]],
    ):
        feed = IngestFeed()
        o = [["a", "bid", "99", "1"]]
        feed.receive("X", j(type="orders_snapshot", symbol="X", seq=1, orders=o), 0.0)
        actions(feed)
        feed.receive("X", j(type="orders", symbol="X", seq=2, events=events), 0.0)
        assert feed.rejected["order"] == 1, events
        assert actions(feed) == [Invalidate("X", "order")]


def test_duplicates_are_dropped_and_the_book_stays_live() -> None:
    feed = IngestFeed()
    feed.receive("X", snap(seq=10), 0.0)
    feed.receive("X", upd(11, [["bid", "98", "1"]]), 0.0)
    actions(feed)
    feed.receive("X", upd(11, [["bid", "98", "7"]]), 0.0)
    feed.receive("X", upd(5), 0.0)
    assert feed.rejected["duplicate"] == 2 and actions(feed) == []
    assert feed.feeds["X"].state == "live"


def test_unknown_symbols_and_the_allow_list() -> None:
    feed = IngestFeed(["X"])
    feed.receive("Y", snap("Y"), 0.0)
    feed.receive("bad name!", snap("bad name!"), 0.0)
    assert feed.rejected["symbol"] == 2 and "Y" not in feed.feeds and actions(feed) == []
    open_feed = IngestFeed(max_symbols=1)
    open_feed.receive("A", snap("A"), 0.0)
    open_feed.receive("B", snap("B"), 0.0)
    assert list(open_feed.feeds) == ["A"] and open_feed.rejected["symbol"] == 1


def test_a_heartbeat_ahead_is_a_gap_and_a_snapshot_at_the_same_seq_verifies() -> None:
    feed = IngestFeed()
    feed.receive("X", snap(seq=10), 0.0)
    actions(feed)
    feed.receive("X", snap(seq=10), 0.1)  # the same book: nothing to do
    assert actions(feed) == [] and sum(feed.rejected.values()) == 0
    feed.receive("X", snap(seq=10, bids=[["98", "1"]]), 0.2)  # differs: mismatch, loaded
    out = actions(feed)
    assert feed.rejected["mismatch"] == 1 and isinstance(out[0], Invalidate)
    assert isinstance(out[1], Load) and out[1].bids == [("98", "1")]
    feed.receive("X", j(type="heartbeat", symbol="X", seq=12), 0.3)
    assert feed.rejected["gap"] == 1 and actions(feed) == [Invalidate("X", "gap")]


def test_rejections_are_logged_once_per_symbol_and_reason(caplog: pytest.LogCaptureFixture) -> None:
    feed = IngestFeed()
    with caplog.at_level(logging.INFO, logger="tickwire.ingest"):
        for i in range(100):
            feed.receive("X", b"garbage", i * 0.01)
    lines = [r for r in caplog.records if "rejected" in r.getMessage()]
    assert len(lines) == 1 and "schema" in lines[0].getMessage()
    assert feed.rejected["schema"] == 100
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="tickwire.ingest"):
        feed.receive("X", b"garbage", 20.0)
    (line,) = caplog.records
    assert "99 more like it" in line.getMessage()


def test_silence_is_reported_once_until_the_source_speaks() -> None:
    feed = IngestFeed(silent_after=2.0)
    feed.receive("X", snap(), 0.0)
    assert feed.check(1.0) == []
    assert feed.check(2.5) == ["X"] and feed.check(3.0) == []
    assert feed.silences == 1 and feed.stats()["symbols"]["X"]["silent"] is True  # type: ignore[index]
    feed.receive("X", j(type="heartbeat", symbol="X", seq=10), 3.5)
    assert feed.feeds["X"].silent is False and feed.check(4.0) == []


_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.text(max_size=8)
    | st.floats(allow_nan=False),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
_prices = st.sampled_from(["99", "99.5", "100", "100.5", "101", "0", "-1", "1e2", "abc", "98.25"])
_change = st.tuples(st.sampled_from(["bid", "ask", "x"]), _prices, _prices)
_event = st.one_of(
    st.tuples(
        st.just("add"), st.sampled_from("abc"), st.sampled_from(["bid", "ask"]), _prices, _prices
    ),
    st.tuples(st.sampled_from(["cancel"]), st.sampled_from("abcd")),
    st.tuples(st.sampled_from(["modify", "execute"]), st.sampled_from("abcd"), _prices),
)
_message = st.one_of(
    st.builds(
        lambda seq, ch: {"type": "update", "seq": seq, "changes": ch},
        st.integers(0, 6),
        st.lists(_change, max_size=4),
    ),
    st.builds(
        lambda seq, ev: {"type": "orders", "seq": seq, "events": ev},
        st.integers(0, 6),
        st.lists(_event, max_size=4),
    ),
    st.builds(
        lambda seq, b, a: {"type": "snapshot", "seq": seq, "bids": b, "asks": a},
        st.integers(0, 6),
        st.lists(st.tuples(_prices, _prices), max_size=3),
        st.lists(st.tuples(_prices, _prices), max_size=3),
    ),
    st.builds(
        lambda seq, o: {"type": "orders_snapshot", "seq": seq, "orders": o},
        st.integers(0, 6),
        st.lists(
            st.tuples(st.sampled_from("abc"), st.sampled_from(["bid", "ask"]), _prices, _prices),
            max_size=3,
        ),
    ),
    st.builds(lambda seq: {"type": "heartbeat", "seq": seq}, st.integers(0, 8)),
    _json_values,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(_message, st.binary(max_size=40)), max_size=20), st.booleans())
def test_fuzz_nothing_a_source_sends_raises_or_serves_a_bad_book(
    messages: list[Any], msgpack: bool
) -> None:
    feed = IngestFeed()
    other = Book()
    for i, item in enumerate(messages):
        if isinstance(item, bytes):
            data = item
        else:
            body = {"v": 1, "symbol": "X", "ts": TS, **item} if isinstance(item, dict) else item
            data = msgspec.msgpack.encode(body) if msgpack else json.dumps(body).encode()
        feed.receive("X", data, i * 0.1)
        feed.check(i * 0.1)
        for action in actions(feed):
            assert isinstance(action, Publish | Invalidate | Load)
        x = feed.feeds.get("X")
        if x is not None and x.state == "live":
            bid, ask = x.book.best_bid(), x.book.best_ask()
            assert bid is None or ask is None or Decimal(bid[0]) < Decimal(ask[0])
            for _, qty in x.book.bids() + x.book.asks():
                assert Decimal(qty) > 0
    assert other.depth() == (0, 0)


def test_decode_rejects_every_reason_it_owns() -> None:
    for reason in ("schema", "version", "time"):
        assert reason in REASONS
    with pytest.raises(IngestError):
        decode(b"")


# -- real processes -----------------------------------------------------------------------


class Loop:
    """An asyncio loop in a thread, for the feeders (nats-py) beside sync clients."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.conns: list[Any] = []

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def close(self) -> None:
        for nc in self.conns:
            try:
                self.run(nc.close(), 5.0)
            except Exception:
                pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def nats_server() -> Iterator[NatsServer]:
    srv = NatsServer().start()
    yield srv
    srv.stop()


@pytest.fixture
def procs() -> Iterator[list[Any]]:
    started: list[Any] = []
    yield started
    for p in reversed(started):
        try:
            p.stop()
        except Exception:
            p.kill()


@pytest.fixture
def aio() -> Iterator[Loop]:
    loop = Loop()
    yield loop
    loop.close()


async def _connect(url: str) -> Any:
    import nats

    return await nats.connect(url)


def feeders(aio: Loop, url: str, specs: list[tuple[str, str]], **kw: Any) -> list[Feeder]:
    nc = aio.run(_connect(url))
    aio.conns.append(nc)
    out = [Feeder(nc, s, kind=k, seed=i, **kw) for i, (s, k) in enumerate(specs)]
    for f in out:
        aio.run(f.serve_snapshots())
    return out


async def _pump(f: Feeder, n: int, bundle: int = 5, period: float = 0.004) -> None:
    for _ in range(n):
        await f.publish(f.next_message(bundle))
        await asyncio.sleep(period)


def book_of(checker: StreamChecker, symbol: str) -> dict[str, dict[Decimal, Decimal]]:
    book = checker.books[f"book.{symbol}"]
    return {
        "bid": {Decimal(p): Decimal(q) for p, q in book.bids()},
        "ask": {Decimal(p): Decimal(q) for p, q in book.asks()},
    }


def metrics(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("tickwire_") and " " in line:
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def until(client: RawClient, checker: StreamChecker, ch: str, timeout: float) -> dict[str, Any]:
    """Apply messages until a snapshot of ``ch`` comes; return it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = client.recv_json(timeout=max(deadline - time.monotonic(), 0.01))
        checker.apply(msg)
        if msg.get("ch") == ch and msg["type"] == "snapshot":
            return msg
    raise TimeoutError(f"no snapshot of {ch}")


def ingest_publisher(url: str, procs: list[Any], *args: str) -> tuple[Proc, int]:
    port = free_port()
    p = Proc(
        [
            "publish",
            "--nats",
            url,
            "--ingest",
            url,
            "--max-seconds",
            "120",
            "--metrics-port",
            str(port),
            "--log-level",
            "INFO",
            *args,
        ],
        r"publishing .* \(epoch (\S+)\)",
    ).start()
    procs.append(p)
    return p, port


def test_l2_and_l3_feeders_through_the_leader_reach_a_gateway_without_symbols(
    nats_server: NatsServer, procs: list[Any], aio: Loop
) -> None:
    """Feeder -> publish --ingest -> bus -> serve (no --symbols) -> verified clients,
    with a symbol the source adds after the gateway started."""
    url = nats_server.url
    pub, mport = ingest_publisher(url, procs)
    l2, l3 = feeders(aio, url, [("L2-X", "l2"), ("L3-X", "l3")])
    for f in (l2, l3):
        aio.run(f.publish(f.snapshot()))
    gw = ServerProcess(["--source", url, "--admin-port", "off"]).start(timeout=30)
    procs.append(gw)
    client = RawClient(gw.port)
    subscribe(client, ["book.L2-X", "trades.L2-X", "book.L3-X", "trades.L3-X"])
    checker = StreamChecker()
    pumps = [aio.spawn(_pump(f, 150)) for f in (l2, l3)]
    stream(client, checker, 0.5)
    # A symbol the source starts after the gateway: followed.
    (late,) = feeders(aio, url, [("LATE", "l3")])
    aio.run(late.publish(late.snapshot()))
    pumps.append(aio.spawn(_pump(late, 60)))
    time.sleep(0.8)
    other = RawClient(gw.port)
    subscribe(other, ["book.LATE"])
    late_checker = StreamChecker()
    for p in pumps:
        p.result(30)
    stream(client, checker, 1.0)
    stream(other, late_checker, 0.3)
    checker.books["book.LATE"] = late_checker.books["book.LATE"]
    assert checker.deltas > 100
    for f in (l2, l3, late):
        assert book_of(checker, f.symbol) == f.book(), f.symbol
    assert checker.trades > 0
    m = metrics(mport)
    assert m["tickwire_ingest_messages_total"] >= 360
    assert all(m[f'tickwire_ingest_rejected_total{{reason="{r}"}}'] == 0 for r in REASONS)
    assert m['tickwire_ingest_symbols{state="live"}'] == 3


def test_bad_inputs_make_one_symbol_stale_others_stream_and_a_snapshot_heals(
    nats_server: NatsServer, procs: list[Any], aio: Loop
) -> None:
    """serve --source ingest+nats:// directly: each fault class on BAD-X, GOOD-X untouched."""
    url = nats_server.url
    admin = free_port()
    gw = ServerProcess(
        [
            "--source",
            f"ingest+{url}",
            "--admin-port",
            str(admin),
            "--ingest-silent-after",
            "1",
            "--log-level",
            "INFO",
        ]
    ).start(timeout=30)
    procs.append(gw)
    bad, good = feeders(aio, url, [("BAD-X", "l2"), ("GOOD-X", "l3")], encoding="msgpack")
    for f in (bad, good):
        aio.run(f.publish(f.snapshot()))
    time.sleep(0.3)
    client = RawClient(gw.port)
    subscribe(client, ["book.BAD-X", "book.GOOD-X", "trades.GOOD-X"])
    checker = StreamChecker()
    pump = aio.spawn(_pump(good, 400, period=0.01))
    stream(client, checker, 0.3)

    def fault(kind: str) -> None:
        if kind == "gap":
            bad.seq += 1  # a message never sent
            aio.run(bad.publish(bad.next_message(2)))
        elif kind == "duplicate":
            msg = bad.next_message(2)
            aio.run(bad.publish(msg))
            aio.run(bad.publish(msg))
            return
        else:
            bad.seq += 1
            head = {"v": 1, "symbol": "BAD-X", "seq": bad.seq, "ts": time.time_ns()}
            body = {
                "schema": {**head, "type": "update", "changes": [["bid", 99.5, "1"]]},
                "decimal": {**head, "type": "update", "changes": [["bid", "99,5", "1"]]},
                "negative": {**head, "type": "update", "changes": [["ask", "101", "-2"]]},
                "crossed": {**head, "type": "update", "changes": [["bid", "200", "1"]]},
            }[kind]
            aio.run(bad.publish(body))

    kinds = ["gap", "schema", "decimal", "negative", "crossed", "duplicate"]
    for kind in kinds:
        for _ in range(3):  # three of each: logged once
            fault(kind)
            if kind != "duplicate":
                # Stale: BAD-X's channel goes silent; it heals from the snapshot reply.
                heal = until(client, checker, "book.BAD-X", 5.0)
                assert heal["resumed"] is False, kind
        aio.run(bad.publish(bad.next_message(3)))
    # An unknown symbol (not a valid name) and a body for another subject.
    stranger = json.dumps({**json.loads(snap("no!such")), "symbol": "no!such"}).encode()
    aio.run(bad.publish_raw(stranger, "tickwire.ingest.no!such"))
    # Let a silent source be seen: BAD-X says nothing for a while.
    stream(client, checker, 1.6)
    pump.result(30)
    stream(client, checker, 0.5)
    assert book_of(checker, "BAD-X") == bad.book()
    assert book_of(checker, "GOOD-X") == good.book()
    assert checker.deltas > 100
    m = metrics(admin)
    for kind in kinds:
        assert m[f'tickwire_ingest_rejected_total{{reason="{kind}"}}'] == 3, kind
    assert m['tickwire_ingest_rejected_total{reason="symbol"}'] == 1
    assert m["tickwire_ingest_silences_total"] >= 1
    assert m['tickwire_ingest_symbols{state="live"}'] == 2
    stats = gw.stop()
    assert stats is not None
    logged = gw.stderr.count("ingest BAD-X rejected")
    assert logged == len(kinds), gw.stderr[-3000:]  # three of each, logged once
    assert "no message from the source" in gw.stderr


def test_a_gateway_without_symbols_serves_a_simulator_publishers_symbols(
    nats_server: NatsServer, procs: list[Any]
) -> None:
    """The reproduction of issue 21's item 3: publish --symbols 4, serve without."""
    procs.append(publisher(nats_server.url, "--symbols", "4", "--rate", "200"))
    gw = ServerProcess(["--source", nats_server.url, "--admin-port", "off"]).start(timeout=20)
    procs.append(gw)
    client = RawClient(gw.port)
    subscribe(client, [f"book.SYM{i}" for i in range(4)])
    checker = StreamChecker()
    stream(client, checker, 1.0)
    assert set(checker.books) == {f"book.SYM{i}" for i in range(4)} and checker.deltas > 20


def test_the_json_schema_matches_the_decoder() -> None:
    """schema/ingest-v1.schema.json names every message type, with the decoder's
    required fields (msgspec's structs are the implementation; the schema documents it)."""
    from tickwire import ingest

    schema = json.loads(
        (Path(__file__).resolve().parent.parent / "schema" / "ingest-v1.schema.json").read_text()
    )
    defs = schema["$defs"]
    for cls in (
        ingest.L2Snapshot,
        ingest.L2Update,
        ingest.OrdersSnapshot,
        ingest.OrderEvents,
        ingest.Status,
        ingest.SourceHeartbeat,
    ):
        info = msgspec.inspect.type_info(cls)
        assert isinstance(info, msgspec.inspect.StructType)
        tag = info.tag
        assert defs[tag]["properties"]["type"] == {"const": tag}
        required = {f.encode_name for f in info.fields if f.required} | {"type"}
        assert set(defs[tag]["required"]) == required, tag
        assert set(defs[tag]["properties"]) == {f.encode_name for f in info.fields} | {"type"}
    events = defs["orders"]["properties"]["events"]["items"]["oneOf"]
    assert [e["prefixItems"][0]["const"] for e in events] == ["add", "modify", "cancel", "execute"]


# -- without NATS: an async iterator in process, NDJSON on standard input ----------------


def test_an_in_process_gateway_on_an_async_iterator_serves_verified_books() -> None:
    """``Gateway(config, source=StreamIngestSource(iterator))``: the SDK verifies every
    checksum; a bad message makes the symbol stale until the next snapshot in stream."""
    from tickwire.client import Client
    from tickwire.server import Gateway, GatewayConfig
    from tickwire.sources.ingest import StreamIngestSource

    feeder = Feeder(None, "L3-Y", kind="l3", seed=3)
    more = asyncio.Event()

    async def messages() -> Any:
        yield feeder.snapshot()
        for _ in range(100):
            yield feeder.next_message(4)
            await asyncio.sleep(0.002)
        await more.wait()
        yield {
            "v": 1,
            "type": "orders",
            "symbol": "L3-Y",
            "seq": feeder.seq + 1,
            "ts": 1,
            "events": [],
        }
        feeder.seq += 1
        for _ in range(20):
            yield feeder.next_message(4)
        yield json.dumps(feeder.snapshot())  # heals (JSON text is fine too)
        for _ in range(50):
            yield feeder.next_message(4)
            await asyncio.sleep(0.002)

    async def run() -> tuple[dict[str, Any], dict[str, Any], bool]:
        source = StreamIngestSource(messages())
        gateway = Gateway(GatewayConfig(port=0, symbols=[]), source=source)
        await gateway.start()
        serving = asyncio.create_task(gateway.run())
        try:
            async with asyncio.timeout(20):
                for _ in range(2000):  # the gateway has no event for a symbol's first load
                    if "L3-Y" in gateway.engine.symbols and not gateway.incomplete_books:
                        break
                    await asyncio.sleep(0.01)
                url = f"ws://127.0.0.1:{gateway.port}/ws"
                async with Client(url, ["book.L3-Y", "trades.L3-Y"]) as client:
                    await client.wait_live()
                    await client.wait_until(lambda: source.feed.feeds["L3-Y"].messages >= 100)
                    more.set()
                    await client.wait_until(lambda: source.ended)
                    await asyncio.sleep(0.3)
                    book = client.book("L3-Y")
                    got = {
                        "bid": {Decimal(p): Decimal(q) for p, q in book.bids()},
                        "ask": {Decimal(p): Decimal(q) for p, q in book.asks()},
                    }
                    same = got == feeder.book()
                    return client.counters(), source.stats(), same
        finally:
            gateway.stop()
            await serving

    counters, stats, same = asyncio.run(run())
    assert same
    assert counters["book.L3-Y"]["checksum_failures"] == 0
    assert counters["book.L3-Y"]["snapshots"] >= 2  # the first, and the heal
    assert counters["book.L3-Y"]["updates"] > 300
    assert stats["rejected"]["time"] == 1 and stats["loads"] == 2


def test_ndjson_on_standard_input_feeds_serve(procs: list[Any]) -> None:
    """``my-feed | tickwire serve --source -``."""
    feeder = Feeder(None, "PIPE-X", kind="l2", seed=4)
    lines = [feeder.snapshot()] + [feeder.next_message(5) for _ in range(200)]
    srv = _start_with_stdin(ServerProcess(["--source", "-", "--admin-port", "off"]))
    procs.append(srv)
    assert srv.proc is not None and srv.proc.stdin is not None
    srv.proc.stdin.write("".join(json.dumps(m) + "\n" for m in lines[:1]))
    srv.proc.stdin.flush()
    time.sleep(0.5)
    client = RawClient(srv.port)
    subscribe(client, ["book.PIPE-X"])
    checker = StreamChecker()
    srv.proc.stdin.write("".join(json.dumps(m) + "\n" for m in lines[1:]))
    srv.proc.stdin.flush()
    stream(client, checker, 1.0)
    assert book_of(checker, "PIPE-X") == feeder.book()
    assert checker.deltas >= 1 and checker.updates > 100


def _start_with_stdin(srv: ServerProcess) -> ServerProcess:
    """Start ``srv`` with a pipe on its standard input (ServerProcess has none)."""
    import re
    import subprocess

    cmd = [sys.executable, "-m", "tickwire", "serve", "--host", "127.0.0.1", "--port", "0"]
    srv.proc = subprocess.Popen(
        [*cmd, "--max-seconds", "60", *srv.args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert srv.proc.stdout is not None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        line = srv.proc.stdout.readline()
        m = re.search(r"on ws://127\.0\.0\.1:(\d+)/ws \(epoch (\S+)\)", line)
        if m:
            srv.port, srv.epoch = int(m.group(1)), m.group(2)
            return srv
        if not line and srv.proc.poll() is not None:
            break
    raise RuntimeError("serve --source - did not start")


def test_through_the_leader_a_fault_makes_every_gateway_stop_and_resnapshot(
    nats_server: NatsServer, procs: list[Any], aio: Loop
) -> None:
    """publish --ingest: a rejected message makes the symbol stale on the bus (named in
    the heartbeats); two gateways stop serving it, then resnapshot at the same seq."""
    url = nats_server.url
    ingest_publisher(url, procs, "--ingest-silent-after", "30")
    (f,) = feeders(aio, url, [("LEAD-X", "l2")])
    aio.run(f.publish(f.snapshot()))
    gws = []
    for _ in range(2):
        gw = ServerProcess(["--source", url, "--admin-port", "off"]).start(timeout=30)
        procs.append(gw)
        gws.append(gw)
    clients = [RawClient(gw.port) for gw in gws]
    checkers = [StreamChecker() for _ in gws]
    for c in clients:
        subscribe(c, ["book.LEAD-X"])
    aio.run(_pump(f, 30))
    for c, k in zip(clients, checkers, strict=True):
        stream(c, k, 0.3)
    f.answer = False  # no snapshot replies for now: the symbol stays stale
    f.seq += 1
    aio.run(f.publish(f.next_message(2)))  # a gap
    time.sleep(0.3)
    aio.run(_pump(f, 10))
    # Stale everywhere: nothing but silence (no delta, no heartbeat vouching for a seq).
    for c, k in zip(clients, checkers, strict=True):
        stream(c, k, 0.3)
        assert stream(c, k, 1.2) == []
    f.answer = True
    heals = [until(c, k, "book.LEAD-X", 5.0) for c, k in zip(clients, checkers, strict=True)]
    assert heals[0]["seq"] == heals[1]["seq"] and heals[0]["checksum"] == heals[1]["checksum"]
    assert all(h["resumed"] is False for h in heals)
    aio.run(_pump(f, 20))
    for c, k in zip(clients, checkers, strict=True):
        stream(c, k, 0.5)
        assert book_of(k, "LEAD-X") == f.book()


def test_a_nodejs_feeder_streams_an_l3_book_that_a_client_verifies(procs: list[Any]) -> None:
    """examples/ingest/feeder.js (the `nats` npm package) -> serve --source ingest+nats://."""
    import shutil
    import subprocess

    node = shutil.which("node")
    here = Path(__file__).resolve().parent.parent / "examples" / "ingest"
    if node is None:
        pytest.skip("node is not installed")
    if not (here / "node_modules" / "nats").exists():
        npm = shutil.which("npm")
        done = (
            subprocess.run(
                [npm, "install", "--no-audit", "--no-fund"],
                cwd=here,
                capture_output=True,
                timeout=120,
            )
            if npm
            else None
        )
        if done is None or done.returncode != 0:
            pytest.skip("cannot install the nats npm package (make test installs it)")
    nats_srv = NatsServer().start()
    try:
        gw = ServerProcess(
            ["--source", f"ingest+{nats_srv.url}", "--symbols", "NODE-X", "--admin-port", "off"]
        ).start(timeout=30)
        procs.append(gw)
        client = RawClient(gw.port)
        subscribe(client, ["book.NODE-X", "trades.NODE-X"])
        feeder = subprocess.Popen(
            [node, str(here / "feeder.js"), "--nats", nats_srv.url, "--symbol", "NODE-X"]
            + ["--messages", "300", "--rate", "300"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        checker = StreamChecker()
        stream(client, checker, 2.0)
        out, err = feeder.communicate(timeout=30)
        assert feeder.returncode == 0, err
        stream(client, checker, 0.5)
        report = json.loads(out.strip().splitlines()[-1])
        expected = {
            side: {Decimal(p): Decimal(q) for p, q in levels}
            for side, levels in report["book"].items()
        }
        assert book_of(checker, "NODE-X") == expected
        assert checker.updates > 500 and checker.trades > 0
    finally:
        nats_srv.stop()


def test_a_snapshot_reply_racing_the_stream_is_not_a_gap() -> None:
    """A reply travels apart from the stream: ahead of or behind a live book, it is
    ignored (the stream shows real gaps); at the book's seq it is checked."""
    feed = IngestFeed()
    feed.receive("X", snap(seq=10), 0.0)
    actions(feed)
    feed.receive("X", snap(seq=12), 0.1, reply=True)
    feed.receive("X", snap(seq=8), 0.1, reply=True)
    assert actions(feed) == [] and sum(feed.rejected.values()) == 0
    feed.receive("X", upd(11, [["bid", "98", "1"]]), 0.2)
    assert isinstance(actions(feed)[0], Publish)


def test_messages_held_for_a_snapshot_are_bounded_and_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tickwire import ingest

    monkeypatch.setattr(ingest, "MAX_BUFFERED", 5)
    feed = IngestFeed()
    for seq in range(1, 9):
        feed.receive("X", upd(seq, [["bid", "98", "1"]]), 0.0)
    assert len(feed.feeds["X"].buffer) == 5 and feed.rejected["overflow"] == 3
    feed.receive("X", snap(seq=3), 0.0)  # 4..8 held: everything after it applies
    out = actions(feed)
    assert isinstance(out[0], Load) and len(out) == 6 and feed.feeds["X"].seq == 8


def test_ndjson_lines_skips_a_line_too_long(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tickwire.sources import ingest as source

    monkeypatch.setattr(source, "MAX_LINE_BYTES", 100)
    path = tmp_path / "feed.ndjson"
    path.write_bytes(b"first\n" + b"x" * 1000 + b"\nlast\nno newline")

    async def read() -> list[bytes]:
        return [line async for line in source.ndjson_lines(str(path), chunk=64)]

    assert asyncio.run(read()) == [b"first", b"last", b"no newline"]


def test_an_ingested_symbol_is_served_in_the_binance_dialect_too(
    nats_server: NatsServer, procs: list[Any], aio: Loop
) -> None:
    """A venue client (Binance diff stream + REST snapshot, U/u chained) keeps the same
    book as the source: the dialects tap the hub like any symbol, added at run time."""
    import websockets

    url = nats_server.url
    admin = free_port()
    gw = ServerProcess(["--source", f"ingest+{url}", "--admin-port", str(admin)]).start(30)
    procs.append(gw)
    (f,) = feeders(aio, url, [("ING-USDT", "l3")])
    aio.run(f.publish(f.snapshot()))
    time.sleep(0.3)
    pump = aio.spawn(_pump(f, 150, bundle=3, period=0.005))

    async def binance() -> dict[str, dict[Decimal, Decimal]]:
        book: dict[str, dict[Decimal, Decimal]] = {"bid": {}, "ask": {}}
        ws_url = f"ws://127.0.0.1:{gw.port}/binance/ws/ingusdt@depth@100ms"
        async with websockets.connect(ws_url) as ws:
            events = [json.loads(await asyncio.wait_for(ws.recv(), 5)) for _ in range(2)]
            rest = f"http://127.0.0.1:{admin}/binance/api/v3/depth?symbol=INGUSDT&limit=1000"
            snap = json.loads(await asyncio.to_thread(lambda: urllib.request.urlopen(rest).read()))
            last = snap["lastUpdateId"]
            for side, key in (("bid", "bids"), ("ask", "asks")):
                book[side] = {Decimal(p): Decimal(q) for p, q in snap[key]}
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                if not events:
                    try:
                        events.append(json.loads(await asyncio.wait_for(ws.recv(), 1.5)))
                    except TimeoutError:
                        break  # the source stopped: the stream is quiet
                ev = events.pop(0)
                if ev["u"] <= last:
                    continue
                assert ev["U"] <= last + 1 <= ev["u"], (ev["U"], ev["u"], last)
                for side, key in (("bid", "b"), ("ask", "a")):
                    for p, q in ev[key]:
                        if Decimal(q):
                            book[side][Decimal(p)] = Decimal(q)
                        else:
                            book[side].pop(Decimal(p), None)
                last = ev["u"]
        return book

    book = asyncio.run(binance())
    pump.result(30)
    assert book == f.book()


def test_a_follower_of_all_symbols_adds_them_and_obeys_the_leaders_stale_list() -> None:
    """Sans-I/O: BusFollower(follow_all) on a real Hub, fed a leader's bus messages."""
    from tickwire.engine import Engine
    from tickwire.hub import Hub
    from tickwire.protocol import BookUpdate
    from tickwire.sources.bus import BusFollower, BusHeartbeat, BusState, FollowState, leader_batch

    leader = Engine(["NEW"], epoch="e1")
    leader_batch(leader, "NEW", [BookUpdate("bid", "99", "1", TS)], [])
    hub = Hub(Engine([]))
    follower = BusFollower(hub, follow_all=True)
    follower.message(BusHeartbeat("e1", {"NEW": (1, 0)}))
    assert "book.NEW" in hub.channels and hub.channels["book.NEW"].stale
    assert follower.state["NEW"] is FollowState.RECOVERING and "NEW" in follower.requests
    follower.message(BusState(leader.export("NEW")))
    assert not hub.channels["book.NEW"].stale and hub.channels["book.NEW"].seq == 1
    assert follower.state["NEW"] is FollowState.LIVE and "NEW" not in hub.incomplete
    # The leader's source is being recovered: named stale, the follower stops serving.
    follower.message(BusHeartbeat("e1", {"NEW": (1, 0)}, ["NEW"]))
    assert hub.channels["book.NEW"].stale and follower.state["NEW"] is FollowState.RECOVERING
    assert "NEW" not in follower.requests  # the leader would not answer
    # Healed: the leader's state one seq past, in stream.
    leader.restore(msgspec.structs.replace(leader.export("NEW"), book_seq=2, bids=[("98", "3")]))
    follower.message(BusState(leader.export("NEW")))
    assert not hub.channels["book.NEW"].stale and hub.channels["book.NEW"].seq == 2
    assert hub.engine.symbols["NEW"].book.bids() == [("98", "3")]
    # A follower of named symbols ignores the others.
    named = BusFollower(Hub(Engine(["A"])))
    named.message(BusHeartbeat("e1", {"A": (0, 0), "NEW": (2, 0)}))
    assert "NEW" not in named.state


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(_message, st.binary(max_size=30)), max_size=25))
def test_fuzz_through_a_real_hub_the_served_book_is_the_validated_one(messages: list[Any]) -> None:
    """The source's actions applied to a real Hub (as the tick loop does): nothing
    raises, and a live symbol's served book is the one the feed validated."""
    from tickwire.engine import Engine
    from tickwire.hub import Hub
    from tickwire.sources.ingest import StreamIngestSource

    async def nothing() -> Any:
        yield b""

    hub = Hub(Engine([]))
    source = StreamIngestSource(nothing())
    source._attach(hub)
    for i, item in enumerate(messages):
        if isinstance(item, bytes):
            data = item
        else:
            body = {"v": 1, "symbol": "X", "ts": TS, **item} if isinstance(item, dict) else item
            data = json.dumps(body).encode()
        source._queue(None, data, False)
        for symbol, updates, trades in source.poll(float(i)):
            hub.publish(symbol, updates, trades)
            hub.flush_symbol(symbol, float(i))
        hub.flush(float(i))
        x = source.feed.feeds.get("X")
        if x is not None and x.state == "live":
            assert not hub.channels["book.X"].stale
            assert hub.engine.symbols["X"].book == x.book
        elif x is not None and "book.X" in hub.channels:
            assert hub.channels["book.X"].stale


def test_a_source_status_reaches_clients_in_tickers_directly_and_behind_a_leader() -> None:
    """Sans-I/O: a ``status`` message is carried by every ticker of the symbol (the
    snapshot's and the next one), from a gateway that takes the protocol itself and
    from a gateway following ``publish --ingest`` over the bus."""
    from test_hub import Recorder
    from tickwire.engine import Engine
    from tickwire.hub import Hub
    from tickwire.protocol import Snapshot, Ticker
    from tickwire.publisher import BusSink
    from tickwire.sources import Sink
    from tickwire.sources.bus import BusFollower, decode_bus
    from tickwire.sources.ingest import StreamIngestSource

    async def nothing() -> Any:
        yield b""

    def source_of(sink: Sink) -> StreamIngestSource:
        source = StreamIngestSource(nothing())
        source._attach(sink)
        return source

    def run(source: StreamIngestSource, data: bytes, now: float) -> None:
        source._queue(None, data, False)
        assert list(source.poll(now)) == []  # relayed

    def status(value: str) -> bytes:
        return json.dumps({"v": 1, "type": "status", "symbol": "X", "status": value}).encode()

    # One gateway takes the protocol (serve --source ingest+nats://).
    hub = Hub(Engine([]), ticker_interval=0.0)
    src = source_of(hub)
    run(src, status("halted"), 0.0)  # before the first snapshot: kept for it
    run(src, snap(), 0.1)
    sub = Recorder()
    hub.subscribe(sub, hub.channel("ticker.X"))
    [first] = sub.drain()
    assert isinstance(first, Snapshot) and isinstance(first.ticker, Ticker)
    assert first.ticker.status == "halted"
    run(src, status("open"), 0.2)
    hub.flush(0.3)
    [tick] = sub.drain()
    assert isinstance(tick, Ticker) and tick.status == "open" and tick.bid == "99.5"
    run(src, upd(11, [["bid", "99.75", "1"]]), 0.4)  # batches keep it
    hub.flush(0.5)
    [tick] = [m for m in sub.drain() if isinstance(m, Ticker)]
    assert tick.status == "open" and tick.bid == "99.75"

    # Behind a leader: the publisher sends its state in stream, followers' tickers carry it.
    sink = BusSink(Engine([], epoch="e1"), "tickwire")
    lead = source_of(sink)
    gateway = Hub(Engine([]), ticker_interval=0.0)
    follower = BusFollower(gateway, follow_all=True)

    def ship(now: float) -> None:
        out, sink.out = sink.out, []
        for data in [*out, sink.heartbeat()]:
            follower.message(decode_bus(data))
        for symbol, updates, trades in follower.hand_over(now):
            gateway.publish(symbol, updates, trades)
        gateway.flush(now)

    run(lead, snap(), 0.0)
    ship(0.0)
    sub = Recorder()
    gateway.subscribe(sub, gateway.channel("ticker.X"))
    [first] = sub.drain()
    assert isinstance(first, Snapshot) and isinstance(first.ticker, Ticker)
    assert first.ticker.status is None  # the source said nothing yet
    run(lead, status("halted"), 0.1)
    ship(0.2)
    [tick] = [m for m in sub.drain() if isinstance(m, Ticker)]
    assert tick.status == "halted" and tick.bid == "99.5"
    run(lead, upd(11, [["ask", "100.25", "2"]]), 0.3)
    ship(0.4)
    [tick] = [m for m in sub.drain() if isinstance(m, Ticker)]
    assert tick.status == "halted" and tick.ask == "100.25"
