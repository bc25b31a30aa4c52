"""The venue decoders: documented frames (fixtures), then tickwire's own dialect feeds.

The fixtures in ``tests/fixtures/venues/`` are the venues' documented example payloads
(each file names its source). The round trip reads a real gateway's Binance, OKX and
Kraken endpoints with the decoders while a native client records the book at every seq:
a venue stream rendered by tickwire must decode to the native book at the same id
(Binance ``u``, OKX ``seqId``; Kraken has no id, so its top ``depth`` is compared with
the native book of the same top-10 checksum).
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import websockets
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import ServerProcess
from tickwire.book import Book
from tickwire.dialects.decode import (
    Delta,
    Event,
    Hole,
    Notice,
    Quote,
    Snapshot,
    SnapshotWanted,
    Trades,
    VenueDecoder,
    make_decoder,
)
from tickwire.dialects.decode.kraken import parse_time
from tickwire.exceptions import ConfigError
from venues import NativeRecorder, VenueGateway, levels, start_venue_gateway

FIXTURES = Path(__file__).with_name("fixtures") / "venues"


def fixture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    return data


def enc(obj: Any) -> bytes:
    return obj.encode() if isinstance(obj, str) else json.dumps(obj).encode()


def only(events: list[Event], kind: type) -> list[Any]:
    return [e for e in events if isinstance(e, kind)]


# -- Binance: the documented procedure ----------------------------------------------------


def test_binance_buffers_takes_the_snapshot_and_applies_by_u() -> None:
    fx = fixture("binance")
    dec = make_decoder("binance", fx["symbols"], ("book", "trades", "ticker"))
    frames = fx["frames"]
    # 1. Before the snapshot, diffs are buffered; the first asks for it, once.
    ev = dec.feed(enc(frames[0]), 0)
    assert ev == [SnapshotWanted("BNB-BTC", "BNBBTC", 1000)]
    assert dec.feed(enc(frames[1]), 0) == []
    assert dec.books == {}
    # 2-3. The snapshot: the diff with u <= lastUpdateId is dropped, the straddling
    # one (U <= lid + 1 <= u) applies.
    ev = dec.snapshot("BNB-BTC", enc(fx["rest_depth"]), 5)
    snap, delta = ev
    assert snap == Snapshot(
        "BNB-BTC", [("4.00000000", "431.00000000")], [("4.00000200", "12.00000000")], 1027024, 5
    )
    assert isinstance(delta, Delta) and (delta.prev_seq, delta.seq) == (1027024, 1027026)
    assert delta.ts == 1672515782236 * 1_000_000
    # 4. A combined-stream frame continuing at U = u + 1 applies; "0" and "0.00000000" delete.
    (d2,) = dec.feed(enc(frames[2]), 0)
    assert isinstance(d2, Delta) and (d2.prev_seq, d2.seq) == (1027026, 1027030)
    book = dec.books["BNB-BTC"]
    assert book.bids() == [("4.00000000", "430.00000000")]
    assert book.asks() == [("4.00000300", "7.00000000")]
    # An old diff (u <= the book's id) is ignored; the book does not move.
    assert dec.feed(enc(frames[3]), 0) == []
    assert book.bids() == [("4.00000000", "430.00000000")]
    # A hole: U > u + 1 names exactly the missing ids, drops the book, and the next
    # diff asks for a new snapshot.
    (hole,) = dec.feed(enc(frames[4]), 0)
    assert hole == Hole("BNB-BTC", "gap", "U=1027035 after u=1027030: ids 1027031..1027034 missing")
    assert "BNB-BTC" not in dec.books and dec.gaps == 1
    assert dec.feed(enc(frames[4]), 0) == [SnapshotWanted("BNB-BTC", "BNBBTC", 1000)]


def test_binance_refuses_a_snapshot_older_than_the_stream() -> None:
    fx = fixture("binance")
    dec = make_decoder("binance", fx["symbols"])
    dec.feed(enc(fx["frames"][4]), 0)  # U = 1027035
    (hole,) = dec.snapshot("BNB-BTC", enc(fx["rest_depth"]), 0)  # lastUpdateId 1027024
    assert hole == Hole(
        "BNB-BTC", "stale_snapshot", "lastUpdateId=1027024 older than the first buffered U=1027035"
    )
    # The next diff asks again.
    assert only(dec.feed(enc(fx["frames"][4]), 0), SnapshotWanted)


def test_binance_trades_and_book_ticker() -> None:
    fx = fixture("binance")
    dec = make_decoder("binance", fx["symbols"], ("book", "trades", "ticker"))
    (t,) = dec.feed(enc(fx["trade"]), 0)
    assert isinstance(t, Trades) and t.symbol == "BNB-BTC"
    (trade,) = t.trades
    # "m": the buyer was the maker, so the taker sold.
    assert (trade.id, trade.price, trade.qty, trade.side, trade.ts) == (
        "12345",
        "0.001",
        "100",
        "sell",
        1672515782136 * 1_000_000,
    )
    (q,) = dec.feed(enc(fx["book_ticker"]), 0)
    assert q == Quote("BNB-USDT", "25.35190000", "31.21000000", "25.36520000", "40.66000000", 0)
    assert json.loads(dec.subscribe()[0]) == {
        "method": "SUBSCRIBE",
        "params": [
            "bnbbtc@depth@100ms",
            "bnbbtc@trade",
            "bnbbtc@bookTicker",
            "bnbusdt@depth@100ms",
            "bnbusdt@trade",
            "bnbusdt@bookTicker",
        ],
        "id": 1,
    }


# -- OKX ------------------------------------------------------------------------------------


def test_okx_snapshot_chain_checksum_and_holes() -> None:
    fx = fixture("okx")
    dec = make_decoder("okx", fx["symbols"])
    (snap,) = dec.feed(enc(fx["snapshot"]), 0)
    assert isinstance(snap, Snapshot) and snap.seq == 123456
    assert snap.bids == [("3366.1", "7"), ("3366", "6")] and dec.checksum_failures == 0
    (delta,) = dec.feed(enc(fx["update"]), 0)
    # Ids jump: prevSeqId equal to the last seqId is all that is required.
    assert isinstance(delta, Delta) and (delta.prev_seq, delta.seq) == (123456, 123463)
    assert dec.books["BTC-USDT"].asks() == [("3366.8", "9"), ("3372", "8")]
    # A prevSeqId that is not the last seqId is a gap, said with both ids.
    (hole,) = dec.feed(enc(fx["gap"]), 0)
    assert hole == Hole(
        "BTC-USDT", "gap", "prevSeqId=123470 but the last applied seqId=123463 (seqId=123480)"
    )
    # Updates are ignored until a new snapshot, which resubscribing asks for.
    assert dec.feed(enc(fx["update"]), 0) == []
    assert [json.loads(f)["op"] for f in dec.resubscribe("BTC-USDT")] == [
        "unsubscribe",
        "subscribe",
    ]
    dec.feed(enc(fx["snapshot"]), 0)
    dec.feed(enc(fx["update"]), 0)
    # A checksum that does not match the book after the push: a checksum hole.
    (bad,) = dec.feed(enc(fx["bad_checksum"]), 0)
    assert isinstance(bad, Hole) and bad.reason == "checksum"
    assert bad.detail.startswith(f"checksum {fx['update_checksum']} sent, ")
    assert bad.detail.endswith(" computed at seqId=123480")
    assert dec.checksum_failures == 1 and "BTC-USDT" not in dec.books


def test_okx_checksum_zero_means_not_sent_and_trades() -> None:
    fx = fixture("okx")
    dec = make_decoder("okx", fx["symbols"])
    snap = fx["snapshot"]
    snap["data"][0]["checksum"] = 0
    assert only(dec.feed(enc(snap), 0), Snapshot)
    (t,) = dec.feed(enc(fx["trade"]), 0)
    assert isinstance(t, Trades)
    (trade,) = t.trades
    assert (trade.id, trade.price, trade.qty, trade.side, trade.ts) == (
        "130639474",
        "42219.9",
        "0.12060306",
        "buy",
        1630048897897 * 1_000_000,
    )


# -- Kraken -----------------------------------------------------------------------------------


def test_kraken_documented_checksum_truncation_and_failure() -> None:
    fx = fixture("kraken")
    dec = make_decoder("kraken", fx["symbols"], depth=10)
    (snap,) = dec.feed(enc(fx["snapshot"]), 0)
    # The guide's book: its checksum (974947235) matched, digits kept ("0.00000500").
    assert isinstance(snap, Snapshot) and snap.asks[0] == ("0.05005", "0.00000500")
    assert dec.checksum_failures == 0
    # The guide's update inserts levels outside the top 10: at depth 10 they are
    # truncated away (as deletes), and the checksum still matches.
    (delta,) = dec.feed(enc(fx["update"]), 0)
    assert isinstance(delta, Delta) and delta.ts == parse_time("2020-02-28T15:58:06.493034Z")
    assert dec.books["BTC-USD"].depth() == (10, 10)
    # A changed top level with the old checksum: a checksum hole, the book dropped.
    (hole,) = dec.feed(enc(fx["bad_checksum"]), 0)
    assert isinstance(hole, Hole) and hole.reason == "checksum"
    assert hole.detail.startswith("checksum 974947235 sent, ")
    assert "BTC-USD" not in dec.books
    # At depth 1000 the update's levels stay.
    deep = make_decoder("kraken", fx["symbols"], depth=1000)
    deep.feed(enc(fx["snapshot"]), 0)
    deep.feed(enc(fx["update"]), 0)
    assert deep.books["BTC-USD"].depth() == (12, 12)


def test_kraken_trade_precisions_and_time() -> None:
    fx = fixture("kraken")
    dec = make_decoder("kraken", fx["symbols"], precisions={"MATIC-USD": (4, 8)})
    (t,) = dec.feed(enc(fx["trade"]), 0)
    assert isinstance(t, Trades) and t.symbol == "MATIC-USD"
    (trade,) = t.trades
    # 40.0 written back with the instrument's 8 decimals, as the checksum guide asks.
    assert (trade.id, trade.price, trade.qty, trade.side) == (
        "4665906",
        "0.5117",
        "40.00000000",
        "sell",
    )
    assert trade.ts == 1695628177708706000
    assert parse_time("not a time") == 0


# -- bad input: a notice, never an exception ------------------------------------------------


@pytest.mark.parametrize("venue", ["binance", "okx", "kraken"])
def test_bad_frames_are_notices_not_crashes(venue: str) -> None:
    dec = make_decoder(venue, ["BTC-USDT"])
    for frame in (
        b"",
        b"not json",
        b"[1,2]",
        b'{"e":"depthUpdate","s":"BTCUSDT","U":5,"u":4}',
        b'{"arg":{}}',
    ):
        for e in dec.feed(frame, 0):
            assert isinstance(e, (Notice, Hole)), e
    assert dec.bad_frames >= 2
    with pytest.raises(ConfigError):
        make_decoder(venue, [])


def test_unknown_venue_and_depth() -> None:
    with pytest.raises(ConfigError, match="unknown venue"):
        make_decoder("bitmex", ["BTC-USD"])
    with pytest.raises(ConfigError, match="depth"):
        make_decoder("kraken", ["BTC-USD"], depth=7)


# -- round trip: tickwire's own dialect endpoints ------------------------------------------


SYMBOL = "BTC-USDT"


@pytest.fixture
def gateway(server_factory: Callable[..., ServerProcess], tmp_path: Path) -> VenueGateway:
    return start_venue_gateway(
        server_factory, tmp_path, "--symbols", f"{SYMBOL},ETH-USDT", "--rate", "300", tls=False
    )


async def _follow(
    gw: VenueGateway, venue: str, path: str, dec: VenueDecoder, seconds: float
) -> list[Event]:
    events: list[Event] = []
    async with websockets.connect(gw.ws + path, max_size=None) as ws:
        for frame in dec.subscribe():
            await ws.send(frame.decode())
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                raw = await asyncio.wait_for(ws.recv(), 0.2)
            except TimeoutError:
                continue
            data = raw.encode() if isinstance(raw, str) else raw
            for e in dec.feed(data, time.time_ns()):
                events.append(e)
                if isinstance(e, SnapshotWanted):
                    url = f"{gw.http}/binance/api/v3/depth?symbol={e.venue_symbol}&limit={e.limit}"
                    body = await asyncio.to_thread(
                        lambda u=url: urllib.request.urlopen(u, timeout=5).read()
                    )
                    events += dec.snapshot(e.symbol, body, time.time_ns())
    return events


def _top(
    book: tuple[dict[Any, Any], dict[Any, Any]], depth: int
) -> tuple[dict[Any, Any], dict[Any, Any]]:
    bids, asks = book
    return dict(sorted(bids.items(), reverse=True)[:depth]), dict(sorted(asks.items())[:depth])


def test_tickwire_dialect_streams_decode_to_the_native_book_at_the_same_id(
    gateway: VenueGateway,
) -> None:
    async def run() -> None:
        rec = NativeRecorder(gateway, SYMBOL)
        task = asyncio.create_task(rec.run())
        await asyncio.wait_for(rec.ready.wait(), 10)
        decoders = {
            "binance": make_decoder("binance", [SYMBOL, "ETH-USDT"]),
            "okx": make_decoder("okx", [SYMBOL, "ETH-USDT"]),
            "kraken": make_decoder("kraken", [SYMBOL, "ETH-USDT"], depth=25),
        }
        paths = {"binance": "/binance/ws", "okx": "/okx/ws/v5/public", "kraken": "/kraken/v2"}
        results = await asyncio.gather(
            *(_follow(gateway, v, paths[v], d, 1.5) for v, d in decoders.items())
        )
        # The recorder may be behind the decoders' last id.
        wanted = max(decoders[v].state[SYMBOL].last for v in ("binance",))  # type: ignore[attr-defined]
        wanted = max(wanted, decoders["okx"].last.get(SYMBOL, -1))  # type: ignore[attr-defined]
        deadline = time.monotonic() + 5
        while rec.seq < wanted and time.monotonic() < deadline:
            rec.moved.clear()
            await asyncio.wait_for(rec.moved.wait(), 5)
        rec.stop()
        await task
        for venue, events in zip(decoders, results, strict=True):
            dec = decoders[venue]
            assert not only(events, Hole), (venue, only(events, Hole))
            assert dec.checksum_failures == 0 and dec.gaps == 0 and dec.bad_frames == 0, venue
            deltas = [e for e in only(events, Delta) if e.symbol == SYMBOL]
            trades = [e for e in only(events, Trades) if e.symbol == SYMBOL]
            assert len(deltas) >= 5 and trades, (venue, len(deltas), len(trades))
            book = dec.books[SYMBOL]
            if venue == "kraken":
                # No ids: a native book with the same checksum (the top 10; several
                # seqs may share it when only deeper levels changed) has the same top 25.
                seqs = rec.by_checksum.get(book.checksum())
                assert seqs, "no native book with the Kraken book's checksum"
                top = (levels(book.bids()), levels(book.asks()))
                assert any(_top(rec.books[s], 25) == top for s in seqs), "no equal top 25"
            else:
                # Every delta's id is a native seq, and the last book equals the native one.
                for d in deltas:
                    assert d.seq in rec.books, (venue, d.seq)
                rec.assert_book(deltas[-1].seq, levels(book.bids()), levels(book.asks()))
                # Chained: each delta continues the previous one.
                for a, b in zip(deltas, deltas[1:], strict=False):
                    assert b.prev_seq == a.seq, venue

    asyncio.run(run())


def test_a_decoded_book_is_a_plain_book() -> None:
    # The decoders keep tickwire's Book, so the native checksum applies to them too.
    fx = fixture("kraken")
    dec = make_decoder("kraken", fx["symbols"], depth=10)
    dec.feed(enc(fx["snapshot"]), 0)
    assert isinstance(dec.books["BTC-USD"], Book) and dec.books["BTC-USD"].checksum() == 974947235


def test_an_unusable_price_drops_the_book_with_a_reason() -> None:
    fx = fixture("okx")
    dec = make_decoder("okx", fx["symbols"])
    dec.feed(enc(fx["snapshot"]), 0)
    upd = fx["update"]
    upd["data"][0]["bids"] = [["-1", "5", "0", "1"]]
    events = dec.feed(enc(upd), 0)
    assert [type(e) for e in events] == [Notice, Hole]
    assert events[1].reason == "bad_frame" and "BTC-USDT" not in dec.books


# -- any input: events, never an exception -----------------------------------------------

_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.text(max_size=8)
    | st.sampled_from(
        ["0", "1.5", "-1", "abc", "BTCUSDT", "BTC-USDT", "BTC/USDT", "snapshot", "update"]
        + ["depthUpdate", "trade", "books", "book", "trades", "tickers", "buy", "sell"]
    ),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "e",
                    "s",
                    "U",
                    "u",
                    "b",
                    "a",
                    "E",
                    "T",
                    "t",
                    "p",
                    "q",
                    "m",
                    "stream",
                    "data",
                    "arg",
                    "action",
                    "channel",
                    "instId",
                    "bids",
                    "asks",
                    "checksum",
                    "seqId",
                    "prevSeqId",
                    "type",
                    "symbol",
                    "price",
                    "qty",
                    "side",
                    "ts",
                    "timestamp",
                    "event",
                    "method",
                ]
            ),
            children,
            max_size=6,
        )
    ),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from(["binance", "okx", "kraken"]),
    st.lists(_json_values | st.binary(max_size=40), max_size=6),
)
def test_decoders_never_raise_on_any_frame(venue: str, frames: list[Any]) -> None:
    dec = make_decoder(venue, ["BTC-USDT"], ("book", "trades", "ticker"))
    for frame in frames:
        data = frame if isinstance(frame, bytes) else json.dumps(frame).encode()
        for e in dec.feed(data, 0):
            assert isinstance(e, (Snapshot, Delta, Trades, Quote, Hole, SnapshotWanted, Notice))
        if venue == "binance":
            dec.snapshot("BTC-USDT", data, 0)
    dec.disconnected()


def test_levels_that_are_not_plain_decimals_never_reach_a_book() -> None:
    fx = fixture("binance")
    dec = make_decoder("binance", fx["symbols"])
    dec.feed(enc(fx["frames"][1]), 0)
    dec.snapshot("BNB-BTC", enc(fx["rest_depth"]), 0)
    bad = dict(fx["frames"][2]["data"], b=[["4.1", "abc"]])
    events = dec.feed(enc(bad), 0)
    assert [type(e) for e in events] == [Notice, Hole]
    assert events[1].detail == "unusable diff u=1027030: level '4.1' x 'abc' is not a plain decimal"
    kr = fixture("kraken")
    kdec = make_decoder("kraken", kr["symbols"])
    kdec.feed(enc(kr["snapshot"]), 0)
    neg = kr["bad_checksum"].replace("0.00000400", "-0.00000400")
    events = kdec.feed(enc(neg), 0)
    assert [type(e) for e in events] == [Notice, Hole] and "BTC-USD" not in kdec.books
    # Trades too.
    trade = dict(fx["trade"], p="-0.001")
    (notice,) = dec.feed(enc(trade), 0)
    assert isinstance(notice, Notice) and notice.kind == "bad" and "trade 12345" in notice.detail
