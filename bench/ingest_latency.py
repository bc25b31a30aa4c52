"""Source-to-client latency of the ingest path, end to end, as a sanity check.

Starts a nats-server, ``tickwire publish --ingest`` and ``tickwire serve --source nats://``
(no ``--symbols``), runs the example feeder (``examples/ingest/feeder.py``) at
``--rate`` messages/s of ``--bundle`` L2 changes, and reads ``book.<SYMBOL>`` with the
SDK, which verifies every checksum and keeps the lag (receive time - the source's
``ts``). Prints the lag's p50/p99 and the client's integrity counters. On a shared
machine it measures the machine as much as tickwire; it is not issue 21's benchmark.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import nats

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples" / "ingest"))
from feeder import Feeder  # noqa: E402

from tickwire.client import Client  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start(args: list[str], ready: str) -> tuple[subprocess.Popen[str], re.Match[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tickwire", *args], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    while True:
        line = proc.stdout.readline()
        m = re.search(ready, line)
        if m:
            return proc, m
        if not line:
            raise RuntimeError(f"{args[0]} did not start")


async def run(url: str, rate: float, bundle: int, seconds: float) -> None:
    nc = await nats.connect(url)
    feeder = Feeder(nc, "LAT", kind="l2")
    await feeder.serve_snapshots()
    await feeder.publish(feeder.snapshot())
    await asyncio.sleep(0.3)
    gw = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "tickwire", "serve", "--port", "0", "--source", url],
        *["--admin-port", "off"],
        stdout=asyncio.subprocess.PIPE,
    )
    assert gw.stdout is not None
    while not (m := re.search(rb"on ws://127\.0\.0\.1:(\d+)/ws", await gw.stdout.readline())):
        pass
    ws_port = int(m.group(1))
    async with Client(f"ws://127.0.0.1:{ws_port}/ws", ["book.LAT"], events=False) as c:
        await c.wait_live()
        await feeder.run(seconds, rate, bundle)
        await asyncio.sleep(0.5)
        p50, p99 = c.lag("book.LAT")
        counters = c.counters()["book.LAT"]
    print(
        f"rate {rate:g} msg/s x {bundle} changes: lag p50 {p50} ms, p99 {p99} ms; "
        f"updates {counters['updates']}, checksum failures {counters['checksum_failures']}, "
        f"gaps {counters['gaps']}"
    )
    await nc.drain()
    gw.terminate()
    await gw.wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rate", type=float, default=500.0)
    p.add_argument("--bundle", type=int, default=10)
    p.add_argument("--seconds", type=float, default=5.0)
    a = p.parse_args()
    nats_bin = shutil.which("nats-server") or "/usr/sbin/nats-server"
    port = free_port()
    url = f"nats://127.0.0.1:{port}"
    procs = [
        subprocess.Popen([nats_bin, "-a", "127.0.0.1", "-p", str(port)], stderr=subprocess.DEVNULL)
    ]
    time.sleep(0.3)
    try:
        pub, _ = start(["publish", "--nats", url, "--ingest", url], r"publishing")
        procs.append(pub)
        asyncio.run(run(url, a.rate, a.bundle, a.seconds))
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(10)


if __name__ == "__main__":
    main()
