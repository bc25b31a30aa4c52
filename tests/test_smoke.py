"""The smallest end-to-end check: subscribe as documented and get a snapshot."""

from __future__ import annotations

import asyncio
import json

import websockets

from helpers import ServerProcess


def test_minimal_subscribe_gets_snapshot_then_chained_delta(server: ServerProcess) -> None:
    async def run() -> list[dict[str, object]]:
        async with websockets.connect(server.url) as ws:
            await ws.send('{"op":"subscribe","channels":["book.BTC-USD"]}')
            msgs = [json.loads(await asyncio.wait_for(ws.recv(), 5)) for _ in range(3)]
            return msgs

    ack, snap, delta = asyncio.run(run())
    assert ack["type"] == "ack" and ack["channels"] == ["book.BTC-USD"]
    assert snap["type"] == "snapshot" and snap["epoch"] == server.epoch
    assert delta["type"] == "delta" and delta["prev_seq"] == snap["seq"]
