"""The hub without sockets: a recording subscriber sees exactly what a connection would."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
import pytest

from helpers import StreamChecker, frame_payload
from tickwire.book import Book
from tickwire.engine import Engine
from tickwire.exceptions import RequestError
from tickwire.hub import Channel, Hub, SubscriptionStats
from tickwire.protocol import (
    BookUpdate,
    Delta,
    ErrorCode,
    Heartbeat,
    Message,
    Snapshot,
    Ticker,
    Trades,
    decode_message,
    encode,
)
from tickwire.simulator import MarketSimulator

EPOCH = "test-epoch"
TS = 1_700_000_000_000_000_000


class Recorder:
    """A subscriber as the hub sees it: an outbox, its channels and lag telemetry."""

    def __init__(self) -> None:
        self.outbox: list[bytes] = []
        self.channels: dict[str, Channel] = {}
        self.slow: dict[str, SubscriptionStats] = {}
        self.deliver: Callable[[bytes], object] | None = None  # queued, like a multi-channel conn
        self.frames: list[bytes] = []

    def drain(self) -> list[Message]:
        """Take the outbox like the I/O layer's write, decoding each frame."""
        frames, self.outbox = self.outbox, []
        self.frames.extend(frames)
        return [decode_message(frame_payload(f)) for f in frames]

    def drain_dicts(self) -> list[dict[str, Any]]:
        return [msgspec.to_builtins(m) for m in self.drain()]


def make_hub(symbols: tuple[str, ...] = ("AAA", "BBB"), **kw: Any) -> Hub:
    return Hub(Engine(symbols, epoch=EPOCH), **kw)


def u(side: str, price: str, qty: str, ts: int = TS) -> BookUpdate:
    return BookUpdate(side, price, qty, ts)  # type: ignore[arg-type]


def seed(hub: Hub, symbol: str = "AAA") -> None:
    hub.publish(
        symbol,
        [u("bid", "99.00", "1.0000"), u("ask", "101.00", "2.0000"), u("bid", "98.00", "0.0100")],
        [],
    )
    hub.flush(0.0)


def run_market(hub: Hub, ticks: int, *, seed_: int = 3, now: float = 10.0) -> float:
    """Publish simulator flow for ``ticks`` ticks of 1 ms, flushing each; return ``now``."""
    sim = MarketSimulator(list(hub.engine.symbols), rate=20_000, seed=seed_)
    sim.clock = iter(range(TS, TS + 10**9)).__next__
    for symbol, updates, trades in sim.seed_books():
        hub.publish(symbol, updates, trades)
    hub.flush(now)
    sim.due(now)
    for _ in range(ticks):
        now += 0.001
        for symbol, updates, trades in sim.generate(sim.due(now)):
            hub.publish(symbol, updates, trades)
        hub.flush(now)
    return now


# -- subscribe, snapshot, deltas ----------------------------------------------------------


def test_subscribe_sends_snapshot_then_chained_deltas() -> None:
    hub = make_hub()
    seed(hub)
    sub = Recorder()
    ch = hub.channel("book.AAA")
    assert hub.subscribe(sub, ch) is False
    assert hub.dirty == [sub] and sub.channels == {"book.AAA": ch}
    [snap] = sub.drain()
    assert snap == Snapshot(
        "book.AAA",
        3,
        EPOCH,
        bids=[("99.00", "1.0000"), ("98.00", "0.0100")],
        asks=[("101.00", "2.0000")],
        checksum=hub.engine.symbols["AAA"].book.checksum(),
    )
    hub.publish("AAA", [u("ask", "100.50", "0.5000", TS + 1), u("bid", "99.00", "0", TS + 2)], [])
    hub.publish("AAA", [u("ask", "102.00", "1.0000", TS + 3)], [])
    hub.flush(1.0)
    [delta] = sub.drain()
    assert isinstance(delta, Delta)
    assert (delta.prev_seq, delta.seq) == (3, 6)
    assert [(x.side, x.price, x.qty, x.ts) for x in delta.updates] == [
        ("ask", "100.50", "0.5000", TS + 1),
        ("bid", "99.00", "0", TS + 2),
        ("ask", "102.00", "1.0000", TS + 3),
    ]
    book = Book()
    book.load(snap.bids or [], snap.asks or [])
    for x in delta.updates:
        book.apply(x.side, x.price, x.qty)
    assert book == hub.engine.symbols["AAA"].book
    assert delta.checksum == book.checksum()
    # Nothing pending: a flush sends nothing.
    hub.flush(2.0)
    assert sub.drain() == []


def test_other_symbols_and_channels_are_not_delivered() -> None:
    hub = make_hub()
    sub = Recorder()
    hub.subscribe(sub, hub.channel("book.AAA"))
    sub.drain()
    hub.publish("BBB", [u("bid", "1.00", "1")], [("1.00", "1", "buy", TS)])
    hub.flush(1.0)
    assert sub.drain() == []


def test_one_frame_object_shared_by_all_subscribers() -> None:
    hub = make_hub(ticker_interval=1e9)  # only the book message in this tick
    seed(hub)
    subs = [Recorder() for _ in range(5)]
    for s in subs:
        hub.subscribe(s, hub.channel("book.AAA"))
        s.outbox.clear()
    hub.dirty.clear()
    built = hub.messages_built
    hub.publish("AAA", [u("bid", "97.00", "1.0000")], [])
    hub.flush(1.0)
    assert hub.messages_built == built + 1
    frames = [s.outbox[0] for s in subs]
    assert all(f is frames[0] for f in frames)
    assert hub.dirty == subs  # each listed once
    assert hub.channel("book.AAA").history[-1][2] is frames[0]
    assert hub.frames_out >= 5 and hub.updates_out >= 5


def test_dirty_lists_a_subscriber_once_per_write() -> None:
    hub = make_hub()
    sub = Recorder()
    hub.subscribe(sub, hub.channel("book.AAA"))
    hub.subscribe(sub, hub.channel("trades.AAA"))
    hub.publish("AAA", [u("bid", "1.00", "1")], [("1.00", "1", "buy", TS)])
    hub.flush(1.0)
    assert hub.dirty == [sub] and len(sub.outbox) == 4


def test_rebuilt_book_matches_engine_and_every_checksum() -> None:
    hub = make_hub(("AAA", "BBB", "CCC"))
    subs = {name: Recorder() for name in ("book.AAA", "book.BBB", "trades.AAA", "ticker.CCC")}
    for name, s in subs.items():
        hub.subscribe(s, hub.channel(name))
    checker = StreamChecker()
    now = 10.0
    for _ in range(5):
        now = run_market(hub, 40, now=now, seed_=int(now))
        for s in subs.values():
            for msg in s.drain_dicts():
                checker.apply(msg)
    assert checker.deltas > 100 and checker.trades > 10
    for sym in ("AAA", "BBB"):
        assert checker.books[f"book.{sym}"] == hub.engine.symbols[sym].book
        assert checker.seq[f"book.{sym}"] == hub.engine.symbols[sym].book_seq
    assert checker.seq["trades.AAA"] == hub.engine.symbols["AAA"].trade_seq
    assert checker.seq["ticker.CCC"] == hub.channel("ticker.CCC").seq > 0


def test_subscribe_flushes_pending_first_so_snapshot_chains() -> None:
    hub = make_hub()
    seed(hub)
    old = Recorder()
    hub.subscribe(old, hub.channel("book.AAA"))
    old.drain()
    hub.publish("AAA", [u("bid", "97.00", "1.0000")], [])  # pending, not flushed
    new = Recorder()
    hub.subscribe(new, hub.channel("book.AAA"))
    [delta] = old.drain()
    [snap] = new.drain()
    assert isinstance(delta, Delta) and isinstance(snap, Snapshot)
    assert snap.seq == delta.seq == 4 and ("97.00", "1.0000") in (snap.bids or [])
    hub.publish("AAA", [u("bid", "96.00", "1.0000")], [])
    hub.flush(1.0)
    [d_old] = old.drain()
    [d_new] = new.drain()
    assert d_old == d_new and isinstance(d_new, Delta) and d_new.prev_seq == snap.seq


def test_pending_trades_flushed_before_trades_snapshot() -> None:
    hub = make_hub()
    hub.publish("AAA", [], [("1.00", "2", "buy", TS), ("1.01", "1", "sell", TS + 1)])
    sub = Recorder()
    hub.subscribe(sub, hub.channel("trades.AAA"))
    [snap] = sub.drain()
    assert isinstance(snap, Snapshot) and snap.seq == 2 and snap.trades is not None
    assert [t.id for t in snap.trades] == [1, 2]
    hub.publish("AAA", [], [("1.02", "1", "buy", TS + 2)])
    hub.flush(1.0)
    [msg] = sub.drain()
    assert isinstance(msg, Trades) and (msg.prev_seq, msg.seq) == (2, 3)
    assert msg.trades[0].id == 3 and msg.trades[0].side == "buy"


def test_resubscribe_sends_a_fresh_snapshot() -> None:
    hub = make_hub(max_subscriptions=1)
    seed(hub)
    sub = Recorder()
    ch = hub.channel("book.AAA")
    hub.subscribe(sub, ch)
    hub.subscribe(sub, ch)  # at the limit, but the same channel: allowed
    msgs = sub.drain()
    assert [type(m) for m in msgs] == [Snapshot, Snapshot]
    assert list(ch.subscribers) == [sub]


def test_ticker_channel() -> None:
    hub = make_hub(ticker_interval=0.5)
    seed(hub)  # flush at now=0.0 with ticker due: interval not elapsed since 0.0
    sub = Recorder()
    hub.subscribe(sub, hub.channel("ticker.AAA"))
    [snap] = sub.drain()
    assert isinstance(snap, Snapshot) and isinstance(snap.ticker, Ticker)
    assert snap.ticker.bid == "99.00" and snap.ticker.ask == "101.00"
    assert snap.ticker.last is None and snap.ticker.volume == "0"
    hub.publish("AAA", [u("bid", "99.50", "1.0000")], [("101.00", "0.5000", "buy", TS + 5)])
    hub.flush(0.6)
    msgs = sub.drain()
    [tick] = [m for m in msgs if isinstance(m, Ticker)]
    assert (tick.prev_seq, tick.seq) == (snap.seq, snap.seq + 1)
    assert tick.bid == "99.50" and tick.last == "101.00" and tick.trades == 1
    assert tick.ts == TS + 5 and tick.volume == "0.5000"
    # Due again, but within the interval: held back until it elapses.
    hub.publish("AAA", [u("bid", "99.60", "1.0000")], [])
    hub.flush(0.7)
    assert sub.drain() == []
    hub.flush(1.2)
    [tick2] = sub.drain()
    assert isinstance(tick2, Ticker) and tick2.prev_seq == tick.seq and tick2.bid == "99.60"


def test_ticker_snapshot_of_empty_symbol() -> None:
    hub = make_hub()
    sub = Recorder()
    hub.subscribe(sub, hub.channel("ticker.BBB"))
    [snap] = sub.drain()
    assert isinstance(snap, Snapshot) and snap.ticker is not None
    assert snap.ticker.bid is None and snap.ticker.ask is None and snap.ticker.high is None


# -- resume -------------------------------------------------------------------------------


def _collect_until(hub: Hub, sub: Recorder, ticks: int) -> int:
    run_market(hub, ticks)
    checker = StreamChecker()
    for m in sub.drain_dicts():
        checker.apply(m)
    return checker.seq["book.AAA"]


def test_resume_replays_history_without_hole() -> None:
    hub = make_hub()
    live, gone = Recorder(), Recorder()
    ch = hub.channel("book.AAA")
    hub.subscribe(live, ch)
    hub.subscribe(gone, ch)
    seq = _collect_until(hub, gone, 20)
    live_checker = StreamChecker()
    for m in live.drain_dicts():
        live_checker.apply(m)
    hub.drop(gone)
    assert gone.channels == {} and gone not in ch.subscribers
    run_market(hub, 30, now=20.0)
    live_tail = live.drain()
    back = Recorder()
    assert hub.subscribe(back, ch, EPOCH, seq) is True
    replay = back.drain()
    # Exactly the frames the live subscriber got after ``seq``, same bytes.
    assert replay and all(isinstance(m, Delta) for m in replay)
    assert replay == live_tail
    assert back.frames == live.frames[-len(replay) :]
    assert replay[0].prev_seq == seq  # type: ignore[union-attr]
    assert replay[-1].seq == ch.seq  # type: ignore[union-attr]
    for a, b in zip(replay, replay[1:], strict=False):
        assert b.prev_seq == a.seq  # type: ignore[union-attr]
    # The stream continues seamlessly after the replay.
    hub.publish("AAA", [u("bid", "1.00", "1")], [])
    hub.flush(99.0)
    [nxt] = back.drain()
    assert isinstance(nxt, Delta) and nxt.prev_seq == ch.seq - 1


def test_resume_at_current_seq_sends_nothing() -> None:
    hub = make_hub()
    seed(hub)
    ch = hub.channel("book.AAA")
    sub = Recorder()
    hub.dirty.clear()
    assert hub.subscribe(sub, ch, EPOCH, ch.seq) is True
    assert sub.outbox == [] and hub.dirty == [] and sub in ch.subscribers


def test_resume_trades_replays() -> None:
    hub = make_hub()
    ch = hub.channel("trades.AAA")
    hub.publish("AAA", [], [("1.00", "1", "buy", TS)])
    hub.flush(1.0)
    hub.publish("AAA", [], [("1.00", "1", "buy", TS), ("1.01", "1", "sell", TS)])
    hub.flush(2.0)
    sub = Recorder()
    assert hub.subscribe(sub, ch, EPOCH, 1) is True
    [msg] = sub.drain()
    assert isinstance(msg, Trades) and [t.id for t in msg.trades] == [2, 3]


@pytest.mark.parametrize(
    ("epoch", "since"),
    [
        pytest.param("other-epoch", 3, id="stale-epoch"),
        pytest.param(None, 3, id="no-epoch"),
        pytest.param(EPOCH, 10_000, id="since-in-future"),
        pytest.param(EPOCH, -1, id="since-before-history"),
    ],
)
def test_impossible_resume_sends_snapshot_marked_not_resumed(epoch: str | None, since: int) -> None:
    hub = make_hub()
    seed(hub)  # seq 3 in one frame (0, 3]
    hub.publish("AAA", [u("bid", "1.00", "1"), u("bid", "2.00", "1")], [])
    hub.flush(1.0)  # (3, 5]
    sub = Recorder()
    assert hub.subscribe(sub, hub.channel("book.AAA"), epoch, since) is False
    [snap] = sub.drain()
    assert isinstance(snap, Snapshot) and snap.resumed is False and snap.seq == 5


def test_plain_subscribe_snapshot_has_no_resumed_field() -> None:
    hub = make_hub()
    sub = Recorder()
    hub.subscribe(sub, hub.channel("book.AAA"), EPOCH, None)
    [snap] = sub.drain()
    assert isinstance(snap, Snapshot) and snap.resumed is None
    assert b"resumed" not in sub.frames[0]


def test_resume_after_history_gone_sends_snapshot() -> None:
    hub = make_hub(history_bytes=2000)
    ch = hub.channel("book.AAA")
    seed(hub)
    first_seq = ch.seq
    run_market(hub, 50)
    assert sum(len(f) for _, _, f in ch.history) == ch.history.size
    assert ch.history.size <= 2000 or len(ch.history) == 1
    assert ch.history[0][0] > first_seq  # trimmed
    sub = Recorder()
    assert hub.subscribe(sub, ch, EPOCH, first_seq) is False
    [snap] = sub.drain()
    assert isinstance(snap, Snapshot) and snap.resumed is False
    # The oldest frame still kept can be resumed from.
    oldest = ch.history[0][0]
    sub2 = Recorder()
    assert hub.subscribe(sub2, ch, EPOCH, oldest) is True
    assert len(sub2.drain()) == len(ch.history)


def test_history_keeps_last_frame_even_if_too_big() -> None:
    hub = make_hub(history_bytes=10)
    seed(hub)
    ch = hub.channel("book.AAA")
    assert len(ch.history) == 1 and ch.history.size > 10


# -- heartbeats ---------------------------------------------------------------------------


def test_heartbeat_on_idle_channel_carries_seq() -> None:
    hub = make_hub(heartbeat_interval=1.0)
    seed(hub)
    sub = Recorder()
    hub.subscribe(sub, hub.channel("book.AAA"))
    hub.subscribe(sub, hub.channel("trades.AAA"))
    sub.drain()
    hub.heartbeats(0.5)  # last sent at 0.0: not idle long enough
    assert sub.drain() == []
    hub.heartbeats(1.0)
    msgs = sub.drain()
    assert Heartbeat("book.AAA", 3) in msgs and Heartbeat("trades.AAA", 0) in msgs
    assert len(msgs) == 2
    hub.heartbeats(1.5)  # a heartbeat resets the idle clock
    assert sub.drain() == []
    # Traffic resets it too.
    hub.publish("AAA", [u("bid", "1.00", "1")], [])
    hub.flush(1.9)
    sub.drain()
    hub.heartbeats(2.5)
    assert sub.drain() == [Heartbeat("trades.AAA", 0)]
    hub.heartbeats(2.9)
    assert sub.drain() == [Heartbeat("book.AAA", 4)]


def test_heartbeat_only_on_subscribed_channels_and_not_in_history() -> None:
    hub = make_hub()
    seed(hub)
    ch = hub.channel("book.AAA")
    hist = list(ch.history)
    hub.heartbeats(100.0)
    assert list(ch.history) == hist and hub.dirty == [] and hub.frames_out == 0
    sub = Recorder()
    hub.subscribe(sub, ch)
    sub.drain()
    hub.heartbeats(200.0)
    assert sub.drain() == [Heartbeat("book.AAA", 3)]
    assert list(ch.history) == hist


# -- unbatched mode -----------------------------------------------------------------------


def test_unbatched_busy_channel_gets_no_heartbeat() -> None:
    hub = make_hub(batch=False, heartbeat_interval=1.0)
    sub = Recorder()
    hub.subscribe(sub, hub.channel("book.AAA"))
    sub.drain()
    for tick in range(1, 31):  # 3 s of ticks, an update each, sent at publish time
        now = tick * 0.1
        hub.publish("AAA", [u("bid", "1.00", str(tick))], [])
        hub.flush(now)
        hub.heartbeats(now)
    msgs = sub.drain()
    assert len(msgs) == 30 and not any(isinstance(m, Heartbeat) for m in msgs)
    hub.heartbeats(3.0 + 1.1)  # quiet for more than the interval: now it beats
    assert sub.drain() == [Heartbeat("book.AAA", 30)]


def test_unbatched_sends_one_message_per_update() -> None:
    hub = make_hub(batch=False)
    sub = Recorder()
    hub.subscribe(sub, hub.channel("book.AAA"))
    hub.subscribe(sub, hub.channel("trades.AAA"))
    sub.drain()
    hub.publish(
        "AAA",
        [u("bid", "1.00", "1"), u("bid", "2.00", "1"), u("ask", "3.00", "1")],
        [("2.00", "1", "sell", TS), ("2.00", "0.5", "sell", TS)],
    )
    msgs = sub.drain()  # delivered at publish time, without a flush
    deltas = [m for m in msgs if isinstance(m, Delta)]
    trades = [m for m in msgs if isinstance(m, Trades)]
    assert [(d.prev_seq, d.seq, len(d.updates)) for d in deltas] == [
        (0, 1, 1),
        (1, 2, 1),
        (2, 3, 1),
    ]
    assert [(t.prev_seq, t.seq, len(t.trades)) for t in trades] == [(0, 1, 1), (1, 2, 1)]
    checker = StreamChecker()
    checker.apply(
        {"type": "snapshot", "ch": "book.AAA", "seq": 0, "bids": [], "asks": [], "checksum": 0}
    )
    for d in deltas:
        checker.apply(msgspec.to_builtins(d))
    assert checker.books["book.AAA"] == hub.engine.symbols["AAA"].book
    hub.flush(1.0)
    assert not any(isinstance(m, Delta | Trades) for m in sub.drain())


# -- subscriptions ------------------------------------------------------------------------


def test_channel_lookup_errors() -> None:
    hub = make_hub()
    with pytest.raises(RequestError) as info:
        hub.channel("book.ZZZ", 5)
    assert info.value.code == ErrorCode.UNKNOWN_CHANNEL and info.value.request_id == 5
    with pytest.raises(RequestError) as info:
        hub.channel("nonsense", 6)
    assert info.value.code == ErrorCode.BAD_CHANNEL and info.value.request_id == 6
    assert sorted(hub.channels) == sorted(
        f"{k}.{s}" for k in ("book", "trades", "ticker") for s in ("AAA", "BBB")
    )


def test_max_subscriptions_per_subscriber() -> None:
    hub = make_hub(max_subscriptions=2)
    sub = Recorder()
    hub.subscribe(sub, hub.channel("book.AAA"))
    hub.subscribe(sub, hub.channel("book.BBB"))
    with pytest.raises(RequestError) as info:
        hub.subscribe(sub, hub.channel("trades.AAA"), request_id="r")
    assert info.value.code == ErrorCode.TOO_MANY_CHANNELS and info.value.request_id == "r"
    assert set(sub.channels) == {"book.AAA", "book.BBB"}
    assert hub.unsubscribe(sub, "book.AAA") is True
    hub.subscribe(sub, hub.channel("trades.AAA"))
    assert set(sub.channels) == {"book.BBB", "trades.AAA"}


def test_unsubscribe_and_drop() -> None:
    hub = make_hub()
    a, b = Recorder(), Recorder()
    ch = hub.channel("book.AAA")
    hub.subscribe(a, ch)
    hub.subscribe(b, ch)
    assert hub.unsubscribe(a, "book.AAA") is True
    assert hub.unsubscribe(a, "book.AAA") is False
    assert hub.unsubscribe(a, "book.BBB") is False
    a.drain(), b.drain()
    hub.publish("AAA", [u("bid", "1.00", "1")], [])
    hub.flush(1.0)
    assert a.drain() == [] and len(b.drain()) == 1
    hub.drop(b)
    hub.drop(b)  # idempotent
    assert ch.subscribers == {} and b.channels == {}


# -- test-only faults ---------------------------------------------------------------------


def test_fault_drop_skips_delivery_but_keeps_history() -> None:
    hub = make_hub()
    seed(hub)
    sub = Recorder()
    ch = hub.channel("book.AAA")
    hub.subscribe(sub, ch)
    sub.drain()
    hub.inject_fault(ch, "drop")
    hub.publish("AAA", [u("bid", "1.00", "1")], [])
    hub.flush(1.0)
    assert sub.drain() == [] and ch.history[-1][:2] == (3, 4)
    hub.publish("AAA", [u("bid", "2.00", "1")], [])
    hub.flush(2.0)
    [d] = sub.drain()
    assert isinstance(d, Delta) and d.prev_seq == 4  # the client sees a gap 3 -> 4


@pytest.mark.parametrize("n_updates", [1, 2, 5, 40])
def test_fault_checksum_corrupts_only_the_delivered_copy(n_updates: int) -> None:
    hub = make_hub()
    sub = Recorder()
    ch = hub.channel("book.AAA")
    hub.subscribe(sub, ch)
    sub.drain()
    hub.inject_fault(ch, "checksum")
    updates = [u("bid", f"{i + 1}.00", "1") for i in range(n_updates)]
    hub.publish("AAA", updates, [])
    hub.flush(1.0)
    [d] = sub.drain()
    good = decode_message(frame_payload(ch.history[-1][2]))
    assert isinstance(d, Delta) and isinstance(good, Delta)
    assert d.checksum == good.checksum ^ 0x5A5A5A5A
    assert good.checksum == hub.engine.symbols["AAA"].book.checksum()
    assert d.updates == good.updates


@pytest.mark.parametrize("length", [256 + 123, 512 + 123])
def test_fault_on_frame_with_brace_length_byte(length: int) -> None:
    # A payload of 256*k + 123 bytes has 0x7B, b"{", as a length byte: the
    # fault hook must find the payload by parsing the header, not by searching for "{".
    hub = make_hub()
    sub = Recorder()
    ch = hub.channel("book.AAA")
    hub.subscribe(sub, ch)
    sub.drain()
    for k in range(1, 600):
        qty = "1" * k
        book = Book()
        book.apply("bid", "1.00", qty)
        if len(encode(Delta("book.AAA", 1, 0, book.checksum(), [u("bid", "1.00", qty)]))) == length:
            break
    else:
        pytest.fail("no quantity gives the wanted payload length")
    hub.inject_fault(ch, "checksum")
    hub.publish("AAA", [u("bid", "1.00", qty)], [])
    hub.flush(1.0)
    assert len(frame_payload(ch.history[-1][2])) == length
    [d] = sub.drain()
    assert isinstance(d, Delta) and d.updates[0].qty == qty
    assert d.checksum == hub.engine.symbols["AAA"].book.checksum() ^ 0x5A5A5A5A


def test_fault_checksum_on_trades_passes_message_unchanged() -> None:
    hub = make_hub()
    sub = Recorder()
    ch = hub.channel("trades.AAA")
    hub.subscribe(sub, ch)
    sub.drain()
    hub.inject_fault(ch, "checksum")
    hub.publish("AAA", [], [("1.00", "1", "buy", TS)])
    hub.flush(1.0)
    [t] = sub.drain()
    assert t == decode_message(frame_payload(ch.history[-1][2]))


def test_unknown_fault_rejected() -> None:
    hub = make_hub()
    with pytest.raises(ValueError, match="unknown fault"):
        hub.inject_fault(hub.channel("book.AAA"), "explode")
    assert hub.channel("book.AAA").fault is None


# -- slow consumers (pause / resume / conflation) -------------------------------------------


def _follow(checker: StreamChecker, sub: Recorder) -> None:
    for m in sub.drain_dicts():
        checker.apply(m)


def test_paused_book_conflates_into_one_merged_delta() -> None:
    hub = make_hub(ticker_interval=1e9)
    seed(hub)
    # A deep book, so that the merged delta is smaller than a snapshot.
    hub.publish("AAA", [u("bid", f"{50 + i}.00", "1.0000") for i in range(40)], [])
    hub.flush(0.5)
    slow, fast = Recorder(), Recorder()
    for s in (slow, fast):
        hub.subscribe(s, hub.channel("book.AAA"))
        hub.subscribe(s, hub.channel("trades.AAA"))
    checker = StreamChecker(allow_conflation=True)
    _follow(checker, slow)
    fast.drain()
    hub.pause(slow, 1.0)
    hub.pause(slow, 1.5)  # already paused: no-op
    assert hub.pauses == 1 and slow.slow["book.AAA"].lags == 1
    lag_seq = hub.channel("book.AAA").seq
    for i in range(5):  # the same level changes again and again, plus a new one
        hub.publish("AAA", [u("bid", "99.00", f"{i + 2}.0000"), u("ask", f"10{i}.00", "1")], [])
        hub.publish("AAA", [], [("99.00", "1", "sell", TS + i)])
        hub.flush(2.0 + i)
    # Trades keep flowing to the paused subscriber; book deltas do not.
    assert {type(m) for m in slow.drain()} == {Trades}
    assert len([m for m in fast.drain() if isinstance(m, Delta)]) == 5
    [row] = [r for r in hub.lagging_subscriptions(8.0) if r["sub"] is slow]
    assert row["ch"] == "book.AAA" and row["lag_seq"] == 10 and row["lag_ms"] == 7000.0
    hub.resume(slow)
    hub.resume(slow)  # not paused any more: no-op
    assert slow.outbox == []  # the catch-up waits for the flush
    hub.flush(9.0)
    [merged] = slow.drain()
    assert isinstance(merged, Delta)
    assert (merged.prev_seq, merged.seq) == (lag_seq, lag_seq + 10)
    # Each changed level once, with its latest quantity: 99.00 and five asks.
    assert len(merged.updates) == 6
    assert ("bid", "99.00", "6.0000") in [(x.side, x.price, x.qty) for x in merged.updates]
    checker.apply(msgspec.to_builtins(merged))
    assert checker.conflated == 1
    assert checker.books["book.AAA"] == hub.engine.symbols["AAA"].book
    stats = slow.slow["book.AAA"]
    assert stats.conflated == 1 and stats.skipped == 4 and stats.max_lag_seq == 10
    assert stats.max_lag_s == 8.0 and hub.conflated == 1
    # Rejoined: the next delta is shared with everyone again.
    hub.publish("AAA", [u("bid", "98.00", "1")], [])
    hub.flush(10.0)
    assert slow.outbox[0] is fast.outbox[0]
    assert hub.lagging_subscriptions(11.0) == []


def test_catch_up_is_a_snapshot_when_more_levels_changed_than_the_book_holds() -> None:
    hub = make_hub()
    seed(hub)
    sub = Recorder()
    hub.subscribe(sub, hub.channel("book.AAA"))
    checker = StreamChecker(allow_conflation=True)
    _follow(checker, sub)
    hub.pause(sub, 1.0)
    for i in range(100):  # 100 levels added then deleted: nothing left, much touched
        hub.publish("AAA", [u("ask", f"{200 + i}.00", "1")], [])
        hub.flush(1.0)
        hub.publish("AAA", [u("ask", f"{200 + i}.00", "0")], [])
        hub.flush(1.0)
    hub.resume(sub)
    hub.flush(2.0)
    [snap] = sub.drain()
    assert isinstance(snap, Snapshot) and snap.seq == hub.channel("book.AAA").seq
    assert snap.resumed is None
    assert sub.slow["book.AAA"].snapshots == 1 and hub.conflated_snapshots == 1


def test_catch_up_with_nothing_new_sends_nothing() -> None:
    hub = make_hub()
    seed(hub)
    sub = Recorder()
    hub.subscribe(sub, hub.channel("book.AAA"))
    sub.drain()
    hub.pause(sub, 1.0)
    hub.resume(sub)
    hub.flush(1.0)
    assert sub.drain() == [] and sub in hub.channel("book.AAA").subscribers


def test_paused_again_before_catch_up_keeps_lagging() -> None:
    hub = make_hub()
    seed(hub)
    sub = Recorder()
    ch = hub.channel("book.AAA")
    hub.subscribe(sub, ch)
    sub.drain()
    hub.pause(sub, 1.0)
    hub.publish("AAA", [u("bid", "1.00", "1")], [])
    hub.resume(sub)
    hub.pause(sub, 1.1)
    hub.flush(1.2)
    assert sub.drain() == [] and sub in ch.lagging and sub not in ch.subscribers


def test_ticker_conflates_to_the_latest() -> None:
    hub = make_hub(ticker_interval=0.0)
    seed(hub)
    sub = Recorder()
    hub.subscribe(sub, hub.channel("ticker.AAA"))
    checker = StreamChecker(allow_conflation=True)
    _follow(checker, sub)
    hub.pause(sub, 1.0)
    for i in range(3):
        hub.publish("AAA", [u("bid", f"99.{i + 10}", "1")], [])
        hub.flush(1.0 + i)
    assert sub.drain() == []
    hub.resume(sub)
    hub.flush(5.0)
    [tick] = sub.drain()
    assert isinstance(tick, Ticker) and tick.bid == "99.12"
    assert tick.seq - tick.prev_seq == 3
    checker.apply(msgspec.to_builtins(tick))


def test_subscribe_while_paused_starts_lagging() -> None:
    hub = make_hub()
    seed(hub)
    sub = Recorder()
    hub.subscribe(sub, hub.channel("trades.AAA"))
    hub.pause(sub, 1.0)
    ch = hub.channel("book.AAA")
    hub.subscribe(sub, ch)
    [_, snap] = sub.drain()
    assert isinstance(snap, Snapshot) and sub in ch.lagging and sub not in ch.subscribers
    hub.publish("AAA", [u("bid", "1.00", "1")], [])
    hub.flush(2.0)
    assert sub.drain() == []
    hub.resume(sub)
    hub.flush(3.0)
    [d] = sub.drain()
    assert isinstance(d, Delta) and d.prev_seq == snap.seq


def test_unsubscribe_and_drop_while_lagging() -> None:
    hub = make_hub()
    seed(hub)
    a, b = Recorder(), Recorder()
    ch = hub.channel("book.AAA")
    for s in (a, b):
        hub.subscribe(s, ch)
        hub.pause(s, 1.0)
    assert ch.touched is not None
    hub.publish("AAA", [u("bid", "1.00", "1")], [])
    hub.flush(1.0)
    assert hub.unsubscribe(a, "book.AAA") is True
    assert a not in ch.lagging and ch.touched is not None  # b still lags
    hub.drop(b)
    assert ch.lagging == {} and ch.touched is None and b not in hub.paused


def test_second_lag_small_book_snapshot_and_ticker_telemetry() -> None:
    hub = make_hub(ticker_interval=0.0)
    seed(hub)  # a small book: 3 levels
    sub = Recorder()
    hub.subscribe(sub, hub.channel("book.AAA"))
    hub.subscribe(sub, hub.channel("ticker.AAA"))
    hub.subscribe(sub, hub.channel("trades.AAA"))
    sub.drain()
    for round_ in range(2):  # the second lag reuses the subscription's stats
        hub.pause(sub, 1.0)
        hub.publish("AAA", [u("ask", "120.00", f"{round_ + 1}"), u("ask", "121.00", "1")], [])
        hub.publish("AAA", [], [("99.00", "1", "sell", TS)])
        hub.flush(2.0)
        rows = hub.lagging_subscriptions(3.0)
        assert {r["ch"] for r in rows} == {"book.AAA", "ticker.AAA"}
        assert [type(m) for m in sub.drain()] == [Trades]
        hub.resume(sub)
        hub.publish("AAA", [], [("99.00", "1", "sell", TS)])  # outbox not empty at catch-up
        hub.flush(4.0)
        msgs = sub.drain()
        # 2 merged updates x 3.3 > 5 levels: the snapshot is the smaller catch-up.
        assert [type(m) for m in msgs] == [Trades, Snapshot, Ticker]
    assert sub.slow["book.AAA"].lags == 2 and sub.slow["book.AAA"].snapshots == 2
