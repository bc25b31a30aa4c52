"""``tickwire bench --dialect``: venue feeds measured by the bench.

Two kinds of venue: a real tickwire gateway's Binance, OKX and Kraken endpoints (a
healthy feed: no gap, no checksum failure, latency from the venue's event time), and a
replay venue that sends the documented frames committed in ``tests/fixtures/venues/``
(each with a known hole or checksum failure), so the bench's counts are exact.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import WSMsgType, web

from helpers import ServerProcess
from tickwire.exceptions import ConfigError
from tickwire.loadtest.report import RESULT_FIELDS
from tickwire.loadtest.runner import BenchConfig, run_bench
from tickwire.loadtest.venue import decoder_for, estimate_offset, parse_server_time
from venues import start_venue_gateway

FIXTURES = Path(__file__).with_name("fixtures") / "venues"


def _bench_cmd(url: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "tickwire", "bench", url, "--json", "--no-progress", *args]


def test_bench_measures_every_venue_endpoint_of_a_gateway(
    server_factory: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    # Over TLS (wss://, a certificate for 127.0.0.1 trusted through SSL_CERT_FILE, as
    # for any private CA): the venues are reached the same way.
    gw = start_venue_gateway(
        server_factory, tmp_path, "--symbols", "BTC-USDT,ETH-USDT", "--rate", "500"
    )
    assert gw.ws.startswith("wss://") and gw.cafile is not None
    env = dict(os.environ, SSL_CERT_FILE=str(gw.cafile))
    paths = {"binance": "/binance/ws", "okx": "/okx/ws/v5/public", "kraken": "/kraken/v2"}
    common = ["--conns", "2", "--procs", "1", "--duration", "0.6", "--warmup", "0.2"]
    channels = [
        "--channels",
        "book.BTC-USDT,trades.BTC-USDT,book.ETH-USDT",
        "--channels-per-conn",
        "3",
    ]
    procs = {}
    for venue, path in paths.items():  # the three venues at once
        extra = ["--dialect", venue, "--rest", f"{gw.http}/{venue}"]
        if venue != "kraken":
            extra += ["--clock-offset", "auto"]
        cmd = _bench_cmd(gw.ws + path, *common, *channels, *extra)
        procs[venue] = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
    for venue, proc in procs.items():
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        doc = json.loads(out)
        assert list(doc) == list(RESULT_FIELDS)
        assert doc["dialect"] == venue and doc["connected"] == 2, doc
        assert doc["gaps"] == 0 and doc["checksum_failures"] == 0, doc
        assert doc["totals"]["errors"] == 0 and doc["disconnects"] == 0, doc
        # Two books per connection, each loaded once (Binance: from REST).
        assert doc["totals"]["snapshots"] == 4, doc
        assert doc["deliveries"] > 0 and doc["latency_ms"]["count"] > 0, doc
        assert doc["latency_definition"].startswith("receive time minus")
        if venue == "kraken":
            assert doc["clock_offset_ms"] == 0 and doc["clock_offset_source"].startswith(
                "assumed 0"
            )
        else:
            # Same host: the measured offset is within a round trip plus a millisecond.
            assert doc["clock_offset_source"].startswith("measured from the venue's REST time")
            assert abs(doc["clock_offset_ms"]) < 50, doc


# -- a replay venue of the documented frames -------------------------------------------------


def _fixture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    return data


def _frames(venue: str) -> tuple[list[str], dict[str, Any]]:
    fx = _fixture(venue)
    dump = json.dumps
    if venue == "binance":
        return [dump(f) for f in fx["frames"]] + [dump(fx["trade"])], fx["rest_depth"]
    if venue == "okx":
        keys = ("snapshot", "update", "bad_checksum", "gap", "trade")
        return [dump(fx[k]) for k in keys], {}
    return [fx[k] for k in ("snapshot", "update", "bad_checksum", "trade")], {}


async def _replay_venue(venue: str) -> tuple[web.AppRunner, int]:
    frames, depth = _frames(venue)

    async def ws(request: web.Request) -> web.WebSocketResponse:
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        sent = False
        async for msg in sock:
            if msg.type == WSMsgType.TEXT and not sent:
                sent = True  # the frames once, on the first subscribe
                for frame in frames:
                    await sock.send_str(frame)
        return sock

    async def rest(request: web.Request) -> web.Response:
        return web.json_response(depth)

    app = web.Application()
    app.router.add_get("/ws", ws)
    app.router.add_get("/api/v3/depth", rest)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, port


#: venue -> (channels, the totals the documented frames must give).
DOCUMENTED = {
    # The documented procedure: one snapshot, diffs 1027023-26 and 27-30 applied
    # (2 + 3 levels), 1027025-29 ignored as old, 1027035 a gap; plus one trade.
    "binance": (
        "book.BNB-BTC,trades.BNB-BTC",
        {"snapshots": 1, "deliveries": 6, "gaps": 1, "checksum_failures": 0},
    ),
    # Snapshot, an update of 3 levels, a checksum failure (the book dropped, so the
    # gap frame after it waits for a snapshot), one trade.
    "okx": (
        "book.BTC-USDT,trades.BTC-USDT",
        {"snapshots": 1, "deliveries": 4, "gaps": 0, "checksum_failures": 1},
    ),
    # The guides' book, the v1 guide's update (4 levels), a checksum failure, a trade.
    "kraken": (
        "book.BTC-USD,trades.MATIC-USD",
        {"snapshots": 1, "deliveries": 5, "gaps": 0, "checksum_failures": 1},
    ),
}


def test_bench_counts_the_documented_frames_exactly() -> None:
    async def one(venue: str) -> Any:
        runner, port = await _replay_venue(venue)
        try:
            config = BenchConfig(
                url=f"ws://127.0.0.1:{port}/ws",
                channels=DOCUMENTED[venue][0].split(","),
                conns=1,
                procs=1,
                duration=0.4,
                warmup=0.1,
                per_conn=2,
                progress=False,
                dialect=venue,
                rest=f"http://127.0.0.1:{port}",
            )
            return await asyncio.to_thread(run_bench, config, io.StringIO())
        finally:
            await runner.cleanup()

    async def run() -> list[Any]:
        return list(await asyncio.gather(*(one(v) for v in DOCUMENTED)))  # the three at once

    for venue, result in zip(DOCUMENTED, asyncio.run(run()), strict=True):
        expected = DOCUMENTED[venue][1]
        totals = result.to_json()["totals"]
        assert {k: totals[k] for k in expected} == expected, (venue, totals, result.errors)
        assert totals["errors"] == 0 and result.connected == 1, venue


def test_options_and_clock_offset_arithmetic() -> None:
    with pytest.raises(ConfigError, match="book.SYMBOL"):
        decoder_for("okx", ["BTC-USDT"])
    with pytest.raises(ConfigError, match="--dialect"):
        decoder_for("ftx", ["book.BTC-USDT"])
    # The venue answered 1000 ms (taken as 1000.5 ms); the fastest sample wins.
    samples = [
        (0, 10_000_000, 1_000_500_000),
        (999_000_000, 1_001_000_000, parse_server_time("binance", b'{"serverTime":1000}')),
    ]
    assert estimate_offset(samples) == (500_000, 2_000_000)
    assert parse_server_time("okx", b'{"code":"0","data":[{"ts":"2"}]}') == 2_500_000
    with pytest.raises(ConfigError, match="no millisecond time endpoint"):
        parse_server_time("kraken", b"{}")
    with pytest.raises(ConfigError, match="unusable"):
        parse_server_time("binance", b"{}")
    bad = subprocess.run(
        [sys.executable, "-m", "tickwire", "bench", "ws://127.0.0.1:9/ws", "--clock-offset", "5"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert bad.returncode == 2 and "need --dialect" in bad.stderr


def test_bench_pings_a_quiet_venue() -> None:
    async def run() -> list[str]:
        got: list[str] = []

        async def ws(request: web.Request) -> web.WebSocketResponse:
            sock = web.WebSocketResponse()
            await sock.prepare(request)
            async for msg in sock:  # subscribed, then silence
                if msg.type == WSMsgType.TEXT:
                    got.append(msg.data)
            return sock

        app = web.Application()
        app.router.add_get("/ws", ws)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        config = BenchConfig(
            url=f"ws://127.0.0.1:{port}/ws",
            channels=["book.BTC-USDT"],
            conns=1,
            procs=1,
            duration=0.8,
            warmup=0.0,
            progress=False,
            dialect="okx",
            keepalive_s=0.3,
        )
        try:
            await asyncio.to_thread(run_bench, config, io.StringIO())
        finally:
            await runner.cleanup()
        return got

    got = asyncio.run(run())
    assert json.loads(got[0])["op"] == "subscribe" and "ping" in got[1:]
