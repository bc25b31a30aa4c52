"""``tickwire serve --workers N``: one port, N supervised gateway processes.

Real supervisor, real workers, real clients (the SDK, which reconnects and resumes).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

from helpers import RawClient
from nats_helpers import NatsServer, Proc, publisher, subscribe
from tickwire.client import Client
from tickwire.server.supervisor import worker_argv

SERVING = r"(\d+) workers \(pids ([\d ]+)\) serving on ws://127\.0\.0\.1:(\d+)/ws \(epoch (\S+)\)"


def test_worker_argv_replaces_port_workers_and_admin() -> None:
    argv = ["--workers", "2", "--port=0", "--rate", "5", "--admin-port", "9000", "--seed=3"]
    assert worker_argv(argv, 8123, 9001) == [
        "--rate",
        "5",
        "--seed=3",
        "--port",
        "8123",
        "--reuse-port",
        "--admin-port",
        "9001",
    ]
    assert worker_argv(["--workers=3"], 1, None)[-2:] == ["--admin-port", "off"]


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for p in reversed(started):
        try:
            p.stop()
        except Exception:
            p.kill()


def supervisor(procs: list[Proc], *args: str) -> tuple[Proc, int, list[int], str]:
    p = Proc(
        ["serve", "--workers", "2", "--port", "0", "--max-seconds", "120", *args], SERVING
    ).start(timeout=60)
    procs.append(p)
    assert p.match is not None
    pids = [int(x) for x in p.match.group(2).split()]
    return p, int(p.match.group(3)), pids, p.match.group(4)


def children(pid: int) -> set[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return {int(x) for x in f.read().split()}


def test_embedded_workers_share_the_port_and_drain_on_sigterm(procs: list[Proc]) -> None:
    sup, port, pids, epoch = supervisor(procs, "--rate", "100", "--symbols", "2")
    assert len(pids) == 2 and children(sup.pid) == set(pids)
    # Each worker has its own simulator: connections spread over both, seen by epoch.
    epochs = set()
    clients = []
    for _ in range(16):
        c = RawClient(port)
        epochs.add(subscribe(c, ["book.SYM0"])["epoch"])
        clients.append(c)
    assert len(epochs) == 2 and epoch == "per-worker"
    stderr = sup.stop()
    for c in clients:
        code, _, _ = c.wait_close()
        assert code == 1001  # going away: every worker drained its clients
        c.close()
    stats = json.loads(stderr.strip().splitlines()[-1])
    assert stats["workers"] == 2 and stats["restarts"] == 0
    assert [w["pid"] for w in stats["per_worker"]] == pids
    assert all(not os.path.exists(f"/proc/{pid}") for pid in pids)


def test_killed_worker_is_restarted_and_its_clients_resume_elsewhere(procs: list[Proc]) -> None:
    nats = NatsServer().start()
    try:
        pub = publisher(nats.url, "--symbols", "BTC-USD", "--rate", "500")
        procs.append(pub)
        sup, port, pids, epoch = supervisor(
            procs, "--source", nats.url, "--symbols", "BTC-USD", "--admin-port", "off"
        )
        assert epoch == pub.match.group(1)  # type: ignore[union-attr]
        result = asyncio.run(_kill_and_resume(port, pids))
        stderr = sup.stop()
    finally:
        nats.stop()
    stats = json.loads(stderr.strip().splitlines()[-1])
    assert stats["restarts"] == 1
    moved = [r for r in result if r["reconnects"]]
    assert moved, "no client was on the killed worker"
    for r in result:
        for name, c in r["channels"].items():
            # Resumed from the other worker's history: no second snapshot, no hole.
            assert c["snapshots"] == 1, (name, r)
            assert c["trades_missed"] == 0 and c["checksum_failures"] == 0, (name, r)
            assert c["epoch_changes"] == 0


async def _kill_and_resume(port: int, pids: list[int]) -> list[dict[str, Any]]:
    channels = ["book.BTC-USD", "trades.BTC-USD"]
    clients = [
        Client(f"ws://127.0.0.1:{port}/ws", channels, events=False, watchdog=3.0) for _ in range(8)
    ]
    for c in clients:
        await c.start()
    await asyncio.wait_for(asyncio.gather(*(c.wait_live() for c in clients)), 10)
    await asyncio.sleep(0.3)
    os.kill(pids[0], signal.SIGKILL)
    await asyncio.sleep(0.2)
    deadline = time.monotonic() + 15
    # Every client must be live again and have moved past the kill.
    await asyncio.wait_for(asyncio.gather(*(c.wait_live() for c in clients)), 15)
    marks = [c.channel("book.BTC-USD").position or 0 for c in clients]

    def progressed() -> list[bool]:
        return [
            (c.channel("book.BTC-USD").position or 0) > m + 50
            for c, m in zip(clients, marks, strict=True)
        ]

    while not all(progressed()):
        assert time.monotonic() < deadline, f"clients stuck after the kill: {progressed()}"
        await asyncio.sleep(0.1)
    out = []
    for c in clients:
        counters = c.counters()
        out.append(
            {
                "reconnects": c.stats.reconnects,
                "channels": {n: counters[n] for n in channels},
            }
        )
        await c.close()
    return out
