"""Scripted faults against real clients (docs/connectivity-testing.md).

One gateway per module (``--test-faults``, an admin port), faults added and cleared
through the admin API, as a test harness would:

* every fault kind against the tickwire SDK on the native protocol: the fault reaches
  it, and afterwards its book equals the native book at the same ``seq`` (read by a
  :class:`NativeRecorder` connected once the faults are cleared); the time from the
  first sign of the fault to the next verified book is printed (the bounds in the docs);
* each kind's venue shape at the wire level (Binance, OKX, Kraken);
* the admin API round trip and its errors.

The no-leak test (a control client's bytes unchanged) and the scenario parsing are in
``test_faults_leak.py`` and ``test_faults_spec.py``.
"""

from __future__ import annotations

import asyncio
import gc
import json
import signal
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from helpers import ServerProcess
from tickwire.book import Book
from tickwire.client import Backoff, BookChanged, Client, Disconnected, Event, SyncState
from tickwire.codec import Encoding, Wire
from tickwire.dialects import okx
from tickwire.faults import ActiveFault, parse_fault
from venues import NativeRecorder, VenueGateway, levels, start_venue_gateway

SYMBOL = "BTC-USD"
BOOK = f"book.{SYMBOL}"

#: Recovery measured per case: {case: seconds from the first sign to a verified book}.
RECOVERY: dict[str, float] = {}


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VenueGateway]:
    started: list[ServerProcess] = []

    def factory(*args: str) -> ServerProcess:
        srv = ServerProcess(list(args)).start()
        started.append(srv)
        return srv

    gateway = start_venue_gateway(
        factory,
        tmp_path_factory.mktemp("faults"),
        "--symbols",
        "BTC-USD,ETH-USD",
        "--rate",
        "300",
        "--test-faults",
        "--heartbeat",
        "0.5",
        "--deflate",
        tls=False,
    )
    try:
        yield gateway
    finally:
        for srv in started:
            try:
                srv.stop()
            finally:
                srv.kill()


async def api(
    gw: VenueGateway, method: str, path: str = "/api/v1/faults", body: Any = None
) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http:
        async with http.request(method, gw.http + path, json=body) as resp:
            return resp.status, await resp.json(content_type=None)


async def add_fault(gw: VenueGateway, **fault: Any) -> dict[str, Any]:
    status, body = await api(gw, "POST", body=fault)
    assert status == 201, body
    return dict(body)


async def applied(gw: VenueGateway, fault_id: int) -> int:
    _, body = await api(gw, "GET")
    return int(next(f["applied"] for f in body["faults"] if f["id"] == fault_id))


async def wait_applied(gw: VenueGateway, fault_id: int) -> None:
    deadline = time.monotonic() + 5
    while await applied(gw, fault_id) < 1:
        assert time.monotonic() < deadline, f"fault {fault_id} was never applied"
        await asyncio.sleep(0.02)


@pytest.fixture(autouse=True)
def _clear(gw: VenueGateway) -> Iterator[None]:
    yield
    asyncio.run(api(gw, "DELETE"))


# -- the SDK against every kind ----------------------------------------------------------


class Watched:
    """An SDK client whose book is kept at every seq, and when it was disrupted."""

    def __init__(self, url: str, encoding: str = "json", compression: str | None = None) -> None:
        self.books: dict[int, tuple[dict[Decimal, Decimal], dict[Decimal, Decimal]]] = {}
        self.disrupted: float | None = None
        self.recovered: float | None = None
        self.last_good = 0.0
        self.closes: list[int | None] = []
        self.client = Client(
            url,
            [BOOK],
            on_event=self._event,
            events=False,
            watchdog=1.0,
            backoff=Backoff(initial=0.05, maximum=0.2),
            encoding=encoding,
            compression=compression,
        )
        self._base = (0, 0)

    def _signs(self) -> tuple[int, int]:
        c = self.client.channel(BOOK).counters
        return c.gaps + c.checksum_failures, self.client.stats.disconnects

    def arm(self) -> None:
        """Count from now: the next change of the counters is the fault."""
        self._base = self._signs()
        self.disrupted = self.recovered = None

    def _event(self, event: Event) -> None:
        now = time.monotonic()
        if isinstance(event, Disconnected):
            self.closes.append(event.code)
        if self.disrupted is None and self._signs() != self._base:
            # The book was last known exact at the previous verified message.
            self.disrupted = self.last_good
        if isinstance(event, BookChanged):
            book = self.client.book(SYMBOL)
            self.books[event.seq] = (levels(book.bids()), levels(book.asks()))
            if len(self.books) > 5000:
                del self.books[next(iter(self.books))]
            if self.client.state(BOOK) is SyncState.LIVE:
                if self.disrupted is not None and self.recovered is None:
                    self.recovered = now
                self.last_good = now


async def exact_again(gw: VenueGateway, watched: Watched, want: int = 5) -> None:
    """The SDK's book equals the native one at ``want`` common seqs (none differs)."""
    rec = NativeRecorder(gw, SYMBOL)
    task = asyncio.create_task(rec.run())
    try:
        await asyncio.wait_for(rec.ready.wait(), 5)
        deadline = time.monotonic() + 5
        while True:
            common = sorted(set(watched.books) & set(rec.books))
            if len(common) >= want:
                break
            assert time.monotonic() < deadline, "the SDK's book never met the native one"
            await asyncio.sleep(0.05)
        for seq in common:
            bids, asks = watched.books[seq]
            rec.assert_book(seq, bids, asks)
        assert watched.client.state(BOOK) is SyncState.LIVE
    finally:
        rec.stop()
        await task


# name -> (fault, what the SDK must show): "resync" (a gap or bad checksum seen and
# healed in band), "reconnect" (the link ended and the client resumed), "none".
SDK_CASES: dict[str, tuple[dict[str, Any], str]] = {
    "gap": ({"kind": "gap"}, "resync"),
    "gap-3": ({"kind": "gap", "messages": 3}, "resync"),
    "checksum": ({"kind": "checksum"}, "resync"),
    "duplicate": ({"kind": "duplicate"}, "resync"),
    "reorder": ({"kind": "reorder"}, "resync"),
    "stale_snapshot": ({"kind": "stale_snapshot", "where": "stream", "updates": 40}, "resync"),
    "stall": ({"kind": "stall", "seconds": 2.0}, "reconnect"),
    # Heartbeats at the frozen seq keep the watchdog quiet: the hole shows when data resumes.
    "stall-heartbeats": ({"kind": "stall", "seconds": 2.0, "heartbeats": True}, "resync"),
    "disconnect-1001": ({"kind": "disconnect", "code": 1001}, "reconnect"),
    "disconnect-1006": ({"kind": "disconnect", "code": 1006}, "reconnect"),
    "disconnect-1008": ({"kind": "disconnect", "code": 1008}, "reconnect"),
    "disconnect-1011": ({"kind": "disconnect", "code": 1011}, "reconnect"),
    "disconnect-1013": ({"kind": "disconnect", "code": 1013}, "reconnect"),
    "max_connection_age": (
        {"kind": "max_connection_age", "age": 86400, "speed": 172800, "count": 1},
        "reconnect",
    ),
    "latency": ({"kind": "latency", "delay_ms": 120, "jitter_ms": 60, "duration": 1.0}, "none"),
    "bandwidth": ({"kind": "bandwidth", "bytes_per_s": 3000, "duration": 1.5}, "none"),
    "burst": ({"kind": "burst", "factor": 10, "seconds": 1.0}, "none"),
}


@pytest.mark.parametrize("case", list(SDK_CASES))
def test_sdk_books_exact_again_after(gw: VenueGateway, case: str) -> None:
    fault, expect = SDK_CASES[case]

    async def run() -> None:
        target = {"venues": ["native"], "symbols": [SYMBOL], **fault}
        if fault["kind"] in ("burst", "max_connection_age"):
            target.pop("symbols")
        watched = Watched(f"{gw.ws}/ws")
        in_band = fault["kind"] in ("stale_snapshot", "max_connection_age")
        if in_band:  # applied as the client connects (its first snapshot), or by age
            added = await add_fault(gw, **target)
            watched.arm()
            await asyncio.sleep(0.3)  # the stale book is rolled from the fault's start
        async with watched.client as client:
            await client.wait_live()
            if not in_band:
                watched.arm()
                added = await add_fault(gw, **target)
            await wait_applied(gw, added["id"])
            if expect != "none":
                deadline = time.monotonic() + 8
                while watched.recovered is None:
                    assert time.monotonic() < deadline, f"no recovery: {client.counters()}"
                    await asyncio.sleep(0.02)
                assert watched.disrupted is not None
                RECOVERY[case] = watched.recovered - watched.disrupted
                print(f"\n{case}: {RECOVERY[case] * 1000:.0f} ms between verified books")
            else:
                await asyncio.sleep(float(fault.get("duration", fault.get("seconds", 1.0))))
            counters = client.channel(BOOK).counters
            stats = client.stats
            if expect == "resync":
                assert counters.resyncs >= 1 and stats.disconnects == 0, client.counters()
            elif expect == "reconnect":
                assert stats.reconnects >= 1, client.counters()
            else:
                assert counters.gaps == counters.checksum_failures == 0, client.counters()
            await api(gw, "DELETE")
            await exact_again(gw, watched)
        code = fault.get("code")
        if fault["kind"] == "disconnect":
            # 1006 is never sent: the TCP connection is reset, the client sees no close.
            assert watched.closes[0] == (None if code == 1006 else code), watched.closes

    asyncio.run(run())


# Every native wire: the same faults reach msgpack and deflated connections.
WIRES = {
    "msgpack": ("msgpack", None),
    "deflate": ("json", "deflate"),
    "msgpack+deflate": ("msgpack", "deflate"),
}


@pytest.mark.parametrize("kind", ["gap", "checksum"])
@pytest.mark.parametrize("wire", list(WIRES))
def test_sdk_on_every_wire_recovers_after(gw: VenueGateway, wire: str, kind: str) -> None:
    encoding, compression = WIRES[wire]

    async def run() -> None:
        watched = Watched(f"{gw.ws}/ws", encoding, compression)
        async with watched.client as client:
            await client.wait_live()
            assert client.wire == Wire(Encoding(encoding), compression == "deflate")
            watched.arm()
            added = await add_fault(gw, kind=kind, venues=["native"], symbols=[SYMBOL])
            await wait_applied(gw, added["id"])
            deadline = time.monotonic() + 5
            while watched.recovered is None:
                assert time.monotonic() < deadline, f"no recovery: {client.counters()}"
                await asyncio.sleep(0.02)
            counters = client.channel(BOOK).counters
            # The fault showed as what it is: a hole, or a checksum that does not match.
            assert (counters.gaps if kind == "gap" else counters.checksum_failures) >= 1
            assert counters.resyncs >= 1 and client.stats.disconnects == 0, client.counters()
            await api(gw, "DELETE")
            await exact_again(gw, watched)

    asyncio.run(run())


def test_native_stall_with_heartbeats_on_the_wire(gw: VenueGateway) -> None:
    """A stalled native connection gets one heartbeat per channel every interval (0.5 s
    here), at the seq it was last sent; then data resumes past a hole."""

    async def run() -> list[tuple[float, Any]]:
        seen: list[tuple[float, Any]] = []
        async with websockets.connect(f"{gw.ws}/ws") as ws:
            channels = [BOOK, "trades.BTC-USD"]
            await ws.send(json.dumps({"op": "subscribe", "channels": channels, "id": 1}))
            t0 = time.monotonic()
            while time.monotonic() - t0 < 0.5:
                seen.append((time.monotonic(), json.loads(await ws.recv())))
            await add_fault(
                gw, kind="stall", seconds=1.6, heartbeats=True, venues=["native"], symbols=[]
            )
            t1 = time.monotonic()
            while time.monotonic() - t1 < 2.5:
                seen.append((time.monotonic(), json.loads(await ws.recv())))
        return seen

    seen = asyncio.run(run())
    book = [(t, m) for t, m in seen if m.get("ch") == BOOK]
    beats = [i for i, (_, m) in enumerate(book) if m["type"] == "heartbeat"]
    assert len(beats) >= 2, [m["type"] for _, m in book]
    # Heartbeats only while stalled: every book heartbeat in a row, spaced by the interval.
    run_ = book[beats[0] : beats[-1] + 1]
    assert all(m["type"] == "heartbeat" for _, m in run_), [m["type"] for _, m in run_]
    gaps = [b[0] - a[0] for a, b in zip(run_, run_[1:], strict=False)]
    assert all(0.3 < g < 1.2 for g in gaps), gaps  # one per interval, not per sweep
    last = book[beats[0] - 1][1]
    assert last["type"] in ("delta", "snapshot")
    # They carry the seq the connection was last sent (a server gone quiet) ...
    assert {m["seq"] for _, m in run_} == {last["seq"]}
    # ... and the data that resumes does not chain to it: the client sees the hole.
    after = book[beats[-1] + 1][1]
    assert after["type"] == "delta" and after["prev_seq"] > last["seq"], after
    # The other channel got its own heartbeats during the stall.
    trades = [m for _, m in seen if m.get("ch") == "trades.BTC-USD" and m["type"] == "heartbeat"]
    assert len(trades) >= 2


def test_sdk_msgpack_stall_with_heartbeats(gw: VenueGateway) -> None:
    """The SDK on msgpack stays connected through a heartbeat stall and resyncs."""

    async def run() -> None:
        watched = Watched(f"{gw.ws}/ws", "msgpack")
        async with watched.client as client:
            await client.wait_live()
            watched.arm()
            added = await add_fault(
                gw, kind="stall", seconds=2.0, heartbeats=True, venues=["native"]
            )
            await wait_applied(gw, added["id"])
            deadline = time.monotonic() + 6
            while watched.recovered is None:
                assert time.monotonic() < deadline, f"no recovery: {client.counters()}"
                await asyncio.sleep(0.02)
            # Disrupted only once the data resumed (not by its watchdog, 1 s, mid-stall).
            assert client.stats.disconnects == 0, client.counters()
            assert client.channel(BOOK).counters.resyncs >= 1
            await api(gw, "DELETE")
            await exact_again(gw, watched)

    asyncio.run(run())


# -- the admin API ----------------------------------------------------------------------


def test_api_round_trip_and_errors(gw: VenueGateway) -> None:
    async def run() -> None:
        a = await add_fault(gw, kind="gap", venues=["okx"], every=10, name="okx gaps")
        b = await add_fault(gw, kind="latency", delay_ms=5, duration=60)
        status, body = await api(gw, "GET")
        assert status == 200
        listed = {f["id"]: f for f in body["faults"]}
        assert listed[a["id"]]["name"] == "okx gaps" and listed[a["id"]]["venues"] == ["okx"]
        assert listed[a["id"]]["origin"] == "api" and listed[b["id"]]["delay_ms"] == 5
        status, body = await api(gw, "DELETE", f"/api/v1/faults/{a['id']}")
        assert (status, body) == (200, {"removed": [a["id"]]})
        status, body = await api(gw, "DELETE", f"/api/v1/faults/{a['id']}")
        assert status == 404 and body["error"] == "unknown_fault"
        status, body = await api(gw, "POST", body={"kind": "gapp"})
        assert status == 400 and "did you mean 'gap'" in body["message"]
        status, body = await api(gw, "POST", body={"kind": "stall", "seconds": -1})
        assert status == 400 and "'seconds' must be at least" in body["message"]
        status, body = await api(gw, "POST", body={"kind": "disconnect", "code": 1005})
        assert status == 400 and "not a close code" in body["message"]
        status, body = await api(gw, "POST", body=[1, 2])
        assert status == 400 and body["error"] == "bad_fault"
        async with aiohttp.ClientSession() as http:
            async with http.post(gw.http + "/api/v1/faults", data=b"{nope") as resp:
                assert resp.status == 400 and (await resp.json())["error"] == "bad_json"
        status, body = await api(gw, "DELETE")
        assert status == 200 and body["removed"] == [b["id"]]
        _, body = await api(gw, "GET")
        assert body["faults"] == []

    asyncio.run(run())


def test_api_is_off_without_faults(server_factory: Any, tmp_path: Path) -> None:
    plain = start_venue_gateway(server_factory, tmp_path, "--symbols", "1", tls=False)

    async def run() -> None:
        status, body = await api(plain, "POST", body={"kind": "gap"})
        assert status == 403 and body["error"] == "faults_disabled"
        status, body = await api(plain, "GET")
        assert status == 403

    asyncio.run(run())
    stats = plain.srv.stop()
    assert stats is not None and stats["faults"] is None  # no fault manager at all


# -- venue shapes on the wire -----------------------------------------------------------


async def frames(ws: Any, seconds: float) -> list[Any]:
    """The JSON messages received within ``seconds`` (text ``pong`` excluded)."""
    out: list[Any] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            raw = await asyncio.wait_for(ws.recv(), left)
        except TimeoutError:
            break
        if raw != "pong":
            out.append(json.loads(raw))
    return out


def test_binance_gap_shows_in_u(gw: VenueGateway) -> None:
    async def run() -> None:
        url = f"{gw.ws}/binance/ws/btcusd@depth@100ms"
        async with websockets.connect(url) as ws:
            seen = await frames(ws, 0.3)
            await add_fault(gw, kind="gap", venues=["binance"])
            seen += await frames(ws, 1.0)
        events = [e for e in seen if e.get("e") == "depthUpdate"]
        pairs = zip(events, events[1:], strict=False)
        holes = [(a["u"], b["U"]) for a, b in pairs if b["U"] != a["u"] + 1]
        assert len(holes) == 1, holes

    asyncio.run(run())


# Whole-state streams: OKX books5 and bbo-tbt, Binance partial depth (raw and combined).
# Each pair: a control connection and a targeted one on the same streams.
WHOLE_PAIRS: list[tuple[str, str, list[str]]] = [
    ("okx", "/okx/ws/v5/public", ["books5", "bbo-tbt"]),
    ("binance", "/binance/ws/btcusd@depth5@100ms", []),
    ("binance", "/binance/stream?streams=btcusd@depth10@100ms", []),
]
WHOLE_FAULTS = ("gap", "duplicate", "reorder")


def _whole_seed(fault_id: int, kind: str, targets: set[int], controls: set[int]) -> int:
    """A seed for which the ``targets`` connections are hit and the controls are not."""
    for seed in range(1, 10_000):
        raw = {"kind": kind, "probability": 0.2, "share": 0.5, "seed": seed}
        fault = ActiveFault(fault_id, parse_fault(raw), 0.0)
        venues = {1: "okx", 2: "okx"}
        if all(fault.targets(c, venues.get(c, "binance")) for c in targets) and not any(
            fault.targets(c, venues.get(c, "binance")) for c in controls
        ):
            return seed
    raise AssertionError("no seed found")


def _whole_state(msg: Any) -> tuple[str, int] | None:
    """(stream, seq) of a whole-state push, or None."""
    if "arg" in msg and "data" in msg:
        return msg["arg"]["channel"], int(msg["data"][0]["seqId"])
    data = msg.get("data", msg)
    if "lastUpdateId" in data:
        return msg.get("stream", "raw"), int(data["lastUpdateId"])
    return None


def test_whole_state_streams_gap_duplicate_reorder(server_factory: Any, tmp_path: Path) -> None:
    """gap, duplicate and reorder reach OKX books5/bbo-tbt and Binance partial depth:
    the targeted connection misses pushes the control got, gets one twice (the same
    bytes), and gets an older state after a newer one; every push it gets is a state
    the control got too, byte for byte."""
    controls, targets = {1, 3, 5}, {2, 4, 6}
    lines = ['name = "whole"']
    for i, kind in enumerate(WHOLE_FAULTS, 1):
        seed = _whole_seed(i, kind, targets, controls)
        lines += ["[[fault]]", f'kind = "{kind}"', 'venues = ["okx", "binance"]']
        lines += ["probability = 0.2", "share = 0.5", f"seed = {seed}"]
    scenario = tmp_path / "whole.toml"
    scenario.write_text("\n".join(lines) + "\n")
    gw = start_venue_gateway(
        server_factory,
        tmp_path,
        "--symbols",
        "BTC-USD,ETH-USD",
        "--rate",
        "400",
        "--faults",
        str(scenario),
        tls=False,
    )

    async def read(
        path: str, okx_channels: list[str], out: list[str], first: asyncio.Event, end: list[float]
    ) -> None:
        async with websockets.connect(gw.ws + path) as ws:
            if okx_channels:
                args = [{"channel": c, "instId": SYMBOL} for c in okx_channels]
                await ws.send(json.dumps({"op": "subscribe", "args": args}))
            while True:
                left = end[0] - time.monotonic() if end else 5.0
                if left <= 0:
                    break
                try:
                    raw = await asyncio.wait_for(ws.recv(), left)
                except TimeoutError:
                    break
                msg = json.loads(raw)
                if _whole_state(msg) is not None:
                    out.append(raw)
                    first.set()

    async def run() -> list[list[str]]:
        streams: list[list[str]] = [[] for _ in range(6)]
        end: list[float] = []
        tasks = []
        # One after the other: the gateway numbers them 1 to 6.
        for n in range(6):
            _, path, channels = WHOLE_PAIRS[n // 2]
            first = asyncio.Event()
            tasks.append(asyncio.create_task(read(path, channels, streams[n], first, end)))
            await asyncio.wait_for(first.wait(), 5)
        end.append(time.monotonic() + 3.0)
        await asyncio.gather(*tasks)
        return streams

    streams = asyncio.run(run())
    _, listed = asyncio.run(api(gw, "GET"))
    for fault in listed["faults"]:
        assert set(fault["connections"]) == targets, fault
    for pair in range(3):
        control, target = streams[2 * pair], streams[2 * pair + 1]
        by_stream: dict[str, tuple[list[tuple[int, str]], list[tuple[int, str]]]] = {}
        for side, msgs in enumerate((control, target)):
            for raw in msgs[1:]:  # after each one's first (its join) push
                found = _whole_state(json.loads(raw))
                assert found is not None
                by_stream.setdefault(found[0], ([], []))[side].append((found[1], raw))
        for name, (c, t) in by_stream.items():
            seen = {"gap": 0, "duplicate": 0, "reorder": 0}
            lo = max(c[0][0], t[0][0])
            hi = min(c[-1][0], t[-1][0])
            c = [(q, r) for q, r in c if lo < q < hi]
            t = [(q, r) for q, r in t if lo < q < hi]
            assert len(c) > 10, (pair, name, len(c))
            assert {r for _, r in t} <= {r for _, r in c}, (pair, name)  # nothing altered
            assert all(a[0] < b[0] for a, b in zip(c, c[1:], strict=False))  # a clean control
            seen["gap"] += len({r for _, r in c} - {r for _, r in t})
            seen["duplicate"] += sum(a == b for a, b in zip(t, t[1:], strict=False))
            seen["reorder"] += sum(b[0] < a[0] for a, b in zip(t, t[1:], strict=False))
            assert all(seen.values()), (WHOLE_PAIRS[pair], name, seen)
        assert len(by_stream) == max(1, len(WHOLE_PAIRS[pair][2]))


def test_binance_server_shutdown_then_close(gw: VenueGateway) -> None:
    async def run() -> None:
        url = f"{gw.ws}/binance/stream?streams=btcusd@depth@100ms"
        async with websockets.connect(url) as ws:
            await frames(ws, 0.2)
            await add_fault(gw, kind="disconnect", venues=["binance"], notice=True, notice_lead=0.3)
            seen = []
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    seen.append(json.loads(await asyncio.wait_for(ws.recv(), 3)))
        shutdown = [m for m in seen if m.get("e") == "serverShutdown"]
        assert len(shutdown) == 1 and isinstance(shutdown[0]["E"], int), seen[-3:]
        after = seen[seen.index(shutdown[0]) + 1 :]
        assert all("stream" in m for m in after)  # the stream went on until the close
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001

    asyncio.run(run())


def test_binance_rest_429_then_418(gw: VenueGateway) -> None:
    async def run() -> None:
        await add_fault(
            gw,
            kind="rate_limit",
            venues=["binance"],
            retry_after=2,
            ban_after=2,
            ban_seconds=30,
            duration=1.5,
        )
        added = time.monotonic()
        url = f"{gw.http}/binance/api/v3/depth?symbol=BTCUSD&limit=5"
        answers = []
        async with aiohttp.ClientSession() as http:
            for _ in range(4):
                async with http.get(url) as resp:
                    answers.append(
                        (resp.status, resp.headers.get("Retry-After"), await resp.json())
                    )
            async with http.get(f"{gw.http}/okx/api/v5/market/books?instId=BTC-USD") as resp:
                assert resp.status == 200  # another venue is not limited
            await asyncio.sleep(max(0.0, added + 1.6 - time.monotonic()))
            async with http.get(url) as resp:
                banned = resp.status  # the ban outlives the window, as Binance's does
            await api(gw, "DELETE")
            async with http.get(url) as resp:
                lifted = resp.status  # clearing the faults lifts it
        assert [a[0] for a in answers] == [429, 429, 418, 418], answers
        assert answers[0][1] == "2" and int(answers[2][1] or 0) >= 29
        assert all(a[2]["code"] == -1003 for a in answers)
        assert "IP banned until" in answers[2][2]["msg"]
        assert (banned, lifted) == (418, 200)

    asyncio.run(run())


def test_stale_rest_depth_is_the_book_n_updates_back(gw: VenueGateway) -> None:
    async def run() -> None:
        rec = NativeRecorder(gw, SYMBOL)
        task = asyncio.create_task(rec.run())
        try:
            await asyncio.wait_for(rec.ready.wait(), 5)
            await add_fault(gw, kind="stale_snapshot", where="rest", updates=25, venues=["binance"])
            await asyncio.sleep(0.5)
            async with aiohttp.ClientSession() as http:
                url = f"{gw.http}/binance/api/v3/depth?symbol=BTCUSD&limit=5000"
                async with http.get(url) as resp:
                    depth = await resp.json()
                async with http.get(f"{gw.http}/api/v1/book/{SYMBOL}") as resp:
                    live = await resp.json()  # the native REST is not targeted
            stale = depth["lastUpdateId"]
            assert live["seq"] - stale >= 25
            rec.assert_book(stale, levels(depth["bids"]), levels(depth["asks"]))
        finally:
            rec.stop()
            await task

    asyncio.run(run())


def test_okx_checksum_and_notice(gw: VenueGateway) -> None:
    async def run() -> None:
        async with websockets.connect(f"{gw.ws}/okx/ws/v5/public") as ws:
            arg = {"channel": "books", "instId": "BTC-USD"}
            await ws.send(json.dumps({"op": "subscribe", "args": [arg]}))
            seen = await frames(ws, 0.3)
            await add_fault(gw, kind="checksum", venues=["okx"])
            seen += await frames(ws, 1.0)
            await add_fault(gw, kind="disconnect", venues=["okx"], notice=True, notice_lead=0.2)
            tail: list[Any] = []
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    tail.append(json.loads(await asyncio.wait_for(ws.recv(), 3)))
        pushes = [m for m in seen if m.get("arg", {}).get("channel") == "books" and "data" in m]
        assert pushes[0]["action"] == "snapshot"
        # Replayed from the snapshot with OKX's own checksum: exactly one push is wrong.
        bad = 0
        bids: dict[str, str] = {}
        asks: dict[str, str] = {}
        for m in pushes:
            d = m["data"][0]
            for side, book in (("bids", bids), ("asks", asks)):
                for px, sz, *_ in d[side]:
                    if Decimal(sz) == 0:
                        book.pop(px, None)
                    else:
                        book[px] = sz
            top_b = sorted(bids.items(), key=lambda kv: -Decimal(kv[0]))[:25]
            top_a = sorted(asks.items(), key=lambda kv: Decimal(kv[0]))[:25]
            bad += okx.checksum(top_b, top_a) != d["checksum"]
        assert bad == 1
        notices = [m for m in tail if m.get("event") == "notice"]
        assert len(notices) == 1 and notices[0]["code"] == "64008" and notices[0]["connId"]
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001

    asyncio.run(run())


KRAKEN_V2_BOOK = {
    "method": "subscribe",
    "params": {"channel": "book", "symbol": ["BTC/USD"], "depth": 10},
    "req_id": 1,
}


def test_kraken_duplicate_and_maintenance(gw: VenueGateway) -> None:
    async def run() -> None:
        async with websockets.connect(f"{gw.ws}/kraken/v2") as ws:
            await ws.send(json.dumps(KRAKEN_V2_BOOK))
            raw: list[str] = []
            await frames(ws, 0.3)
            await add_fault(gw, kind="duplicate", venues=["kraken"])
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                raw.append(await asyncio.wait_for(ws.recv(), 1))
            await add_fault(gw, kind="disconnect", venues=["kraken"], notice=True, notice_lead=0.1)
            tail: list[Any] = []
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    tail.append(json.loads(await asyncio.wait_for(ws.recv(), 3)))
        books = [m for m in raw if m.startswith('{"channel":"book","type":"update"')]
        twice = [a for a, b in zip(books, books[1:], strict=False) if a == b]
        assert len(twice) == 1, len(books)
        status = [m for m in tail if m.get("channel") == "status"]
        assert status and status[0]["data"][0]["system"] == "maintenance"
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001

    asyncio.run(run())


def test_kraken_v1_stall_keeps_heartbeats(gw: VenueGateway) -> None:
    async def run() -> None:
        async with websockets.connect(f"{gw.ws}/kraken") as ws:
            sub = {"event": "subscribe", "pair": ["XBT/USD"], "subscription": {"name": "book"}}
            await ws.send(json.dumps(sub))
            await frames(ws, 0.3)
            await add_fault(gw, kind="stall", venues=["kraken"], seconds=1.9, heartbeats=True)
            await asyncio.sleep(0.3)
            await frames(ws, 0.05)  # what was on its way before the stall began
            during = await frames(ws, 1.2)
            await asyncio.sleep(0.4)
            after = await frames(ws, 0.5)
        assert during and all(m == {"event": "heartbeat"} for m in during), during[:3]
        assert any(isinstance(m, list) for m in after)  # the book flows again

    asyncio.run(run())


def test_kraken_subscribe_refused_with_its_error(gw: VenueGateway) -> None:
    async def run() -> None:
        await add_fault(gw, kind="rate_limit", scope="subscribe", venues=["kraken"])
        async with websockets.connect(f"{gw.ws}/kraken/v2") as ws:
            await ws.send(json.dumps(KRAKEN_V2_BOOK))
            got = await frames(ws, 0.5)
        assert {"error": "Exceeded msg rate", "success": False} in got
        assert not [m for m in got if m.get("channel") == "book" or m.get("method")]

    asyncio.run(run())


def test_connect_refused_429_per_venue(gw: VenueGateway) -> None:
    async def run() -> None:
        await add_fault(gw, kind="rate_limit", scope="connect", venues=["okx"], retry_after=7)
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(f"{gw.ws}/okx/ws/v5/public"):
                pass
        response = refused.value.response
        assert response.status_code == 429 and response.headers["Retry-After"] == "7"
        assert json.loads(response.body)["code"] == "50011"
        async with websockets.connect(f"{gw.ws}/ws") as ws:  # native: not limited
            await ws.send(json.dumps({"op": "ping", "id": 1}))
            assert json.loads(await ws.recv())["type"] == "pong"

    asyncio.run(run())


def test_scenario_reloads_on_sighup(server_factory: Any, tmp_path: Path) -> None:
    scenario = tmp_path / "s.toml"
    scenario.write_text('name = "a"\n[[fault]]\nkind = "gap"\nevery = 10\n')
    gateway = start_venue_gateway(
        server_factory, tmp_path, "--symbols", "1", "--faults", str(scenario), tls=False
    )
    proc = gateway.srv.proc
    assert proc is not None

    async def kinds() -> list[tuple[str, str]]:
        _, body = await api(gateway, "GET")
        return [(f["origin"], f["kind"]) for f in body["faults"]]

    async def run() -> None:
        assert await kinds() == [("file", "gap")]
        await add_fault(gateway, kind="latency", delay_ms=1)
        scenario.write_text(
            'name = "b"\n[[fault]]\nkind = "stall"\nat = 60\n\n[[fault]]\nkind = "burst"\nat = 60\n'
        )
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while (got := await kinds()) == [("file", "gap"), ("api", "latency")]:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        assert sorted(got) == [("api", "latency"), ("file", "burst"), ("file", "stall")]
        scenario.write_text('[[fault]]\nkind = "stal"\n')
        proc.send_signal(signal.SIGHUP)
        await asyncio.sleep(0.5)
        assert sorted(await kinds()) == sorted(got)  # a bad file keeps the running faults

    asyncio.run(run())
    gateway.srv.stop()
    assert "s.toml:2: fault 1 (stal): unknown kind 'stal'" in gateway.srv.stderr


def test_in_band_stale_snapshots_okx_and_kraken(gw: VenueGateway) -> None:
    async def run() -> None:
        rec = NativeRecorder(gw, SYMBOL)
        task = asyncio.create_task(rec.run())
        try:
            await asyncio.wait_for(rec.ready.wait(), 5)
            await add_fault(
                gw, kind="stale_snapshot", where="stream", updates=30, venues=["okx", "kraken"]
            )
            await asyncio.sleep(0.4)  # the stale book rolls from the fault's start
            async with websockets.connect(f"{gw.ws}/okx/ws/v5/public") as ws:
                arg = {"channel": "books", "instId": "BTC-USD"}
                await ws.send(json.dumps({"op": "subscribe", "args": [arg]}))
                okx_seen = await frames(ws, 0.4)
            async with websockets.connect(f"{gw.ws}/kraken/v2") as ws:
                await ws.send(json.dumps(KRAKEN_V2_BOOK))
                kraken_raw = [await asyncio.wait_for(ws.recv(), 2) for _ in range(4)]
        finally:
            rec.stop()
            await task
        pushes = [m for m in okx_seen if m.get("arg", {}).get("channel") == "books" and "data" in m]
        snap, update = pushes[0]["data"][0], pushes[1]["data"][0]
        assert pushes[0]["action"] == "snapshot" and pushes[1]["action"] == "update"
        assert update["prevSeqId"] - snap["seqId"] >= 30  # the client must resync
        rec.assert_book(snap["seqId"], levels(snap["bids"]), levels(snap["asks"]), depth=400)
        top_b = [(p, q) for p, q, *_ in snap["bids"][:25]]
        top_a = [(p, q) for p, q, *_ in snap["asks"][:25]]
        assert okx.checksum(top_b, top_a) == snap["checksum"]
        book_frames = [m for m in kraken_raw if m.startswith('{"channel":"book"')]
        kraken_snap = json.loads(book_frames[0], parse_float=str)["data"][0]
        assert json.loads(book_frames[0])["type"] == "snapshot"
        # It is the book of an older seq: its checksum is the native one back then.
        book = Book()
        book.load(
            [(b["price"], b["qty"]) for b in kraken_snap["bids"]],
            [(a["price"], a["qty"]) for a in kraken_snap["asks"]],
        )
        assert book.checksum() == kraken_snap["checksum"]
        older = rec.by_checksum.get(kraken_snap["checksum"], [])
        assert older and min(older) <= rec.seq - 30

    asyncio.run(run())


def test_binance_max_connection_age(gw: VenueGateway) -> None:
    async def run() -> None:
        # A "day" of 0.4 s: the connection is closed 1001 at that age, the next too.
        await add_fault(gw, kind="max_connection_age", venues=["binance"], speed=86400 / 0.4)
        for _ in range(2):
            async with websockets.connect(f"{gw.ws}/binance/ws/btcusd@trade") as ws:
                opened = time.monotonic()
                with pytest.raises(ConnectionClosed) as closed:
                    while True:
                        await asyncio.wait_for(ws.recv(), 3)
                age = time.monotonic() - opened
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
            assert age >= 0.35

    asyncio.run(run())


class ListenerRecord:
    """A FaultListener keeping every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[int | None, str, dict[str, object]]] = []

    def fault(self, conn_id: int | None, kind: str, detail: Any, now: float) -> None:
        assert isinstance(now, float)
        self.calls.append((conn_id, kind, dict(detail)))


def test_listener_is_told_of_every_application() -> None:
    """In process: the hook the connectivity report listens on."""
    from tickwire.faults import parse_fault
    from tickwire.server import Gateway, GatewayConfig

    threshold = gc.get_threshold()

    async def run() -> list[tuple[int | None, str, dict[str, object]]]:
        cfg = GatewayConfig(port=0, symbols=["BTC-USD"], rate=300, test_faults=True)
        gateway = Gateway(cfg)
        record = ListenerRecord()
        gateway.fault_listener = record
        await gateway.start()
        task = asyncio.create_task(gateway.run())
        manager = gateway.faults
        assert manager is not None
        url = f"ws://127.0.0.1:{gateway.port}/binance/ws/btcusd@depth@100ms"
        async with websockets.connect(url) as ws:
            await ws.recv()
            manager.add(parse_fault({"kind": "gap", "venues": ["binance"]}))
            manager.add(parse_fault({"kind": "burst", "seconds": 0.1}))
            await asyncio.sleep(0.4)
            manager.add(parse_fault({"kind": "disconnect", "code": 1013, "notice": True}))
            with pytest.raises(ConnectionClosed):
                while True:
                    await asyncio.wait_for(ws.recv(), 3)
        gateway.stop()
        await task
        return record.calls

    try:
        calls = asyncio.run(run())
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
    by_kind = {kind: (conn_id, detail) for conn_id, kind, detail in calls}
    assert set(by_kind) == {"gap", "burst", "disconnect"}, calls
    conn_id, gap = by_kind["gap"]
    assert conn_id == 1 and gap["venue"] == "binance" and gap["symbol"] == "BTC-USD"
    assert gap["action"] == "dropped" and isinstance(gap["seq"], int) and gap["fault"] == 1
    assert by_kind["burst"][0] is None and by_kind["burst"][1]["factor"] == 10.0
    conn_id, close = by_kind["disconnect"]
    assert conn_id == 1 and close["code"] == 1013 and close["notice"] is True
    assert close["name"] == "disconnect" and close["venue"] == "binance"


def test_sdk_exact_through_the_gap_storm_scenario(server_factory: Any, tmp_path: Path) -> None:
    """The shipped gap-storm (random gaps, duplicates, reorders, bad checksums) for 2 s:
    the SDK keeps healing, and its book is exact at every seq it reports."""
    storm = Path(__file__).resolve().parent.parent / "scenarios" / "gap-storm.toml"
    storm_gw = start_venue_gateway(
        server_factory,
        tmp_path,
        "--symbols",
        "BTC-USD",
        "--rate",
        "300",
        "--faults",
        str(storm),
        tls=False,
    )

    async def run() -> tuple[Watched, dict[str, int]]:
        watched = Watched(f"{storm_gw.ws}/ws")
        rec = NativeRecorder(storm_gw, SYMBOL)
        async with watched.client as client:
            await client.wait_live()
            await asyncio.sleep(2.0)
            counters = client.channel(BOOK).counters.as_dict()
            await api(storm_gw, "DELETE")  # the recorder must not be hit
            task = asyncio.create_task(rec.run())
            try:
                await asyncio.wait_for(rec.ready.wait(), 5)
                await asyncio.sleep(0.5)
            finally:
                rec.stop()
                await task
            common = sorted(set(watched.books) & set(rec.books))
            assert len(common) > 20
            for seq in common:
                rec.assert_book(seq, *watched.books[seq])
        return watched, counters

    _, counters = asyncio.run(run())
    assert counters["gaps"] + counters["checksum_failures"] >= 3, counters
    assert counters["resyncs"] >= 3, counters
