"""The fault model without sockets: scenarios and their errors, schedules, targeting,
the frame filter, the pacer and the stale books (tickwire.faults, Sans-I/O)."""

from __future__ import annotations

import re
import types
from pathlib import Path

import pytest

from tickwire.book import Book
from tickwire.codec import Deflater, Encoding, Wire, decode_msgpack, frame_message, inflate
from tickwire.dialects import binance, fault_hooks
from tickwire.dialects.markets import Markets
from tickwire.exceptions import ScenarioError
from tickwire.faults import ActiveFault, parse_fault, parse_scenario
from tickwire.faults.stale import StaleBook
from tickwire.faults.wire import NATIVE, FrameFilter, Pacer, split_frames
from tickwire.framing import frame_payload, text_frame
from tickwire.protocol import BookUpdate, Delta, decode_message, encode

SCENARIOS = Path(__file__).resolve().parent.parent / "scenarios"


# -- scenario files -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["binance-24h", "snapshot-race", "silent-stall", "maintenance", "gap-storm"],
)
def test_named_scenarios_ship(name: str) -> None:
    path = SCENARIOS / f"{name}.toml"
    text = path.read_text()
    scenario = parse_scenario(text, str(path))
    assert scenario.name == name and scenario.faults
    # Each cites the client bugs it reproduces (issue numbers, docs/connectivity-testing.md).
    assert re.search(r"#\d+", text.split("name =")[0]), f"{name}: no issue cited"


def test_every_shipped_scenario_parses() -> None:
    for path in sorted(SCENARIOS.glob("*.toml")):
        assert parse_scenario(path.read_text(), path.name).faults, path


BAD: list[tuple[str, int, str]] = [
    ('name = "x"\n[[fault]]\nkind = "gapp"\n', 3, "did you mean 'gap'"),
    ('[[fault]]\nkind = "gap"\n\n[[fault]]\nkind = "stall"\nsecconds = 3\n', 6, "'seconds'"),
    ('[[fault]]\nkind = "stall"\nseconds = "ten"\n', 3, "must be a number"),
    ('[[fault]]\nkind = "gap"\nprobability = 1.5\n', 3, "at most 1"),
    ('[[fault]]\nkind = "gap"\nshare = -0.1\n', 3, "at least 0"),
    ('[[fault]]\nkind = "disconnect"\n# why\ncode = 1005\n', 4, "not a close code"),
    ('[[fault]]\nkind = "gap"\nvenues = ["bitmex"]\n', 3, "unknown venue 'bitmex'"),
    ('[[fault]]\nkind = "checksum"\nvenues = ["binance"]\n', 3, "no checksum"),
    ('[[fault]]\nkind = "latency"\nevery = 10\n', 3, "needs a 'duration'"),
    (
        '[[fault]]\nkind = "stale_snapshot"\nwhere = "stream"\nvenues = ["binance"]\n',
        3,
        "no in-band",
    ),
    ('[[fault]]\nkind = "rate_limit"\nscope = "ws"\n', 3, "one of rest, connect, subscribe"),
    ("[[fault]]\nseconds = 3\n", 1, "no 'kind'"),
    ('name = "x"\nfaults = []\n', 2, "unknown key 'faults' (did you mean 'fault'?)"),
    ('name = "x"\n[[fault]\nkind = "gap"\n', 2, "not valid TOML"),
    ('seed = "one"\n', 1, "'seed' must be an integer"),
]


@pytest.mark.parametrize(("text", "line", "message"), BAD)
def test_scenario_errors_name_the_line(text: str, line: int, message: str) -> None:
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(text, "s.toml")
    assert caught.value.line == line, str(caught.value)
    assert str(caught.value).startswith(f"s.toml:{line}: "), str(caught.value)
    assert message in str(caught.value)


def test_scenario_defaults_and_seed() -> None:
    text = 'seed = 9\n[[fault]]\nkind = "gap"\n\n[[fault]]\nkind = "gap"\nseed = 2\n'
    a, b = parse_scenario(text, "s").faults
    assert (a.seed, b.seed, a.line, b.line) == (9, 2, 2, 5)
    assert a.params == {"messages": 1} and a.name == "gap" and not a.random_mode
    assert parse_fault({"kind": "gap", "probability": 0.1}).random_mode
    assert not parse_fault({"kind": "gap", "probability": 0.1, "every": 2}).random_mode


# -- schedules and targets ----------------------------------------------------------------


def test_firings_at_every_count() -> None:
    once = ActiveFault(1, parse_fault({"kind": "gap", "at": 2}), 100.0)
    assert [once.due(t) for t in (101, 102, 103, 200)] == [0, 1, 0, 0]
    assert once.finished(200)
    periodic = ActiveFault(2, parse_fault({"kind": "stall", "every": 1, "count": 3}), 0.0)
    assert [periodic.due(t) for t in (0.0, 0.5, 2.1, 9.0)] == [1, 0, 2, 0]
    window = ActiveFault(3, parse_fault({"kind": "latency", "at": 1, "every": 4, "duration": 1}), 0)
    assert [window.window_open(t) for t in (0.5, 1.0, 1.9, 2.1, 5.5, 6.5)] == [
        False,
        True,
        True,
        False,
        True,
        False,
    ]


def test_targets_are_seeded_and_share_sized() -> None:
    spec = parse_fault({"kind": "gap", "share": 0.3, "seed": 5})
    a, b = ActiveFault(1, spec, 0), ActiveFault(1, spec, 0)
    hits = [a.targets(c, "native") for c in range(1, 2001)]
    assert hits == [b.targets(c, "native") for c in range(1, 2001)]
    assert 0.25 < sum(hits) / len(hits) < 0.35
    assert not ActiveFault(1, parse_fault({"kind": "gap", "venues": ["okx"]}), 0).targets(
        1, "native"
    )
    assert not ActiveFault(1, parse_fault({"kind": "checksum"}), 0).targets(1, "binance")


# -- the frame filter ---------------------------------------------------------------------


def _delta(seq: int, checksum: int = 7) -> bytes:
    update = BookUpdate("bid", "100.0", "1.0", 10**18)
    return text_frame(encode(Delta("book.BTC-USD", seq, seq - 1, checksum, [update])))


def _filter() -> tuple[FrameFilter, list[tuple[str, dict[str, object]]]]:
    seen: list[tuple[str, dict[str, object]]] = []
    markets = Markets(["BTC-USD"])
    flt = FrameFilter(NATIVE, lambda: markets, lambda f, d: seen.append((f.spec.kind, dict(d))))
    return flt, seen


def _seqs(data: bytes) -> list[int]:
    return [int(re.search(rb'"seq":(\d+)', frame_payload(f)).group(1)) for f in split_frames(data)]  # type: ignore[union-attr]


def test_filter_gap_duplicate_reorder_checksum() -> None:
    flt, seen = _filter()
    other = text_frame(b'{"type":"trades","ch":"trades.BTC-USD","seq":1}')
    assert flt.process(_delta(1) + other, 0) == _delta(1) + other  # nothing armed
    flt.arm(ActiveFault(1, parse_fault({"kind": "gap", "messages": 2}), 0))
    assert _seqs(flt.process(_delta(2) + other + _delta(3) + _delta(4), 0)) == [1, 4]
    flt.arm(ActiveFault(2, parse_fault({"kind": "duplicate"}), 0))
    assert _seqs(flt.process(_delta(5), 0)) == [5, 5]
    flt.arm(ActiveFault(3, parse_fault({"kind": "reorder"}), 0))
    assert flt.process(_delta(6), 0) == b""
    assert _seqs(flt.process(_delta(7), 0)) == [7, 6]
    flt.arm(ActiveFault(4, parse_fault({"kind": "checksum"}), 0))
    assert flt.process(_delta(8, checksum=12), 0) == _delta(8, checksum=13)
    assert [k for k, _ in seen] == ["gap", "gap", "duplicate", "reorder", "checksum"]
    assert seen[0][1]["seq"] == 2 and seen[0][1]["symbol"] == "BTC-USD"
    assert not flt.busy(0)


def test_filter_reorder_released_when_nothing_follows() -> None:
    flt, _ = _filter()
    flt.arm(ActiveFault(1, parse_fault({"kind": "reorder"}), 0))
    assert flt.process(_delta(1), 10.0) == b""
    assert flt.release(10.2) == b""
    assert flt.release(10.6) == _delta(1)


def test_filter_native_stall_makes_up_heartbeats_only_when_asked() -> None:
    """The hub's heartbeats never pass a native stall; with ``heartbeats`` the filter
    makes up one per channel every interval at the seq the connection was last sent."""
    beat = text_frame(b'{"type":"heartbeat","ch":"trades.BTC-USD","seq":3}')
    for heartbeats in (False, True):
        flt, _ = _filter()
        flt.stall(5.0, heartbeats, now=1.0, interval=0.5)
        assert flt.process(_delta(1) + beat, 1.1) == b""
        assert flt.process(_delta(2), 1.2) == b""
        if not heartbeats:
            assert flt.beats(1.6) == []
            continue
        # The idle channel's at once; the busy one's an interval after the stall began,
        # at the seq before its first dropped delta (prev_seq 0), then every interval.
        assert flt.beats(1.11) == [("trades.BTC-USD", 3)]
        assert flt.beats(1.5) == [("book.BTC-USD", 0)]
        assert flt.beats(1.55) == []
        assert sorted(flt.beats(2.0)) == [("book.BTC-USD", 0), ("trades.BTC-USD", 3)]
        assert flt.beats(5.0) == []  # the stall is over
        assert flt.process(_delta(9), 5.0) == _delta(9)


def test_filter_msgpack_and_deflated_book_messages() -> None:
    """Book messages in msgpack and deflated frames are classified and corrupted in their
    own form (the checksum only: everything else decodes the same)."""
    update = BookUpdate("bid", "100.0", "1.0", 10**18)
    delta = Delta("book.BTC-USD", 5, 4, 12, [update])
    deflater = Deflater()
    for wire in (Wire(Encoding.MSGPACK), Wire(Encoding.JSON, True), Wire(Encoding.MSGPACK, True)):
        flt, seen = _filter()
        frame = frame_message(wire, delta, deflater)
        assert flt.process(frame, 0) == frame
        flt.arm(ActiveFault(1, parse_fault({"kind": "checksum"}), 0))
        bad = flt.process(frame, 0)
        assert bad[0] == frame[0]  # same opcode, same RSV1
        body = frame_payload(bad)
        if wire.deflate:
            body = inflate(body, 1 << 20)
        got = decode_msgpack(body) if wire.encoding is Encoding.MSGPACK else decode_message(body)
        assert got == Delta("book.BTC-USD", 5, 4, 13, [update]), wire
        flt.arm(ActiveFault(2, parse_fault({"kind": "gap"}), 0))
        assert flt.process(frame + frame, 0) == frame
        assert [k for k, _ in seen] == ["checksum", "gap"]
        assert seen[1][1]["seq"] == 5 and seen[1][1]["symbol"] == "BTC-USD"


def test_venue_hooks_classify_and_corrupt() -> None:
    markets = Markets(["BTC-USD"])
    binance = fault_hooks("binance")
    depth = b'{"e":"depthUpdate","E":1,"s":"BTCUSD","U":5,"u":7,"b":[],"a":[]}'
    assert binance.classify(depth, markets) == ("BTC-USD", "update", 7)
    assert binance.corrupt_checksum(depth) is None and not binance.has_checksum
    okx = fault_hooks("okx")
    push = (
        b'{"arg":{"channel":"books","instId":"BTC-USD"},"action":"update","data":[{"asks":[],'
        b'"bids":[],"ts":"1","checksum":-5,"prevSeqId":3,"seqId":9}]}'
    )
    assert okx.classify(push, markets) == ("BTC-USD", "update", 9)
    assert okx.corrupt_checksum(push) == push.replace(b'"checksum":-5', b'"checksum":-6')
    top = b'{"arg":{"channel":"books5","instId":"BTC-USD"},"data":[{"asks":[],"bids":[],'
    top += b'"ts":"1","seqId":11,"instId":"BTC-USD"}]}'
    assert okx.classify(top, markets) == ("BTC-USD", "books5", 11)
    bbo = top.replace(b'"books5"', b'"bbo-tbt"').replace(b',"instId":"BTC-USD"}]', b"}]")
    assert okx.classify(bbo, markets) == ("BTC-USD", "bbo-tbt", 11)
    ack = b'{"event":"subscribe","arg":{"channel":"books5","instId":"BTC-USD"},"connId":"a"}'
    assert okx.classify(ack, markets) is None
    kraken = fault_hooks("kraken")
    v1 = b'[3,{"b":[["100.0","1.0","1.0"]],"c":"1234"},"book-10","XBT/USD"]'
    v2 = (
        b'{"channel":"book","type":"snapshot","data":[{"symbol":"BTC/USD","bids":[],'
        b'"asks":[],"checksum":77,"timestamp":"x"}]}'
    )
    assert kraken.classify(v1, markets) == ("BTC-USD", "update", None)
    assert kraken.classify(v2, markets) == ("BTC-USD", "snapshot", None)
    assert kraken.corrupt_checksum(v1) == v1.replace(b'"1234"', b'"1235"')
    assert kraken.corrupt_checksum(v2) == v2.replace(b":77,", b":76,")
    assert kraken.is_heartbeat(b'{"event":"heartbeat"}')


def test_whole_state_pushes_take_no_checksum_fault() -> None:
    """A ``checksum`` fault passes over whole-state pushes (none carries a checksum) and
    hits the next diff; a reordered push waits for the next push of its own stream."""
    markets = Markets(["BTC-USD"])
    okx = fault_hooks("okx")
    seen: list[str] = []
    flt = FrameFilter(okx, lambda: markets, lambda f, d: seen.append(f.spec.kind))

    def top(channel: str, seq: int) -> bytes:
        body = b'{"arg":{"channel":"%s","instId":"BTC-USD"},"data":[{"asks":[],"bids":[],'
        return text_frame(body % channel.encode() + b'"ts":"1","seqId":%d}]}' % seq)

    books = text_frame(
        b'{"arg":{"channel":"books","instId":"BTC-USD"},"action":"update","data":[{"asks":[],'
        b'"bids":[],"ts":"1","checksum":-5,"prevSeqId":3,"seqId":9}]}'
    )
    flt.arm(ActiveFault(1, parse_fault({"kind": "checksum"}), 0))
    assert flt.process(top("books5", 8), 0) == top("books5", 8)
    assert flt.process(books, 0) == books.replace(b'"checksum":-5', b'"checksum":-6')
    flt.arm(ActiveFault(2, parse_fault({"kind": "reorder"}), 0))
    assert flt.process(top("books5", 10), 0) == b""
    assert flt.process(top("bbo-tbt", 11) + books, 0) == top("bbo-tbt", 11) + books
    assert flt.process(top("books5", 12), 0) == top("books5", 12) + top("books5", 10)
    assert seen == ["checksum", "reorder"]


def test_binance_partial_depth_classified() -> None:
    """Combined partial depth names its stream; a raw one is bound to the connection's
    one partial depth stream (two: indistinguishable, left alone)."""
    markets = Markets(["BTC-USD", "ETH-USD"])
    hooks = binance.FAULT_HOOKS
    raw = b'{"lastUpdateId":42,"bids":[],"asks":[]}'
    combined = b'{"stream":"btcusd@depth10@100ms","data":' + raw + b"}"
    assert hooks.classify(combined, markets) == ("BTC-USD", "depth10", 42)
    assert hooks.classify(raw, markets) is None  # not bound to a connection
    feed = types.SimpleNamespace(refresh_markets=lambda: markets)
    one = binance.BinanceSession(feed, False, [])  # type: ignore[arg-type]
    one.names = {"ethusd@depth5": None, "btcusd@trade": None}  # type: ignore[dict-item]
    assert hooks.for_session(one).classify(raw, markets) == ("ETH-USD", "depth5", 42)
    one.names["btcusd@depth20@100ms"] = None  # type: ignore[assignment]
    assert hooks.for_session(one).classify(raw, markets) is None


# -- the pacer ----------------------------------------------------------------------------


def test_pacer_latency_bandwidth_and_lifting() -> None:
    pacer = Pacer(lambda: 0.5)
    pacer.set(0.0, 0.1, 0.02, 0.0)
    pacer.push(b"a", 0.0)
    pacer.push(b"b", 0.001)
    assert pacer.due(0.1) == (b"", 0.11)
    assert pacer.due(0.111)[0] == b"ab"  # order kept, jitter +0.01
    pacer.set(0.2, 0.0, 0.0, 100.0)  # 100 bytes/s
    pacer.push(b"x" * 50, 1.0)
    pacer.push(b"y" * 50, 1.0)
    assert pacer.due(1.49) == (b"", 1.5)
    assert pacer.due(1.5)[0] == b"x" * 50
    assert pacer.size == 50
    pacer.set(1.6, 0.0, 0.0, 0.0)  # the cap lifts: the backlog goes at once
    assert pacer.due(1.6) == (b"y" * 50, None)
    assert not pacer.active


# -- stale books --------------------------------------------------------------------------


def test_stale_book_rolls_forward_through_history() -> None:
    history: list[bytes] = []
    live = Book()
    seq = 0
    for i in range(1, 31):
        updates = [BookUpdate("bid", f"{100 + i % 7}.0", f"{i}.0", 10**18)]
        live.apply_updates(updates)
        history.append(text_frame(encode(Delta("book.X", i, i - 1, live.checksum(), updates))))
        seq = i
        if i == 10:
            start = (seq, live.bids(), live.asks())

    def replay(since: int) -> list[bytes] | None:
        return history[since:]

    stale = StaleBook()
    got_seq, book = stale.at(5, lambda: start, replay)
    assert got_seq == 10  # it cannot go back before where it started
    got_seq, book = stale.at(25, lambda: start, replay)  # one update per message here
    expected = Book()
    for frame in history[:25]:
        for u in parse_delta(frame).updates:
            expected.apply(u.side, u.price, u.qty)
    assert got_seq == 25 and book.bids() == expected.bids()


def parse_delta(frame: bytes) -> Delta:
    from tickwire.protocol import decode_message

    msg = decode_message(frame_payload(frame))
    assert isinstance(msg, Delta)
    return msg


def test_random_mode_is_seeded_per_connection() -> None:
    fault = ActiveFault(1, parse_fault({"kind": "gap", "probability": 0.3, "seed": 4}), 0)

    def pattern(conn_id: int) -> list[int]:
        markets = Markets(["BTC-USD"])
        flt = FrameFilter(NATIVE, lambda: markets, lambda f, d: None, None, conn_id)
        flt.random.append(fault)
        return _seqs(flt.process(b"".join(_delta(i) for i in range(1, 201)), 0))

    assert pattern(7) == pattern(7)
    assert pattern(7) != pattern(8)
    assert 100 < len(pattern(7)) < 180  # about 30% dropped


def test_a_random_checksum_fault_never_hits_a_protocol_without_checksums() -> None:
    markets = Markets(["BTC-USD"])
    depth = text_frame(b'{"e":"depthUpdate","E":1,"s":"BTCUSD","U":5,"u":7,"b":[],"a":[]}')
    bad = ActiveFault(1, parse_fault({"kind": "checksum", "probability": 1.0}), 0)
    applied: list[object] = []
    flt = FrameFilter(
        fault_hooks("binance"), lambda: markets, lambda f, d: applied.append(d), None, 3
    )
    flt.random.append(bad)
    assert flt.process(depth * 3, 0) == depth * 3 and not applied
    native = FrameFilter(NATIVE, lambda: markets, lambda f, d: applied.append(d), None, 3)
    native.random.append(bad)
    assert native.process(_delta(1), 0) != _delta(1) and applied  # the same fault does hit
