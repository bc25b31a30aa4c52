"""End to end: a real ``tickwire serve`` process and real WebSocket clients on 127.0.0.1.

Every stream is checked the way a client must check it (:class:`helpers.StreamChecker`):
snapshot first, ``prev_seq`` chaining, and the CRC32 checksum after every delta.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from helpers import RawClient, ServerProcess, StreamChecker
from tickwire.book import Book

Factory = Callable[..., ServerProcess]


def connect(url: str, **kw: Any) -> websockets.asyncio.client.connect:
    """Connect without websockets' read flow control.

    With its default ``max_queue`` the client stops reading once 16 messages wait
    unread, and then cannot see the server's close frame behind them: closing such a
    connection times out after 10 s with 1006. Tests read everything anyway.
    """
    return websockets.connect(url, max_queue=None, **kw)


async def recv(ws: ClientConnection, wait: float = 5.0) -> dict[str, Any]:
    msg: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), wait))
    return msg


async def request(ws: ClientConnection, op: str, channels: list[str], **extra: Any) -> None:
    await ws.send(json.dumps({"op": op, "channels": channels, **extra}))


async def follow(
    ws: ClientConnection, checker: StreamChecker, until: Callable[[], bool], wait: float = 10.0
) -> None:
    """Apply messages to ``checker`` until ``until()`` holds."""
    deadline = time.monotonic() + wait
    while not until():
        assert time.monotonic() < deadline, "stream did not get there in time"
        checker.apply(await recv(ws))


def test_minimal_subscribe_gets_snapshot_then_chained_delta(server: ServerProcess) -> None:
    async def run() -> list[dict[str, Any]]:
        async with connect(server.url) as ws:
            await ws.send('{"op":"subscribe","channels":["book.BTC-USD"]}')
            return [await recv(ws) for _ in range(3)]

    ack, snap, delta = asyncio.run(run())
    assert ack == {
        "type": "ack",
        "op": "subscribe",
        "id": None,
        "channels": ["book.BTC-USD"],
        "epoch": server.epoch,
        "version": 1,
    }
    assert snap["type"] == "snapshot" and snap["epoch"] == server.epoch
    assert snap["ch"] == "book.BTC-USD" and "resumed" not in snap
    assert len(snap["bids"]) >= 5 and len(snap["asks"]) >= 5
    assert delta["type"] == "delta" and delta["prev_seq"] == snap["seq"]


def test_every_channel_kind_streams_verified(server: ServerProcess) -> None:
    channels = ["book.BTC-USD", "book.ETH-USD", "trades.BTC-USD", "ticker.BTC-USD"]

    async def run() -> StreamChecker:
        checker = StreamChecker()
        async with connect(server.url) as ws:
            await request(ws, "subscribe", channels, id="all")
            ack = await recv(ws)
            assert ack["id"] == "all" and ack["channels"] == channels
            await follow(
                ws,
                checker,
                lambda: (
                    checker.deltas >= 200
                    and checker.trades >= 5
                    and checker.seq.get("ticker.BTC-USD", 0) >= 3
                ),
            )
        return checker

    checker = asyncio.run(run())
    assert set(checker.snapshots) == set(channels)
    ticker = checker.snapshots["ticker.BTC-USD"]["ticker"]
    assert ticker["type"] == "ticker" and ticker["bid"] and ticker["ask"]
    assert "trades" in checker.snapshots["trades.BTC-USD"]


def test_rebuilt_book_equals_later_snapshot_at_same_seq(server: ServerProcess) -> None:
    ch = "book.ETH-USD"

    async def run() -> None:
        early = StreamChecker()
        async with connect(server.url) as a, connect(server.url) as b:
            await request(a, "subscribe", [ch])
            await follow(a, early, lambda: early.deltas >= 100)
            await request(b, "subscribe", [ch])
            assert (await recv(b))["type"] == "ack"
            snap = await recv(b)
            assert snap["type"] == "snapshot"
            # The snapshot seq is a message boundary of the stream a already follows.
            await follow(a, early, lambda: early.seq[ch] >= snap["seq"])
            assert early.seq[ch] == snap["seq"]
            book = early.books[ch]
            assert book.bids() == [tuple(x) for x in snap["bids"]]
            assert book.asks() == [tuple(x) for x in snap["asks"]]
            assert book.checksum() == snap["checksum"]
            # And from there both connections see the same messages.
            late = StreamChecker()
            late.apply(snap)
            for _ in range(20):
                msg_a, msg_b = await recv(a), await recv(b)
                assert msg_a == msg_b
                early.apply(msg_a)
                late.apply(msg_b)
            assert early.books[ch] == late.books[ch]

    asyncio.run(run())


def test_resume_replays_without_hole(server: ServerProcess) -> None:
    channels = ["book.SOL-USD", "trades.SOL-USD"]

    async def run() -> None:
        checker = StreamChecker()
        async with connect(server.url) as ws:
            await request(ws, "subscribe", channels)
            await follow(ws, checker, lambda: checker.deltas >= 50 and checker.trades >= 1)
        since = dict(checker.seq)
        await asyncio.sleep(0.3)  # the market moves on while we are away
        async with connect(server.url) as ws:
            await request(ws, "subscribe", channels, epoch=server.epoch, since=since, id=2)
            assert (await recv(ws))["id"] == 2
            # No snapshot: the replayed frames chain from ``since`` (checker asserts it).
            deltas = checker.deltas
            replayed = 0
            while checker.deltas < deltas + 100:
                msg = await recv(ws)
                assert msg["type"] != "snapshot", msg
                if msg["type"] == "delta" and replayed == 0:
                    assert msg["prev_seq"] == since["book.SOL-USD"]
                replayed += 1
                checker.apply(msg)
            assert checker.seq["book.SOL-USD"] > since["book.SOL-USD"] + 50

    asyncio.run(run())


@pytest.mark.parametrize("epoch", ["stale-epoch", None])
def test_resume_with_unknown_epoch_gets_fresh_snapshot(
    server: ServerProcess, epoch: str | None
) -> None:
    async def run() -> dict[str, Any]:
        async with connect(server.url) as ws:
            await request(ws, "subscribe", ["book.BTC-USD"], epoch=epoch, since={"book.BTC-USD": 5})
            assert (await recv(ws))["type"] == "ack"
            return await recv(ws)

    snap = asyncio.run(run())
    assert snap["type"] == "snapshot" and snap["resumed"] is False and snap["seq"] > 5


def test_resume_when_history_is_gone_gets_fresh_snapshot(server_factory: Factory) -> None:
    srv = server_factory("--symbols", "A", "--rate", "2000", "--history-mb", "0.01")

    async def run() -> dict[str, Any]:
        async with connect(srv.url) as ws:
            await request(ws, "subscribe", ["book.A"])
            await recv(ws)
            first = await recv(ws)
        await asyncio.sleep(1.0)  # 2,000 updates: far more than 10 KiB of history
        async with connect(srv.url) as ws:
            await request(
                ws, "subscribe", ["book.A"], epoch=srv.epoch, since={"book.A": first["seq"]}
            )
            await recv(ws)
            return await recv(ws)

    snap = asyncio.run(run())
    assert snap["type"] == "snapshot" and snap["resumed"] is False


def test_unsubscribe_ping_and_not_subscribed(server: ServerProcess) -> None:
    async def run() -> None:
        async with connect(server.url) as ws:
            await request(ws, "subscribe", ["book.BTC-USD", "trades.ETH-USD"], id=1)
            await request(ws, "unsubscribe", ["book.BTC-USD"], id=2)
            await ws.send('{"op":"ping","id":"p"}')
            seen_ack = False
            while True:
                msg = await recv(ws)
                if msg["type"] == "ack" and msg["id"] == 2:
                    assert msg["op"] == "unsubscribe" and msg["channels"] == ["book.BTC-USD"]
                    seen_ack = True
                elif msg["type"] == "pong":
                    assert seen_ack and msg["id"] == "p"
                    break
            # After the ack, nothing more of book.BTC-USD arrives; unsubscribing again
            # is answered with not_subscribed (required, not merely allowed).
            await request(ws, "unsubscribe", ["book.BTC-USD"], id=3)
            errors = []
            deadline = time.monotonic() + 0.5
            while time.monotonic() < deadline or not errors:
                assert time.monotonic() < deadline + 5, "no not_subscribed error"
                msg = await recv(ws)
                assert msg.get("ch") != "book.BTC-USD", msg
                if msg["type"] == "error":
                    errors.append(msg)
            assert [(e["code"], e["id"]) for e in errors] == [("not_subscribed", 3)]

    asyncio.run(run())


def test_fault_hook_is_caught_by_the_checker(server: ServerProcess) -> None:
    # The integrity checks in these tests must be able to fail: a dropped message is a
    # gap, a corrupted checksum a mismatch.
    async def run(fault: str) -> str:
        checker = StreamChecker()
        async with connect(server.url) as ws:
            await request(ws, "subscribe", ["book.BTC-USD"])
            await follow(ws, checker, lambda: checker.deltas >= 3)
            await ws.send(json.dumps({"op": "fault", "channels": ["book.BTC-USD"], "fault": fault}))
            try:
                await follow(ws, checker, lambda: False, wait=5)
            except AssertionError as exc:
                return str(exc)
        return ""

    assert "gap" in asyncio.run(run("drop"))
    assert "checksum" in asyncio.run(run("checksum"))


def test_heartbeat_on_idle_channel_carries_seq(server_factory: Factory) -> None:
    srv = server_factory("--symbols", "A,B", "--rate", "0", "--heartbeat", "0.2")

    async def run() -> list[dict[str, Any]]:
        async with connect(srv.url) as ws:
            await request(ws, "subscribe", ["book.A", "trades.B"])
            return [await recv(ws) for _ in range(7)]

    ack, *msgs = asyncio.run(run())
    snaps = {m["ch"]: m for m in msgs if m["type"] == "snapshot"}
    beats = [m for m in msgs if m["type"] == "heartbeat"]
    assert set(snaps) == {"book.A", "trades.B"} and len(beats) == 4
    assert snaps["book.A"]["seq"] == 50  # the seeded book: 25 levels a side
    for beat in beats:
        assert beat["seq"] == snaps[beat["ch"]]["seq"]
    assert {b["ch"] for b in beats} == {"book.A", "trades.B"}


def test_graceful_shutdown_sends_going_away_and_prints_stats(server: ServerProcess) -> None:
    async def run() -> list[int | None]:
        conns = [await connect(server.url) for _ in range(5)]
        for ws in conns[:3]:
            await request(ws, "subscribe", ["book.BTC-USD"])
            await recv(ws)  # the snapshot
            while (await recv(ws))["type"] != "delta":  # a delta: frames_out has moved
                pass
        stats_task = asyncio.create_task(asyncio.to_thread(server.stop))
        codes = []
        for ws in conns:
            with pytest.raises(websockets.ConnectionClosed) as info:
                while True:
                    await asyncio.wait_for(ws.recv(), 10)
            assert info.value.rcvd is not None, "no close frame"
            codes.append(info.value.rcvd.code)
            assert "reconnect" in info.value.rcvd.reason
        await stats_task
        return codes

    assert asyncio.run(run()) == [1001] * 5
    stats = server.stats
    assert stats is not None and stats["server"] == "tickwire"
    assert stats["epoch"] == server.epoch and stats["generated"] > 0
    assert stats["frames_out"] > 0 and stats["connections"] == 0


def test_dead_peer_is_closed_by_ping_timeout(server_factory: Factory) -> None:
    srv = server_factory("--rate", "0", "--ping-interval", "0.5", "--ping-timeout", "0.5")

    async def live_client() -> bool:
        # websockets answers pings by itself: this one must stay connected.
        async with connect(srv.url) as ws:
            await asyncio.sleep(3.0)
            await ws.send('{"op":"ping","id":1}')
            return (await recv(ws))["type"] == "pong"

    def dead_client() -> tuple[bool, float]:
        raw = RawClient(srv.port)
        start = time.monotonic()
        pinged = False
        try:
            while True:
                frame = raw.recv_frame(timeout=10)
                if frame is None:
                    return pinged, time.monotonic() - start
                if frame[0] == 0x9:
                    pinged = True
                elif frame[0] == 0x8:
                    return pinged, time.monotonic() - start
        finally:
            raw.close()

    async def run() -> tuple[bool, tuple[bool, float]]:
        return await asyncio.gather(live_client(), asyncio.to_thread(dead_client))

    live_ok, (pinged, after) = asyncio.run(run())
    assert live_ok
    assert pinged and after < 8


def test_200_concurrent_clients_all_receive_every_update(server_factory: Factory) -> None:
    # 3 symbols at 50 updates/s: 200 clients in one Python loop keep up easily, so no one
    # is ever paused (conflation would make ``seq - prev_seq`` exceed the update count,
    # which StreamChecker rejects). After 2 s the server is stopped: its going-away close
    # flushes what is queued, so every client of a channel must end at the same seq.
    srv = server_factory("--symbols", "3", "--rate", "50", "--heartbeat", "0.5")
    n_clients = 200

    async def client(i: int, started: asyncio.Event) -> StreamChecker:
        channels = [f"book.SYM{i % 3}", f"trades.SYM{i % 3}"]
        checker = StreamChecker()
        async with connect(srv.url, open_timeout=30) as ws:
            await request(ws, "subscribe", channels, id=i)
            await started.wait()
            try:
                while True:
                    checker.apply(json.loads(await asyncio.wait_for(ws.recv(), 20)))
            except websockets.ConnectionClosed as exc:
                assert exc.rcvd is not None and exc.rcvd.code == 1001
        return checker

    async def run() -> list[StreamChecker]:
        started = asyncio.Event()
        tasks = [asyncio.create_task(client(i, started)) for i in range(n_clients)]
        started.set()
        await asyncio.sleep(2.0)
        await asyncio.to_thread(srv.stop)
        return await asyncio.gather(*tasks)

    checkers = asyncio.run(run())
    stats = srv.stats
    assert stats is not None
    final: dict[str, set[int]] = {}
    for checker in checkers:
        assert len(checker.snapshots) == 2
        for ch, seq in checker.seq.items():
            final.setdefault(ch, set()).add(seq)
    assert len(final) == 6
    for ch, seqs in final.items():
        assert len(seqs) == 1, f"{ch}: clients ended at different seqs {sorted(seqs)}"
    # Every client saw updates flow (not just its snapshot).
    assert all(c.deltas > 0 for c in checkers)
    books: dict[str, Book] = {}
    for checker in checkers:
        for ch, book in checker.books.items():
            assert books.setdefault(ch, book) == book


def test_loop_teardown_abandons_a_task_that_swallows_its_cancel() -> None:
    # nats-py's flush wait catches CancelledError; uvloop.run would wait for such a task
    # for ever at exit (a publisher hung that way after SIGTERM). hotpath.run does not.
    import asyncio
    import threading

    from tickwire import hotpath

    async def stubborn() -> None:
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                continue

    async def main() -> str:
        asyncio.get_running_loop().create_task(stubborn())
        await asyncio.sleep(0)
        return "done"

    async def failing() -> None:
        raise LookupError("from main")

    with pytest.raises(LookupError, match="from main"):  # main's own error still propagates
        hotpath.run(failing(), grace=0.2)
    results: list[str] = []
    runner = threading.Thread(
        target=lambda: results.append(hotpath.run(main(), grace=0.2)), daemon=True
    )
    runner.start()
    runner.join(timeout=30)
    assert results == ["done"] and not runner.is_alive()


def test_paused_clock_passes_wait_a_period_after_the_pass_ends() -> None:
    from tickwire.pacing import MAX_PASS_SHARE, next_clock_pass

    # A 0.4 ms pass at a 1 ms period: "pause" starts the next one 1 ms after it ended,
    # "clock" 1 ms after it began. An overrun is spaced either way (the longer of the two).
    assert next_clock_pass(10.0, 10.0004, 0.001, pause=True) == pytest.approx(10.0014, abs=1e-9)
    assert next_clock_pass(10.0, 10.0004, 0.001, pause=False) == pytest.approx(10.001, abs=1e-9)
    assert next_clock_pass(10.0, 10.005, 0.001, pause=False) == pytest.approx(
        10.0 + 0.005 / MAX_PASS_SHARE
    )
    assert next_clock_pass(10.0, 10.005, 0.001, pause=True) == pytest.approx(
        10.0 + 0.005 / MAX_PASS_SHARE
    )
    # Past the spacing cap a clock pass follows at once; a paused one still waits.
    assert next_clock_pass(10.0, 11.0, 0.001, pause=False) == pytest.approx(10.01)
    assert next_clock_pass(10.0, 11.0, 0.001, pause=True) == pytest.approx(11.001)
    # --pass-share: a 1.5 ms pass may take 75% of the time (next start 2 ms after it
    # began); at 1 only the pause applies, a clock pass follows at once.
    assert next_clock_pass(10.0, 10.0015, 0.001, True, share=0.75) == pytest.approx(10.0025)
    assert next_clock_pass(10.0, 10.0015, 0.001, False, share=0.75) == pytest.approx(10.002)
    assert next_clock_pass(10.0, 10.0015, 0.001, True, share=1.0) == pytest.approx(10.0025)
    assert next_clock_pass(10.0, 10.0015, 0.001, False, share=1.0) == pytest.approx(10.0015)


class _StopLoop(Exception):
    pass


@pytest.mark.parametrize(
    ("pacing", "took", "share", "gap"),
    [
        ("pause", 0.0004, 0.5, 0.001),
        ("clock", 0.0004, 0.5, 0.0006),
        # Write-bound (a 2 ms pass): spaced to half the time, or to 80% ...
        ("pause", 0.002, 0.5, 0.002),
        ("pause", 0.002, 0.8, 0.001),
        ("clock", 0.002, 0.8, 0.0005),
        # ... or, at --pass-share 1, by the pause alone.
        ("pause", 0.002, 1.0, 0.001),
    ],
)
def test_the_tick_loop_waits_as_its_pacing_says(
    monkeypatch: pytest.MonkeyPatch, pacing: str, took: float, share: float, gap: float
) -> None:
    # The gateway's own loop on a fake clock: every pass takes ``took``. At 0.4 ms
    # "pause" waits the whole 1 ms tick after it, "clock" the 0.6 ms left of the period;
    # a pass longer than the tick is spaced by --pass-share.
    from tickwire.server import Gateway, GatewayConfig
    from tickwire.server import gateway as gateway_module

    clock = [100.0]

    fake_time = SimpleNamespace(monotonic=lambda: clock[0], time=time.time, time_ns=time.time_ns)
    monkeypatch.setattr(gateway_module, "time", fake_time)
    gw = Gateway(GatewayConfig(symbols=["A"], rate=1000.0, tick_pacing=pacing, pass_share=share))
    waits: list[float] = []

    async def run() -> None:
        await gw.source.start(gw.hub)
        poll = gw.source.poll

        def slow_poll(now: float) -> Any:
            clock[0] += took
            return poll(now)

        async def wait(delay: float) -> bool:
            waits.append(delay)
            clock[0] += delay
            if len(waits) == 8:
                raise _StopLoop
            return False

        monkeypatch.setattr(gw.source, "poll", slow_poll)
        monkeypatch.setattr(gw, "_wait_for_tick", wait)
        with pytest.raises(_StopLoop):
            await gw._tick_loop()

    asyncio.run(run())
    # The first wait is the loop's start; every later one follows a pass.
    assert waits[1:] == pytest.approx([gap] * 7, abs=1e-9)
    assert gw.tick_stats.ticks == 7


def test_bad_tick_pacing_is_a_config_error() -> None:
    from tickwire.exceptions import ConfigError
    from tickwire.server import GatewayConfig

    with pytest.raises(ConfigError, match="--tick-pacing"):
        GatewayConfig(tick_pacing="sometimes")
    for share in (0.0, 1.5):
        with pytest.raises(ConfigError, match="--pass-share"):
            GatewayConfig(pass_share=share)


def test_clock_passes_that_overrun_are_spaced_like_relayed_ones() -> None:
    from tickwire.pacing import MAX_PASS_SHARE, MAX_SPACING_TICKS, spacing

    # Within the period: the pace is the period. Write-bound (S2's 1,000 writes take
    # ~5 ms): the next pass starts twice that after this one began, capped.
    assert spacing(0.0004, 0.001) == 0.001
    assert spacing(0.005, 0.001) == pytest.approx(0.005 / MAX_PASS_SHARE)
    assert spacing(1.0, 0.001) == pytest.approx(MAX_SPACING_TICKS * 0.001)
