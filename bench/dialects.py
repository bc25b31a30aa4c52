"""Venue dialects against the native protocol: server CPU, bytes/s and latency, one run.

For each mode (``native``, ``binance``, ``okx`` ...) a fresh ``tickwire serve`` runs the
same market (``--symbols N --rate R``, pinned to ``--server-cpu``) and a client process
(pinned to ``--client-cpu``) opens ``--conns`` connections, connection ``i`` on symbol
``i mod N``'s book stream in that mode:

* ``native``: ``book.SYMi`` (a delta per pass, every update with its ``ts``);
* ``binance``: ``symiusd@depth@100ms`` (a merged diff every 100 ms);
* ``okx``: ``books`` of ``SYMi-USD`` (a snapshot, then a merged update every 100 ms);
* ``idle``: no connection at all (the market's own cost, the floor of the others).

Measured over ``--seconds`` after ``--warmup``: the server's CPU (``/proc/PID/stat``),
the bytes and messages the clients received, and the latency from the newest event time
a message carries (native: its last update's ``ts``; Binance: ``E``; OKX: ``ts``) to its
receipt. A 100 ms window's newest event is at most one pass old when it is sent, so the
windowed modes' latency is comparable with native's; their events are up to 100 ms
older (that is the stream's contract). The client's own CPU is reported: a client near
100% means the client, not the server, was the limit.

Usage::

    .venv/bin/python bench/dialects.py --modes native,binance,okx --out /tmp/dialects.jsonl
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import time
from typing import Any

_SERVING = re.compile(r"wss?://[\d.]+:(\d+)/ws")
_TS = re.compile(rb'"ts":"?(\d+)')
_E = re.compile(rb'"E":(\d+)')

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


# -- the client (a child process) ---------------------------------------------------------


def _url_and_subscribe(mode: str, port: int, i: int, symbols: int) -> tuple[str, bytes | None]:
    sym = f"SYM{i % symbols}"
    if mode == "native":
        return f"ws://127.0.0.1:{port}/ws", json.dumps(
            {"op": "subscribe", "channels": [f"book.{sym}"], "id": 1}
        ).encode()
    if mode == "binance":
        return f"ws://127.0.0.1:{port}/binance/ws/{sym.lower()}usd@depth@100ms", None
    if mode == "okx":
        return f"ws://127.0.0.1:{port}/okx/ws/v5/public", json.dumps(
            {"op": "subscribe", "args": [{"channel": "books", "instId": f"{sym}-USD"}]}
        ).encode()
    raise SystemExit(f"unknown mode {mode}")


async def _client(
    mode: str, port: int, conns: int, symbols: int, warmup: float, seconds: float
) -> None:
    from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

    state = {"measuring": False, "bytes": 0, "messages": 0}
    lat: list[float] = []
    is_native = mode == "native"

    class Listener(WSListener):  # type: ignore[misc]
        def __init__(self, hello: bytes | None) -> None:
            self.hello = hello

        def on_ws_connected(self, transport: WSTransport) -> None:
            if self.hello is not None:
                transport.send(WSMsgType.TEXT, self.hello)

        def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
            if frame.msg_type != WSMsgType.TEXT or not state["measuring"]:
                return
            data = frame.get_payload_as_bytes()
            now = time.time_ns()
            state["bytes"] += len(data)
            state["messages"] += 1
            if is_native:
                at = data.rfind(b'"ts":')
                if at < 0:
                    return
                end = at + 5
                while data[end : end + 1].isdigit():
                    end += 1
                lat.append((now - int(data[at + 5 : end])) / 1e6)
            else:
                m = _E.search(data) if mode == "binance" else _TS.search(data)
                if m:
                    lat.append(now / 1e6 - int(m.group(1)))

    transports = []
    for i in range(0 if mode == "idle" else conns):
        url, hello = _url_and_subscribe(mode, port, i, symbols)
        transport, _ = await ws_connect(lambda h=hello: Listener(h), url, max_frame_size=1 << 26)
        transports.append(transport)
    await asyncio.sleep(warmup)
    print(json.dumps({"event": "measure_start"}), flush=True)
    cpu0 = cpu_seconds(os.getpid())
    state["measuring"] = True
    t0 = time.monotonic()
    await asyncio.sleep(seconds)
    state["measuring"] = False
    elapsed = time.monotonic() - t0
    cpu = cpu_seconds(os.getpid()) - cpu0
    for t in transports:
        t.disconnect()
    lat.sort()

    def q(p: float) -> float:
        return round(lat[min(len(lat) - 1, int(p * len(lat)))], 3) if lat else -1.0

    print(
        json.dumps(
            {
                "event": "result",
                "bytes_per_s": state["bytes"] / elapsed,
                "messages_per_s": state["messages"] / elapsed,
                "latency_ms": {"p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "max": q(1.0)},
                "client_cpu_pct": 100 * cpu / elapsed,
            }
        ),
        flush=True,
    )


# -- the driver ----------------------------------------------------------------------------


def run_mode(args: argparse.Namespace, mode: str) -> dict[str, Any]:
    server_cmd = [
        "taskset",
        "-c",
        str(args.server_cpu),
        sys.executable,
        "-m",
        "tickwire",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--symbols",
        str(args.symbols),
        "--rate",
        str(args.rate),
        "--max-seconds",
        str(int(args.warmup + args.seconds + 60)),
        *args.server_args,
    ]
    server = subprocess.Popen(server_cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        port = 0
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            m = _SERVING.search(server.stdout.readline())
            if m:
                port = int(m.group(1))
                break
        if not port:
            raise SystemExit("the server did not start")
        client_cmd = [
            "taskset",
            "-c",
            str(args.client_cpu),
            sys.executable,
            __file__,
            "--client",
            mode,
            str(port),
            str(args.conns),
            str(args.symbols),
            str(args.warmup),
            str(args.seconds),
        ]
        client = subprocess.Popen(client_cmd, stdout=subprocess.PIPE, text=True)
        assert client.stdout is not None
        result: dict[str, Any] = {}
        cpu0 = t0 = 0.0
        for line in client.stdout:
            ev = json.loads(line)
            if ev["event"] == "measure_start":
                cpu0, t0 = cpu_seconds(server.pid), time.monotonic()
            elif ev["event"] == "result":
                elapsed = time.monotonic() - t0
                result = ev
                result["server_cpu_pct"] = 100 * (cpu_seconds(server.pid) - cpu0) / elapsed
        client.wait(timeout=30)
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
    result.pop("event", None)
    return {
        "mode": mode,
        "conns": args.conns,
        "symbols": args.symbols,
        "rate_per_symbol": args.rate,
        **result,
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        mode, port, conns, symbols, warmup, seconds = sys.argv[2:8]
        try:
            import uvloop

            uvloop.install()
        except ImportError:  # pragma: no cover - uvloop is a dependency
            pass
        asyncio.run(
            _client(mode, int(port), int(conns), int(symbols), float(warmup), float(seconds))
        )
        return
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--modes", default="native,binance,okx")
    ap.add_argument("--conns", type=int, default=100)
    ap.add_argument("--symbols", type=int, default=10)
    ap.add_argument("--rate", type=int, default=20000, help="book updates/s per symbol")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--server-cpu", type=int, default=0)
    ap.add_argument("--client-cpu", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=1, help="alternate the modes this many times")
    ap.add_argument("--out", default=None, help="append one JSON line per run")
    ap.add_argument("server_args", nargs="*", help="extra `tickwire serve` arguments (after --)")
    args = ap.parse_args()
    rows = []
    for _ in range(args.repeat):
        for mode in args.modes.split(","):
            row = run_mode(args, mode)
            rows.append(row)
            print(json.dumps(row), flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps(row) + "\n")
    print()
    head = ("mode", "server CPU %", "MB/s", "msgs/s", "p50 ms", "p99 ms", "client CPU %")
    widths = (-8, 12, 8, 9, 7, 7, 12)
    print(
        " ".join(f"{h:<{-w}}" if w < 0 else f"{h:>{w}}" for h, w in zip(head, widths, strict=True))
    )
    for r in rows:
        lat = r.get("latency_ms", {})
        cells = (
            r["mode"],
            r.get("server_cpu_pct", -1),
            r.get("bytes_per_s", 0) / 1e6,
            r.get("messages_per_s", 0),
            lat.get("p50", -1),
            lat.get("p99", -1),
            r.get("client_cpu_pct", -1),
        )
        name, *numbers = cells
        digits = (1, 2, 0, 2, 2, 1)
        line = " ".join(
            f"{n:{w}.{d}f}" for n, w, d in zip(numbers, widths[1:], digits, strict=True)
        )
        print(f"{name:<8} {line}")


if __name__ == "__main__":
    main()
