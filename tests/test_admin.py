"""The admin listener against real servers: /metrics, health, REST snapshots, SSE, logs.

Every test starts a real ``tickwire serve --admin-port 0`` process (or, for readiness,
an in-process :class:`~tickwire.server.Gateway`), drives it with real WebSocket
clients, and reads the admin port over HTTP with aiohttp. Prometheus output is always
parsed with prometheus-client's own parser.
"""

from __future__ import annotations

import asyncio
import gc
import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import msgspec
import pytest
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from helpers import MS, RawClient, ServerProcess
from tickwire.book import Book
from tickwire.server.metrics import FixedHistogram, Sampler, TickStats

Server = Callable[..., ServerProcess]

_decode = msgspec.json.Decoder(dict[str, Any]).decode


# -- helpers -----------------------------------------------------------------------------


def admin_url(srv: ServerProcess) -> str:
    """Read the dashboard line that follows the serving banner."""
    assert srv.proc is not None and srv.proc.stdout is not None
    line = srv.proc.stdout.readline()
    assert line.startswith("tickwire: dashboard on http://"), line
    return line.split()[3]


@pytest.fixture
def admin_server(server_factory: Server) -> Callable[..., tuple[ServerProcess, str]]:
    def start(*args: str) -> tuple[ServerProcess, str]:
        srv = server_factory("--admin-port", "0", *args)
        return srv, admin_url(srv)

    return start


class Client(WSListener):
    """A picows client that records every message; :meth:`stall` stops reading."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[dict[str, Any]] = []
        self.transport: WSTransport | None = None
        self.close_code: int | None = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.TEXT:
            self.messages.append(_decode(frame.get_payload_as_bytes()))
        elif frame.msg_type == WSMsgType.CLOSE:
            self.close_code = frame.get_close_code()
            transport.send_close(frame.get_close_code())
            transport.disconnect()

    def send(self, request: dict[str, Any]) -> None:
        assert self.transport is not None
        self.transport.send(WSMsgType.TEXT, msgspec.json.encode(request))

    def stall(self) -> None:
        assert self.transport is not None
        self.transport.underlying_transport.pause_reading()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.disconnect()

    async def wait_for(self, pred: Callable[[], bool]) -> None:
        """Poll ``pred`` until it holds, for at most 5 s (scaled by ``MS``)."""
        deadline = time.monotonic() + 5000 * MS
        while not pred():
            assert time.monotonic() < deadline, "timed out waiting"
            await asyncio.sleep(0.02)


def _small_rcvbuf(_url: Any) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return sock


async def connect(url: str, *, small: bool = False) -> Client:
    _, client = await ws_connect(
        Client, url, socket_factory=_small_rcvbuf if small else None, max_frame_size=64 << 20
    )
    assert isinstance(client, Client)
    return client


Metrics = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse_metrics(text: str) -> Metrics:
    """Every sample by (name, sorted labels), via prometheus-client's parser."""
    out: Metrics = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(metrics: Metrics, name: str, **labels: str) -> float:
    """One sample; a metric that is not rendered (missing, renamed) fails the test."""
    key = (name, tuple(sorted(labels.items())))
    assert key in metrics, f"metric {name}{labels or ''} is not rendered"
    return metrics[key]


async def scrape(session: aiohttp.ClientSession, base: str) -> Metrics:
    async with session.get(base + "metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        return parse_metrics(await resp.text())


async def get_json(session: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with session.get(url) as resp:
        return resp.status, json.loads(await resp.read())


# -- /metrics ----------------------------------------------------------------------------


def test_metrics_move_as_clients_stream(
    admin_server: Callable[..., tuple[ServerProcess, str]],
) -> None:
    srv, base = admin_server("--symbols", "BTC-USD,ETH-USD", "--rate", "400")
    book, trades = "book.BTC-USD", "trades.BTC-USD"

    async def run() -> tuple[Metrics, Metrics, Metrics, list[Client]]:
        async with aiohttp.ClientSession() as session:
            before = await scrape(session, base)
            clients = [await connect(srv.url) for _ in range(3)]
            for c in clients:
                c.send({"op": "subscribe", "channels": [book, trades], "id": 1})
            clients[0].send({"op": "subscribe", "channels": ["book.NOPE"], "id": 2})
            clients[0].send({"op": "subscribe", "channels": ["nonsense"], "id": 3})
            clients[0].send({"op": "frobnicate", "id": 4})
            for c in clients:
                await c.wait_for(lambda c=c: sum(m["type"] == "delta" for m in c.messages) > 20)
            during = await scrape(session, base)
            for c in clients:
                c.close()
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                after = await scrape(session, base)
                if value(after, "tickwire_connections") == 0:
                    break
                await asyncio.sleep(0.05)
            return before, during, after, clients

    before, during, after, clients = asyncio.run(run())
    assert value(before, "tickwire_connections") == 0
    assert value(before, "tickwire_ready") == 1
    assert value(during, "tickwire_connections") == 3
    assert value(during, "tickwire_connections_accepted_total") == 3
    assert value(during, "tickwire_subscriptions", channel=book, kind="book") == 3
    assert value(during, "tickwire_subscriptions", channel=trades, kind="trades") == 3
    assert value(during, "tickwire_subscriptions", channel="book.ETH-USD", kind="book") == 0
    assert value(after, "tickwire_connections") == 0
    assert value(after, "tickwire_subscriptions", channel=book, kind="book") == 0

    # Deliveries and bytes count what the clients were sent (3 clients: a multiple of 3
    # for book deltas; at least what each client received so far).
    received = sum(len(m["updates"]) for c in clients for m in c.messages if m["type"] == "delta")
    assert value(during, "tickwire_deliveries_total") > value(before, "tickwire_deliveries_total")
    assert value(after, "tickwire_deliveries_total") >= received
    assert value(after, "tickwire_sent_bytes_total") > value(before, "tickwire_sent_bytes_total")
    assert value(after, "tickwire_frames_out_total") > 0
    assert value(during, "tickwire_channel_seq", channel=book, kind="book") > 0

    # Per-tick histograms: counts only grow, and latency is sampled once streaming.
    for name in (
        "tickwire_publish_to_write_seconds",
        "tickwire_batch_updates",
        "tickwire_event_loop_lag_seconds",
    ):
        count = value(after, name + "_count")
        assert count > value(before, name + "_count"), name
        assert value(after, name + "_bucket", le="+Inf") == count
    assert value(before, "tickwire_publish_to_write_seconds_count") == 0
    assert value(after, "tickwire_batch_updates_sum") >= value(
        after, "tickwire_batch_updates_count"
    )

    # Rejections by code.
    assert value(during, "tickwire_rejected_requests_total", code="unknown_channel") == 1
    assert value(during, "tickwire_rejected_requests_total", code="bad_channel") == 1
    assert value(during, "tickwire_rejected_requests_total", code="unknown_op") == 1
    # Standard process metrics come along.
    assert value(during, "process_resident_memory_bytes") > 0


def test_latency_sampled_for_single_channel_clients(
    admin_server: Callable[..., tuple[ServerProcess, str]],
) -> None:
    """A client on one channel is written directly, not through the tick's dirty list."""
    srv, base = admin_server("--symbols", "1", "--rate", "300")

    async def run() -> tuple[Metrics, Metrics]:
        async with aiohttp.ClientSession() as session:
            before = await scrape(session, base)
            client = await connect(srv.url)
            client.send({"op": "subscribe", "channels": ["book.SYM0"]})
            await client.wait_for(lambda: sum(m["type"] == "delta" for m in client.messages) > 20)
            after = await scrape(session, base)
            client.close()
            return before, after

    before, after = asyncio.run(run())
    name = "tickwire_publish_to_write_seconds_count"
    assert value(before, name) == 0
    assert value(after, name) >= 10
    assert value(after, "tickwire_batch_updates_count") >= 10


def test_slow_consumer_events_in_metrics_and_dashboard_table(
    admin_server: Callable[..., tuple[ServerProcess, str]],
) -> None:
    """A stalled reader: it lags (the slowest-subscriptions table), conflates, is closed."""
    srv, base = admin_server(
        "--symbols", "2", "--rate", "4000",
        "--high-watermark-kb", "32", "--low-watermark-kb", "8", "--max-buffer-kb", "256",
    )  # fmt: skip

    async def run() -> tuple[Metrics, list[dict[str, Any]], Client]:
        async with aiohttp.ClientSession() as session:
            slow = await connect(srv.url, small=True)
            slow.send({"op": "subscribe", "channels": ["book.SYM0", "trades.SYM1"]})
            await slow.wait_for(lambda: len(slow.messages) > 5)
            slow.stall()
            lagging: list[dict[str, Any]] = []
            async with session.get(base + "api/v1/stream?symbol=SYM0") as resp:
                assert resp.headers["Content-Type"] == "text/event-stream"
                event = ""
                deadline = time.monotonic() + 10
                async for raw in resp.content:
                    line = raw.decode().strip()
                    if line.startswith("event: "):
                        event = line[7:]
                    elif line.startswith("data: ") and event == "slow":
                        lagging = [r for r in json.loads(line[6:]) if r["lagging"]]
                        if lagging or time.monotonic() > deadline:
                            break
            # The stalled client never reads the close frame; wait for the server's count.
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                metrics = await scrape(session, base)
                if value(metrics, "tickwire_slow_consumer_closes_total", cause="budget"):
                    break
                await asyncio.sleep(0.1)
            slow.close()
            return metrics, lagging, slow

    metrics, lagging, slow = asyncio.run(run())
    assert lagging, "the slowest-subscriptions table never showed the stalled reader"
    row = lagging[0]
    assert row["ch"] == "book.SYM0" and row["conn"] == 1 and row["lag_seq"] > 0
    assert row["peer"].startswith("127.0.0.1:")
    assert value(metrics, "tickwire_slow_consumer_pauses_total") >= 1
    assert value(metrics, "tickwire_slow_consumer_closes_total", cause="budget") == 1
    assert value(metrics, "tickwire_slow_consumer_closes_total", cause="stall") == 0
    assert value(metrics, "tickwire_server_closes_total", code="4001") == 1
    assert value(metrics, "tickwire_slow_consumer_paused") == 0


def test_openmetrics_by_accept_header(
    admin_server: Callable[..., tuple[ServerProcess, str]],
) -> None:
    _, base = admin_server("--symbols", "1", "--rate", "50")

    async def run() -> tuple[str, str]:
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                base + "metrics", headers={"Accept": "application/openmetrics-text"}
            ) as resp,
        ):
            return resp.headers["Content-Type"], await resp.text()

    content_type, text = asyncio.run(run())
    assert content_type.startswith("application/openmetrics-text")
    names = {f.name for f in openmetrics_families(text)}
    assert {"tickwire_deliveries", "tickwire_publish_to_write_seconds"} <= names


# -- health ------------------------------------------------------------------------------


def test_healthz_and_readyz(admin_server: Callable[..., tuple[ServerProcess, str]]) -> None:
    srv, base = admin_server("--symbols", "2", "--rate", "10")

    async def run() -> list[tuple[int, Any]]:
        async with aiohttp.ClientSession() as session:
            return [
                await get_json(session, base + "healthz"),
                await get_json(session, base + "readyz"),
            ]

    (hs, health), (rs, ready) = asyncio.run(run())
    assert hs == 200 and health["status"] == "ok" and health["epoch"] == srv.epoch
    assert rs == 200 and ready == {"ready": True, "incomplete_books": [], "draining": False}


@pytest.fixture
def restore_gc() -> Iterator[None]:
    """Gateway.start() tunes the collector for the server; undo it in the test process."""
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


@pytest.mark.usefixtures("restore_gc")
def test_readyz_waits_for_complete_books_and_fails_while_draining() -> None:
    """In process: not ready before the books are seeded, nor once shutdown began."""
    from tickwire.server import Gateway, GatewayConfig
    from tickwire.server.admin import AdminServer

    async def run() -> list[tuple[int, Any]]:
        gateway = Gateway(GatewayConfig(port=0, symbols=["A-B", "C-D"], rate=0))
        admin = AdminServer(gateway)
        await admin.start("127.0.0.1", 0)
        out = []
        try:
            async with aiohttp.ClientSession() as session:
                url = f"http://127.0.0.1:{admin.port}/readyz"
                out.append(await get_json(session, url))
                async with session.get(f"http://127.0.0.1:{admin.port}/metrics") as resp:
                    out.append((resp.status, parse_metrics(await resp.text())))
                await gateway.start()
                out.append(await get_json(session, url))
                # A bus source joining a live market: one book not complete yet.
                gateway.incomplete_books.add("C-D")
                out.append(await get_json(session, url))
                gateway.incomplete_books.clear()
                gateway.draining = asyncio.Event()
                out.append(await get_json(session, url))
        finally:
            await admin.stop()
            gateway.stop()
            if gateway._server is not None:
                gateway._server.close()
        return out

    seeded_before, metrics, seeded, one_missing, draining = asyncio.run(run())
    assert seeded_before == (
        503,
        {"ready": False, "incomplete_books": ["A-B", "C-D"], "draining": False},
    )
    assert value(metrics[1], "tickwire_ready") == 0
    assert seeded == (200, {"ready": True, "incomplete_books": [], "draining": False})
    assert one_missing == (503, {"ready": False, "incomplete_books": ["C-D"], "draining": False})
    assert draining == (503, {"ready": False, "incomplete_books": [], "draining": True})


# -- REST snapshots ----------------------------------------------------------------------


def test_rest_snapshot_equals_websocket_snapshot(
    admin_server: Callable[..., tuple[ServerProcess, str]],
) -> None:
    """With --rate 0 the book stands still: both snapshots are the same message."""
    srv, base = admin_server("--symbols", "BTC-USD,ETH-USD,XBT/EUR", "--rate", "0")

    async def run() -> tuple[Any, Any, Any, list[tuple[int, Any]]]:
        async with aiohttp.ClientSession() as session:
            _, rest = await get_json(session, base + "api/v1/book/ETH-USD")
            _, top = await get_json(session, base + "api/v1/book/ETH-USD?depth=3")
            _, slashed = await get_json(session, base + "api/v1/book/XBT/EUR?depth=1")
            assert slashed["ch"] == "book.XBT/EUR" and len(slashed["bids"]) == 1
            errors = [
                await get_json(session, base + "api/v1/book/DOGE-USD"),
                await get_json(session, base + "api/v1/book/ETH-USD?depth=0"),
                await get_json(session, base + "api/v1/book/ETH-USD?depth=abc"),
            ]
        client = await connect(srv.url)
        client.send({"op": "subscribe", "channels": ["book.ETH-USD"], "id": 1})
        await client.wait_for(lambda: any(m["type"] == "snapshot" for m in client.messages))
        ws = next(m for m in client.messages if m["type"] == "snapshot")
        client.close()
        return rest, top, ws, errors

    rest, top, ws, errors = asyncio.run(run())
    assert rest == ws
    assert rest["type"] == "snapshot" and rest["ch"] == "book.ETH-USD"
    assert rest["epoch"] == srv.epoch and rest["seq"] > 0
    assert len(rest["bids"]) > 3 and len(rest["asks"]) > 3
    book = Book()
    book.load(rest["bids"], rest["asks"])
    assert book.checksum() == rest["checksum"]
    # depth cuts the levels, not the checksum (always the whole book's top 10).
    assert top["bids"] == rest["bids"][:3] and top["asks"] == rest["asks"][:3]
    assert top["seq"] == rest["seq"] and top["checksum"] == rest["checksum"]
    assert errors[0] == (404, {"error": "unknown_channel", "message": "no such symbol 'DOGE-USD'"})
    assert errors[1][0] == 400 and errors[1][1]["error"] == "bad_request"
    assert errors[2][0] == 400


def test_rest_snapshot_matches_the_stream_at_its_seq(
    admin_server: Callable[..., tuple[ServerProcess, str]],
) -> None:
    """With a moving market: a client's book rebuilt to the REST seq equals the REST book."""
    srv, base = admin_server("--symbols", "SOL-USD", "--rate", "300")
    name = "book.SOL-USD"

    async def run() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        client = await connect(srv.url)
        client.send({"op": "subscribe", "channels": [name], "id": 1})
        await client.wait_for(lambda: any(m["type"] == "snapshot" for m in client.messages))
        rests = []
        async with aiohttp.ClientSession() as session:
            for _ in range(5):
                rests.append((await get_json(session, base + "api/v1/book/SOL-USD"))[1])
                await asyncio.sleep(0.1)
        last = rests[-1]["seq"]
        await client.wait_for(lambda: any(m.get("seq", 0) >= last for m in client.messages[1:]))
        client.close()
        return rests, client.messages

    rests, messages = asyncio.run(run())
    wanted = {r["seq"]: r for r in rests}
    assert len(wanted) > 1, "the market did not move between the REST snapshots"
    book = Book()
    seq: int | None = None
    matched = 0
    for m in messages:
        if m["type"] == "snapshot":
            book.load(m["bids"], m["asks"])
        elif m["type"] == "delta":
            assert m["prev_seq"] == seq
            for u in m["updates"]:
                book.apply(u["side"], u["price"], u["qty"])
        else:
            continue
        seq = m["seq"]
        assert book.checksum() == m["checksum"]
        rest = wanted.get(seq)
        if rest is not None:
            # Every REST seq is a message boundary of the stream: the pending batch was
            # flushed first, exactly as for a WebSocket subscription.
            assert [list(x) for x in book.bids()] == rest["bids"]
            assert [list(x) for x in book.asks()] == rest["asks"]
            assert book.checksum() == rest["checksum"]
            matched += 1
    assert matched == len(wanted)


# -- command line and logs ---------------------------------------------------------------


def test_admin_port_option() -> None:
    from tickwire.cli import _admin_port
    from tickwire.exceptions import ConfigError

    assert _admin_port("auto", 8765) == (8766, True)
    assert _admin_port("auto", 0) == (None, False)
    assert _admin_port("off", 8765) == (None, False)
    assert _admin_port("0", 8765) == (0, False)
    assert _admin_port("9100", 0) == (9100, False)
    for bad in ("x", "-1", "70000"):
        with pytest.raises(ConfigError):
            _admin_port(bad, 8765)


def _free_pair() -> tuple[int, socket.socket]:
    """A free port P with P + 1 held by a listening socket (returned, to close later)."""
    for _ in range(50):
        holder = socket.socket()
        holder.bind(("127.0.0.1", 0))
        taken = holder.getsockname()[1]
        probe = socket.socket()
        try:
            probe.bind(("127.0.0.1", taken - 1))
        except OSError:
            holder.close()
            continue
        finally:
            probe.close()
        holder.listen()
        return taken - 1, holder
    pytest.skip("no free pair of adjacent ports")


def test_admin_port_taken_fails_explicit_and_tolerated_when_auto() -> None:
    port, holder = _free_pair()
    try:
        taken = str(port + 1)
        explicit = subprocess.run(
            [sys.executable, "-m", "tickwire", "serve", "--port", "0", "--admin-port", taken],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert explicit.returncode == 2
        assert f"admin port 127.0.0.1:{taken}" in explicit.stderr
        srv = ServerProcess(["--rate", "10"], port=port).start()
        try:
            # It serves without its admin port (no dashboard line) ...
            assert srv.proc is not None and srv.proc.stdout is not None
            client = RawClient(srv.port)
            client.send_text('{"op":"ping","id":1}')
            assert client.recv_json() == {"type": "pong", "id": 1}
            client.close()
            # ... and its signal handlers are in place once it answered: it exits cleanly.
            stats = srv.stop()
            assert stats is not None and stats["epoch"] == srv.epoch
            assert "tickwire: dashboard on" not in srv.stdout, srv.stdout
        finally:
            if srv.proc is not None:
                srv.kill()
    finally:
        holder.close()


@pytest.fixture
def json_log_server() -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tickwire",
            "serve",
            "--port",
            "0",
            "--symbols",
            "1",
            "--rate",
            "10",
            "--log-json",
            "--log-level",
            "DEBUG",
            "--max-seconds",
            "60",
        ],  # fmt: skip
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    yield proc
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


def test_json_log_lines(json_log_server: subprocess.Popen[str]) -> None:
    proc = json_log_server
    assert proc.stdout is not None
    banner = proc.stdout.readline()
    port = int(banner.split("ws://127.0.0.1:")[1].split("/")[0])
    secret = "hunter2-s3cr3t"

    async def run() -> None:
        client = await connect(f"ws://127.0.0.1:{port}/ws")
        client.send({"op": "subscribe", "channels": ["book.NOPE"], "token": secret, "id": 1})
        client.send({"op": "login", "api_key": secret, "signature": secret, "id": 2})
        client.send({"op": "frobnicate", "token": secret, "id": 3})
        await client.wait_for(lambda: len(client.messages) >= 3)
        client.close()
        await asyncio.sleep(0.3)

    asyncio.run(run())
    proc.terminate()
    _, err = proc.communicate(timeout=10)
    assert secret not in err
    records = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    logs = [r for r in records if "level" in r]
    assert logs and all({"ts", "level", "logger", "msg"} <= r.keys() for r in logs)
    rejected = [r for r in logs if r.get("code") == "unknown_channel"]
    assert rejected and rejected[0]["conn"] == 1 and rejected[0]["peer"].startswith("127.0.0.1:")
    assert any(r.get("code") == "unknown_op" and r["conn"] == 1 for r in logs)
    assert any(r["msg"].endswith("connected") and r.get("conn") == 1 for r in logs)
    assert any(r["msg"].endswith("disconnected") and r.get("conn") == 1 for r in logs)
    assert records[-1]["server"] == "tickwire"  # the exit stats line is still last


# -- metrics core (Sans-I/O) -------------------------------------------------------------


def test_fixed_histogram_quantiles_and_cumulative_form() -> None:
    hist = FixedHistogram([1.0, 2.0, 5.0, 10.0])
    for v in [0.5] * 50 + [1.5] * 40 + [4.0] * 9 + [20.0]:
        hist.observe(v)
    hist.observe(2.0)  # on a bound: counted in it (le)
    assert hist.counts == [50, 41, 9, 0, 1]
    assert hist.count == 101
    assert hist.cumulative() == [
        ("1.0", 50.0),
        ("2.0", 91.0),
        ("5.0", 100.0),
        ("10.0", 100.0),
        ("+Inf", 101.0),
    ]
    assert hist.quantile(0.5) == pytest.approx(1.0 + (50.5 - 50) / 41)
    assert hist.quantile(0.999) == 10.0  # in +Inf: the largest bound
    before = list(hist.counts)
    assert hist.quantile(0.5, before) is None
    hist.observe(3.0)
    assert hist.quantile(0.5, before) == pytest.approx(3.5)


def test_tick_stats_and_sampler_rates() -> None:
    class Hub:
        updates_out = 0
        bytes_out = 0
        frames_out = 0
        conflated = 0
        conflated_snapshots = 0
        paused: dict[object, float] = {}

    class Source:
        generated = 0

    class Gateway:
        hub = Hub()
        source = Source()
        tick_stats = TickStats()
        connections = {1: None, 2: None}
        slow_closes = {"budget": 1, "stall": 0, "total": 0}

    gw: Any = Gateway()
    sampler = Sampler(keep=3)
    assert sampler.sample(gw, 100.0, 1e9) is None
    gw.hub.updates_out, gw.hub.bytes_out, gw.source.generated = 2000, 100_000, 500
    for _ in range(99):
        gw.tick_stats.tick(0.0001, 200_000, 4)
    gw.tick_stats.tick(0.003, 9_000_000, 0)  # one slow tick: 9 ms, no batch sample
    gw.tick_stats.tick(0.0001, -1, 0)  # a tick that wrote nothing
    gw.tick_stats.tick(-0.00001, -1, 0)  # a timer that fired early: no negative lag
    assert gw.tick_stats.loop_lag.sum > 0 and gw.tick_stats.loop_lag.counts[0] == 1
    point = sampler.sample(gw, 102.0, 1e9 + 2)
    assert point is not None and sampler.last is point
    assert point.t == 1e9 + 2
    assert point.deliveries_s == 1000 and point.bytes_s == 50_000 and point.source_s == 250
    assert point.connections == 2 and point.slow_closes == 1
    assert point.p50_ms is not None and 0.15 < point.p50_ms <= 0.2
    assert point.p99_ms is not None and point.p99_ms <= 0.2
    assert point.loop_lag_ms == pytest.approx(3.0)
    assert point.batch_mean == 4
    assert gw.tick_stats.latency.count == 100 and gw.tick_stats.ticks == 102
    # The next second saw no ticks: no latency, lag reset.
    quiet = sampler.sample(gw, 103.0, 1e9 + 3)
    assert quiet is not None and quiet.p50_ms is None and quiet.loop_lag_ms == 0
    assert quiet.deliveries_s == 0 and quiet.as_dict()["connections"] == 2
    for i in range(4):
        sampler.sample(gw, 104.0 + i, 1e9 + 4 + i)
    assert len(sampler.points) == 3
