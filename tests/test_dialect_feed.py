"""The dialect feed without sockets: taps, windows, encode-once, joins, laggards, resets.

A real :class:`~tickwire.hub.Hub` and :class:`~tickwire.engine.Engine` publish batches;
the feed taps them as any subscriber would; recording subscribers stand in for venue
connections. Binance's diff stream is the renderer under test (the strictest rule:
``U`` must be the previous ``u`` + 1, and there is no in-band snapshot).
"""

from __future__ import annotations

import json
import random
from typing import Any

from helpers import frame_payload
from tickwire.book import Book
from tickwire.dialects import binance
from tickwire.dialects.feed import DialectFeed, Stream
from tickwire.engine import Engine, StateSnapshot
from tickwire.framing import frame_payloads
from tickwire.hub import Hub
from tickwire.protocol import BookUpdate

SYM = "BTC-USDT"
TS = 1_700_000_000_000_000_000


class Sub:
    """A venue connection that records what it is sent."""

    def __init__(self) -> None:
        self.streams: dict[str, Stream] = {}
        self.frames: list[bytes] = []
        self.closed: tuple[int, str] | None = None
        self.errors: list[str] = []

    @property
    def deliver(self) -> Any:
        return None if self.closed else self.frames.append

    def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)

    def rejected(self, code: str, reason: str) -> None:
        self.errors.append(code)

    def events(self) -> list[dict[str, Any]]:
        out = []
        for data in self.frames:
            out += [json.loads(p) for p in frame_payloads(data)]
        self.frames.clear()
        return out


def setup() -> tuple[Hub, DialectFeed]:
    engine = Engine([SYM])
    hub = Hub(engine)
    seed = [BookUpdate("bid", f"{100 - i}.00", "1.0000", TS) for i in range(1, 11)]
    seed += [BookUpdate("ask", f"{100 + i}.00", "1.0000", TS) for i in range(1, 11)]
    hub.publish(SYM, seed, [])
    hub.flush(0.0)
    hub.incomplete.clear()
    return hub, DialectFeed(hub)


def publish(hub: Hub, feed: DialectFeed, rng: random.Random, n: int, now: float) -> None:
    ups = []
    for _ in range(n):
        side = rng.choice(("bid", "ask"))
        base = 100 - rng.randint(1, 15) if side == "bid" else 100 + rng.randint(1, 15)
        qty = rng.choice(("0", "0.5000", "2.0000", "3.2500"))
        ups.append(BookUpdate(side, f"{base}.00", qty, TS))  # type: ignore[arg-type]
    hub.publish(SYM, ups, [])
    hub.flush_symbol(SYM, now)
    feed.flush(now)


def depth_stream(feed: DialectFeed, speed: str = "@100ms") -> Stream:
    markets = feed.refresh_markets()
    market = markets.by_binance["BTCUSDT"]
    name = f"btcusdt@depth{speed}"
    return feed.stream(
        f"binance|0|{name}",
        market,
        lambda: binance.DiffDepth(market, name, False, 0.1 if speed else 1.0),
    )


def native_book(hub: Hub) -> Book:
    return hub.engine.symbols[SYM].book


def apply(book: Book, ev: dict[str, Any]) -> None:
    for price, qty in ev["b"]:
        book.apply("bid", price, qty)
    for price, qty in ev["a"]:
        book.apply("ask", price, qty)


def test_a_window_is_rendered_once_and_the_same_bytes_reach_every_subscriber() -> None:
    hub, feed = setup()
    stream = depth_stream(feed)
    a, b = Sub(), Sub()
    assert feed.join(a, stream) and feed.join(b, stream)
    assert not feed.join(a, stream), "a repeated subscribe must not duplicate the stream"
    rng = random.Random(1)
    publish(hub, feed, rng, 5, 0.0)  # a new window emits at once, then every 100 ms
    a.frames.clear()
    b.frames.clear()
    renders = feed.renders
    for i in range(1, 10):  # 9 passes inside one 100 ms window: one event
        publish(hub, feed, rng, 5, 0.01 * i)
    assert feed.renders == renders and not a.frames
    publish(hub, feed, rng, 5, 0.1)
    assert feed.renders - renders == 1
    assert len(a.frames) == 1 and a.frames[0] is b.frames[0]
    event = json.loads(frame_payload(a.frames[0]))
    assert event["u"] - event["U"] + 1 == 50  # ten passes of five updates, merged


def test_diff_events_chain_and_rebuild_the_native_book() -> None:
    hub, feed = setup()
    # A client that follows Binance's recipe: REST snapshot, then diffs.
    snap = hub.snapshot(hub.channels[f"book.{SYM}"])
    book = Book()
    book.load(snap.bids or [], snap.asks or [])
    stream = depth_stream(feed)
    sub = Sub()
    feed.join(sub, stream)
    rng = random.Random(2)
    last_u = snap.seq
    now = 0.0
    for _ in range(300):
        now += 0.013
        publish(hub, feed, rng, rng.randint(1, 8), now)
        for ev in sub.events():
            assert ev["U"] == last_u + 1 and ev["u"] >= ev["U"] and "pu" not in ev
            apply(book, ev)
            last_u = ev["u"]
            assert book == native_book_at(hub, last_u)
    assert last_u > snap.seq + 100


def native_book_at(hub: Hub, seq: int) -> Book:
    """The native book, which must be at ``seq`` (windows emit at pass boundaries)."""
    state = hub.engine.symbols[SYM]
    # The feed emits the window right after the pass that ends it: the engine is there.
    assert state.book_seq >= seq
    return state.book if state.book_seq == seq else _replayed(hub, seq)


def _replayed(hub: Hub, seq: int) -> Book:
    ch = hub.channels[f"book.{SYM}"]
    frames = list(ch.history)
    book = Book()
    # Rebuild from the very first message kept (the seed is in history).
    for _prev, s, frame in frames:
        msg = json.loads(frame_payload(frame))
        for u in msg["updates"]:
            book.apply(u["side"], u["price"], u["qty"])
        if s == seq:
            return book
    raise AssertionError(f"seq {seq} not in history")


def test_a_subscriber_joining_mid_window_continues_from_the_early_emit() -> None:
    hub, feed = setup()
    stream = depth_stream(feed)
    first = Sub()
    feed.join(first, stream)
    rng = random.Random(3)
    publish(hub, feed, rng, 4, 0.0)
    publish(hub, feed, rng, 4, 0.01)  # inside the window: nothing emitted yet
    first.events()
    seq_before = feed.taps[SYM].seq
    late = Sub()
    feed.join(late, stream)
    # The join emitted the window to the first subscriber up to now ...
    emitted = first.events()
    assert emitted and emitted[-1]["u"] == seq_before
    # ... so the late one's first event starts right after a REST snapshot taken now.
    publish(hub, feed, rng, 4, 0.5)
    ev = late.events()[0]
    assert ev["U"] == seq_before + 1


def test_a_lagging_subscriber_gets_one_merged_event_keeping_u_chained() -> None:
    hub, feed = setup()
    stream = depth_stream(feed)
    fast, slow = Sub(), Sub()
    feed.join(fast, stream)
    feed.join(slow, stream)
    rng = random.Random(4)
    book = Book()
    snap = hub.snapshot(hub.channels[f"book.{SYM}"])
    book.load(snap.bids or [], snap.asks or [])
    now = 0.0
    for _ in range(5):
        now += 0.15
        publish(hub, feed, rng, 3, now)
    last = snap.seq
    for ev in slow.events():
        apply(book, ev)
        last = ev["u"]
    feed.pause(slow, now)
    for _ in range(20):
        now += 0.15
        publish(hub, feed, rng, 3, now)
    assert not slow.frames, "a paused subscriber is sent no book events"
    feed.resume(slow)
    now += 0.001
    feed.flush(now)
    catch_up = slow.events()
    assert len(catch_up) == 1
    ev = catch_up[0]
    assert ev["U"] == last + 1 and ev["u"] == feed.taps[SYM].seq
    apply(book, ev)
    assert book == native_book(hub)
    assert feed.conflated == 1
    # It is back on the shared stream, chained.
    now += 0.15
    publish(hub, feed, rng, 3, now)
    nxt = slow.events()
    assert nxt and nxt[0]["U"] == ev["u"] + 1


def test_a_laggard_whose_changes_outgrew_the_tracker_gets_the_whole_book() -> None:
    hub, feed = setup()
    stream = depth_stream(feed)
    slow = Sub()
    feed.join(slow, stream)
    snap = hub.snapshot(hub.channels[f"book.{SYM}"])
    book = Book()
    book.load(snap.bids or [], snap.asks or [])
    feed.flush(0.0)
    feed.pause(slow, 0.0)
    # Many more distinct levels than the book holds (each batch replaces the bids):
    # the tracker gives up, and Binance has no in-band snapshot.
    previous: list[str] = [p for p, _ in book.bids()]
    for i in range(40):
        prices = [f"{50 + i}.{j:02d}" for j in range(10)]
        ups = [BookUpdate("bid", p, "0", TS) for p in previous]
        ups += [BookUpdate("bid", p, "1.0000", TS) for p in prices]
        previous = prices
        hub.publish(SYM, ups, [])  # type: ignore[arg-type]
        hub.flush_symbol(SYM, 0.2 * i)
        feed.flush(0.2 * i)
    assert feed.taps[SYM].touched is not None and feed.taps[SYM].touched.since > snap.seq
    feed.resume(slow)
    feed.flush(10.0)
    assert slow.closed is None
    (ev,) = slow.events()
    assert ev["U"] == snap.seq + 1 and ev["u"] == feed.taps[SYM].seq
    apply(book, ev)
    assert book == native_book(hub)


def test_a_book_replaced_upstream_closes_binance_diff_subscribers() -> None:
    hub, feed = setup()
    stream = depth_stream(feed)
    sub = Sub()
    feed.join(sub, stream)
    publish(hub, feed, random.Random(6), 3, 0.5)
    state = hub.engine.symbols[SYM]
    snap = StateSnapshot(
        hub.engine.epoch,
        SYM,
        state.book_seq + 1000,
        state.trade_seq,
        [("90.00", "1.0000")],
        [("110.00", "1.0000")],
        [],
    )
    hub.restore(snap)
    feed.flush(1.0)
    assert sub.closed is not None and sub.closed[0] == 1011
