"""Faults never leak: a connection no fault targets gets every message exactly as
without faults (docs/connectivity-testing.md, issue 20 item 5).

A gateway runs a scenario of every fault kind that touches what a connection is sent
(random gaps, duplicates, reorders and bad checksums, stalls, closes, latency, a
bandwidth cap, stale in-band snapshots), each on half the connections. The seeds are
chosen (with the same seeded draw the gateway makes) so that the three control
connections are never targeted and the fourth always is. The controls read the same
channel for two seconds: two on one channel each (direct writes), one on two channels
(the tick's joined writes). Their messages after a common seq are the same bytes, every
delta chains and checksums, and the targeted connection (msgpack over
permessage-deflate) was hit by every fault. The second control is deflated too (JSON):
an untargeted compressed wire is untouched as well.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import websockets

from helpers import StreamChecker
from tickwire.codec import decode_msgpack
from tickwire.faults import ActiveFault, parse_fault
from venues import start_venue_gateway

FAULTS: list[dict[str, Any]] = [
    {"kind": "gap", "probability": 0.2},
    {"kind": "duplicate", "probability": 0.1},
    {"kind": "reorder", "probability": 0.1},
    {"kind": "checksum", "probability": 0.1},
    {"kind": "stall", "at": 0.5, "every": 1.0, "seconds": 0.2},
    {"kind": "latency", "delay_ms": 30, "jitter_ms": 20},
    {"kind": "bandwidth", "bytes_per_s": 50_000},
    {"kind": "stale_snapshot", "where": "stream", "updates": 10},
    {"kind": "disconnect", "at": 1.5, "code": 1011},
]
CONTROLS, TARGET = (1, 2, 3), 4


def _seed(fault_id: int, raw: dict[str, Any]) -> int:
    """A seed for which the controls are not targeted and the target is."""
    for seed in range(1, 10_000):
        spec = parse_fault({**raw, "share": 0.5, "seed": seed})
        fault = ActiveFault(fault_id, spec, 0.0)
        if fault.targets(TARGET, "native") and not any(
            fault.targets(c, "native") for c in CONTROLS
        ):
            return seed
    raise AssertionError("no seed found")


def _toml(value: Any) -> str:
    return json.dumps(value)


def test_untargeted_connections_get_the_same_bytes(server_factory: Any, tmp_path: Path) -> None:
    lines = ['name = "leak"']
    for i, raw in enumerate(FAULTS, 1):
        lines.append("[[fault]]")
        for key, value in {**raw, "share": 0.5, "seed": _seed(i, raw)}.items():
            lines.append(f"{key} = {_toml(value)}")
    scenario = tmp_path / "leak.toml"
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
        "--deflate",
        tls=False,
    )
    url = f"{gw.ws}/ws"

    async def read(
        channels: list[str],
        seconds: float,
        out: list[str],
        first: asyncio.Event,
        packed: bool = False,
        deflate: bool = False,
    ) -> None:
        # The target speaks msgpack over permessage-deflate: faults reach every wire.
        wire: dict[str, Any] = (
            {"subprotocols": ["tickwire.v1.msgpack"], "compression": "deflate"}
            if packed
            else {"compression": "deflate" if deflate else None}
        )
        async with websockets.connect(url, **wire) as ws:
            await ws.send(json.dumps({"op": "subscribe", "channels": channels, "id": 1}))
            loop = asyncio.get_running_loop()
            end = loop.time() + seconds
            while (left := end - loop.time()) > 0:
                try:
                    raw = await asyncio.wait_for(ws.recv(), left)
                except (TimeoutError, websockets.ConnectionClosed):
                    break
                out.append(raw if isinstance(raw, str) else repr(decode_msgpack(raw)))
                first.set()

    async def run() -> tuple[list[list[str]], list[str]]:
        streams: list[list[str]] = [[], [], []]
        target: list[str] = []
        tasks = []
        # Connected one after the other so that the gateway numbers them 1, 2, 3, 4.
        for n, channels in enumerate(
            (["book.BTC-USD"], ["book.BTC-USD"], ["book.BTC-USD", "book.ETH-USD"])
        ):
            first = asyncio.Event()
            tasks.append(
                asyncio.create_task(read(channels, 2.5 - 0.1 * n, streams[n], first, False, n == 1))
            )
            await asyncio.wait_for(first.wait(), 5)
        tasks.append(
            asyncio.create_task(read(["book.BTC-USD"], 2.0, target, asyncio.Event(), True))
        )
        await asyncio.gather(*tasks)
        return streams, target

    streams, target = asyncio.run(run())

    async def listing() -> list[dict[str, Any]]:
        async with aiohttp.ClientSession() as http:
            async with http.get(gw.http + "/api/v1/faults") as resp:
                return list((await resp.json())["faults"])

    faults = asyncio.run(listing())
    for fault in faults:
        assert not set(fault["connections"]) & set(CONTROLS), fault
        assert TARGET in fault["connections"] and fault["applied"] >= 1, fault

    book = []
    for stream in streams:
        checker = StreamChecker()
        msgs = [json.loads(m) for m in stream]
        for msg in msgs:
            checker.apply(msg)
        assert checker.deltas > 50
        book.append([m for m, d in zip(stream, msgs, strict=True) if d.get("ch") == "book.BTC-USD"])
    # After the last control's snapshot, the three carry the very same messages.
    start = max(json.loads(s[0])["seq"] for s in book if s)
    tails = []
    for msgs in book:
        seqs = [json.loads(m)["seq"] for m in msgs]
        first = next(i for i, seq in enumerate(seqs) if seq > start and i > 0)
        tails.append(msgs[first:])
    n = min(map(len, tails))
    assert n > 50
    assert tails[0][:n] == tails[1][:n] == tails[2][:n]
    # The target did get a broken stream (it would fail the checks above).
    assert len(target) > 10
