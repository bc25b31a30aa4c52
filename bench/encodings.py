"""Encodings benchmark: bytes per update, deliveries/s and server CPU per wire (not a test).

For each scenario (peerbench's S1: 100 connections, S2: 1,000 connections, over 10
``book`` channels) and each rate, and for each wire (JSON, msgpack, JSON+deflate,
msgpack+deflate), this starts a fresh ``tickwire serve --deflate`` pinned to CPU 0 and
runs ``tickwire bench`` pinned to CPU 1 with the same connection count, asking for that
wire. peerbench's C load client speaks only JSON text (it counts ``"ts":`` markers), so
the msgpack and deflate runs need ``tickwire bench``; JSON is run with it too, so the
wires are compared with one tool. Server CPU is read from ``/proc/PID/stat`` (utime +
stime) over the middle of the measured window; bytes per update are what came off the
wire (compressed payloads as compressed) divided by the updates delivered.

    python bench/encodings.py --out /tmp/encodings.jsonl            # S1 and S2
    python bench/encodings.py --scenarios S1 --rates 1000 --duration 4

Prints one markdown table row per run (and appends the raw numbers to ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TICKWIRE = str(ROOT / ".venv" / "bin" / "tickwire")
SCENARIOS = {"S1": (100, (1000, 5000)), "S2": (1000, (100, 1000))}
WIRES = {
    "json": [],
    "msgpack": ["--encoding", "msgpack"],
    "json+deflate": ["--deflate"],
    "msgpack+deflate": ["--encoding", "msgpack", "--deflate"],
}
CLK_TCK = os.sysconf("SC_CLK_TCK")
_SERVING = re.compile(r"serving .* on ws://[^:]+:(\d+)")


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` from /proc, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_server(rate: int, cpu: int, lifetime: float) -> tuple[subprocess.Popen[str], int]:
    port = free_port()
    cmd = ["taskset", "-c", str(cpu), TICKWIRE, "serve", "--port", str(port)]
    cmd += ["--symbols", "10", "--rate", str(rate), "--deflate", "--admin-port", "off"]
    cmd += ["--max-seconds", str(lifetime)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if _SERVING.search(line):
            return proc, port
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError("server did not start")


def run_one(
    scenario: str, conns: int, rate: int, wire: str, args: argparse.Namespace
) -> dict[str, Any]:
    lifetime = args.warmup + args.duration + 60
    server, port = start_server(rate, args.server_cpu, lifetime)
    try:
        cmd = ["taskset", "-c", str(args.client_cpu), TICKWIRE, "bench"]
        cmd += [f"ws://127.0.0.1:{port}/ws", "--symbols", "10", "--conns", str(conns)]
        cmd += ["--procs", "1", "--json", "--warmup", str(args.warmup)]
        cmd += ["--duration", str(args.duration), *WIRES[wire]]
        bench = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert bench.stderr is not None
        # The progress line says when the measured window opened; sample the server's
        # CPU inside it, away from its edges.
        while True:
            line = bench.stderr.readline()
            if not line or "measure" in line:
                break
        time.sleep(0.5)
        t1, c1 = time.monotonic(), cpu_seconds(server.pid)
        time.sleep(max(args.duration - 1.5, 0.5))
        t2, c2 = time.monotonic(), cpu_seconds(server.pid)
        out, err = bench.communicate(timeout=args.duration + 60)
        doc = json.loads(out)
    finally:
        server.terminate()
        try:
            server.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
    deliveries = doc["deliveries"]
    return {
        "scenario": scenario,
        "conns": conns,
        "rate": rate,
        "offered": rate * conns,
        "wire": wire,
        "deliveries_per_s": doc["deliveries_per_s"],
        "bytes_per_update": doc["bytes"] / deliveries if deliveries else None,
        "bytes_per_s": doc["bytes_per_s"],
        "server_cpu_pct": 100 * (c2 - c1) / (t2 - t1),
        "p99_ms": doc["latency_ms"]["p99"],
        "client_cpu_pct": doc["client_cpu_pct"],
        "client_bound": doc["client_bound"],
        "gaps": doc["gaps"],
        "connected": doc["connected"],
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenarios", default="S1,S2")
    p.add_argument("--rates", default=None, help="rates per channel (default per scenario)")
    p.add_argument("--wires", default=",".join(WIRES))
    p.add_argument("--duration", type=float, default=6.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--server-cpu", type=int, default=0)
    p.add_argument("--client-cpu", type=int, default=1)
    p.add_argument("--out", default=None, help="append raw results (JSON lines) here")
    args = p.parse_args()
    print(
        "| scenario | conns | rate/ch | wire | deliveries/s | bytes/update | MB/s on the wire"
        " | server CPU | p99 ms | client CPU |"
    )
    print("|---|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    for scenario in args.scenarios.split(","):
        conns, rates = SCENARIOS[scenario]
        if args.rates:
            rates = tuple(int(r) for r in args.rates.split(","))
        for rate in rates:
            for wire in args.wires.split(","):
                r = run_one(scenario, conns, rate, wire, args)
                if args.out:
                    with open(args.out, "a") as f:
                        f.write(json.dumps(r) + "\n")
                bound = " (client-bound)" if r["client_bound"] else ""
                print(
                    f"| {scenario} | {conns} | {rate:,} | {wire} | {r['deliveries_per_s']:,.0f}"
                    f" | {r['bytes_per_update']:.1f} | {r['bytes_per_s'] / 1e6:.1f}"
                    f" | {r['server_cpu_pct']:.0f}% | {r['p99_ms']:.2f}"
                    f" | {max(r['client_cpu_pct']):.0f}%{bound} |",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
