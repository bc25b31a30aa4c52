"""``tickwire serve --source okx+ws://...``: a gateway following a venue's feed.

The upstream venue is a real tickwire gateway (its Binance, OKX and Kraken endpoints);
a second gateway follows it as a venue and serves the market again. A native client and
the SDK on the follower must hold books equal to the upstream's at the same point (the
follower's own seqs differ: it numbers what it relays, so a book is matched by its
checksum and then compared level by level), and so must a venue client of the follower.
When the upstream goes away the follower marks the symbol stale (``/readyz`` names it),
and when it comes back the follower resyncs by the venue's rules.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import websockets

from helpers import ServerProcess
from tickwire.client import Backoff, Client
from tickwire.dialects.decode import make_decoder
from tickwire.exceptions import ConfigError
from tickwire.sources.venue import VenueSource, is_venue_spec, parse_venue_spec
from venues import NativeRecorder, VenueGateway, levels, start_venue_gateway

SYMBOL = "BTC-USDT"
PATHS = {"binance": "/binance/ws", "okx": "/okx/ws/v5/public", "kraken": "/kraken/v2"}

Levels = dict[Decimal, Decimal]


def _follower(
    server_factory: Callable[..., ServerProcess], tmp_path: Path, up: VenueGateway, venue: str
) -> VenueGateway:
    extra = ["--venue-rest", f"{up.http}/binance"] if venue == "binance" else []
    return start_venue_gateway(
        server_factory,
        tmp_path,
        "--symbols",
        SYMBOL,
        "--source",
        f"{venue}+{up.ws}{PATHS[venue]}",
        *extra,
        tls=False,
    )


def _upstream(
    server_factory: Callable[..., ServerProcess], tmp_path: Path, *args: str
) -> VenueGateway:
    return start_venue_gateway(
        server_factory, tmp_path, "--symbols", SYMBOL, "--rate", "300", *args, tls=False
    )


async def _drop_one_book_message(up: VenueGateway) -> None:
    """The upstream loses one message of its native book channel (``--test-faults``):
    its venue streams resync as after a hole -- OKX and Kraken subscribers get a fresh
    snapshot, Binance diff subscribers are closed (1011) to refetch REST."""
    fault = {"op": "fault", "channels": [f"book.{SYMBOL}"], "fault": "drop", "id": 1}
    async with websockets.connect(f"{up.ws}/ws") as ws:
        await ws.send(json.dumps(fault))
        assert json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "ack"


def _assert_upstream_had(rec: NativeRecorder, bids: Levels, asks: Levels, checksum: int) -> None:
    """The upstream held exactly this book at some seq (found by its checksum)."""
    seqs = rec.by_checksum.get(checksum)
    assert seqs, "no upstream book with the follower's checksum"
    assert any(rec.books[s] == (bids, asks) for s in seqs), "same checksum, different levels"


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        text: str = resp.read().decode()
        return text


def _ready(gw: VenueGateway) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"{gw.http}/readyz", timeout=2) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


async def _wait_ready(gw: VenueGateway, status: int, limit: float = 15.0) -> dict[str, Any]:
    """Poll ``/readyz`` until it answers ``status``; its body."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        code, body = _ready(gw)
        if code == status:
            return body
        await asyncio.sleep(0.05)
    raise AssertionError(f"/readyz never answered {status}")


async def _okx_client(gw: VenueGateway, stop: asyncio.Event) -> tuple[int, Levels, Levels]:
    """An OKX client of the follower: its last verified book and seqId."""
    dec = make_decoder("okx", [SYMBOL])
    async with websockets.connect(gw.ws + PATHS["okx"]) as ws:
        for frame in dec.subscribe():
            await ws.send(frame.decode())
        while not stop.is_set():
            try:
                raw = await asyncio.wait_for(ws.recv(), 0.2)
            except TimeoutError:
                continue
            dec.feed(raw.encode() if isinstance(raw, str) else raw, time.time_ns())
    assert dec.checksum_failures == 0 and dec.gaps == 0
    book = dec.books[SYMBOL]
    return dec.last[SYMBOL], levels(book.bids()), levels(book.asks())  # type: ignore[attr-defined]


@pytest.mark.parametrize("venue", ["okx", "kraken", "binance"])
def test_a_follower_serves_the_upstream_books_natively_and_as_a_venue(
    server_factory: Callable[..., ServerProcess], tmp_path: Path, venue: str
) -> None:
    up = _upstream(server_factory, tmp_path, "--test-faults")

    async def run() -> None:
        follower = _follower(server_factory, tmp_path, up, venue)
        assert _ready(follower)[0] == 200
        # A hole upstream first: the follower resyncs by the venue's rule.
        await _drop_one_book_message(up)
        await asyncio.sleep(0.3)
        await _wait_ready(follower, 200)
        rec_up = NativeRecorder(up, SYMBOL)
        up_task = asyncio.create_task(rec_up.run())
        await asyncio.wait_for(rec_up.ready.wait(), 10)
        rec_f = NativeRecorder(follower, SYMBOL)
        f_task = asyncio.create_task(rec_f.run())
        stop = asyncio.Event()
        okx_task = asyncio.create_task(_okx_client(follower, stop))
        async with Client(follower.srv.url, [f"book.{SYMBOL}"]) as sdk:
            await asyncio.wait_for(sdk.wait_live(), 10)
            await asyncio.sleep(0.7)
            stop.set()
            sdk_book = sdk.book(SYMBOL)
            sdk_state = (levels(sdk_book.bids()), levels(sdk_book.asks()), sdk_book.checksum())
        okx_seq, okx_bids, okx_asks = await okx_task
        rec_f.stop()
        await f_task
        await asyncio.sleep(0.3)  # the upstream recorder has read past the follower
        rec_up.stop()
        await up_task
        # Every book the follower's native client saw (verified chain and checksum) was
        # the upstream's book at some seq.
        assert len(rec_f.books) >= 5
        checked = 0
        for crc, seqs in rec_f.by_checksum.items():
            for s in seqs[-3:]:
                if rec_f.books[s] == rec_f.books[min(rec_f.books)]:
                    continue  # the first snapshot may predate the upstream recorder
                _assert_upstream_had(rec_up, *rec_f.books[s], crc)
                checked += 1
        assert checked >= 5
        # The SDK's verified book, likewise.
        _assert_upstream_had(rec_up, *sdk_state)
        # The follower's OKX endpoint: its seqId is the follower's native seq.
        rec_f.assert_book(okx_seq, okx_bids, okx_asks)
        stats = follower.srv.stop()
        assert stats is not None
        src = stats["source"]
        assert src["kind"] == "venue" and src["venue"] == venue
        assert src["checksum_failures"] == 0 and src["gaps"] == 0 and src["stale"] == []
        assert src["updates"] > 0 and src["trades"] > 0
        # The upstream's hole: a second book, in-band (OKX, Kraken) or after the
        # upstream closed the diff stream and the follower reconnected (Binance).
        assert src["loads"] == 2, src
        if venue == "binance":
            expected = (2, {"disconnect": 1}, 2)
            assert (src["connects"], src["holes"], src["snapshot_requests"]) == expected, src
        else:
            assert (src["connects"], src["holes"]) == (1, {}), src

    asyncio.run(run())


def test_the_follower_goes_stale_without_its_upstream_and_resyncs_when_it_returns(
    server_factory: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    up = _upstream(server_factory, tmp_path)
    follower = _follower(server_factory, tmp_path, up, "okx")

    async def run() -> None:
        fast = Backoff(0.05, 0.5)
        async with Client(follower.srv.url, [f"book.{SYMBOL}"], backoff=fast) as sdk:
            await asyncio.wait_for(sdk.wait_live(), 10)
            # The upstream dies without a close frame: the symbol goes stale.
            up.srv.kill()
            body = await _wait_ready(follower, 503)
            assert body["incomplete_books"] == [SYMBOL]
            # It comes back (a new market on the same port): the follower reconnects,
            # resubscribes, and serves the new upstream's book.
            up.srv.start()
            await _wait_ready(follower, 200)
            rec_up = NativeRecorder(up, SYMBOL)
            task = asyncio.create_task(rec_up.run())
            await asyncio.wait_for(rec_up.ready.wait(), 10)
            await asyncio.sleep(1.0)
            await asyncio.wait_for(sdk.wait_live(), 10)
            book = sdk.book(SYMBOL)
            state = (levels(book.bids()), levels(book.asks()), book.checksum())
            await asyncio.sleep(0.3)
            rec_up.stop()
            await task
            _assert_upstream_had(rec_up, *state)
        metrics = await asyncio.to_thread(_get, f"{follower.http}/metrics")
        for line in (
            f'tickwire_venue_up{{symbol="{SYMBOL}",venue="okx"}} 1.0',
            'tickwire_venue_holes_total{reason="disconnect",venue="okx"} 1.0',
            'tickwire_venue_connects_total{venue="okx"} 2.0',
            'tickwire_venue_connected{venue="okx"} 1.0',
        ):
            assert line in metrics, line
        stats = follower.srv.stop()
        assert stats is not None
        src = stats["source"]
        assert src["connects"] == 2 and src["disconnects"] == 1
        assert src["holes"] == {"disconnect": 1} and src["stale"] == []

    asyncio.run(run())


def test_venue_specs_and_options() -> None:
    assert parse_venue_spec("okx+wss://ws.okx.com:8443/ws/v5/public") == (
        "okx",
        "wss://ws.okx.com:8443/ws/v5/public",
    )
    assert is_venue_spec("kraken+ws://127.0.0.1:1/kraken/v2")
    assert not is_venue_spec("nats://127.0.0.1:4222") and not is_venue_spec("okx+http://x")
    with pytest.raises(ConfigError, match="binance\\+wss://"):
        parse_venue_spec("bitmex+wss://x")
    with pytest.raises(ConfigError, match="--venue-rest"):
        VenueSource("binance+wss://stream.binance.com:9443/ws", [SYMBOL])
    with pytest.raises(ConfigError, match="--symbols"):
        VenueSource("okx+wss://ws.okx.com:8443/ws/v5/public", [])


def test_serve_refuses_a_venue_source_without_symbols(
    server_factory: Callable[..., ServerProcess],
) -> None:
    with pytest.raises(RuntimeError, match="--symbols"):
        server_factory("--source", "okx+ws://127.0.0.1:9/okx/ws/v5/public")


# -- tickwire record --source VENUE: a venue's feed recorded, then replayed ----------------


def test_record_a_venue_feed_and_replay_it(
    server_factory: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    import subprocess
    import sys

    from tickwire.book import Book

    up = _upstream(server_factory, tmp_path)
    out = tmp_path / "okx.ndjson"

    async def record() -> NativeRecorder:
        rec_up = NativeRecorder(up, SYMBOL)
        task = asyncio.create_task(rec_up.run())
        await asyncio.wait_for(rec_up.ready.wait(), 10)
        cmd = [sys.executable, "-m", "tickwire", "record", "--source", f"okx+{up.ws}{PATHS['okx']}"]
        cmd += ["--symbols", SYMBOL, "--out", str(out), "--duration", "0.8"]
        proc = await asyncio.create_subprocess_exec(*cmd, stderr=subprocess.PIPE)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, err.decode()
        summary = json.loads(err.decode().strip().splitlines()[-1])
        assert summary["source"]["loads"] == 1 and summary["source"]["holes"] == {}
        await asyncio.sleep(0.3)
        rec_up.stop()
        await task
        return rec_up

    rec_up = asyncio.run(record())
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    header, msgs = lines[0], lines[1:]
    assert header["type"] == "recording" and header["venue"] == "okx"
    assert header["symbols"] == [SYMBOL]
    # The recording is tickwire's protocol: a book snapshot, then chained deltas whose
    # checksums hold, each book the upstream's at some seq.
    book, seq, deltas = Book(), -1, 0
    for m in msgs:
        if m["type"] == "snapshot" and m["ch"] == f"book.{SYMBOL}":
            book.load(m["bids"], m["asks"])
            seq = m["seq"]
        elif m["type"] == "delta":
            assert m["prev_seq"] == seq and m["seq"] - seq == len(m["updates"])
            for u in m["updates"]:
                book.apply(u["side"], u["price"], u["qty"])
            assert book.checksum() == m["checksum"]
            seq = m["seq"]
            deltas += 1
    assert deltas >= 5 and any(m["type"] == "trades" for m in msgs)
    _assert_upstream_had(rec_up, levels(book.bids()), levels(book.asks()), book.checksum())
    # Replayed by a gateway, it ends at the recorded book.
    replay = start_venue_gateway(
        server_factory, tmp_path, "--source", str(out), "--replay-speed", "max", tls=False
    )
    deadline = time.monotonic() + 15
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"{replay.http}/api/v1/book/{SYMBOL}", timeout=2) as resp:
            body = json.loads(resp.read())
        if body.get("seq") == seq:
            break
        time.sleep(0.1)
    assert body.get("seq") == seq, body.get("seq")
    assert body["checksum"] == book.checksum()
    assert levels(body["bids"]) == levels(book.bids()) and levels(body["asks"]) == levels(
        book.asks()
    )


@pytest.mark.parametrize("venue, ping", [("okx", "ping"), ("kraken", '{"method":"ping"}')])
def test_a_quiet_venue_gets_its_application_ping(venue: str, ping: str) -> None:
    import io

    from aiohttp import WSMsgType, web

    from tickwire.record import RecordingSink

    async def run() -> list[str]:
        got: list[str] = []

        async def ws(request: web.Request) -> web.WebSocketResponse:
            sock = web.WebSocketResponse()
            await sock.prepare(request)
            async for msg in sock:  # a venue that never sends a frame
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
        source = VenueSource(
            f"{venue}+ws://127.0.0.1:{port}/ws", [SYMBOL], timeout=0.2, keepalive_after=0.3
        )
        sink = RecordingSink(io.BytesIO(), [SYMBOL])
        try:
            await source.start(sink)  # no book comes: it serves on, the symbol stale
            assert sink.incomplete == {SYMBOL}
            await asyncio.sleep(0.6)
        finally:
            await source.stop()
            await runner.cleanup()
        return got

    got = asyncio.run(run())
    assert json.loads(got[0])  # the subscription first
    assert ping in got[1:]


def test_a_book_that_never_verifies_is_resynced_with_backoff_not_in_a_storm() -> None:
    import io

    from aiohttp import WSMsgType, web

    from tickwire.record import RecordingSink

    fx = json.loads((Path(__file__).with_name("fixtures") / "venues" / "kraken.json").read_text())

    async def run() -> tuple[int, VenueSource, RecordingSink]:
        subscribes = 0

        async def ws(request: web.Request) -> web.WebSocketResponse:
            nonlocal subscribes
            sock = web.WebSocketResponse()
            await sock.prepare(request)
            async for msg in sock:
                req = json.loads(msg.data) if msg.type == WSMsgType.TEXT else {}
                if req.get("method") == "subscribe" and req["params"]["channel"] == "book":
                    # Every book subscription: the guide's book, then an update whose
                    # checksum fails.
                    subscribes += 1
                    await sock.send_str(fx["snapshot"])
                    await sock.send_str(fx["bad_checksum"])
            return sock

        app = web.Application()
        app.router.add_get("/v2", ws)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        source = VenueSource(f"kraken+ws://127.0.0.1:{port}/v2", ["BTC-USD"], timeout=0.5)
        sink = RecordingSink(io.BytesIO(), ["BTC-USD"])
        wake = asyncio.Event()
        source.on_arrival(wake.set)
        try:
            await source.start(sink)
            end = time.monotonic() + 1.5
            while time.monotonic() < end:  # the tick loop
                wake.clear()
                for batch in source.poll(time.monotonic()):
                    sink.publish(*batch)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), 0.05)
        finally:
            await source.stop()
            await runner.cleanup()
        return subscribes, source, sink

    subscribes, source, sink = asyncio.run(run())
    # One book subscription at connect, then one per resync: the first at once, the
    # next ones backing off (0.5 s, 1 s, 2 s ... ceilings): a handful in 1.5 s, not a
    # storm (without it, one per round trip: hundreds).
    assert 2 <= subscribes <= 6, subscribes
    assert source.stats()["holes"] == {"checksum": subscribes}
    # No book was ever served: each snapshot waits for an update that continues it,
    # and every first update failed its checksum.
    assert source.loads == 0 and sink.incomplete == {"BTC-USD"}


# -- tickwire publish --source VENUE: one upstream connection, a fleet behind NATS --------


def test_publish_a_venue_to_nats_and_two_gateways_serve_it(
    server_factory: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    from nats_helpers import NatsServer, publisher

    up = _upstream(server_factory, tmp_path)
    nats = NatsServer().start()
    pub = None
    try:
        pub = publisher(nats.url, "--source", f"okx+{up.ws}{PATHS['okx']}", "--symbols", SYMBOL)
        fleet = [
            VenueGateway(server_factory("--source", nats.url, "--symbols", SYMBOL), 0, None)
            for _ in range(2)
        ]

        async def run() -> tuple[NativeRecorder, list[NativeRecorder]]:
            rec_up = NativeRecorder(up, SYMBOL)
            up_task = asyncio.create_task(rec_up.run())
            await asyncio.wait_for(rec_up.ready.wait(), 10)
            recs = [NativeRecorder(gw, SYMBOL) for gw in fleet]
            tasks = [asyncio.create_task(r.run()) for r in recs]
            for r in recs:
                await asyncio.wait_for(r.ready.wait(), 10)
            await asyncio.sleep(1.0)
            for r in recs:
                r.stop()
            await asyncio.gather(*tasks)
            await asyncio.sleep(0.2)
            rec_up.stop()
            await up_task
            return rec_up, recs

        rec_up, recs = asyncio.run(run())
        for rec in recs:
            last = rec.books[rec.seq]
            crc = next(c for c, seqs in rec.by_checksum.items() if rec.seq in seqs)
            _assert_upstream_had(rec_up, *last, crc)
        # Behind one publisher, both gateways number the venue's feed alike.
        common = set(recs[0].books) & set(recs[1].books)
        assert len(common) >= 5
        assert all(recs[0].books[s] == recs[1].books[s] for s in common)
        stderr = pub.stop()
        stats = json.loads(stderr.strip().splitlines()[-1])
        assert stats["source"]["kind"] == "venue" and stats["source"]["connects"] == 1
    finally:
        if pub is not None:
            pub.kill()
        nats.stop()
