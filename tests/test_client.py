"""The SDK against real ``tickwire serve`` processes: equality, faults, restarts, drops.

Every test compares the client's local book with a *fresh snapshot taken from the server
at the same seq* (through a separate raw WebSocket connection), so "healed" means
identical, not merely "no error".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import websockets

from helpers import ServerProcess
from tickwire.book import Book
from tickwire.client import (
    Backoff,
    BookChanged,
    Client,
    Disconnected,
    Event,
    SyncState,
    TradesReceived,
)
from tickwire.exceptions import RequestError

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 20.0


# -- helpers -------------------------------------------------------------------------


def copy_book(book: Book) -> Book:
    out = Book()
    out.load(book.bids(), book.asks())
    return out


async def server_snapshot(url: str, channel: str) -> dict[str, Any]:
    """Subscribe on a separate raw connection and return the channel's snapshot."""
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({"op": "subscribe", "channels": [channel]}))
        while True:
            msg = json.loads(await asyncio.wait_for(ws.recv(), 5))
            if msg["type"] == "snapshot":
                return msg  # type: ignore[no-any-return]


async def inject(url: str, channel: str, fault: str) -> None:
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({"op": "fault", "channels": [channel], "fault": fault, "id": 1}))
        reply = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert reply["type"] == "ack", reply


class Recorder:
    """``on_event`` hook: book copies at every seq (once armed) and all events."""

    def __init__(self, client: Client, symbol: str) -> None:
        self.client = client
        self.symbol = symbol
        self.copies: dict[tuple[str | None, int], Book] = {}
        self.events: list[Event] = []
        self.armed = False
        client.on_event = self

    def __call__(self, event: Event) -> None:
        self.events.append(event)
        if self.armed and isinstance(event, BookChanged) and event.symbol == self.symbol:
            ch = self.client.channel(event.channel)
            self.copies[(ch.epoch, event.seq)] = copy_book(ch.book)

    def arm(self) -> None:
        self.copies.clear()
        self.armed = True
        ch = self.client.channel(f"book.{self.symbol}")
        if ch.state is SyncState.LIVE and ch.position is not None:
            self.copies[(ch.epoch, ch.position)] = copy_book(ch.book)

    def trade_ids(self, channel: str) -> list[int]:
        return [
            t.id
            for e in self.events
            if isinstance(e, TradesReceived) and e.channel == channel and not e.snapshot
            for t in e.trades
        ]


async def assert_book_equals_server(client: Client, recorder: Recorder, url: str) -> int:
    """The client's book at the server snapshot's seq equals that snapshot."""
    recorder.arm()
    name = f"book.{recorder.symbol}"
    snap = await server_snapshot(url, name)
    key = (snap["epoch"], snap["seq"])
    ch = client.channel(name)
    async with asyncio.timeout(TIMEOUT):
        await client.wait_until(lambda: key in recorder.copies)
    expected = Book()
    expected.load(snap["bids"], snap["asks"])
    assert recorder.copies[key] == expected
    assert expected.checksum() == snap["checksum"]
    assert ch.state is SyncState.LIVE
    return int(snap["seq"])


async def wait(client: Client, predicate: Callable[[], bool]) -> None:
    async with asyncio.timeout(TIMEOUT):
        await client.wait_until(predicate)


def fast_backoff() -> Backoff:
    return Backoff(0.05, 0.5, rng=random.Random(1))


# -- (a) the real server: client book == fresh server snapshot ------------------------


def test_client_book_equals_fresh_server_snapshot_at_same_seq(server: ServerProcess) -> None:
    async def run() -> None:
        async with Client(server.url, ["book.BTC-USD", "book.ETH-USD"]) as client:
            recorder = Recorder(client, "BTC-USD")
            await wait(client, lambda: client.channel("book.BTC-USD").counters.messages > 50)
            for _ in range(3):
                await assert_book_equals_server(client, recorder, server.url)
            for name in ("book.BTC-USD", "book.ETH-USD"):
                counters = client.channel(name).counters
                assert counters.gaps == counters.checksum_failures == counters.resyncs == 0
            p50, p99 = client.lag("book.BTC-USD")
            assert p50 is not None and p99 is not None and 0 <= p50 <= p99
            assert client.epoch == server.epoch

    asyncio.run(run())


def test_unknown_channel_is_refused_at_start(server: ServerProcess) -> None:
    async def run() -> None:
        with pytest.raises(RequestError) as info:
            async with Client(server.url, ["book.NOPE"]):
                pass
        assert info.value.code == "unknown_channel"

    asyncio.run(run())


def test_connect_failure_is_raised_at_start() -> None:
    async def run() -> None:
        with pytest.raises(OSError):
            await Client("ws://127.0.0.1:1/ws", ["book.BTC-USD"]).start()

    asyncio.run(run())


# -- (d) injected gap and checksum faults: detected, isolated, healed ------------------


def test_injected_gap_and_checksum_are_detected_isolated_and_healed(
    server: ServerProcess,
) -> None:
    async def run() -> None:
        channels = ["book.BTC-USD", "trades.BTC-USD", "book.ETH-USD"]
        async with Client(server.url, channels) as client:
            recorder = Recorder(client, "BTC-USD")
            await client.wait_live()
            btc = client.channel("book.BTC-USD").counters

            await inject(server.url, "book.BTC-USD", "drop")
            await wait(client, lambda: btc.gaps >= 1 and btc.resyncs >= 1)
            await assert_book_equals_server(client, recorder, server.url)
            assert btc.gaps == 1 and btc.resyncs == 1 and btc.snapshots == 1  # from history

            await inject(server.url, "book.BTC-USD", "checksum")
            await wait(client, lambda: btc.checksum_failures >= 1)
            await assert_book_equals_server(client, recorder, server.url)
            assert btc.checksum_failures == 1 and btc.resyncs == 2 and btc.snapshots == 2

            trades = client.channel("trades.BTC-USD").counters
            first = len(recorder.trade_ids("trades.BTC-USD"))
            await inject(server.url, "trades.BTC-USD", "drop")
            await wait(client, lambda: trades.gaps >= 1)
            await wait(client, lambda: len(recorder.trade_ids("trades.BTC-USD")) > first + 20)
            ids = recorder.trade_ids("trades.BTC-USD")
            assert ids == list(range(ids[0], ids[0] + len(ids)))  # the lost one came back
            assert trades.resyncs == 1 and trades.trades_missed == 0

            # Another channel on the same connection never noticed anything.
            eth = client.channel("book.ETH-USD").counters
            assert eth.gaps == eth.checksum_failures == eth.resyncs == eth.discarded == 0
            assert client.stats.reconnects == 0

    asyncio.run(run())


# -- (b) server SIGKILLed and restarted on the same port -------------------------------


def test_server_killed_and_restarted_client_resnapshots_new_epoch(
    server_factory: Callable[..., ServerProcess],
) -> None:
    srv = server_factory("--symbols", "BTC-USD", "--rate", "500")

    async def run() -> None:
        channels = ["book.BTC-USD", "trades.BTC-USD"]
        async with Client(srv.url, channels, backoff=fast_backoff(), watchdog=3.0) as client:
            recorder = Recorder(client, "BTC-USD")
            await client.wait_live()
            old_epoch = client.epoch
            await wait(client, lambda: client.channel("book.BTC-USD").counters.messages > 20)
            await asyncio.to_thread(srv.kill)
            await wait(client, lambda: not client.connected)
            assert client.state("book.BTC-USD") is SyncState.SYNCING
            await asyncio.to_thread(srv.start)
            assert srv.epoch != old_epoch
            await wait(client, lambda: client.epoch == srv.epoch)
            await client.wait_live()
            await assert_book_equals_server(client, recorder, srv.url)
            for name in channels:
                counters = client.channel(name).counters
                assert counters.epoch_changes == 1, (name, counters)
                assert client.channel(name).epoch == srv.epoch
            assert client.stats.reconnects >= 1
            lost = [e for e in recorder.events if isinstance(e, Disconnected)]
            assert lost and lost[0].code is None  # SIGKILL: no close frame

    asyncio.run(run())


# -- (c) a connection dropped without a close: resume with no hole in trades ----------


class Proxy:
    """A TCP proxy to the server that the test can freeze or cut mid-stream."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self.links: list[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = []
        self.frozen: asyncio.Event | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self.links.append((writer, up_writer))
        gate = asyncio.Event()
        gate.set()
        self.frozen = gate
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pump(src, dst, gate))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    @staticmethod
    async def _pump(
        src: asyncio.StreamReader, dst: asyncio.StreamWriter, gate: asyncio.Event
    ) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while True:
                await gate.wait()
                data = await src.read(65536)
                if not data:
                    break
                await gate.wait()
                dst.write(data)
                await dst.drain()

    def freeze(self) -> None:
        """Stop forwarding on the current link, without closing anything (half-dead)."""
        assert self.frozen is not None
        self.frozen.clear()

    def cut(self) -> None:
        """Abort both sockets of every current link: an RST, no close frame."""
        for a, b in self.links:
            a.transport.abort()
            b.transport.abort()
        self.links.clear()

    async def close(self) -> None:
        self.cut()
        for task in list(self.tasks):
            task.cancel()
        if self.server is not None:
            self.server.close()


@pytest.mark.parametrize("how", ["freeze", "cut"])
def test_dropped_connection_resumes_with_no_hole_in_trades(
    server_factory: Callable[..., ServerProcess], how: str
) -> None:
    srv = server_factory("--symbols", "BTC-USD", "--rate", "800")

    async def run() -> None:
        proxy = Proxy(srv.port)
        await proxy.start()
        url = f"ws://127.0.0.1:{proxy.port}/ws"
        channels = ["book.BTC-USD", "trades.BTC-USD"]
        client = Client(url, channels, backoff=fast_backoff(), watchdog=1.0)
        recorder = Recorder(client, "BTC-USD")
        try:
            await client.start()
            trades = client.channel("trades.BTC-USD")
            await wait(client, lambda: len(recorder.trade_ids("trades.BTC-USD")) >= 10)
            if how == "freeze":
                proxy.freeze()
            else:
                proxy.cut()
            await wait(client, lambda: client.stats.reconnects >= 1)
            # A freeze is noticed by the watchdog, a cut by the close: counted when the
            # client reconnected (a later 1 s gap on a loaded machine may add one).
            timeouts = client.stats.watchdog_timeouts
            before = len(recorder.trade_ids("trades.BTC-USD"))
            await wait(client, lambda: len(recorder.trade_ids("trades.BTC-USD")) > before + 20)
            ids = recorder.trade_ids("trades.BTC-USD")
            assert ids == list(range(ids[0], ids[0] + len(ids)))
            assert trades.counters.trades_missed == 0 and trades.counters.snapshots == 1
            assert timeouts == (1 if how == "freeze" else 0)
            await assert_book_equals_server(client, recorder, srv.url)
            assert client.channel("book.BTC-USD").counters.snapshots == 1  # resumed
        finally:
            await client.close()
            await proxy.close()

    asyncio.run(run())


def test_clean_close_ends_iteration_and_server_sees_normal_close(server: ServerProcess) -> None:
    async def run() -> list[Event]:
        client = Client(server.url, ["ticker.BTC-USD"])
        await client.start()
        seen: list[Event] = []

        async def consume() -> None:
            async for event in client:
                seen.append(event)

        task = asyncio.create_task(consume())
        await client.wait_live()
        await client.close()
        await asyncio.wait_for(task, 5)  # the iteration ended by itself
        assert not client.connected and client.stats.disconnects == 1
        return seen

    events = asyncio.run(run())
    (lost,) = [e for e in events if isinstance(e, Disconnected)]
    assert lost.code == 1000  # the server answered our normal close with its own


def test_going_away_close_reconnects_and_resumes(
    server_factory: Callable[..., ServerProcess],
) -> None:
    srv = server_factory("--symbols", "BTC-USD", "--rate", "300")

    async def run() -> None:
        async with Client(srv.url, ["book.BTC-USD"], backoff=fast_backoff()) as client:
            await client.wait_live()
            await asyncio.to_thread(srv.stop)  # SIGTERM: a 1001 going-away close
            await wait(client, lambda: not client.connected)
            assert client.stats.last_close_code == 1001
            await asyncio.to_thread(srv.start)
            await wait(client, lambda: client.epoch == srv.epoch)
            await client.wait_live()

    asyncio.run(run())


# -- the README snippet runs ------------------------------------------------------------


def readme_snippet() -> tuple[str, str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## A client in 15 lines", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    shown = re.search(r"This prints[^\n]*\n+```\n(.*?)```", section, re.S)
    assert code and shown
    return code.group(1), shown.group(1)


def test_readme_client_runs_and_prints_what_the_readme_says(server: ServerProcess) -> None:
    code, shown = readme_snippet()
    assert len(code.strip().splitlines()) <= 15
    assert "ws://127.0.0.1:8765/ws" in code
    out = subprocess.run(
        [sys.executable, "-c", code.replace("ws://127.0.0.1:8765/ws", server.url)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    pattern = re.escape(shown.strip())
    pattern = re.sub(r"\d+", r"\\d+", pattern)
    pattern = re.sub(r"buy|sell", "(buy|sell)", pattern)
    assert re.fullmatch(pattern, out.strip()), (out, shown)


def test_docs_client_example_runs(server: ServerProcess) -> None:
    text = (ROOT / "docs" / "client.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S)
    assert code and "ws://127.0.0.1:8765/ws" in code.group(1)
    out = subprocess.run(
        [sys.executable, "-c", code.group(1).replace("ws://127.0.0.1:8765/ws", server.url)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    for channel in ("book.BTC-USD", "trades.BTC-USD", "ticker.BTC-USD"):
        assert f"{channel} is live: snapshot at seq" in out
    assert re.search(r"best bid \('\d+\.\d+', '\d+\.\d+'\) best ask", out)
    assert re.search(r"lag p50 \d+\.\d+ ms, p99 \d+\.\d+ ms", out)
    assert "'state': 'live'" in out and "'gaps': 0" in out and "'resyncs': 0" in out


def test_examples_run(server: ServerProcess) -> None:
    top = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "top_of_book.py"), "BTC-USD"]
        + ["--url", server.url, "--seconds", "2"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout.splitlines()
    assert len(top) == 2 and all(line.startswith("live") for line in top)
    tape = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "trade_tape.py"), "BTC-USD"]
        + ["--url", server.url, "--count", "5"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout.splitlines()
    ids = [int(line.split()[0][1:]) for line in tape if line.startswith("#")]
    assert len(ids) >= 5 and ids == list(range(ids[0], ids[0] + len(ids)))
    assert tape[-1] == "-- missed: 0"


def test_without_reconnect_iteration_raises_connection_closed(
    server_factory: Callable[..., ServerProcess],
) -> None:
    srv = server_factory("--symbols", "BTC-USD", "--rate", "200")

    async def run() -> None:
        from tickwire.exceptions import ConnectionClosed

        client = Client(srv.url, ["book.BTC-USD"], reconnect=False, events=True)
        await client.start()
        await client.wait_live()
        await asyncio.to_thread(srv.stop)
        with pytest.raises(ConnectionClosed) as info:
            async with asyncio.timeout(TIMEOUT):
                async for _ in client:
                    pass
        assert info.value.code == 1001 and client.stats.reconnects == 0
        await client.close()

    asyncio.run(run())
