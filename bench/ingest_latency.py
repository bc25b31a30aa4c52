"""Ingest end to end at S1's fan-out, beside the simulator path, in one run.

``python bench/ingest_latency.py`` (one command, about 80 s) starts a nats-server, then
in alternating rounds runs the same topology with two markets:

* ``ingest``: a feeder process publishes the ingest protocol (L2 ``update`` messages of
  ``--bundle`` level changes, ``--symbols`` symbols, ``--rate`` level changes/s each, so
  S1's 10 x 20,000 = 200,000/s by default; each message stamped with its send time as
  ``ts``) -> ``tickwire publish --ingest`` (the leading engine) -> NATS ->
  ``tickwire serve --source nats://`` (a relaying gateway);
* ``direct``: the same feeder -> ``tickwire serve --source ingest+nats://`` (one gateway
  takes the protocol itself: no leader, two hops fewer);
* ``sim``: ``tickwire publish --symbols N --rate R`` (the embedded simulator, the
  same rate) -> NATS -> the same gateway;

and a load client reads it with ``--conns`` connections (S1: 100, one ``book.SYMi``
channel each): peerbench's C ``loadclient`` when it is built (``$LOADCLIENT``, else
``../shared/peerbench/loadclient``; what ``docs/benchmarks.md``'s S1 tables use), else
``tickwire bench`` (Python, checks every seq chain; on a 2-core box it cannot read S1's
2,000,000 updates/s beside everything else, so its latency is then its own backlog).
Latency is the client's receive time minus each
update's ``ts``: for ``ingest`` the source's event time, so it is source-to-client (the
feeder, NATS twice, the leader, the gateway, the client). Also the publisher's and the
gateway's CPU over the measured window (% of one core). Prints one line per round and a
summary with the medians and the ingest / sim ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
from typing import Any

TICK = os.sysconf("SC_CLK_TCK")
LOADCLIENT = os.environ.get(
    "LOADCLIENT",
    os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "peerbench", "loadclient"
    ),
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def start(args: list[str], ready: str) -> tuple[subprocess.Popen[str], re.Match[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tickwire", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    while True:
        line = proc.stdout.readline()
        m = re.search(ready, line)
        if m:
            return proc, m
        if not line:
            raise RuntimeError(f"tickwire {args[0]} did not start")


# -- the feeder (a process of its own: python bench/ingest_latency.py --feed URL) --------


async def feed(url: str, symbols: list[str], rate: float, bundle: int) -> None:
    """Publish L2 updates of ``bundle`` changes at ``rate`` changes/s per symbol until
    killed; answer snapshot requests. Cheap per change: changes are drawn from a table
    of preformatted ones (bids below 100, asks above: never crossed)."""
    import nats

    nc = await nats.connect(url)
    rng = random.Random(7)
    pool: list[tuple[bytes, tuple[str, str], str]] = []
    for _ in range(20_000):
        side = rng.choice(("bid", "ask"))
        cents = 10_000 - rng.randint(1, 400) if side == "bid" else 10_000 + rng.randint(1, 400)
        price = f"{cents // 100}.{cents % 100:02d}"
        qty = "0" if rng.random() < 0.25 else f"{rng.randint(1, 50_000) / 1000:g}"
        pool.append((json.dumps([side, price, qty]).encode(), (side, price), qty))
    books: dict[str, dict[tuple[str, str], str]] = {s: {} for s in symbols}
    seqs = dict.fromkeys(symbols, 0)

    def snapshot(symbol: str) -> bytes:
        book = books[symbol]
        return json.dumps(
            {
                "v": 1,
                "type": "snapshot",
                "symbol": symbol,
                "seq": seqs[symbol],
                "ts": time.time_ns(),
                "bids": [[p, q] for (s, p), q in book.items() if s == "bid" and q != "0"],
                "asks": [[p, q] for (s, p), q in book.items() if s == "ask" and q != "0"],
            }
        ).encode()

    for symbol in symbols:

        async def on_request(msg: Any, symbol: str = symbol) -> None:
            await msg.respond(snapshot(symbol))

        await nc.subscribe(f"tickwire.ingest.{symbol}.snapshot", cb=on_request)
        await nc.publish(f"tickwire.ingest.{symbol}", snapshot(symbol))
    period = bundle / rate  # seconds between two messages of one symbol
    due = time.monotonic()
    while True:
        now = time.monotonic()
        if due > now:
            await asyncio.sleep(due - now)
        due += period
        for symbol in symbols:
            picks = rng.choices(pool, k=bundle)
            book = books[symbol]
            for _, key, qty in picks:
                book[key] = qty
            seqs[symbol] += 1
            head = (
                f'{{"v":1,"type":"update","symbol":"{symbol}","seq":{seqs[symbol]},'
                f'"ts":{time.time_ns()},"changes":['
            ).encode()
            await nc.publish(
                f"tickwire.ingest.{symbol}", head + b",".join(p[0] for p in picks) + b"]}"
            )


# -- one round ---------------------------------------------------------------------------


def round_(mode: str, url: str, a: argparse.Namespace) -> dict[str, Any]:
    symbols = [f"SYM{i}" for i in range(a.symbols)]
    procs: list[subprocess.Popen[str]] = []
    try:
        source = ["--source", url]
        if mode in ("ingest", "direct"):
            feeder = subprocess.Popen(
                [sys.executable, __file__, "--feed", url, "--symbols", str(a.symbols)]
                + ["--rate", str(a.rate), "--bundle", str(a.bundle)]
            )
            procs.append(feeder)
        if mode == "direct":
            pub = feeder  # no publisher: its CPU column is the feeder's
            source = ["--source", f"ingest+{url}", "--symbols", str(a.symbols)]
        elif mode == "ingest":
            pub, _ = start(
                ["publish", "--nats", url, "--ingest", url, "--symbols", ",".join(symbols)]
                + a.publish_args.split(),
                r"publishing",
            )
        else:
            pub, _ = start(
                ["publish", "--nats", url, "--symbols", str(a.symbols), "--rate", str(a.rate)],
                r"publishing",
            )
        if pub not in procs:
            procs.append(pub)
        time.sleep(1.0)
        gw, m = start(
            ["serve", "--port", "0", *source, "--admin-port", "off"],
            r"on ws://127\.0\.0\.1:(\d+)/ws",
        )
        procs.append(gw)
        if a.client == "loadclient":
            sub = '{"op":"subscribe","channels":["book.SYM{i}"]}'
            cmd = [LOADCLIENT, "-p", m.group(1), "-P", "/ws", "-n", str(a.conns)]
            cmd += ["-k", str(a.symbols), "-m", sub, "-d", str(a.duration), "-w", str(a.warmup)]
            cmd += ["-c", "5", "-i", "64", "-l", mode]
        else:
            cmd = [sys.executable, "-m", "tickwire", "bench", f"ws://127.0.0.1:{m.group(1)}/ws"]
            cmd += ["--conns", str(a.conns), "--symbols", str(a.symbols), "--json"]
            cmd += ["--no-progress", "--duration", str(a.duration), "--warmup", str(a.warmup)]
        bench = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        time.sleep(a.warmup + 0.5)
        cpu0 = {"pub": cpu_seconds(pub.pid), "gw": cpu_seconds(gw.pid)}
        t0 = time.monotonic()
        out, _ = bench.communicate(timeout=a.duration + a.warmup + 60)
        dt = time.monotonic() - t0
        cpu = {k: 100 * (cpu_seconds(p.pid) - cpu0[k]) / dt for k, p in (("pub", pub), ("gw", gw))}
        result = json.loads(out.strip().splitlines()[-1])
        if a.client == "loadclient":  # as tickwire bench reports it
            result = {
                "latency_ms": {
                    k: result[f"{k}_us"] / 1000 for k in ("p50", "p90", "p99", "p999", "max")
                },
                "deliveries_per_s": result["updates_per_s"],
                "gaps": "n/a",
                "client_bound": result["client_cpu_pct"] > 95,
            }
        return {"mode": mode, "cpu": cpu, **result}
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--symbols", type=int, default=10)
    p.add_argument("--rate", type=float, default=20_000.0, help="level changes/s per symbol")
    p.add_argument("--bundle", type=int, default=100, help="changes per ingest message")
    p.add_argument("--conns", type=int, default=100)
    p.add_argument("--duration", type=float, default=8.0)
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--modes", default="ingest,direct,sim", help="in this order, each round")
    p.add_argument(
        "--publish-args", default="", help="extra flags of the ingest mode's `tickwire publish`"
    )
    p.add_argument(
        "--client",
        choices=("loadclient", "tickwire"),
        default="loadclient" if os.access(LOADCLIENT, os.X_OK) else "tickwire",
    )
    p.add_argument("--feed", metavar="URL", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.feed:
        symbols = [f"SYM{i}" for i in range(a.symbols)]
        asyncio.run(feed(a.feed, symbols, a.rate, a.bundle))
        return
    nats_bin = shutil.which("nats-server") or "/usr/sbin/nats-server"
    port = free_port()
    url = f"nats://127.0.0.1:{port}"
    nats = subprocess.Popen(
        [nats_bin, "-a", "127.0.0.1", "-p", str(port)], stderr=subprocess.DEVNULL
    )
    time.sleep(0.3)
    rows: list[dict[str, Any]] = []
    try:
        for r in range(a.rounds):
            for mode in a.modes.split(","):
                row = round_(mode, url, a)
                rows.append(row)
                lat = row["latency_ms"]
                print(
                    f"round {r + 1} {mode:6s}: {row['deliveries_per_s']:>10,.0f} updates/s "
                    f"delivered, latency p50 {lat['p50']:.2f} ms p99 {lat['p99']:.2f} ms max "
                    f"{lat['max']:.2f} ms; publisher {row['cpu']['pub']:.1f}% gateway "
                    f"{row['cpu']['gw']:.1f}% of a core; gaps {row['gaps']}, "
                    f"client bound {row['client_bound']}",
                    flush=True,
                )
    finally:
        nats.terminate()
        nats.wait(10)
    print(
        f"\nsummary: {a.symbols} symbols x {a.rate:,.0f} changes/s, {a.conns} connections, "
        f"ingest bundles of {a.bundle}, {a.rounds} rounds, client {a.client} (medians, range):"
    )
    for mode in a.modes.split(","):
        got = [r for r in rows if r["mode"] == mode]

        def med(key: Any, got: list[dict[str, Any]] = got) -> str:
            values = [key(r) for r in got]
            return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"

        print(
            f"  {mode:6s} p50 {med(lambda r: r['latency_ms']['p50'])} ms, "
            f"p99 {med(lambda r: r['latency_ms']['p99'])} ms, "
            f"publisher {med(lambda r: r['cpu']['pub'])}%, gateway {med(lambda r: r['cpu']['gw'])}%"
        )
    ing = [r for r in rows if r["mode"] == "ingest"]
    sim = [r for r in rows if r["mode"] == "sim"]
    if ing and sim:
        pairs = list(zip(ing, sim, strict=True))
        p99 = [i["latency_ms"]["p99"] / max(s["latency_ms"]["p99"], 1e-9) for i, s in pairs]
        pub = [i["cpu"]["pub"] / max(s["cpu"]["pub"], 1e-9) for i, s in pairs]
        print(
            f"  ingest / sim: p99 {statistics.median(p99):.2f}x ({min(p99):.2f}-{max(p99):.2f}), "
            f"publisher CPU {statistics.median(pub):.2f}x ({min(pub):.2f}-{max(pub):.2f})"
        )


if __name__ == "__main__":
    main()
