"""Latency the market path adds before a gateway: event ``ts`` -> arrival on the bus.

Starts nats-server and ``tickwire publish`` (the same market ``bench/run_peerbench_relay.sh``
uses), subscribes to ``PREFIX.md.>`` like a gateway does, and for every bundle records,
at arrival, the age of its oldest and newest book update. The difference ("spread") is
how long the publisher spent generating the rest of its tick after stamping the first
symbol: one process makes every symbol's batch in turn and sends them as one bundle. What
the peerbench load client reports for a relay gateway includes all of this, so this is
the floor under the relay's end-to-end latency on the same box.

    .venv/bin/python bench/bus_latency.py --rate 20000 --tick-ms 1.6 --seconds 8
    MARKET_NICE=19 MARKET_CPU=1 ...   as the relay benchmark runs the market

Prints one JSON line: microsecond percentiles per measure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import time

import nats
import uvloop

from bus_overhead import free_port, start
from tickwire.hotpath import relax_gc
from tickwire.sources.bus import BusBatch, BusBundle, decode_bus


def percentiles(samples: list[float]) -> dict[str, float]:
    samples.sort()
    n = len(samples)
    if not n:
        return {"n": 0}
    at = {"p50": 0.5, "p90": 0.9, "p99": 0.99, "p999": 0.999}
    out: dict[str, float] = {"n": n}
    out.update({k: round(samples[min(n - 1, int(n * q))]) for k, q in at.items()})
    out["max"] = round(samples[-1])
    return out


async def collect(url: str, prefix: str, seconds: float) -> dict[str, dict[str, float]]:
    oldest: list[float] = []
    newest: list[float] = []
    spread: list[float] = []

    async def on_bundle(msg: nats.aio.msg.Msg) -> None:
        now = time.time_ns()
        bundle = decode_bus(msg.data)
        if not isinstance(bundle, BusBundle):
            return
        stamps = []
        for raw in bundle.messages:
            batch = decode_bus(raw)
            if isinstance(batch, BusBatch) and batch.book_json:
                stamps.append(batch.book_updates()[0].ts)
        if stamps:
            first, last = min(stamps), max(stamps)
            oldest.append((now - first) / 1e3)
            newest.append((now - last) / 1e3)
            spread.append((last - first) / 1e3)

    nc = await nats.connect(url)
    try:
        await nc.subscribe(f"{prefix}.md.>", cb=on_bundle)
        await asyncio.sleep(seconds)
    finally:
        await nc.close()
    return {
        "oldest_us": percentiles(oldest),
        "newest_us": percentiles(newest),
        "spread_us": percentiles(spread),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rate", default="20000", help="updates/s per symbol")
    ap.add_argument("--symbols", default="10", help="symbol count or list")
    ap.add_argument("--tick-ms", default="1.0", help="the publisher's batching period")
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--market-core", default="auto", help="the publisher's: auto, c or python")
    args = ap.parse_args()
    market = ["nice", "-n", os.environ.get("MARKET_NICE", "0")]
    market += ["taskset", "-c", os.environ.get("MARKET_CPU", "0,1")]
    port = free_port()
    url = f"nats://127.0.0.1:{port}"
    server = subprocess.Popen(
        [*market, "nats-server", "-a", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    publisher = None
    try:
        time.sleep(0.5)
        publisher = start(
            ["publish", "--nats", url, "--symbols", args.symbols, "--rate", args.rate]
            + ["--tick-ms", args.tick_ms, "--max-seconds", str(args.seconds + 30)]
            + ["--market-core", args.market_core],
            "publishing",
            prefix=market,
        )
        time.sleep(1)
        relax_gc()
        result = uvloop.run(collect(url, "tickwire", args.seconds))
    finally:
        for proc in (publisher, server):
            if proc is not None:
                proc.terminate()
                proc.wait()
    print(json.dumps({"rate_per_symbol": args.rate, "tick_ms": args.tick_ms, **result}))


if __name__ == "__main__":
    main()
