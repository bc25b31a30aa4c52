"""``tickwire bench``: the Sans-I/O pieces, then the real command against a real server.

Exactness without timing: the bench's ``totals`` count everything since each connection
subscribed, and when the *server* stops first it flushes every queued frame before its
going-away close, so the updates the bench counted must equal the server's own exit
counter ``updates_out`` exactly (the bench being the only subscriber). No assertion
depends on how fast anything ran.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import selectors
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
import websockets
from hypothesis import given
from hypothesis import strategies as st

from helpers import ServerProcess
from tickwire.exceptions import ConfigError
from tickwire.loadtest import (
    RESULT_FIELDS,
    Counters,
    Histogram,
    Tally,
    WorkerReport,
    auto_procs,
    bucket_bounds,
    bucket_index,
    channel_list,
    plan,
    summarize,
)
from tickwire.loadtest.histogram import MAX_VALUE
from tickwire.loadtest.report import LATENCY_FIELDS, format_text

# -- histogram (Sans-I/O) --------------------------------------------------------------


def test_buckets_tile_the_value_range_with_bounded_width() -> None:
    prev_high = -1
    for i in range(bucket_index(MAX_VALUE) + 1):
        low, high = bucket_bounds(i)
        assert low == prev_high + 1, i  # contiguous, no overlap, no hole
        assert bucket_index(low) == i and bucket_index(high) == i
        assert high - low + 1 <= max(1, low // 32), i  # under 1/32 of the value wide
        prev_high = high
    assert prev_high == MAX_VALUE
    assert bucket_index(MAX_VALUE * 4) == bucket_index(MAX_VALUE)


@given(st.lists(st.integers(-1000, 2 * MAX_VALUE), max_size=200), st.integers(1, 5))
def test_merge_is_exact_and_order_free(values: list[int], parts: int) -> None:
    whole = Histogram()
    pieces = [Histogram() for _ in range(parts)]
    for i, v in enumerate(values):
        whole.record(v)
        pieces[i % parts].record(v)
    forward, backward = Histogram(), Histogram()
    for p in pieces:
        forward.merge(p)
    for p in reversed(pieces):
        # Through the pipe format, as worker reports travel.
        backward.merge(Histogram.from_sparse(p.to_sparse(), p.total, p.sum, p.max, p.negative))
    for merged in (forward, backward):
        assert merged.counts == whole.counts
        assert (merged.total, merged.sum, merged.max, merged.negative) == (
            whole.total,
            whole.sum,
            whole.max,
            whole.negative,
        )


@given(st.lists(st.integers(0, 10**10), min_size=1, max_size=300), st.floats(0.0, 1.0))
def test_quantile_never_understates_and_overstates_by_under_a_bucket(
    values: list[int], q: float
) -> None:
    h = Histogram()
    for v in values:
        h.record(v)
    ordered = sorted(values)
    true = ordered[max(1, math.ceil(q * len(values))) - 1]
    got = h.quantile(q)
    assert true <= got <= true + max(1, true // 32)
    assert h.quantile(1.0) == max(values) == h.max


def test_empty_histogram_and_negative_values() -> None:
    h = Histogram()
    assert h.quantile(0.99) == 0 and h.mean() == 0.0
    h.record(-5)
    h.record(10)
    assert h.negative == 1 and h.total == 2 and h.quantile(0.5) == 0 and h.max == 10


# -- tally (Sans-I/O) ------------------------------------------------------------------


def _delta(ch: str, prev: int, seq: int, ts: list[int]) -> bytes:
    ups = [{"side": "bid", "price": "100.5", "qty": "1", "ts": t} for t in ts]
    return msgspec.json.encode(
        {"type": "delta", "ch": ch, "seq": seq, "prev_seq": prev, "checksum": 1, "updates": ups}
    )


def _trades(ch: str, prev: int, ts: list[int]) -> bytes:
    trades = [
        {"id": prev + i + 1, "price": "1", "qty": "2", "side": "buy", "ts": t}
        for i, t in enumerate(ts)
    ]
    return msgspec.json.encode(
        {"type": "trades", "ch": ch, "seq": prev + len(ts), "prev_seq": prev, "trades": trades}
    )


def test_tally_counts_deliveries_messages_bytes_and_gaps() -> None:
    t = Tally()
    chain: dict[str, int] = {}
    now = 10**18
    msgs = [
        b'{"type":"ack","op":"subscribe","channels":["book.A"],"epoch":"e","version":1}',
        b'{"type":"snapshot","ch":"book.A","seq":5,"epoch":"e","bids":[["1","2"]],"asks":[]}',
        _delta("book.A", 5, 8, [now - 100, now - 100, now - 50]),
        _delta("book.A", 8, 9, [now - 10]),
        _delta("book.A", 10, 12, [now - 1, now - 1]),  # gap: 9 -> 10 missing
        b'{"type":"heartbeat","ch":"book.A","seq":12}',
        b'{"type":"heartbeat","ch":"book.A","seq":13}',  # gap: 13 never arrived
        b'{"type":"snapshot","ch":"trades.A","seq":0,"epoch":"e","trades":[]}',
        _trades("trades.A", 0, [now - 7, now - 7]),
        b'{"type":"ticker","ch":"ticker.A","seq":1,"prev_seq":0,"ts":%d,"trades":3}' % (now - 3),
        b'{"type":"error","code":"unknown_channel","message":"no such symbol"}',
    ]
    for m in msgs:
        t.feed(chain, m, now)
    assert t.messages == len(msgs)
    assert t.bytes == sum(len(m) + (2 if len(m) < 126 else 4) for m in msgs)
    assert t.deliveries == 3 + 1 + 2 + 2 + 1  # updates, trades, one ticker
    assert t.gaps == 2
    assert (t.snapshots, t.heartbeats, t.errors) == (2, 2, 1)
    assert t.error_samples == ["unknown_channel: no such symbol"]
    assert chain == {"book.A": 13, "trades.A": 2, "ticker.A": 1}
    assert t.hist.total == t.deliveries
    assert t.hist.max == 100 and t.hist.quantile(0.5) == 7
    assert t.counters() - Counters() == t.counters()


@pytest.mark.parametrize("shape", ["same", "few", "many", "clamped"])
def test_tally_batch_latency_path_equals_record(shape: str) -> None:
    rng = random.Random(shape)
    now = 1_700_000_000_000_000_000
    if shape == "same":
        lat = [123_456] * 40
    elif shape == "few":
        lat = [rng.choice([10, 5_000, 70_000, 2_000_000]) for _ in range(40)]
    elif shape == "many":
        lat = [rng.randrange(0, 50_000_000) for _ in range(40)]
    else:
        lat = [-500, 3, MAX_VALUE + 10**9, 77]
    t = Tally()
    t.feed({}, _delta("book.A", 0, len(lat), [now - x for x in lat]), now)
    ref = Histogram()
    for x in lat:
        ref.record(x)
    assert t.hist.counts == ref.counts
    assert (t.hist.total, t.hist.negative, t.hist.max) == (ref.total, ref.negative, ref.max)
    assert t.hist.sum == ref.sum


# -- plan and report (Sans-I/O) --------------------------------------------------------


def test_channel_list_and_plan() -> None:
    assert channel_list(symbols=2) == ["book.SYM0", "book.SYM1"]
    assert channel_list(symbols=1, kinds="book,trades") == ["book.SYM0", "trades.SYM0"]
    assert channel_list("book.X, book.Y,book.X") == ["book.X", "book.Y"]
    for bad in ({}, {"channels": "a", "symbols": 1}, {"symbols": 1, "kinds": "nope"}):
        with pytest.raises(ConfigError):
            channel_list(**bad)  # type: ignore[arg-type]
    chans = ["c0", "c1", "c2"]
    shares = plan(7, chans, 2)
    assert shares == [[["c0"], ["c2"], ["c1"], ["c0"]], [["c1"], ["c0"], ["c2"]]]
    assert plan(2, chans, 5, per_conn=2) == [[["c0", "c1"]], [["c1", "c2"]]]
    assert auto_procs(100, cpus=2) == 1 and auto_procs(3, cpus=8) == 3
    assert auto_procs(100, cpus=64) == 16 and auto_procs(1, cpus=1) == 1


def test_summarize_sums_workers_and_flags_a_client_bound_run() -> None:
    def final(worker: int, latencies: list[int], cpu_s: float) -> WorkerReport:
        h = Histogram()
        for x in latencies:
            h.record(x)
        return WorkerReport(
            worker=worker,
            phase="final",
            conns=3,
            connect_errors=1,
            disconnects=worker,
            window=Counters(messages=2, bytes=100, deliveries=len(latencies)),
            totals=Counters(messages=5, bytes=300, deliveries=10),
            window_s=2.0,
            cpu_s=cpu_s,
            hist=h.to_sparse(),
            hist_total=h.total,
            hist_sum=h.sum,
            hist_max=h.max,
            errors=["connect failed: x"],
        )

    finals = [final(0, [1000, 2000], 0.5), final(1, [3000, 4_000_000], 1.9)]
    res = summarize(finals, url="ws://x", conns=6, channels=["book.A"], duration_s=2, warmup_s=1)
    doc = res.to_json()
    assert list(doc) == list(RESULT_FIELDS)
    assert (doc["procs"], doc["connected"], doc["connect_errors"], doc["disconnects"]) == (
        2,
        4,
        2,
        1,
    )
    assert doc["deliveries"] == 4 and doc["deliveries_per_s"] == 2.0
    assert doc["totals"]["deliveries"] == 20 and doc["bytes"] == 200
    assert doc["latency_ms"]["count"] == 4 and doc["latency_ms"]["max"] == 4.0
    assert doc["client_cpu_pct"] == [25.0, 95.0] and doc["client_bound"] is True
    assert doc["errors"] == ["connect failed: x"]
    assert "load generator itself was the bottleneck" in format_text(res)
    finals[1].cpu_s = 0.2
    assert (
        summarize(finals, url="", conns=6, channels=[], duration_s=1, warmup_s=0).client_bound
        is False
    )


# -- the command against a real server -------------------------------------------------


def _bench_cmd(url: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "tickwire", "bench", url, "--json", *args]


def _check_schema(doc: dict[str, Any], procs: int) -> None:
    assert list(doc) == list(RESULT_FIELDS)
    assert doc["tool"] == "tickwire bench" and doc["version"] == 1
    for key in ("conns", "procs", "connected", "connect_errors", "disconnects", "gaps"):
        assert isinstance(doc[key], int) and doc[key] >= 0, key
    for key in ("deliveries", "messages", "bytes"):
        assert isinstance(doc[key], int) and doc[key] >= 0, key
        assert isinstance(doc[f"{key}_per_s"], float), key
        if doc["elapsed_s"] > 0:
            assert doc[f"{key}_per_s"] == pytest.approx(doc[key] / doc["elapsed_s"], rel=1e-3)
        assert doc["totals"][key] >= doc[key]
    assert set(doc["latency_ms"]) == set(LATENCY_FIELDS)
    lat = doc["latency_ms"]
    assert lat["count"] == doc["deliveries"]
    assert 0 <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p999"] <= lat["max"]
    assert doc["procs"] == procs and len(doc["client_cpu_pct"]) == procs
    assert all(isinstance(p, float) and p >= 0 for p in doc["client_cpu_pct"])
    assert isinstance(doc["client_bound"], bool) and isinstance(doc["ended_early"], bool)
    assert isinstance(doc["channels"], list) and isinstance(doc["errors"], list)
    assert doc["totals"]["snapshots"] >= doc["connected"]


def _wait_measuring(proc: subprocess.Popen[str], conns: int, timeout: float = 30.0) -> None:
    """Read the progress lines until the window is open with every connection up."""
    assert proc.stderr is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stderr, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        if not sel.select(timeout=0.5):
            continue
        line = proc.stderr.readline()
        if not line:
            break
        seen.append(line)
        if line.lstrip().startswith("measure") and f"conns {conns}/{conns}" in line:
            return
    raise AssertionError(f"bench never reported measuring: {seen[-5:]}")


def _run_until_server_stops(
    server: ServerProcess, bench_args: list[str], conns: int, before_stop: Callable[[], None]
) -> tuple[dict[str, Any], dict[str, Any]]:
    proc = subprocess.Popen(
        _bench_cmd(server.url, *bench_args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_measuring(proc, conns)
        before_stop()
        stats = server.stop()
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert stats is not None
    return json.loads(out), stats


@pytest.mark.parametrize(
    "procs, extra",
    [
        (1, ["--symbols", "2"]),
        (2, ["--symbols", "2", "--kinds", "book,trades", "--channels-per-conn", "2"]),
    ],
)
def test_counts_exactly_what_the_server_sent(
    server_factory: Callable[..., ServerProcess], procs: int, extra: list[str]
) -> None:
    server = server_factory("--symbols", "2", "--rate", "2000")
    args = ["--conns", "4", "--procs", str(procs), "--duration", "60", "--warmup", "0.3", *extra]
    doc, stats = _run_until_server_stops(server, args, 4, lambda: time.sleep(0.5))
    _check_schema(doc, procs)
    assert doc["connected"] == 4 and doc["connect_errors"] == 0
    # Every connection was closed by the server's going-away, which ended the run early.
    assert doc["disconnects"] == 4 and doc["ended_early"] is True
    assert any("1001" in e for e in doc["errors"])
    assert doc["gaps"] == 0 and doc["totals"]["gaps"] == 0
    assert doc["totals"]["deliveries"] > 0
    assert doc["totals"]["deliveries"] == stats["updates_out"]


def test_counts_gaps_of_a_dropped_message(server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory("--symbols", "2", "--rate", "2000", "--test-faults")

    def drop_one() -> None:
        async def fault() -> None:
            async with websockets.connect(server.url) as ws:
                await ws.send('{"op":"fault","channels":["book.SYM0"],"fault":"drop","id":1}')
                assert json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "ack"

        asyncio.run(fault())
        time.sleep(0.3)

    args = ["--conns", "4", "--symbols", "2", "--procs", "1", "--duration", "60", "--warmup", "0"]
    doc, stats = _run_until_server_stops(server, args, 4, drop_one)
    # Connections 0 and 2 subscribe book.SYM0: each sees the hole once.
    assert doc["totals"]["gaps"] == 2
    assert doc["totals"]["deliveries"] == stats["updates_out"]


def test_completes_its_window_and_prints_text_without_json(server: ServerProcess) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tickwire",
            "bench",
            server.url,
            "--conns",
            "3",
            "--channels",
            "book.BTC-USD,trades.ETH-USD,ticker.SOL-USD",
            "--duration",
            "1",
            "--warmup",
            "0.3",
            "--procs",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "deliveries" in proc.stdout and "p99.9" in proc.stdout
    assert "3/3 connected" in proc.stdout and "ended early" not in proc.stdout
    assert "measure" in proc.stderr  # the progress line


def test_json_run_to_the_end(server: ServerProcess) -> None:
    proc = subprocess.run(
        _bench_cmd(
            server.url,
            "--conns",
            "2",
            "--channels",
            "book.BTC-USD,book.ETH-USD",
            "--duration",
            "1",
            "--warmup",
            "0.2",
            "--procs",
            "2",
            "--no-progress",
        ),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "measure" not in proc.stderr  # --no-progress
    doc = json.loads(proc.stdout)
    _check_schema(doc, 2)
    assert doc["ended_early"] is False and doc["disconnects"] == 0 and doc["gaps"] == 0
    assert doc["deliveries"] > 0 and doc["elapsed_s"] > 0
    assert doc["channels"] == ["book.BTC-USD", "book.ETH-USD"]


def test_no_connection_exits_non_zero(server_factory: Callable[..., ServerProcess]) -> None:
    srv = server_factory("--symbols", "1")
    url = srv.url
    srv.stop()  # the port is now closed
    proc = subprocess.run(
        _bench_cmd(
            url, "--conns", "3", "--procs", "1", "--duration", "1", "--connect-timeout", "2"
        ),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    doc = json.loads(proc.stdout)
    assert doc["connected"] == 0 and doc["connect_errors"] == 3
    assert doc["deliveries"] == 0 and doc["latency_ms"]["p99"] == 0.0
    assert "no connection could be made" in proc.stderr


def test_unknown_channel_is_reported(server: ServerProcess) -> None:
    proc = subprocess.run(
        _bench_cmd(
            server.url,
            "--conns",
            "1",
            "--channels",
            "book.NOPE",
            "--duration",
            "0.5",
            "--warmup",
            "0",
            "--procs",
            "1",
            "--no-progress",
        ),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0
    doc = json.loads(proc.stdout)
    assert doc["totals"]["errors"] == 1 and doc["deliveries"] == 0
    assert any("unknown_channel" in e for e in doc["errors"])
