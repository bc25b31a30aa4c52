"""Scaling out through NATS: the follower (Sans-I/O) and real gateways on a real bus.

The Sans-I/O half drives a real :class:`~tickwire.hub.Hub` through the
:class:`~tickwire.sources.bus.BusFollower` with hand-made bus messages: gaps, duplicates,
lost connections, new epochs, and a resume inside a batched message. The I/O half runs a
real ``nats-server``, ``tickwire publish`` and ``tickwire serve --source nats://``
processes, and real WebSocket clients verifying every message (chain and checksum).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import msgspec
import pytest

from helpers import RawClient, ServerProcess, StreamChecker, frame_payload, parse_server_frames
from nats_helpers import NatsServer, Proc, publisher, stream, subscribe
from tickwire import engine as engine_module
from tickwire.engine import Engine
from tickwire.exceptions import ConfigError
from tickwire.hub import Channel, Hub, SubscriptionStats
from tickwire.pacing import MAX_PASS_SHARE, MAX_SPACING_TICKS, QUIET_TICKS, ArrivalPacing
from tickwire.protocol import BookUpdate, Delta, Message, Snapshot, Trades, decode_message
from tickwire.server.config import GatewayConfig
from tickwire.server.connection import Connection
from tickwire.server.gateway import Gateway
from tickwire.simulator import MarketSimulator
from tickwire.sources.bus import (
    MAX_BUNDLE_BYTES,
    BusBatch,
    BusBundle,
    BusFollower,
    BusHeartbeat,
    BusState,
    FollowState,
    bundles,
    decode_bus,
    encode_bus,
    leader_batch,
)

EPOCH = "leader-1"
TS = 1_700_000_000_000_000_000


class Recorder:
    """A hub subscriber that queues frames (like a multi-channel connection)."""

    def __init__(self) -> None:
        self.outbox: list[bytes] = []
        self.channels: dict[str, Channel] = {}
        self.slow: dict[str, SubscriptionStats] = {}
        self.deliver: Callable[[bytes], object] | None = None

    def drain(self) -> list[Message]:
        """Decode every message queued so far (a write may carry several frames)."""
        writes, self.outbox = self.outbox, []
        buf = bytearray(b"".join(writes))
        messages = [decode_message(payload) for _, _, payload in parse_server_frames(buf)]
        assert not buf, "a partial frame"
        return messages


def market(n_ticks: int, symbols: tuple[str, ...] = ("AAA",)) -> list[BusBatch]:
    """Simulator flow numbered by a leader engine, as the publisher sends it."""
    sim = MarketSimulator(list(symbols), rate=20_000, seed=5)
    sim.clock = iter(range(TS, TS + 10**9)).__next__
    leader = Engine(symbols, epoch=EPOCH)
    out: list[BusBatch] = []

    def number(symbol: str, updates: list[BookUpdate], trades: list[Any]) -> None:
        out.append(leader_batch(leader, symbol, updates, trades))

    for batch in sim.seed_books():
        number(*batch)
    sim.due(0.0)
    for i in range(1, n_ticks + 1):
        for batch in sim.generate(sim.due(i / 1000)):
            number(*batch)
    market.leader = leader  # type: ignore[attr-defined]
    return out


def follow(symbols: tuple[str, ...] = ("AAA",)) -> tuple[Hub, BusFollower]:
    hub = Hub(Engine(symbols))
    return hub, BusFollower(hub)


def pump(hub: Hub, follower: BusFollower, now: float = 1.0) -> None:
    """What NatsSource.poll and the tick loop do with the follower's output."""
    for symbol, updates, trades in follower.hand_over(now):
        hub.publish(symbol, updates, trades)
    hub.flush(now)


def leader_snapshot(batches: list[BusBatch], upto: int) -> Any:
    """The leader's StateSnapshot after ``batches[:upto]``."""
    leader = Engine(("AAA",), epoch=EPOCH)
    for b in batches[:upto]:
        leader.apply_book(b.symbol, b.book_updates())
        leader.apply_trades(b.symbol, b.raw_trades())
    return leader.export("AAA")


# -- Sans-I/O ------------------------------------------------------------------------------


def test_follower_adopts_leader_numbering_and_epoch() -> None:
    batches = market(30)
    hub, follower = follow()
    follower.snapshot(leader_snapshot(batches, 1))
    assert hub.engine.epoch == EPOCH and follower.state["AAA"] is FollowState.LIVE
    assert not hub.incomplete
    for b in batches[1:]:
        follower.message(b)
    pump(hub, follower)
    leader = leader_snapshot(batches, len(batches))
    assert hub.engine.export("AAA") == leader
    assert hub.channel("book.AAA").seq == leader.book_seq > 100


def test_gap_invalidates_then_snapshot_restores_and_resnapshots() -> None:
    batches = market(40)
    hub, follower = follow()
    follower.snapshot(leader_snapshot(batches, 1))
    sub = Recorder()
    hub.subscribe(sub, hub.channel("book.AAA"))
    hub.subscribe(sub, hub.channel("trades.AAA"))
    for b in batches[1:10]:
        follower.message(b)
    pump(hub, follower)
    sub.drain()
    # Batch 10 is lost on the bus: 11 does not chain.
    follower.message(batches[11])
    assert follower.state["AAA"] is FollowState.RECOVERING and "AAA" in follower.requests
    assert "AAA" in hub.incomplete and hub.channel("book.AAA").stale
    for b in batches[12:20]:
        follower.message(b)
    pump(hub, follower, 1.0)
    hub.heartbeats(100.0)
    assert sub.drain() == [], "a stale book sends nothing, not even heartbeats"
    # A late subscriber waits instead of getting an incomplete book.
    late = Recorder()
    hub.subscribe(late, hub.channel("book.AAA"))
    hub.flush(2.0)
    assert late.drain() == []
    # The snapshot is taken after batch 15; buffered 11..15 are duplicates, 16.. chain.
    snap = leader_snapshot(batches, 16)
    follower.snapshot(snap)
    pump(hub, follower, 3.0)
    msgs = sub.drain()
    assert isinstance(msgs[0], Snapshot) and msgs[0].seq == snap.book_seq
    assert msgs[0].resumed is False
    trades_snap = [m for m in msgs if isinstance(m, Snapshot) and m.ch == "trades.AAA"]
    assert trades_snap and trades_snap[0].seq == snap.trade_seq
    deltas = [m for m in msgs if isinstance(m, Delta)]
    assert deltas and deltas[0].prev_seq == snap.book_seq
    assert deltas[-1].seq == leader_snapshot(batches, 20).book_seq
    [late_snap] = late.drain()
    assert isinstance(late_snap, Snapshot) and late_snap.seq == deltas[-1].seq
    for b in batches[20:]:
        follower.message(b)
    pump(hub, follower, 4.0)
    assert hub.engine.export("AAA") == leader_snapshot(batches, len(batches))
    assert follower.gaps == 1 and follower.duplicates == 5 and not hub.incomplete


def test_history_is_not_replayed_across_a_hole() -> None:
    batches = market(40)
    hub, follower = follow()
    follower.snapshot(leader_snapshot(batches, 1))
    for b in batches[1:10]:
        follower.message(b)
        pump(hub, follower)
    before = hub.channel("book.AAA").seq
    follower.message(batches[12])
    follower.snapshot(leader_snapshot(batches, 12))
    for b in batches[12:20]:
        follower.message(b)
        pump(hub, follower)
    sub = Recorder()
    hub.subscribe(sub, hub.channel("book.AAA"), EPOCH, before - 3)
    [msg] = sub.drain()
    assert isinstance(msg, Snapshot) and msg.resumed is False


def test_lost_connection_suspends_then_an_intact_chain_continues_without_snapshot() -> None:
    batches = market(30)
    hub, follower = follow()
    follower.snapshot(leader_snapshot(batches, 1))
    sub = Recorder()
    hub.subscribe(sub, hub.channel("book.AAA"))
    for b in batches[1:5]:
        follower.message(b)
    pump(hub, follower)
    sub.drain()
    follower.disconnected()
    assert "AAA" in hub.incomplete and follower.state["AAA"] is FollowState.SUSPECT
    hub.heartbeats(100.0)
    assert sub.drain() == []
    # Reconnected and nothing was lost: the next batch chains.
    follower.message(batches[5])
    pump(hub, follower, 101.0)
    [delta] = sub.drain()
    assert isinstance(delta, Delta) and not hub.incomplete
    # Lost again, and this time a heartbeat shows the leader moved on: recover.
    follower.disconnected()
    st = leader_snapshot(batches, 8)
    follower.message(BusHeartbeat(EPOCH, {"AAA": (st.book_seq, st.trade_seq)}))
    assert follower.state["AAA"] is FollowState.RECOVERING and follower.gaps == 1
    # A heartbeat that matches revalidates a suspect symbol.
    hub2, follower2 = follow()
    follower2.snapshot(leader_snapshot(batches, 3))
    follower2.disconnected()
    st = leader_snapshot(batches, 3)
    follower2.message(BusHeartbeat(EPOCH, {"AAA": (st.book_seq, st.trade_seq)}))
    assert follower2.state["AAA"] is FollowState.LIVE and not hub2.incomplete


def test_new_epoch_resets_and_resnapshots_in_that_epoch() -> None:
    batches = market(10)
    hub, follower = follow()
    follower.snapshot(leader_snapshot(batches, 1))
    sub = Recorder()
    hub.subscribe(sub, hub.channel("book.AAA"))
    sub.drain()
    leader2 = Engine(("AAA",), epoch="leader-2")
    fresh = leader_batch(leader2, "AAA", batches[0].book_updates()[:2], [])
    follower.message(fresh)
    assert hub.engine.epoch == "leader-2" and follower.epoch_changes == 1
    assert hub.channel("book.AAA").stale and "AAA" in follower.requests
    # A reply from the old epoch is ignored (asked again); the new one restores.
    follower.requests.clear()
    follower.snapshot(leader_snapshot(batches, 1))
    assert follower.state["AAA"] is FollowState.RECOVERING and "AAA" in follower.requests
    new = Engine(("AAA",), epoch="leader-2")
    new.apply_book("AAA", batches[0].book_updates()[:2])
    follower.snapshot(new.export("AAA"))
    pump(hub, follower)
    [snap] = sub.drain()
    assert isinstance(snap, Snapshot) and snap.epoch == "leader-2" and snap.seq == 2


def test_resume_inside_a_batched_message_splits_it() -> None:
    """Gateway A sent (p, s] as two messages, this hub as one: resume from the middle."""
    hub = Hub(Engine(("AAA",), epoch=EPOCH))
    batches = market(20)
    for b in batches[:6]:
        hub.publish(b.symbol, b.book_updates(), b.raw_trades())
    hub.flush(1.0)
    for b in batches[6:12]:
        hub.publish(b.symbol, b.book_updates(), b.raw_trades())
    hub.flush(2.0)
    book = hub.channel("book.AAA")
    trades = hub.channel("trades.AAA")
    (p1, s1, _), (p2, s2, _) = book.history
    assert s1 == p2 and s2 - p2 > 3
    since = p2 + 2
    # The client was exact at ``since``: rebuild its book from the leader's numbering.
    checker = StreamChecker()
    leader = Engine(("AAA",), epoch=EPOCH)
    done = 0
    for b in batches:
        if leader.symbols["AAA"].book_seq + len(b.book_updates()) > since:
            break
        leader.apply_book("AAA", b.book_updates())
        done += 1
    cut = since - leader.symbols["AAA"].book_seq
    leader.apply_book("AAA", batches[done].book_updates()[:cut])
    snap = leader.export("AAA")
    checker.apply(
        {
            "type": "snapshot",
            "ch": "book.AAA",
            "seq": since,
            "bids": snap.bids,
            "asks": snap.asks,
            "checksum": leader.symbols["AAA"].book.checksum(),
        }
    )
    sub = Recorder()
    assert hub.subscribe(sub, book, EPOCH, since) is True
    msgs = sub.drain()
    assert isinstance(msgs[0], Delta) and msgs[0].prev_seq == since and msgs[0].seq == s2
    import msgspec

    for m in msgs:
        checker.apply(msgspec.to_builtins(m))
    assert checker.seq["book.AAA"] == book.seq
    # Trades: ids are seqs, so any id inside a message is a valid resume point.
    batched = [h for h in trades.history if h[1] - h[0] >= 2]
    assert batched, "no trades message with 2 or more trades: the case was not exercised"
    tp, _, _ = batched[0]
    tsub = Recorder()
    assert hub.subscribe(tsub, trades, EPOCH, tp + 1) is True
    first = tsub.drain()[0]
    assert isinstance(first, Trades) and first.prev_seq == tp + 1
    assert [t.id for t in first.trades][0] == tp + 2


def test_relayed_messages_are_byte_identical_to_the_ones_a_gateway_builds() -> None:
    batches = market(80)
    hubs, followers, subs = [], [], []
    for _ in range(2):
        hub, follower = follow()
        follower.snapshot(leader_snapshot(batches, 1))
        sub = Recorder()
        for name in ("book.AAA", "trades.AAA", "ticker.AAA"):
            hub.subscribe(sub, hub.channel(name))
        sub.outbox.clear()
        hubs.append(hub)
        followers.append(follower)
        subs.append(sub)
    relayed, rebuilt = hubs
    # The second hub refuses to relay: the follower hands it every batch to publish,
    # so it decodes, applies and encodes them itself.
    rebuilt.relay = lambda batches, now: False  # type: ignore[method-assign]
    for i, b in enumerate(batches[1:], start=1):
        followers[0].message(b)
        followers[1].message(b)
        for hub, follower in zip(hubs, followers, strict=True):
            pump(hub, follower, i * 0.05)
    # The relaying hub never applied a batch: its state is all deferred...
    state = relayed.engine.symbols["AAA"]
    assert len(state.deferred) == len(batches) - 1
    assert rebuilt.engine.symbols["AAA"].deferred == []
    # ...and yet every frame (deltas, trades, tickers) is the same, byte for byte.
    frames = [sub.outbox for sub in subs]
    kinds = {type(decode_message(frame_payload(f))).__name__ for f in frames[0]}
    assert kinds == {"Delta", "Trades", "Ticker"}
    assert frames[0] == frames[1] and len(frames[0]) > 100
    # Reading the book settles it: snapshots and exports equal the leader's.
    leader = leader_snapshot(batches, len(batches))
    assert relayed.engine.export("AAA") == leader == rebuilt.engine.export("AAA")
    assert state.deferred == []
    late = [Recorder(), Recorder()]
    for hub, sub in zip(hubs, late, strict=True):
        hub.subscribe(sub, hub.channel("book.AAA"))
        hub.subscribe(sub, hub.channel("trades.AAA"))
    assert late[0].outbox == late[1].outbox and len(late[0].outbox) == 2


def test_in_stream_state_replaces_deferred_batches_and_heals_a_hole() -> None:
    batches = market(60)
    hub, follower = follow()
    follower.snapshot(leader_snapshot(batches, 1))
    sub = Recorder()
    hub.subscribe(sub, hub.channel("book.AAA"))
    for b in batches[1:20]:
        follower.message(b)
    pump(hub, follower)
    state = hub.engine.symbols["AAA"]
    assert len(state.deferred) == 19
    # A state at our seqs: nothing deferred needs applying any more.
    follower.message(BusState(leader_snapshot(batches, 20)))
    pump(hub, follower)
    assert state.deferred == [] and state.base is not None
    # One older than our seqs is ignored.
    follower.message(BusState(leader_snapshot(batches, 10)))
    pump(hub, follower)
    assert state.base is not None and state.base.book_seq == leader_snapshot(batches, 20).book_seq
    for b in batches[20:30]:
        follower.message(b)
    pump(hub, follower)
    assert hub.engine.export("AAA") == leader_snapshot(batches, 30)
    sub.drain()
    # Batch 30 is lost: 31 exposes the hole; the next in-stream state heals it without
    # a snapshot request.
    for b in batches[31:35]:
        follower.message(b)
    assert follower.state["AAA"] is FollowState.RECOVERING and "AAA" in follower.requests
    follower.message(BusState(leader_snapshot(batches, 33)))
    assert follower.state["AAA"] is FollowState.LIVE and not follower.requests
    pump(hub, follower)
    msgs = sub.drain()
    assert isinstance(msgs[0], Snapshot) and msgs[0].resumed is False
    assert msgs[0].seq == leader_snapshot(batches, 33).book_seq
    # The buffered batch 33 was replayed after the state, and chains.
    assert isinstance(msgs[1], Delta) and msgs[1].prev_seq == msgs[0].seq
    assert msgs[-1].seq == leader_snapshot(batches, 35).book_seq  # type: ignore[union-attr]
    assert hub.engine.export("AAA") == leader_snapshot(batches, 35)


def test_deferred_batches_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_module, "MAX_DEFERRED", 8)
    batches = market(40)
    hub, follower = follow()
    follower.snapshot(leader_snapshot(batches, 1))
    for b in batches[1:]:
        follower.message(b)
        pump(hub, follower)
        assert len(hub.engine.symbols["AAA"].deferred) <= 8
    assert hub.engine.export("AAA") == leader_snapshot(batches, len(batches))


def test_bundles_keep_order_and_stay_under_the_size_limit() -> None:
    payloads = [encode_bus(b) for b in market(400)]
    assert sum(map(len, payloads)) > 2 * MAX_BUNDLE_BYTES
    out = bundles(payloads)
    assert len(out) >= 3
    assert all(len(p) <= MAX_BUNDLE_BYTES + max(map(len, payloads)) for p in out)
    unpacked = []
    for p in out:
        bundle = decode_bus(p)
        assert isinstance(bundle, BusBundle)
        unpacked.extend(bytes(m) for m in bundle.messages)
    assert unpacked == payloads


def test_a_bad_message_in_a_bundle_is_skipped_and_the_rest_taken() -> None:
    batches = market(4)
    hub, follower = follow()
    follower.snapshot(leader_snapshot(batches, 1))
    # Valid msgpack, not bus messages (an undecodable byte would spoil the whole bundle,
    # which the source then drops as one bad message).
    unknown_tag = msgspec.msgpack.encode(["zz", 1])
    wrong_schema = msgspec.msgpack.encode(["b", EPOCH, "AAA", [1, 2]])
    bundle = bundles([encode_bus(batches[1]), unknown_tag, wrong_schema, encode_bus(batches[2])])
    assert len(bundle) == 1
    follower.message(decode_bus(bundle[0]))
    assert follower.bad_messages == 2
    assert follower.expected["AAA"] == (batches[2].book, batches[2].trade)
    assert follower.state["AAA"] is FollowState.LIVE


def test_resume_ahead_waits_for_the_bus() -> None:
    hub = Hub(Engine(("AAA",), epoch=EPOCH), resume_wait=1.0)
    batches = market(10)
    hub.publish("AAA", batches[0].book_updates(), [])
    hub.flush(0.0)
    ahead = hub.channel("book.AAA").seq + len(batches[1].book_updates())
    sub = Recorder()
    assert hub.subscribe(sub, hub.channel("book.AAA"), EPOCH, ahead) is False
    hub.flush(0.1)
    assert sub.drain() == []
    hub.publish("AAA", batches[1].book_updates(), [])
    hub.publish("AAA", batches[2].book_updates(), [])
    hub.flush(0.2)
    msgs = sub.drain()
    assert isinstance(msgs[0], Delta) and msgs[0].prev_seq == ahead
    # Too far ahead for too long: a snapshot, never a silent hole.
    sub2 = Recorder()
    hub.subscribe(sub2, hub.channel("book.AAA"), EPOCH, hub.channel("book.AAA").seq + 10**6)
    hub.flush(1.0)
    hub.flush(2.5)
    [snap] = sub2.drain()
    assert isinstance(snap, Snapshot) and snap.resumed is False


# -- real processes ------------------------------------------------------------------------


@pytest.fixture
def nats_server() -> Iterator[NatsServer]:
    srv = NatsServer().start()
    yield srv
    srv.stop()


@pytest.fixture
def procs() -> Iterator[list[Any]]:
    """Processes to stop after the test (publishers, gateways)."""
    started: list[Any] = []
    yield started
    for p in reversed(started):
        try:
            p.stop()
        except Exception:
            p.kill()


def gateway(nats_url: str, procs: list[Any], *args: str) -> ServerProcess:
    srv = ServerProcess(
        ["--source", nats_url, "--symbols", "BTC-USD,ETH-USD", "--admin-port", "off", *args]
    ).start(timeout=30)
    procs.append(srv)
    return srv


def pub(nats_url: str, procs: list[Any], *args: str) -> Proc:
    p = publisher(nats_url, "--symbols", "BTC-USD,ETH-USD", "--rate", "400", *args)
    procs.append(p)
    return p


CHANNELS = ["book.BTC-USD", "trades.BTC-USD", "book.ETH-USD"]


def per_update(msgs: list[dict[str, Any]]) -> tuple[dict[tuple[str, int], Any], dict[Any, int]]:
    """Index a stream: (channel, seq) -> update or trade, and message-end seq -> checksum."""
    updates: dict[tuple[str, int], Any] = {}
    checksums: dict[tuple[str, int], int] = {}
    for m in msgs:
        if m["type"] == "delta":
            for i, up in enumerate(m["updates"]):
                updates[(m["ch"], m["prev_seq"] + 1 + i)] = up
            checksums[(m["ch"], m["seq"])] = m["checksum"]
        elif m["type"] == "trades":
            for t in m["trades"]:
                updates[(m["ch"], t["id"])] = t
    return updates, checksums


@pytest.mark.parametrize("pacing", ["pause", "clock"])
def test_a_publisher_paced_either_way_feeds_a_verified_relay(
    nats_server: NatsServer, procs: list[Any], pacing: str
) -> None:
    pub(nats_server.url, procs, "--tick-pacing", pacing)
    client = RawClient(gateway(nats_server.url, procs).port)
    subscribe(client, CHANNELS)
    checker = StreamChecker()
    stream(client, checker, 1.0)
    client.close()
    # Every delta chained and matched its checksum on the way (StreamChecker asserts).
    assert checker.deltas > 20 and checker.updates > 200


def test_publisher_refuses_an_unknown_tick_pacing() -> None:
    from tickwire.publisher import Publisher
    from tickwire.sources.simulated import SimulatorSource

    source = SimulatorSource(MarketSimulator(["A"], 100.0, seed=1))
    with pytest.raises(ConfigError, match="--tick-pacing"):
        Publisher("nats://127.0.0.1:1", ["A"], source, tick_pacing="often")


class _StopLoop(Exception):
    pass


@pytest.mark.parametrize(("pacing", "gap"), [("pause", 0.001), ("clock", 0.0006)])
def test_the_publisher_loop_waits_as_its_pacing_says(
    monkeypatch: pytest.MonkeyPatch, pacing: str, gap: float
) -> None:
    # The publisher's own loop on a fake clock, a pass taking 0.4 ms: "pause" waits
    # the whole 1 ms tick after it, "clock" the 0.6 ms left of the period.
    from types import SimpleNamespace

    from tickwire import publisher as publisher_module
    from tickwire.publisher import Publisher
    from tickwire.sources.simulated import SimulatorSource

    clock = [100.0]
    sleeps: list[float] = []
    source = SimulatorSource(MarketSimulator(["A"], 1000.0, seed=1))
    pub = Publisher("nats://127.0.0.1:1", ["A"], source, tick_pacing=pacing)
    published: list[bytes] = []

    class FakeNats:
        async def publish(self, subject: str, payload: bytes) -> None:
            published.append(payload)

    async def sleep(delay: float) -> None:
        sleeps.append(delay)
        clock[0] += delay
        if len(sleeps) == 8:
            raise _StopLoop

    async def run() -> None:
        await source.start(pub.sink)
        poll = source.poll

        def slow_poll(now: float) -> Any:
            clock[0] += 0.0004
            return poll(now)

        monkeypatch.setattr(source, "poll", slow_poll)
        monkeypatch.setattr(
            publisher_module,
            "time",
            SimpleNamespace(monotonic=lambda: clock[0], time=time.time, time_ns=time.time_ns),
        )
        monkeypatch.setattr(publisher_module, "asyncio", SimpleNamespace(sleep=sleep))
        with pytest.raises(_StopLoop):
            await pub._loop(FakeNats())

    asyncio.run(run())
    assert sleeps[1:] == pytest.approx([gap] * 7, abs=1e-9)
    assert published  # the passes published bundles


def test_two_gateways_on_one_bus_emit_identical_seqs_updates_and_checksums(
    nats_server: NatsServer, procs: list[Any]
) -> None:
    p = pub(nats_server.url, procs)
    a = gateway(nats_server.url, procs)
    b = gateway(nats_server.url, procs)
    epoch = p.match.group(1)  # type: ignore[union-attr]
    assert a.epoch == b.epoch == epoch
    ca, cb = RawClient(a.port), RawClient(b.port)
    subscribe(ca, CHANNELS)
    subscribe(cb, CHANNELS)
    ka, kb = StreamChecker(), StreamChecker()
    ma = stream(ca, ka, 1.5)
    mb = stream(cb, kb, 0.5)
    ua, sa = per_update(ma)
    ub, sb = per_update(mb)
    common = ua.keys() & ub.keys()
    assert len(common) > 100, "the two gateways overlapped too little"
    assert all(ua[k] == ub[k] for k in common)
    shared = sa.keys() & sb.keys()
    assert shared and all(sa[k] == sb[k] for k in shared)
    # The books agree at the same seq: a fresh snapshot from each at the end.
    ca.close()
    cb.close()
    time.sleep(0.2)
    for _ in range(20):
        xa, xb = RawClient(a.port), RawClient(b.port)
        subscribe(xa, ["book.ETH-USD"])
        subscribe(xb, ["book.ETH-USD"])
        sna, snb = xa.recv_json(), xb.recv_json()
        xa.close()
        xb.close()
        if sna["seq"] == snb["seq"]:
            assert sna["bids"] == snb["bids"] and sna["checksum"] == snb["checksum"]
            break
    else:
        pytest.fail("never caught both gateways at the same seq")


def test_client_fails_over_between_gateways_and_resumes_without_snapshot(
    nats_server: NatsServer, procs: list[Any]
) -> None:
    pub(nats_server.url, procs, "--rate", "800")
    gws = [gateway(nats_server.url, procs), gateway(nats_server.url, procs)]
    checker = StreamChecker()
    client = RawClient(gws[0].port)
    ack = subscribe(client, CHANNELS)
    epoch = ack["epoch"]
    stream(client, checker, 0.3)
    snapshots = len(checker.snapshots)
    for hop in range(1, 7):
        client.close()
        since = {ch: checker.seq[ch] for ch in CHANNELS}
        client = RawClient(gws[hop % 2].port)
        ack = subscribe(client, CHANNELS, epoch=epoch, since=since)
        assert ack["epoch"] == epoch
        msgs = stream(client, checker, 0.25)
        assert not any(m["type"] == "snapshot" for m in msgs), f"hop {hop}: resnapshot"
        assert all(checker.seq[ch] > since[ch] for ch in ("book.BTC-USD", "book.ETH-USD"))
    client.close()
    assert len(checker.snapshots) == snapshots and checker.deltas > 50


def test_nats_restart_mid_stream_continuity_or_explicit_snapshot(
    nats_server: NatsServer, procs: list[Any]
) -> None:
    pub(nats_server.url, procs)
    gw = gateway(nats_server.url, procs)
    checker = StreamChecker()
    client = RawClient(gw.port)
    subscribe(client, CHANNELS)
    stream(client, checker, 0.5)
    before = dict(checker.seq)
    nats_server.restart(down=0.7)
    # Every message the client gets chains, or is an explicit snapshot (StreamChecker
    # asserts it); the book must move again within the time bound.
    after: list[dict[str, Any]] = []
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and checker.seq["book.BTC-USD"] <= before["book.BTC-USD"]:
        after += stream(client, checker, 0.5)
    assert checker.seq["book.BTC-USD"] > before["book.BTC-USD"], "the book never recovered"
    after += stream(client, checker, 0.5)
    client.close()
    stats = gw.stop()
    assert stats is not None
    src = stats["source"]
    assert src["disconnects"] >= 1 and src["reconnects"] >= 1
    assert all(state == "live" for state in src["states"].values())
    # Each symbol either proved intact (revalidated: the client saw continuity) or was
    # restored from a snapshot, which its clients received as a snapshot message.
    healed = src["restores"] - 2  # the two at start-up
    assert src["revalidated"] + healed >= 2
    snapshots_after = sum(1 for m in after if m["type"] == "snapshot")
    assert (snapshots_after > 0) == (healed > 0)


def test_publisher_restart_new_epoch_reaches_clients_as_snapshots(
    nats_server: NatsServer, procs: list[Any]
) -> None:
    first = pub(nats_server.url, procs)
    gw = gateway(nats_server.url, procs)
    old_epoch = first.match.group(1)  # type: ignore[union-attr]
    client = RawClient(gw.port)
    subscribe(client, ["book.BTC-USD", "trades.BTC-USD"])
    checker = StreamChecker()
    stream(client, checker, 0.3)
    first.kill()
    second = pub(nats_server.url, procs, "--seed", "7")
    new_epoch = second.match.group(1)  # type: ignore[union-attr]
    assert new_epoch != old_epoch
    epochs: dict[str, str] = {}
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and len(epochs) < 2:
        for m in stream(client, checker, 0.3):
            if m["type"] == "snapshot" and m["epoch"] == new_epoch:
                epochs[m["ch"]] = m["epoch"]
    assert epochs == {"book.BTC-USD": new_epoch, "trades.BTC-USD": new_epoch}
    stream(client, checker, 0.3)
    client.close()
    fresh = RawClient(gw.port)
    assert subscribe(fresh, ["book.ETH-USD"])["epoch"] == new_epoch
    fresh.close()


def test_late_gateway_loads_snapshots_and_serves_the_same_seqs(
    nats_server: NatsServer, procs: list[Any]
) -> None:
    pub(nats_server.url, procs)
    early = gateway(nats_server.url, procs)
    time.sleep(1.0)
    late = gateway(nats_server.url, procs)
    ce, cl = RawClient(early.port), RawClient(late.port)
    subscribe(ce, ["book.BTC-USD"])
    subscribe(cl, ["book.BTC-USD"])
    ke, kl = StreamChecker(), StreamChecker()
    me, ml = stream(ce, ke, 1.0), stream(cl, kl, 0.3)
    assert kl.snapshots["book.BTC-USD"]["seq"] > 300
    ue, se = per_update(me)
    ul, sl = per_update(ml)
    common = ue.keys() & ul.keys()
    assert common and all(ue[k] == ul[k] for k in common)
    ce.close()
    cl.close()


def test_bus_arrivals_end_the_tick_loops_wait(nats_server: NatsServer, procs: list[Any]) -> None:
    # The tick loop's wait is 30 s here; the next bus message must end it.
    pub(nats_server.url, procs)

    async def main() -> tuple[bool, bool]:
        config = GatewayConfig(
            port=0, symbols=["BTC-USD", "ETH-USD"], source=nats_server.url, admin_port=None
        )
        gw = Gateway(config)
        await gw.start()
        try:
            gw._arrived = False  # what start() received is taken; wait for new data
            woken = await asyncio.wait_for(gw._wait_for_tick(30.0), 10.0)
            batches = gw.source.poll(time.monotonic())
            return woken, gw.source.stats()["messages"] > 0 and batches == []
        finally:
            gw.stop()
            await gw._shutdown()
            await gw.source.stop()

    woken, relayed = asyncio.run(main())
    assert woken and relayed


def test_a_reply_wakes_the_tick_loop_only_while_the_clock_is_quiet() -> None:
    # While bus data keeps arriving the clock ticks rarely; a reply queued then must
    # not wait for it. On the embedded simulator's clock a request does not wake it.
    gw = Gateway(GatewayConfig(symbols=["A"], seed=1))
    conn = Connection(gw, 1)
    gw.handle_request(conn, b'{"op":"ping","id":1}')
    assert conn.outbox and not gw._arrived
    gw._quiet = True
    gw.handle_request(conn, b'{"op":"ping","id":2}')
    assert gw._arrived


def test_publisher_stops_on_sigterm_when_the_bus_stops_reading(nats_server: NatsServer) -> None:
    # A frozen nats-server keeps the connection open but reads nothing: nats-py's buffer
    # fills (about 21 MB/s here), every publish waits on a flush, and nats-py's drain()
    # swallows a cancel and then waits forever. SIGTERM must still end the publisher.
    p = publisher(nats_server.url, "--symbols", "10", "--rate", "20000")
    assert nats_server.proc is not None
    try:
        nats_server.proc.send_signal(signal.SIGSTOP)
        assert p.proc is not None
        # Wait for the blocked state itself, not a fixed time: the publisher's loop
        # stops (no CPU, no writes) once nats-py's 64 MiB buffer is full.
        blocked_after = _wait_until_blocked(p.proc.pid, deadline=time.monotonic() + 40)
        assert p.proc.poll() is None
        stderr = p.stop(timeout=10.0)
    finally:
        p.kill()
        nats_server.proc.send_signal(signal.SIGCONT)
    assert blocked_after is not None, "the publisher never blocked on the full buffer"
    stats = json.loads(stderr.strip().splitlines()[-1])
    assert stats["publisher"] == "tickwire"  # its exit stats: run() returned
    # It had filled nats-py's pending buffer (pending_size 64 MiB): the flush wait.
    assert stats["bytes"] > 64 << 20, stats


def _cpu_and_writes(pid: int) -> tuple[float, int]:
    """CPU seconds used and bytes written by a process so far (from /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    with open(f"/proc/{pid}/io") as f:
        wchar = next(int(line.split()[1]) for line in f if line.startswith("wchar:"))
    return cpu, wchar


def _wait_until_blocked(pid: int, deadline: float, window: float = 1.5) -> float | None:
    """Seconds until a process used under 3% of a core and wrote nothing for ``window``."""
    start = time.monotonic()
    before = _cpu_and_writes(pid)
    while time.monotonic() < deadline:
        time.sleep(window)
        now = _cpu_and_writes(pid)
        if now[0] - before[0] < 0.03 * window and now[1] == before[1]:
            return time.monotonic() - start
        before = now
    return None


def test_relayed_passes_are_paced_by_how_long_their_writes_take() -> None:
    pacing = ArrivalPacing(0.001)
    # A short pass: the next one may start a period after it began, and the quiet
    # clock ticks QUIET_TICKS periods after it ended (the loop adds the last period).
    assert pacing.passed(10.0, 10.0002) + 0.001 == pytest.approx(10.0002 + QUIET_TICKS * 0.001)
    assert pacing.earliest() == pytest.approx(10.001)
    # A pass shorter than the period does not slow the pace.
    pacing.passed(10.5, 10.5008)
    assert pacing.earliest() == pytest.approx(10.501)
    # A write-bound pass of 4 ms (1,000 subscribers): at most half the time is spent
    # writing, so the next relayed pass waits until 8 ms after it began.
    assert pacing.passed(11.0, 11.004) + 0.001 == pytest.approx(11.004 + QUIET_TICKS * 0.001)
    assert pacing.earliest() == pytest.approx(11.0 + 0.004 / MAX_PASS_SHARE)
    # A pass slowed by a backlog (or a pause) cannot push the spacing without bound.
    pacing.passed(11.5, 11.6)
    assert pacing.earliest() == pytest.approx(11.5 + MAX_SPACING_TICKS * 0.001)
    # Back to short passes: back to one period.
    pacing.passed(12.0, 12.0001)
    assert pacing.earliest() == pytest.approx(12.001)
