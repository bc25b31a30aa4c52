"""Bus overhead: CPU of a gateway fed by NATS vs one with the embedded simulator.

Starts nats-server (Debian package), ``tickwire publish`` and a NATS-fed gateway with no
clients, samples each process's CPU from /proc for ``--seconds``; then an embedded
gateway at the same rate. Prints one JSON line (percent of one core per process).

    .venv/bin/python bench/bus_overhead.py --rate 1000 --symbols 10
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import time

TICKWIRE = os.path.join(os.path.dirname(__file__), "..", ".venv", "bin", "tickwire")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start(args: list[str], ready: str, prefix: list[str] | None = None) -> subprocess.Popen[str]:
    """Start ``tickwire ARGS`` (after ``prefix``, e.g. nice/taskset) and wait for ``ready``."""
    proc = subprocess.Popen(
        [*(prefix or []), TICKWIRE, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if re.search(ready, line):
            return proc
        if not line:
            break
    proc.kill()
    raise SystemExit(f"{args[0]} did not start")


def measure(pids: dict[str, int], seconds: float) -> dict[str, float]:
    before = {k: cpu_seconds(p) for k, p in pids.items()}
    time.sleep(seconds)
    return {k: round((cpu_seconds(p) - before[k]) / seconds * 100, 1) for k, p in pids.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rate", default="1000", help="updates/s per symbol")
    ap.add_argument("--symbols", default="10", help="symbol count or list")
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()
    port = free_port()
    nats = subprocess.Popen(
        ["nats-server", "-a", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"nats://127.0.0.1:{port}"
    procs: list[subprocess.Popen[str]] = []
    try:
        time.sleep(0.5)
        pub = start(
            ["publish", "--nats", url, "--symbols", args.symbols, "--rate", args.rate], "publishing"
        )
        procs.append(pub)
        gw = start(
            [
                "serve",
                "--port",
                "0",
                "--source",
                url,
                "--symbols",
                args.symbols,
                "--admin-port",
                "off",
            ],
            "serving",
        )
        procs.append(gw)
        time.sleep(2)
        bus = measure(
            {"gateway_nats": gw.pid, "publisher": pub.pid, "nats_server": nats.pid}, args.seconds
        )
    finally:
        for p in [*procs, nats]:
            p.terminate()
            p.wait()
    emb = start(
        [
            "serve",
            "--port",
            "0",
            "--symbols",
            args.symbols,
            "--rate",
            args.rate,
            "--admin-port",
            "off",
        ],
        "serving",
    )
    try:
        time.sleep(2)
        embedded = measure({"gateway_embedded": emb.pid}, args.seconds)
    finally:
        emb.terminate()
        emb.wait()
    print(json.dumps({"rate_per_symbol": args.rate, "symbols": args.symbols, **bus, **embedded}))


if __name__ == "__main__":
    main()
