"""The SDK's Sans-I/O core: the channel state table, resyncs, and server/client equality.

No sockets here: the server side is the real gateway request handler and hub, with a
``Connection`` whose outbox is read directly, and the client side is
:class:`tickwire.client.ClientProtocol`. Every frame the hub builds is decoded by the
client exactly as it would be off the wire.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tickwire.book import Book
from tickwire.client import (
    BookChanged,
    ChannelStatus,
    ClientProtocol,
    OrdersReceived,
    SyncState,
    TradesReceived,
)
from tickwire.client.backoff import Backoff
from tickwire.client.sync import TRANSITIONS, Action, LagWindow, Signal
from tickwire.exceptions import ConfigError, RequestError
from tickwire.protocol import (
    Ack,
    BookUpdate,
    Delta,
    Error,
    Heartbeat,
    Orders,
    OrderUpdate,
    Snapshot,
    Trade,
    Trades,
    encode,
)
from tickwire.server import Connection, Gateway, GatewayConfig

# -- helpers -------------------------------------------------------------------------


def payloads(frame: bytes) -> list[bytes]:
    """Split concatenated unmasked server frames into their payloads."""
    out = []
    i = 0
    while i < len(frame):
        n = frame[i + 1] & 0x7F
        i += 2
        if n == 126:
            n = int.from_bytes(frame[i : i + 2], "big")
            i += 2
        elif n == 127:
            n = int.from_bytes(frame[i : i + 8], "big")
            i += 8
        out.append(frame[i : i + n])
        i += n
    return out


class Pair:
    """A real gateway request handler + hub and a client core, joined in memory."""

    def __init__(self, symbols: list[str]) -> None:
        self.gateway = Gateway(GatewayConfig(symbols=symbols, test_faults=True))
        self.hub = self.gateway.hub
        self.client = ClientProtocol()
        self.events: list[Any] = []
        self.conn = Connection(self.gateway, 1)
        self.now = 1.0

    def send(self, payload: bytes) -> None:
        self.gateway.handle_request(self.conn, payload)

    def subscribe(self, channels: list[str]) -> None:
        self.client.add_channels(channels)
        request = self.client.subscribe_request(channels)
        assert request is not None
        self.send(request[1])

    def deliver(self) -> int:
        """Move the server's queued frames to the client; return the messages moved."""
        frames = list(self.conn.outbox)
        self.conn.outbox.clear()
        self.hub.dirty.clear()
        n = 0
        for frame in frames:
            for payload in payloads(frame):
                n += 1
                self.client.receive_data(payload, 2_000_000_000_000_000_000)
                for request in self.client.data_to_send():
                    self.send(request)
                self.events.extend(self.client.events_received())
        return n

    def tick(self) -> None:
        self.now += 0.05
        self.hub.flush(self.now)

    def reconnect(self) -> None:
        self.deliver()  # whatever was in flight is lost with the connection below
        self.conn.outbox.clear()
        self.hub.drop(self.conn)
        self.client.connection_lost()
        self.events.extend(self.client.events_received())
        self.conn = Connection(self.gateway, self.conn.id + 1)
        request = self.client.connect_request()
        assert request is not None
        self.send(request[1])

    def settle(self) -> None:
        """Flush, heartbeat and deliver until nothing moves (resyncs included)."""
        for _ in range(20):
            self.tick()
            self.now += 10.0
            self.hub.heartbeats(self.now)
            if not self.deliver() and not self.conn.outbox:
                return


def trades_ids(events: list[Any], channel: str) -> list[int]:
    return [
        t.id
        for e in events
        if isinstance(e, TradesReceived) and e.channel == channel and not e.snapshot
        for t in e.trades
    ]


def message(msg: Any) -> bytes:
    return encode(msg)


# -- the table -----------------------------------------------------------------------


def test_every_state_is_left_by_a_disconnect_into_syncing() -> None:
    for state in SyncState:
        assert TRANSITIONS[(state, Signal.DISCONNECTED)] == (SyncState.SYNCING, Action.NONE)


def test_only_integrity_failures_lead_to_stale_and_only_data_to_live() -> None:
    for (_state, signal), (nxt, action) in TRANSITIONS.items():
        if nxt is SyncState.STALE and signal not in (Signal.LEFTOVER, Signal.ACK_SNAPSHOT):
            assert signal in (Signal.GAP, Signal.BAD_CHECKSUM)
            assert action in (Action.RESYNC, Action.RESNAPSHOT)
        if action in (Action.LOAD, Action.APPLY):
            assert nxt is SyncState.LIVE


def test_live_channel_is_never_discarding() -> None:
    # LIVE means no request in flight: a leftover there would be a bookkeeping bug.
    assert (SyncState.LIVE, Signal.LEFTOVER) not in TRANSITIONS


# -- scripted sequences --------------------------------------------------------------


def _live_book(client: ClientProtocol) -> tuple[Book, int]:
    """Subscribe book.X and load a two-level snapshot at seq 10."""
    client.add_channels(["book.X"])
    rid, payload = client.subscribe_request() or (0, b"")
    assert json.loads(payload) == {"op": "subscribe", "channels": ["book.X"], "id": rid}
    client.receive_data(message(Ack("subscribe", rid, ["book.X"], "E1")), 0)
    book = Book()
    book.load([("99.00", "1.0")], [("101.00", "2.0")])
    snap = Snapshot(
        "book.X", 10, "E1", bids=book.bids(), asks=book.asks(), checksum=book.checksum()
    )
    client.receive_data(message(snap), 0)
    assert client.channels["book.X"].state is SyncState.LIVE
    client.events_received()
    return book, rid


def _delta(book: Book, prev: int, seq: int, price: str, qty: str, bad: bool = False) -> bytes:
    book.apply("bid", price, qty)
    checksum = book.checksum() ^ (1 if bad else 0)
    updates = [BookUpdate("bid", price, qty, 5)]
    return message(Delta("book.X", seq, prev, checksum, updates))


def test_chained_delta_is_applied_and_verified() -> None:
    client = ClientProtocol()
    book, _ = _live_book(client)
    client.receive_data(_delta(book, 10, 11, "98.00", "3.0"), 1_000_005)
    ch = client.channels["book.X"]
    assert ch.book == book and ch.position == 11
    (event,) = client.events_received()
    assert isinstance(event, BookChanged) and event.seq == 11
    assert ch.lag.percentile(0.5) == pytest.approx(1.0)  # (1_000_005 - 5) ns = 1 ms


def test_gap_resyncs_once_from_position_and_discards_leftovers() -> None:
    client = ClientProtocol()
    book, _ = _live_book(client)
    client.receive_data(_delta(book, 11, 12, "98.00", "3.0"), 0)  # 10 -> 11 was lost
    ch = client.channels["book.X"]
    assert ch.state is SyncState.STALE and ch.counters.gaps == 1
    # More of the broken stream arrives before the request is even written.
    client.receive_data(_delta(book, 12, 13, "97.00", "1.0"), 0)
    client.receive_data(message(Heartbeat("book.X", 13)), 0)
    (request,) = client.data_to_send()
    req = json.loads(request)
    assert req["epoch"] == "E1" and req["since"] == {"book.X": 10}
    assert client.data_to_send() == []  # once
    client.receive_data(_delta(book, 13, 14, "96.00", "1.0"), 0)  # still in flight
    assert ch.counters.gaps == 1 and ch.counters.discarded == 3 and ch.counters.resyncs == 1
    client.receive_data(message(Ack("subscribe", req["id"], ["book.X"], "E1")), 0)
    assert ch.state is SyncState.LIVE
    # The replay starts right after our position.
    server = Book()
    server.load([("99.00", "1.0")], [("101.00", "2.0")])
    for seq, price in ((11, "98.50"), (12, "98.00")):
        client.receive_data(_delta(server, seq - 1, seq, price, "1.0"), 0)
    assert ch.book == server and ch.position == 12 and ch.state is SyncState.LIVE
    states = [e.state for e in client.events_received() if isinstance(e, ChannelStatus)]
    assert states == [SyncState.STALE, SyncState.LIVE]


def test_bad_checksum_forgets_position_and_asks_a_snapshot() -> None:
    client = ClientProtocol()
    book, _ = _live_book(client)
    client.receive_data(_delta(book, 10, 11, "98.00", "3.0", bad=True), 0)
    ch = client.channels["book.X"]
    assert ch.state is SyncState.STALE and ch.counters.checksum_failures == 1
    assert ch.position is None
    assert not [e for e in client.events_received() if isinstance(e, BookChanged)]
    (request,) = client.data_to_send()
    req = json.loads(request)
    assert "since" not in req
    client.receive_data(message(Ack("subscribe", req["id"], ["book.X"], "E1")), 0)
    assert ch.state is SyncState.STALE  # a snapshot must come first
    client.receive_data(message(Heartbeat("book.X", 11)), 0)
    assert ch.counters.gaps == 1  # anything but the snapshot is a protocol gap
    (again,) = client.data_to_send()
    client.receive_data(message(Ack("subscribe", json.loads(again)["id"], ["book.X"], "E1")), 0)
    snap = Snapshot(
        "book.X", 11, "E1", bids=book.bids(), asks=book.asks(), checksum=book.checksum()
    )
    client.receive_data(message(snap), 0)
    assert ch.state is SyncState.LIVE and ch.book == book and ch.counters.resyncs == 2


def test_new_epoch_resets_and_never_compares_seqs_across_epochs() -> None:
    client = ClientProtocol()
    _live_book(client)
    client.add_channels(["trades.X"])
    rid, _ = client.subscribe_request(["trades.X"]) or (0, b"")
    client.receive_data(message(Ack("subscribe", rid, ["trades.X"], "E1")), 0)
    t1 = Trade(1, "100.00", "1.0", "buy", 1)
    client.receive_data(message(Snapshot("trades.X", 1, "E1", trades=[t1])), 0)
    client.connection_lost()
    rid, payload = client.connect_request() or (0, b"")
    assert json.loads(payload)["since"] == {"book.X": 10, "trades.X": 1}
    client.receive_data(message(Ack("subscribe", rid, ["book.X", "trades.X"], "E2")), 0)
    ch = client.channels["book.X"]
    assert ch.state is SyncState.SYNCING
    fresh = Book()
    fresh.load([("50.00", "1.0")], [])
    snap = Snapshot(
        "book.X", 10, "E2", bids=fresh.bids(), asks=[], checksum=fresh.checksum(), resumed=False
    )
    client.receive_data(message(snap), 0)
    t9 = Trade(9, "50.00", "1.0", "sell", 2)
    client.receive_data(
        message(Snapshot("trades.X", 9, "E2", trades=[t9], resumed=False)),
        0,
    )
    assert ch.book == fresh and ch.epoch == "E2" and ch.counters.epoch_changes == 1
    trades = client.channels["trades.X"]
    assert list(trades.trades) == [t9] and trades.counters.trades_missed == 0


def test_failed_resume_delivers_recent_trades_and_counts_the_hole() -> None:
    client = ClientProtocol()
    client.add_channels(["trades.X"])
    rid, _ = client.subscribe_request() or (0, b"")
    client.receive_data(message(Ack("subscribe", rid, ["trades.X"], "E")), 0)
    client.receive_data(message(Snapshot("trades.X", 5, "E", trades=[])), 0)
    client.connection_lost()
    rid, _ = client.connect_request() or (0, b"")
    client.receive_data(message(Ack("subscribe", rid, ["trades.X"], "E")), 0)
    kept = [Trade(i, "1", "1", "buy", 1) for i in (9, 10)]
    client.receive_data(message(Snapshot("trades.X", 10, "E", trades=kept, resumed=False)), 0)
    ch = client.channels["trades.X"]
    assert ch.counters.trades_missed == 3  # 6, 7 and 8 are gone: an explicit hole
    delivered = [e for e in client.events_received() if isinstance(e, TradesReceived)]
    assert [t.id for t in delivered[-1].trades] == [9, 10] and not delivered[-1].snapshot


def test_trades_message_with_inconsistent_ids_is_a_gap() -> None:
    client = ClientProtocol()
    client.add_channels(["trades.X"])
    rid, _ = client.subscribe_request() or (0, b"")
    client.receive_data(message(Ack("subscribe", rid, ["trades.X"], "E")), 0)
    client.receive_data(message(Snapshot("trades.X", 5, "E", trades=[])), 0)
    bad = Trades("trades.X", 7, 5, [Trade(7, "1", "1", "buy", 1)])
    client.receive_data(message(bad), 0)
    assert client.channels["trades.X"].counters.gaps == 1


def test_refused_subscribe_is_reported_not_retried() -> None:
    client = ClientProtocol()
    client.add_channels(["book.NOPE"])
    rid, _ = client.subscribe_request() or (0, b"")
    client.receive_data(message(Error("unknown_channel", "no such channel", rid)), 0)
    ch = client.channels["book.NOPE"]
    assert ch.state is SyncState.SYNCING and ch.counters.failures == 1
    assert client.data_to_send() == []
    (reply,) = client.replies_received()
    assert isinstance(reply, Error)


def test_malformed_and_foreign_messages_are_ignored() -> None:
    client = ClientProtocol()
    client.receive_data(b"{not json", 0)
    client.receive_data(b'{"type":"nope"}', 0)
    client.receive_data(message(Heartbeat("book.OTHER", 3)), 0)
    assert client.malformed == 2 and client.events_received() == []


def test_bad_channel_names_are_refused_locally() -> None:
    with pytest.raises(RequestError):
        ClientProtocol().add_channels(["orders"])


def test_lag_window_percentiles() -> None:
    window = LagWindow(size=100)
    assert window.percentile(0.5) is None
    for ms in range(1, 101):
        window.add(ms * 1_000_000)
    assert window.percentile(0.5) == pytest.approx(50.0, abs=1)
    assert window.percentile(0.99) == pytest.approx(99.0, abs=1)


def test_backoff_is_jittered_capped_and_resettable() -> None:
    import random

    backoff = Backoff(0.1, 1.0, rng=random.Random(7))
    delays = [backoff.next_delay() for _ in range(50)]
    assert all(0 <= d <= 1.0 for d in delays)
    assert max(delays[10:]) > 0.5  # grew to the cap
    assert len(set(delays)) == len(delays)  # jittered
    backoff.reset()
    assert backoff.ceiling() == pytest.approx(0.1)
    with pytest.raises(ConfigError):
        Backoff(1.0, 0.5)


# -- through the real gateway handler and hub ----------------------------------------

PRICES = [f"{p}.{c:02d}" for p in (99, 100) for c in (0, 25, 50, 75)]
QTYS = ["0", "0.5000", "1.0000", "2.2500"]

update = st.builds(
    lambda side, price, qty: BookUpdate(side, price, qty, 1),
    st.sampled_from(["bid", "ask"]),
    st.sampled_from(PRICES),
    st.sampled_from(QTYS),
)
publish = st.tuples(
    st.just("publish"), st.integers(0, 1), st.lists(update, max_size=6), st.integers(0, 3)
)
op = st.one_of(
    publish,
    publish,
    publish,
    st.tuples(st.just("tick")),
    st.tuples(st.just("deliver")),
    st.tuples(st.just("heartbeat")),
    # A fault, then the message that carries it (when the channel has subscribers).
    st.tuples(st.just("fault"), st.integers(0, 3), st.sampled_from(["drop", "checksum"])),
    st.tuples(st.just("reconnect")),
)
SYMBOLS = ["A", "B"]
CHANNELS = ["book.A", "trades.A", "book.B", "ticker.A"]


@settings(
    max_examples=int(os.environ.get("TICKWIRE_HYPOTHESIS_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(st.lists(op, min_size=5, max_size=60), st.integers(0, 3))
def test_any_engine_events_give_identical_books_and_gapless_trades(
    ops: list[tuple[Any, ...]], subscribe_at: int
) -> None:
    pair = Pair(SYMBOLS)
    hub = pair.hub
    trade_ts = 1
    for i, step in enumerate(ops):
        if i == subscribe_at:
            pair.subscribe(CHANNELS)
        kind = step[0]
        if kind == "publish":
            _, sym, updates, n_trades = step
            trades = [("100.00", "0.1000", "buy", trade_ts + k) for k in range(n_trades)]
            trade_ts += n_trades
            hub.publish(SYMBOLS[sym], updates, trades)
        elif kind == "tick":
            pair.tick()
        elif kind == "deliver":
            pair.deliver()
        elif kind == "heartbeat":
            pair.now += 5.0
            hub.heartbeats(pair.now)
        elif kind == "fault":
            ch = hub.channels[CHANNELS[step[1]]]
            hub.inject_fault(ch, step[2])
            price = PRICES[trade_ts % len(PRICES)]
            hub.publish(ch.state.symbol, [BookUpdate("ask", price, "0.7500", 1)], [])
            hub.publish(ch.state.symbol, [], [("100.00", "0.1000", "sell", trade_ts)])
            trade_ts += 1
            pair.tick()
        elif kind == "reconnect" and pair.client.channels:
            pair.reconnect()
    if not pair.client.channels:
        pair.subscribe(CHANNELS)
    pair.settle()
    client = pair.client
    for name in CHANNELS:
        ch = client.channels[name]
        assert ch.state is SyncState.LIVE, (name, ch)
        assert ch.position == hub.channels[name].seq
    for sym in ("A", "B"):
        assert client.channels[f"book.{sym}"].book == pair.gateway.engine.symbols[sym].book
    # Trades: every trade after the first snapshot arrives exactly once, in order.
    ids = trades_ids(pair.events, "trades.A")
    last = pair.gateway.engine.symbols["A"].trade_seq
    assert ids == list(range(last - len(ids) + 1, last + 1))
    assert client.channels["trades.A"].counters.trades_missed == 0
    counters = client.channels["book.A"].counters
    assert counters.resyncs <= counters.gaps + counters.checksum_failures


def test_property_harness_detects_a_divergence() -> None:
    """The equality check above can fail: a corrupted client book is noticed."""
    pair = Pair(SYMBOLS)
    pair.subscribe(["book.A"])
    pair.hub.publish("A", [BookUpdate("bid", "99.00", "1.0000", 1)], [])
    pair.settle()
    pair.client.channels["book.A"].book.apply("ask", "100.00", "9.0000")
    assert pair.client.channels["book.A"].book != pair.gateway.engine.symbols["A"].book
    pair.hub.publish("A", [BookUpdate("bid", "99.25", "1.0000", 2)], [])
    pair.settle()
    ch = pair.client.channels["book.A"]
    # ... and healed: the checksum of the next delta exposed it and a snapshot fixed it.
    assert ch.counters.checksum_failures == 1 and ch.counters.snapshots == 2
    assert ch.book == pair.gateway.engine.symbols["A"].book


def test_payload_splitter_handles_long_frames() -> None:
    from tickwire.framing import text_frame

    data = [b"x" * 10, b"y" * 300, b"z" * 70000]
    assert payloads(b"".join(text_frame(d) for d in data)) == data


def test_orders_channel_chains_resyncs_on_a_gap_and_logs_in_first() -> None:
    client = ClientProtocol()
    client.add_channels(["orders.alice"])
    lid, login = client.login_request("t.o.k")
    assert json.loads(login) == {"op": "login", "token": "t.o.k", "id": lid}
    assert client.logins == {lid}
    rid, _ = client.connect_request() or (0, b"")
    client.receive_data(message(Ack("login", lid, ["orders.alice"], "E")), 0)
    assert [r.id for r in client.replies_received()] == [lid]  # the I/O layer's to act on
    client.receive_data(message(Ack("subscribe", rid, ["orders.alice"], "E")), 0)

    def order(i: int) -> OrderUpdate:
        return OrderUpdate(i, f"alice-{i}", "X", "new", "buy", "1.00", "2", "2", 5)

    client.receive_data(message(Snapshot("orders.alice", 2, "E", orders=[order(2)])), 0)
    client.receive_data(message(Orders("orders.alice", 4, 2, [order(3), order(4)])), 0)
    ch = client.channels["orders.alice"]
    assert (
        ch.state is SyncState.LIVE and ch.position == 4 and [o.id for o in ch.orders] == [2, 3, 4]
    )
    received = [e for e in client.events_received() if isinstance(e, OrdersReceived)]
    assert [(e.seq, e.snapshot, [o.id for o in e.orders]) for e in received] == [
        (2, True, [2]),
        (4, False, [3, 4]),
    ]
    # Ids that do not cover (prev_seq, seq] are a gap like a seq that does not chain.
    client.receive_data(message(Orders("orders.alice", 6, 4, [order(6)])), 0)
    assert ch.state is SyncState.STALE and ch.counters.gaps == 1
    resync = json.loads(client.data_to_send()[0])
    assert resync["since"] == {"orders.alice": 4} and resync["channels"] == ["orders.alice"]
    client.login_request("t.o.k")
    client.connection_lost()
    assert client.logins == set()  # a new connection's logins are its own
