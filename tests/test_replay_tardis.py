"""Replay of tardis.dev CSVs and recordings under one shared clock.

The reader and the model are driven directly (Sans-I/O); then real gateways replay the
committed fixtures (``tests/fixtures/tardis``, written by ``make_fixtures.py`` in
tardis.dev's layouts) to the real SDK client, whose verified books are compared with
books computed here, independently, from the CSV rows. Pause, resume, speed and seek go
through the admin API.
"""

from __future__ import annotations

import asyncio
import csv
import gzip
import json
import os
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from helpers import ServerProcess
from tickwire.client import BookChanged, Client, SyncState, TradesReceived
from tickwire.exceptions import ConfigError, ReplayControlError
from tickwire.replayclock import ReplayClock, format_time, parse_factor, parse_time
from tickwire.tardis import (
    BOOK,
    TOP,
    TRADES,
    BookEvent,
    Invalidate,
    Problem,
    Publish,
    Restore,
    TardisModel,
    TopEvent,
    TradeEvent,
    exact_decimal,
    merge,
    read_events,
)

FIXTURES = Path(__file__).parent / "fixtures" / "tardis"
BOOK_CSV = str(FIXTURES / "book.csv")
TRADES_GZ = str(FIXTURES / "trades.csv.gz")
TOP_CSV = str(FIXTURES / "book_snapshot_25.csv")
BAD_CSV = str(FIXTURES / "bad_book.csv")
T0 = 1_709_251_200_000_000  # 2024-03-01T00:00:00Z, microseconds
SYMBOLS = ("BTCUSDT", "ETHUSDT")

Levels = list[tuple[Decimal, Decimal]]


# -- the expected books, computed independently from the CSV rows ---------------------------


def csv_rows(path: str) -> list[dict[str, str]]:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", newline="") as f:  # type: ignore[operator]
        return list(csv.DictReader(f))


def expected_books(path: str, until_us: int | None = None) -> dict[str, tuple[Levels, Levels]]:
    """Every symbol's book after the rows at or before ``until_us`` (tardis's rules:
    a snapshot run after an update starts a new book; updates before the first
    snapshot are skipped; an unreadable row is skipped)."""
    books: dict[str, dict[tuple[str, Decimal], Decimal]] = {}
    in_snapshot: dict[str, bool] = {}
    for row in csv_rows(path):
        if until_us is not None and int(row["local_timestamp"]) > until_us:
            break
        symbol = row["symbol"]
        try:
            price, amount = Decimal(row["price"]), Decimal(row["amount"])
        except ArithmeticError:
            continue
        snap = row["is_snapshot"] == "true"
        if snap and not in_snapshot.get(symbol, False):
            books[symbol] = {}
        in_snapshot[symbol] = snap
        if symbol not in books:
            continue
        key = (row["side"], price)
        if amount == 0:
            books[symbol].pop(key, None)
        else:
            books[symbol][key] = amount
    out = {}
    for symbol, levels in books.items():
        bids = sorted(((p, a) for (s, p), a in levels.items() if s == "bid"), reverse=True)
        asks = sorted((p, a) for (s, p), a in levels.items() if s == "ask")
        out[symbol] = (bids, asks)
    return out


def client_levels(client: Client, symbol: str) -> tuple[Levels, Levels]:
    book = client.book(symbol)
    for price, qty in book.bids() + book.asks():
        # Exact decimal strings, as the CSV's numbers are: no exponent, no float noise.
        assert "e" not in (price + qty).lower() and not (qty.endswith("0") and "." in qty)
    bids = [(Decimal(p), Decimal(q)) for p, q in book.bids()]
    asks = [(Decimal(p), Decimal(q)) for p, q in book.asks()]
    return bids, asks


def trade_counts(path: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in csv_rows(path):
        counts[row["symbol"]] = counts.get(row["symbol"], 0) + 1
    return counts


def last_time_us(path: str) -> int:
    return max(int(r["local_timestamp"]) for r in csv_rows(path))


# -- the reader and the model (Sans-I/O) ---------------------------------------------------


def test_exact_decimal_parses_the_text_never_a_float() -> None:
    cases = {
        "0.1": "0.1",
        "1e-05": "0.00001",
        "1E-8": "0.00000001",
        "100.0": "100",
        "0.10000": "0.1",
        "5e+3": "5000",
        "0": "0",
        "0.0": "0",
        "-0": "0",
        "62000.1": "62000.1",
        "0.30000000000000004": "0.30000000000000004",
    }
    for text, want in cases.items():
        assert exact_decimal(text) == want, text
    for bad in ("abc", "nan", "inf", "", "1e999", "1" * 50):
        with pytest.raises(ValueError):
            exact_decimal(bad)


HEADER = "exchange,symbol,timestamp,local_timestamp,is_snapshot,side,price,amount"


def rows_of(text: str) -> list[list[str]]:
    return list(csv.reader(text.strip().splitlines()))


def test_layouts_are_detected_by_their_columns_and_a_wrong_header_names_the_file() -> None:
    assert read_events("b.csv", rows_of(HEADER))[0] == BOOK
    trades = "exchange,symbol,timestamp,local_timestamp,id,side,price,amount"
    assert read_events("t.csv", rows_of(trades))[0] == TRADES
    top = (
        "exchange,symbol,timestamp,local_timestamp,"
        "asks[0].price,asks[0].amount,bids[0].price,bids[0].amount"
    )
    assert read_events("s.csv", rows_of(top))[0] == TOP
    with pytest.raises(ConfigError, match=r"x\.csv: not a tardis.dev CSV"):
        read_events("x.csv", rows_of("a,b,c"))
    with pytest.raises(
        ConfigError, match=r"y\.csv: incremental_book_L2 header lacks column\(s\) amount"
    ):
        read_events("y.csv", rows_of(HEADER.removesuffix(",amount")))
    with pytest.raises(ConfigError, match=r"z\.csv: empty file"):
        read_events("z.csv", [])


def test_rows_of_one_message_are_one_event_and_bad_rows_name_the_file_and_line() -> None:
    text = f"""{HEADER}
x,BTC,1000,2000,true,bid,100.0,1e-05
x,BTC,1000,2000,true,ask,101,2.50
x,BTC,1500,3000,false,bid,100,0
x,BTC,1600,3000,false,ask,101.5,3
x,BTC,1600,3000,false,bid,oops,3
x,BTC,1600,3000,false
x,BTC,1700,2500,false,ask,102,1
x,ETH,1700,4000,maybe,ask,102,1
"""
    _, events = read_events("day.csv", rows_of(text), {"BTC": "BTC-USDT"})
    items = list(events)
    snap, update = items[0], items[1]
    assert isinstance(snap, BookEvent) and snap.snapshot and snap.symbol == "BTC-USDT"
    assert snap.levels == [("bid", "100", "0.00001"), ("ask", "101", "2.5")]
    assert (snap.local_ns, snap.ts_ns, snap.line) == (2_000_000, 1_000_000, 2)
    assert isinstance(update, BookEvent) and not update.snapshot
    assert update.levels == [("bid", "100", "0"), ("ask", "101.5", "3")]
    problems = [i for i in items if isinstance(i, Problem)]
    assert [(p.kind, p.line, p.symbol) for p in problems] == [
        ("bad_row", 6, "BTC-USDT"),
        ("bad_row", 7, "BTC-USDT"),
        ("time_backwards", 8, "BTC-USDT"),
        ("bad_row", 9, "ETH"),
    ]
    assert problems[0].detail == "day.csv:6: not a number: 'oops'"
    assert "day.csv:7: 5 columns, the header has 8" in problems[1].detail
    assert "is_snapshot must be true or false" in problems[3].detail


def test_files_merge_by_local_timestamp_books_before_trades() -> None:
    book = list(
        read_events("b", rows_of(f"{HEADER}\nx,A,1,5,true,bid,1,1\nx,A,1,9,false,bid,1,2"))[1]
    )
    trades_text = (
        "exchange,symbol,timestamp,local_timestamp,id,side,price,amount\n"
        "x,A,1,5,7,buy,1,1\nx,A,1,6,8,sell,1,1"
    )
    trades = list(read_events("t", rows_of(trades_text))[1])
    merged = list(merge([trades, book]))
    assert [(type(e).__name__, e.local_ns) for e in merged] == [
        ("BookEvent", 5000),
        ("TradeEvent", 5000),
        ("TradeEvent", 6000),
        ("BookEvent", 9000),
    ]


def book_event(
    local: int, symbol: str, levels: list[tuple[str, str, str]], snap: bool = False
) -> BookEvent:
    return BookEvent(local, local, symbol, snap, levels, "f.csv", local)


def test_model_crossed_book_goes_stale_until_the_next_snapshot() -> None:
    model = TardisModel(incremental=True)
    model.note_book_file("f.csv")
    actions, problems = model.apply(
        book_event(1, "A", [("bid", "99", "1"), ("ask", "101", "1")], True)
    )
    assert [type(a) for a in actions] == [Restore] and not problems
    restored = actions[0]
    assert isinstance(restored, Restore) and restored.snap.bids == [("99", "1")]
    actions, _ = model.apply(book_event(2, "A", [("bid", "100", "2")]))
    assert actions == [Publish("A", actions[0].updates, [])]  # type: ignore[union-attr]
    # An update that crosses: reported, the symbol stops being served.
    actions, problems = model.apply(book_event(3, "A", [("bid", "102", "1")]))
    assert actions == [Invalidate("A")]
    assert [p.kind for p in problems] == ["crossed"] and "f.csv:3" in problems[0].detail
    # Updates meanwhile are dropped; a second crossing is counted, not logged again.
    assert model.apply(book_event(4, "A", [("bid", "100", "3")])) == ([], [])
    assert model.apply(book_event(5, "A", [("bid", "99", "0")])) == ([], [])
    # The next snapshot makes it right.
    actions, _ = model.apply(book_event(6, "A", [("bid", "98", "1"), ("ask", "99", "1")], True))
    assert isinstance(actions[0], Restore)
    assert actions[0].snap.bids == [("98", "1")] and actions[0].snap.asks == [("99", "1")]
    assert actions[0].snap.book_seq > restored.snap.book_seq + 1  # never the same seq twice
    assert model.problems == {"crossed": 1}
    # Negative amounts, updates before a snapshot, a bad row of the book file.
    _, problems = model.apply(book_event(7, "B", [("bid", "1", "1")]))
    assert [p.kind for p in problems] == ["before_snapshot"]
    actions, problems = model.apply(book_event(8, "A", [("bid", "97", "-1")]))
    assert actions == [Invalidate("A")] and [p.kind for p in problems] == ["invalid_amount"]
    model.apply(book_event(9, "A", [("bid", "98", "1"), ("ask", "99", "1")], True))
    bad = Problem("bad_row", "A", "f.csv", 12, "f.csv:12: not a number: 'x'", 10)
    actions, problems = model.apply(bad)
    assert actions == [Invalidate("A")] and problems == [bad]


def test_model_checks_book_snapshot_against_the_incremental_book() -> None:
    model = TardisModel(incremental=True)
    model.apply(
        book_event(1, "A", [("bid", "99", "1"), ("bid", "98", "2"), ("ask", "101", "1")], True)
    )
    top = TopEvent(1, 1, "A", [("99", "1"), ("98", "2")], [("101", "1")], "s.csv", 2)
    assert model.apply(top) == ([], [])
    wrong = top._replace(bids=[("99", "1"), ("98", "2.5")], line=3)
    actions, problems = model.apply(wrong)
    assert actions == [Invalidate("A")] and [p.kind for p in problems] == ["snapshot_mismatch"]


def test_model_without_incremental_serves_book_snapshot_rows_as_changes() -> None:
    model = TardisModel(incremental=False)
    first = TopEvent(1, 1, "A", [("99", "1"), ("98", "2")], [("101", "1")], "s.csv", 2)
    actions, _ = model.apply(first)
    assert isinstance(actions[0], Restore)
    second = first._replace(bids=[("99", "1.5")], asks=[("101", "1"), ("102", "4")])
    actions, _ = model.apply(second)
    assert isinstance(actions[0], Publish)
    changes = {(u.side, u.price, u.qty) for u in actions[0].updates}
    assert changes == {("bid", "98", "0"), ("bid", "99", "1.5"), ("ask", "102", "4")}


def test_model_trades_and_unknown_sides() -> None:
    model = TardisModel(incremental=True)
    model.apply(book_event(1, "A", [("bid", "99", "1"), ("ask", "101", "1")], True))
    ev = TradeEvent(2, "A", [("100", "1", "buy", 5), ("100", "2", "unknown", 6)], "t.csv", 2)
    actions, problems = model.apply(ev)
    assert actions == [Publish("A", [], [("100", "1", "buy", 5)])]
    assert [p.kind for p in problems] == ["unknown_side"]


def test_clock_pause_resume_speed_and_seek() -> None:
    clock = ReplayClock(2.0)
    clock.start(1_000, 10.0)
    assert clock.time(11.0) == 1_000 + 2_000_000_000
    clock.pause(11.0)
    assert clock.due(50.0) == float("-inf") and clock.time(50.0) == 2_000_001_000
    clock.resume(50.0)
    assert clock.time(51.0) == 4_000_001_000
    clock.set_speed(1.0, 51.0)
    assert clock.time(52.0) == 5_000_001_000
    clock.seek(7, 52.0)
    assert clock.time(52.0) == 7 and clock.position == 7
    clock.set_speed(0.0, 53.0)  # max: everything is due, the time is the last event's
    assert clock.due(53.0) == float("inf")
    clock.played(99)
    assert clock.time(60.0) == 99


def test_control_arguments() -> None:
    assert parse_time("1709251200500") == (T0 + 500_000) * 1000
    assert parse_time("2024-03-01T00:00:00.5Z") == (T0 + 500_000) * 1000
    assert parse_time("2024-03-01T01:00:00.000001+01:00") == (T0 + 1) * 1000
    assert format_time((T0 + 1) * 1000) == "2024-03-01T00:00:00.000001Z"
    assert parse_factor("x10") == 10 and parse_factor("max") == 0 and parse_factor("0.5") == 0.5
    for bad in ("0", "-1", "fast", "x", "1e9"):
        with pytest.raises(ReplayControlError):
            parse_factor(bad)
    with pytest.raises(ReplayControlError, match="ISO 8601"):
        parse_time("yesterday")


# -- real gateways, real clients -------------------------------------------------------------


def start_replay(*args: str) -> tuple[ServerProcess, str]:
    srv = ServerProcess(["--admin-port", "0", *args]).start()
    assert srv.proc is not None and srv.proc.stdout is not None
    line = srv.proc.stdout.readline()
    assert line.startswith("tickwire: dashboard on http://"), line
    return srv, line.split()[3].rstrip("/")


async def api(session: aiohttp.ClientSession, method: str, url: str) -> tuple[int, dict[str, Any]]:
    async with session.request(method, url) as resp:
        return resp.status, json.loads(await resp.read())


async def wait_for(client: Client, predicate: Callable[[], bool], what: str) -> None:
    try:
        async with asyncio.timeout(10):
            await client.wait_until(predicate)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


def books_match(
    client: Client, want: dict[str, tuple[Levels, Levels]], symbols: tuple[str, ...]
) -> bool:
    return all(
        client.state(f"book.{s}") is SyncState.LIVE and client_levels(client, s) == want[s]
        for s in symbols
    )


@pytest.fixture
def servers() -> Iterator[list[ServerProcess]]:
    started: list[ServerProcess] = []
    yield started
    for srv in started:
        srv.stop()


def test_max_speed_replay_of_book_trades_and_snapshots_ends_with_the_csv_books(
    servers: list[ServerProcess],
) -> None:
    srv, base = start_replay(
        "--source", f"tardis:{BOOK_CSV},{TRADES_GZ},{TOP_CSV}", "--replay-speed", "max"
    )
    servers.append(srv)
    want = expected_books(BOOK_CSV)
    counts = trade_counts(TRADES_GZ)
    channels = [f"{k}.{s}" for s in SYMBOLS for k in ("book", "trades")]

    async def run() -> None:
        async with aiohttp.ClientSession() as session:
            for _ in range(200):
                status, state = await api(session, "GET", f"{base}/api/v1/replay")
                if state["done"]:
                    break
                await asyncio.sleep(0.02)
            assert status == 200 and state["done"] and state["speed"] == "max"
            assert [f["layout"] for f in state["files"]] == [
                "incremental_book_L2",
                "trades",
                "book_snapshot",
            ]
            assert state["problems"] == {}  # the book_snapshot_25 rows all agree
            assert state["position_ns"] == last_time_us(BOOK_CSV) * 1000
        async with Client(srv.url, channels) as client:
            await wait_for(client, lambda: books_match(client, want, SYMBOLS), "the final books")
            for s in SYMBOLS:
                assert client.channel(f"trades.{s}").position == counts[s]

    asyncio.run(run())
    stats = srv.stop()
    assert stats is not None and stats["source"]["trades"] == sum(counts.values())


def test_pause_seek_resume_and_speed_through_the_admin_api(servers: list[ServerProcess]) -> None:
    srv, base = start_replay("--source", f"{BOOK_CSV},{TRADES_GZ}", "--replay-speed", "1")
    servers.append(srv)
    channels = [f"book.{s}" for s in SYMBOLS] + ["trades.BTCUSDT"]
    events: list[tuple[str, Any]] = []
    phase = ["play"]

    def record(event: object) -> None:
        if isinstance(event, BookChanged | TradesReceived):
            events.append((phase[0], event))

    async def run() -> None:
        async with (
            aiohttp.ClientSession() as session,
            Client(srv.url, channels, on_event=record) as client,
        ):
            # Paced at 1x: live deltas arrive while the replay is still going.
            await wait_for(
                client, lambda: sum(not e.snapshot for _, e in events) >= 3, "live deltas"
            )
            status, state = await api(session, "POST", f"{base}/api/v1/replay/pause")
            phase[0] = "paused"
            assert status == 200 and state["paused"] and not state["done"]
            frozen = state["time_ns"]
            await asyncio.sleep(0.3)
            _, state = await api(session, "GET", f"{base}/api/v1/replay")
            assert state["time_ns"] == frozen

            # Seek forward, by ISO time: the books are the CSV's at that time.
            status, state = await api(
                session, "POST", f"{base}/api/v1/replay/seek?to=2024-03-01T00:00:04.5Z"
            )
            assert status == 200 and not state["seeking"] and state["paused"]
            assert state["time"] == "2024-03-01T00:00:04.500000Z"
            want = expected_books(BOOK_CSV, T0 + 4_500_000)
            await wait_for(client, lambda: books_match(client, want, SYMBOLS), "the books at 4.5 s")
            # Seek backward, by epoch milliseconds.
            status, state = await api(
                session, "POST", f"{base}/api/v1/replay/seek?to={T0 // 1000 + 1000}"
            )
            assert status == 200 and state["time_ns"] == (T0 + 1_000_000) * 1000
            want = expected_books(BOOK_CSV, T0 + 1_000_000)
            await wait_for(client, lambda: books_match(client, want, SYMBOLS), "the books at 1 s")
            await asyncio.sleep(0.2)
            counters = client.counters()
            assert counters["book.BTCUSDT"]["epoch_changes"] >= 2
            assert (
                counters["book.BTCUSDT"]["gaps"] == 0
                and counters["book.BTCUSDT"]["checksum_failures"] == 0
            )
            # While paused, seeks included, nothing but snapshots reached the client.
            paused = [e for p, e in events if p == "paused"]
            assert paused and all(e.snapshot for e in paused)

            # Resume at x2: live deltas again, before the data's end.
            phase[0] = "x2"
            status, state = await api(session, "POST", f"{base}/api/v1/replay/speed?x=x2")
            assert status == 200 and state["speed"] == 2.0
            status, state = await api(session, "POST", f"{base}/api/v1/replay/resume")
            assert status == 200 and not state["paused"]
            await wait_for(
                client, lambda: any(p == "x2" and not e.snapshot for p, e in events), "deltas at x2"
            )
            _, state = await api(session, "GET", f"{base}/api/v1/replay")
            assert not state["done"] and state["position_ns"] < last_time_us(BOOK_CSV) * 1000
            # Max: the replay finishes; the books and trades are the CSV's at its end.
            status, state = await api(session, "POST", f"{base}/api/v1/replay/speed?x=max")
            assert status == 200 and state["speed"] == "max"
            want = expected_books(BOOK_CSV)
            await wait_for(client, lambda: books_match(client, want, SYMBOLS), "the final books")
            assert client.channel("trades.BTCUSDT").position == trade_counts(TRADES_GZ)["BTCUSDT"]

            # Bad requests: 400 and a message that says what is expected.
            for path, fragment in (
                ("seek?to=yesterday", "ISO 8601"),
                ("seek", "seek needs to"),
                ("speed?x=0", "positive number"),
                ("speed", "speed needs x"),
            ):
                status, body = await api(session, "POST", f"{base}/api/v1/replay/{path}")
                assert (
                    status == 400 and body["error"] == "bad_request" and fragment in body["message"]
                ), body
            status, body = await api(session, "POST", f"{base}/api/v1/replay/rewind")
            assert status == 404 and "pause, resume, speed or seek" in body["message"]

    asyncio.run(run())


def test_crossed_book_and_bad_row_are_reported_and_served_only_from_the_next_snapshot(
    servers: list[ServerProcess],
) -> None:
    srv, base = start_replay("--source", BAD_CSV, "--replay-speed", "1")
    servers.append(srv)
    channels = [f"book.{s}" for s in SYMBOLS]

    async def run() -> None:
        async with aiohttp.ClientSession() as session, Client(srv.url, channels) as client:
            status, _ = await api(session, "POST", f"{base}/api/v1/replay/pause")
            assert status == 200

            async def at(ms: int) -> tuple[list[str], dict[str, Any]]:
                status, state = await api(
                    session, "POST", f"{base}/api/v1/replay/seek?to={T0 // 1000 + ms}"
                )
                assert status == 200, state
                async with session.get(f"{base}/readyz") as resp:
                    ready = json.loads(await resp.read())
                return ready["incomplete_books"], state

            # 1.7 s: ETHUSDT crossed at 1.0 s, BTCUSDT lost a row at 1.5 s: neither served.
            stale, state = await at(1700)
            assert stale == ["BTCUSDT", "ETHUSDT"]
            assert state["problems"] == {"before_snapshot": 1, "crossed": 1, "bad_row": 1}
            # 2.2 s: ETHUSDT's snapshot at 2.0 s made it right; BTCUSDT still waits.
            stale, _ = await at(2200)
            assert stale == ["BTCUSDT"]
            want = expected_books(BAD_CSV, T0 + 2_200_000)
            await wait_for(
                client, lambda: books_match(client, want, ("ETHUSDT",)), "ETHUSDT at 2.2 s"
            )
            assert (
                client.state("book.BTCUSDT") is not SyncState.LIVE
                or client_levels(client, "BTCUSDT") != (want["BTCUSDT"])
            )
            # 2.7 s: both right again. Then back to 0.5 s (re-read) and forward again:
            # the problems are neither counted nor logged twice.
            stale, _ = await at(2700)
            assert stale == []
            want = expected_books(BAD_CSV, T0 + 2_700_000)
            await wait_for(
                client, lambda: books_match(client, want, SYMBOLS), "both books at 2.7 s"
            )
            stale, _ = await at(500)
            assert stale == []
            stale, state = await at(2900)
            assert stale == [] and state["problems"] == {
                "before_snapshot": 1,
                "crossed": 1,
                "bad_row": 1,
            }
            want = expected_books(BAD_CSV, T0 + 2_900_000)
            await wait_for(
                client, lambda: books_match(client, want, SYMBOLS), "both books at 2.9 s"
            )
            async with session.get(f"{base}/metrics") as resp:
                metrics = (await resp.read()).decode()
            assert 'tickwire_replay_problems_total{kind="crossed"} 1.0' in metrics
            assert 'tickwire_replay_problems_total{kind="bad_row"} 1.0' in metrics
            assert "tickwire_replay_stale_symbols 0.0" in metrics

    asyncio.run(run())
    srv.stop()
    assert srv.stderr.count("replay data problem crossed on ETHUSDT: ") == 1
    assert srv.stderr.count("replay data problem bad_row on BTCUSDT: ") == 1
    assert "bad_book.csv:146: not a number: '61990.x'" in srv.stderr


def test_replay_api_on_a_gateway_that_is_not_replaying(servers: list[ServerProcess]) -> None:
    srv, base = start_replay("--symbols", "1", "--rate", "10")
    servers.append(srv)

    async def run() -> None:
        async with aiohttp.ClientSession() as session:
            status, body = await api(session, "POST", f"{base}/api/v1/replay/pause")
            assert (
                status == 409
                and body["error"] == "not_a_replay"
                and "not a replay" in body["message"]
            )

    asyncio.run(run())


def test_a_bad_file_is_a_startup_error_naming_it(tmp_path: Path) -> None:
    bad = tmp_path / "x.csv"
    bad.write_text("a,b\n1,2\n")
    srv = ServerProcess(["--source", str(bad)])
    with pytest.raises(RuntimeError, match="x.csv: not a tardis.dev CSV"):
        srv.start()


# -- a tickwire recording under the same controls ------------------------------------------


def write_recording(path: Path, deltas: int) -> list[dict[str, Any]]:
    """A small recording of book.AAA: a snapshot, then one update per delta 20 ms apart."""
    import random

    rng = random.Random(5)
    start_ns = T0 * 1000
    lines: list[dict[str, Any]] = [
        {
            "type": "recording",
            "version": 1,
            "url": "ws://x",
            "symbols": ["AAA"],
            "channels": ["book.AAA"],
            "start_ns": start_ns,
        },
        {
            "type": "ack",
            "op": "subscribe",
            "id": 1,
            "channels": ["book.AAA"],
            "epoch": "e",
            "version": 1,
        },
        {
            "type": "snapshot",
            "ch": "book.AAA",
            "seq": 0,
            "epoch": "e",
            "bids": [["99", "1"]],
            "asks": [["101", "1"]],
            "checksum": 0,
        },
    ]
    updates = []
    for i in range(deltas):
        side = rng.choice(["bid", "ask"])
        price = str(rng.randint(90, 99) if side == "bid" else rng.randint(101, 110))
        qty = str(rng.choice([0, 1, 2, 3]))
        u = {"side": side, "price": price, "qty": qty, "ts": start_ns + (i + 1) * 20_000_000}
        updates.append(u)
        lines.append(
            {
                "type": "delta",
                "ch": "book.AAA",
                "seq": i + 1,
                "prev_seq": i,
                "checksum": 0,
                "updates": [u],
            }
        )
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return updates


def recorded_book(updates: list[dict[str, Any]], n: int) -> tuple[Levels, Levels]:
    levels = {("bid", Decimal(99)): Decimal(1), ("ask", Decimal(101)): Decimal(1)}
    for u in updates[:n]:
        key = (u["side"], Decimal(u["price"]))
        if Decimal(u["qty"]) == 0:
            levels.pop(key, None)
        else:
            levels[key] = Decimal(u["qty"])
    bids = sorted(((p, a) for (s, p), a in levels.items() if s == "bid"), reverse=True)
    asks = sorted((p, a) for (s, p), a in levels.items() if s == "ask")
    return bids, asks


def test_a_recording_pauses_and_seeks_like_a_tardis_replay(
    tmp_path: Path, servers: list[ServerProcess]
) -> None:
    path = tmp_path / "rec.ndjson"
    updates = write_recording(path, 300)
    srv, base = start_replay("--source", str(path), "--replay-speed", "1")
    servers.append(srv)

    async def run() -> None:
        async with aiohttp.ClientSession() as session, Client(srv.url, ["book.AAA"]) as client:
            await api(session, "POST", f"{base}/api/v1/replay/pause")
            for n in (200, 40, 120):  # forward, backward (re-read), forward
                target_ms = T0 // 1000 + n * 20
                status, state = await api(
                    session, "POST", f"{base}/api/v1/replay/seek?to={target_ms}"
                )
                assert status == 200 and state["kind"] == "replay" and state["paused"]
                want = {"AAA": recorded_book(updates, n)}
                await wait_for(
                    client,
                    lambda want=want: books_match(client, want, ("AAA",)),
                    f"the book after {n}",
                )
                assert client.channel("book.AAA").position == n  # the recording's own seqs
            await api(session, "POST", f"{base}/api/v1/replay/speed?x=max")
            await api(session, "POST", f"{base}/api/v1/replay/resume")
            want = {"AAA": recorded_book(updates, len(updates))}
            await wait_for(client, lambda: books_match(client, want, ("AAA",)), "the final book")
            assert client.counters()["book.AAA"]["checksum_failures"] == 0

    asyncio.run(run())


assert os.path.exists(BOOK_CSV), "run tests/fixtures/tardis/make_fixtures.py"


def test_a_long_seek_runs_in_steps_serves_nothing_meanwhile_and_can_be_redirected(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """In process, with the real hub as the sink: a seek of many events takes several
    ticks, during which the symbols are stale and nothing is published; a new target
    given meanwhile (here: earlier than what was applied) is honoured."""
    from tickwire.engine import Engine
    from tickwire.hub import Hub
    from tickwire.sources import tardis as source_module

    monkeypatch.setattr(source_module, "SEEK_EVENTS_PER_POLL", 20)
    hub = Hub(Engine([]))
    src = source_module.TardisSource([BOOK_CSV, TRADES_GZ], 1.0)
    asyncio.run(src.start(hub))
    epoch = hub.engine.epoch
    # Both symbols known from the read-ahead; ETHUSDT's snapshot is 0.1 ms in.
    assert set(hub.engine.symbols) == set(SYMBOLS) and hub.incomplete == {"ETHUSDT"}
    src.pause(0.0)
    src.seek((T0 + 5_000_000) * 1000, 0.0)
    for _ in range(5):
        assert list(src.poll(1.0)) == []
    assert src.seeking and hub.incomplete == set(SYMBOLS) and hub.engine.epoch == epoch
    assert src._applied > T0 * 1000 + 1_200_000_000  # the first target's seek is past 1.2 s
    src.seek((T0 + 1_000_000) * 1000, 1.0)  # before what the seek applied: re-read
    steps = 0
    while src.seeking:
        assert list(src.poll(2.0)) == []
        steps += 1
    assert steps > 3 and hub.engine.epoch != epoch and not hub.incomplete
    want = expected_books(BOOK_CSV, T0 + 1_000_000)
    for symbol in SYMBOLS:
        book = hub.engine.symbols[symbol].book
        got_bids = [(Decimal(p), Decimal(q)) for p, q in book.bids()]
        got_asks = [(Decimal(p), Decimal(q)) for p, q in book.asks()]
        assert (got_bids, got_asks) == want[symbol], symbol
    assert src.replay_state(2.0)["time"] == "2024-03-01T00:00:01.000000Z"
    asyncio.run(src.stop())


def run_to_end(src: Any, hub: Any) -> None:
    """Start ``src`` at max speed into ``hub`` and poll until the data ends."""
    asyncio.run(src.start(hub))
    for _ in range(10_000):
        if src.done:
            break
        for symbol, updates, trades in src.poll(0.0):
            hub.publish(symbol, updates, trades)
    assert src.done


def hub_levels(hub: Any, symbol: str) -> tuple[Levels, Levels]:
    book = hub.engine.symbols[symbol].book
    return (
        [(Decimal(p), Decimal(q)) for p, q in book.bids()],
        [(Decimal(p), Decimal(q)) for p, q in book.asks()],
    )


def test_symbol_map_and_filter_and_a_book_snapshot_file_alone() -> None:
    from tickwire.engine import Engine
    from tickwire.hub import Hub
    from tickwire.sources.tardis import TardisSource
    from tickwire.tardis import parse_symbol_map

    mapping = parse_symbol_map(["BTCUSDT=BTC-USDT"])
    hub = Hub(Engine([]))
    src = TardisSource([BOOK_CSV], 0.0, ["BTC-USDT"], mapping)
    run_to_end(src, hub)
    assert list(hub.engine.symbols) == ["BTC-USDT"]
    assert hub_levels(hub, "BTC-USDT") == expected_books(BOOK_CSV)["BTCUSDT"]
    with pytest.raises(ConfigError, match="FILE_SYMBOL=SERVED"):
        parse_symbol_map(["BTCUSDT"])
    # book_snapshot_25 alone is the book: its top 25 at the end of the data.
    hub = Hub(Engine([]))
    run_to_end(TardisSource([TOP_CSV], 0.0), hub)
    bids, asks = expected_books(BOOK_CSV)["BTCUSDT"]
    assert hub_levels(hub, "BTCUSDT") == (bids[:25], asks[:25])


def test_a_truncated_gz_ends_its_file_with_an_error_not_a_crash(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from tickwire.engine import Engine
    from tickwire.hub import Hub
    from tickwire.sources.tardis import TardisSource

    data = Path(TRADES_GZ).read_bytes()
    cut = tmp_path / "trades.csv.gz"
    cut.write_bytes(data[: len(data) // 2])
    hub = Hub(Engine([]))
    src = TardisSource([BOOK_CSV, str(cut)], 0.0)
    run_to_end(src, hub)
    assert "trades.csv.gz ends early" in caplog.text
    state = src.replay_state(0.0)
    assert [f["truncated"] for f in state["files"]] == [False, True]
    # The book file played to its end regardless.
    assert hub_levels(hub, "ETHUSDT") == expected_books(BOOK_CSV)["ETHUSDT"]


def test_a_hole_in_a_recording_is_reported_and_never_served(tmp_path: Path) -> None:
    """A recording missing one delta (and holding one unreadable line): the symbol is
    stale from the hole until the recording's next book snapshot, then exact again."""
    from tickwire.engine import Engine
    from tickwire.hub import Hub
    from tickwire.sources.replay import ReplaySource

    path = tmp_path / "rec.ndjson"
    updates = write_recording(path, 100)
    lines = path.read_text().splitlines(keepends=True)
    # lines: header, ack, snapshot, then delta i (1-based) at index 2 + i.
    bids, asks = recorded_book(updates, 70)
    resnapshot = {
        "type": "snapshot",
        "ch": "book.AAA",
        "seq": 70,
        "epoch": "e",
        "bids": [[str(p), str(q)] for p, q in bids],
        "asks": [[str(p), str(q)] for p, q in asks],
        "checksum": 0,
    }
    lines.insert(3 + 70, json.dumps(resnapshot) + "\n")
    lines.insert(3 + 60, "{oops\n")
    del lines[2 + 40]  # delta 40 lost
    path.write_text("".join(lines))

    hub = Hub(Engine(["AAA"]))
    src = ReplaySource(str(path), 1.0)
    asyncio.run(src.start(hub))
    src.pause(0.0)

    def seek_to(n: int) -> None:
        src.seek((T0 + n * 20_000) * 1000, 0.0)
        while src.seeking:
            assert list(src.poll(0.0)) == []

    def levels() -> tuple[Levels, Levels]:
        return hub_levels(hub, "AAA")

    seek_to(39)
    assert not hub.incomplete and levels() == recorded_book(updates, 39)
    seek_to(55)
    assert hub.incomplete == {"AAA"}  # after the hole: not served
    seek_to(71)
    assert not hub.incomplete and levels() == recorded_book(updates, 71)
    seek_to(20)  # backward: re-read; the problems are not counted again
    seek_to(100)
    assert not hub.incomplete and levels() == recorded_book(updates, 100)
    assert src.stats()["problems"] == {"gap": 1, "bad_line": 1}
