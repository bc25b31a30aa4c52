"""Healthy clients' latency and server memory, with and without slow clients (not a test).

Runs a real ``tickwire serve`` (pinned to CPU 0 when ``taskset`` exists) and, pinned to
CPU 1, ``--clients`` picows clients that each subscribe to one symbol's ``book`` and
``trades``: the healthy ones in this process, the slow ones in a child process at
``nice 10`` (so that their bursts of catching up do not delay the healthy clients'
reads in the same event loop, which would measure the load client, not the server).
Two runs of ``--seconds`` each, on a fresh server:

- **clean**: every client reads as fast as it can;
- **slow**: ``--slow-pct`` of the clients read at a tenth of the feed rate (their
  transport stops reading whenever they are ahead of 10 % of the bytes a healthy client
  of the same symbol has received); a slow client closed with 4001 reconnects and
  resumes from history (``epoch`` + ``since``), as the SDK does.

For healthy clients it records, per frame, the delay from the engine's event time
(``ts`` of the frame's newest update) to its arrival, and prints p50/p99/p99.9, the
server's peak RSS, its CPU, and the slow-consumer counters of its exit stats, as a
Markdown table (``docs/benchmarks.md``, section "Slow consumers")::

    python bench/slow_consumers.py --clients 100 --symbols 4 --rate 10000 --seconds 20
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import multiprocessing as mp
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import uvloop
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

_SERVING = re.compile(r"ws://([\d.]+):(\d+)/ws \(epoch (\S+)\)")
_TS = b'"ts":'
_TRADES_SEQ = re.compile(rb'"seq":(\d+)')


class Client(WSListener):
    """One subscriber; healthy ones record latency, slow ones are throttled by the bench."""

    def __init__(self, bench: Any, symbol: str, slow: bool) -> None:
        super().__init__()
        self.bench = bench
        self.symbol = symbol
        self.slow = slow
        self.transport: WSTransport | None = None
        self.bytes = 0
        self.frames = 0
        self.paused = False
        self.close_code: int | None = None
        self.epoch = ""
        self.since: dict[str, int] = {}
        # Bytes read by a healthy client of the same symbol: a slow one reads a tenth.
        self.ref: Callable[[], float] | None = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        req: dict[str, Any] = {
            "op": "subscribe",
            "channels": [f"book.{self.symbol}", f"trades.{self.symbol}"],
        }
        if self.since:
            req.update(epoch=self.epoch, since=self.since)
        transport.send(WSMsgType.TEXT, json.dumps(req).encode())

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type != WSMsgType.TEXT:
            if frame.msg_type == WSMsgType.CLOSE:
                self.close_code = frame.get_close_code()
                transport.send_close(frame.get_close_code())
                transport.disconnect()
            return
        data = frame.get_payload_as_bytes()
        self.bytes += len(data)
        self.frames += 1
        if self.slow:
            ref = self.ref
            if ref is not None and not self.paused and self.bytes > ref() / 10:
                transport.underlying_transport.pause_reading()
                self.paused = True
            # Remember where each stream is, to resume after a slow-consumer close.
            if data.startswith(b'{"type":"ack"'):
                self.epoch = json.loads(data)["epoch"]
            elif b'"ch":"trades.' in data[:40] or data.startswith(b'{"type":"snapshot"'):
                m = json.loads(data)
                if m["ch"].startswith("trades."):
                    self.since[m["ch"]] = m["seq"]
            return
        if self.bench.recording:
            i = data.rfind(_TS)
            if i >= 0:
                j = i + 5
                k = data.find(b"}", j)
                self.bench.latencies.append(time.time_ns() - int(data[j:k]))

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.transport = None
        if self.slow and self.bench.running:
            self.bench.reconnects += 1
            asyncio.get_running_loop().create_task(self.bench.connect(self))


class Bench:
    """One run: a server, its clients, and what they measured."""

    def __init__(self, args: argparse.Namespace, slow_pct: float) -> None:
        self.args = args
        self.slow_pct = slow_pct
        self.latencies: list[int] = []
        self.recording = False
        self.running = True
        self.reconnects = 0
        self.url = ""
        self.proc: subprocess.Popen[str] | None = None

    def start_server(self) -> None:
        a = self.args
        cmd = [
            sys.executable, "-m", "tickwire", "serve", "--port", "0",
            "--symbols", str(a.symbols), "--rate", str(a.rate),
            "--max-seconds", str(a.seconds * 3 + 60), *a.server_args,
        ]  # fmt: skip
        if shutil.which("taskset"):
            cmd = ["taskset", "-c", "0", *cmd]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            m = _SERVING.search(line)
            if m:
                self.url = f"ws://127.0.0.1:{m.group(2)}/ws"
                return
        raise RuntimeError(
            "server did not start: " + (self.proc.stderr.read() if self.proc.stderr else "")
        )

    def stop_server(self) -> dict[str, Any]:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        _, err = self.proc.communicate(timeout=30)
        for line in reversed(err.splitlines()):
            if line.startswith("{"):
                stats: dict[str, Any] = json.loads(line)
                return stats
        return {}

    async def connect(self, client: Client) -> None:
        await ws_connect(lambda: client, self.url, max_frame_size=64 << 20)

    async def run(self) -> dict[str, Any]:
        a = self.args
        self.start_server()
        assert self.proc is not None
        pid = self.proc.pid
        symbols = [f"SYM{i}" for i in range(a.symbols)]
        n_slow = round(a.clients * self.slow_pct / 100)
        step = a.clients // n_slow if n_slow else 0
        # Spread the slow clients over the symbols like the healthy ones.
        slow_idx = {k * step + k % a.symbols for k in range(n_slow)}
        clients = [
            Client(self, symbols[i % len(symbols)], False)
            for i in range(a.clients)
            if i not in slow_idx
        ]
        slow_symbols = [symbols[i % len(symbols)] for i in sorted(slow_idx)]
        refs = [next(c for c in clients if c.symbol == sym) for sym in symbols]
        shared = mp.Array("d", len(symbols), lock=False)
        stop = mp.Event()
        results: mp.Queue[tuple[int, int]] = mp.Queue()
        child = mp.Process(
            target=_slow_side, args=(self.url, slow_symbols, symbols, shared, stop, results)
        )
        for c in clients:
            await self.connect(c)
        child.start()
        publish = asyncio.get_running_loop().create_task(self.publish(refs, shared))
        await asyncio.sleep(a.warmup)
        rss_peak = 0
        cpu0 = _cpu_s(pid)
        me0 = time.process_time()
        frames0 = sum(c.frames for c in clients)
        self.recording = True
        t0 = time.monotonic()
        while time.monotonic() - t0 < a.seconds:
            await asyncio.sleep(0.25)
            rss_peak = max(rss_peak, _rss_kb(pid))
        self.recording = False
        elapsed = time.monotonic() - t0
        cpu = (_cpu_s(pid) - cpu0) / elapsed
        client_cpu = (time.process_time() - me0) / elapsed
        frames = sum(c.frames for c in clients) - frames0
        self.running = False
        stop.set()
        slow_read, self.reconnects = await asyncio.to_thread(results.get, True, 30)
        child.join(10)
        publish.cancel()
        rss_end = _rss_kb(pid)
        stats = self.stop_server()
        lat = sorted(self.latencies)
        healthy_read = sum(c.bytes for c in clients)
        return {
            "slow_pct": self.slow_pct,
            "clients": a.clients,
            "slow_clients": n_slow,
            "samples": len(lat),
            "p50_ms": _pct(lat, 0.50),
            "p99_ms": _pct(lat, 0.99),
            "p999_ms": _pct(lat, 0.999),
            "frames_per_s": frames / elapsed,
            "server_cpu": cpu,
            "client_cpu": client_cpu,
            "rss_peak_mb": rss_peak / 1024,
            "rss_end_mb": rss_end / 1024,
            "slow_read_ratio": (slow_read / max(1, n_slow)) / (healthy_read / len(clients)),
            "reconnects": self.reconnects,
            "server_slow": stats.get("slow", {}),
            "updates_out": stats.get("updates_out", 0),
            "gen_per_s": stats.get("gen_per_s", 0),
        }

    async def publish(self, refs: list[Client], shared: Any) -> None:
        """Share what one healthy client per symbol has read with the slow side."""
        while True:
            for k, c in enumerate(refs):
                shared[k] = c.bytes
            await asyncio.sleep(0.005)


class SlowSide:
    """The slow clients, in their own process; see :func:`_slow_side`."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.recording = False
        self.running = True
        self.reconnects = 0

    async def connect(self, client: Client) -> None:
        await ws_connect(lambda: client, self.url, max_frame_size=64 << 20)

    async def run(self, slow_symbols: list[str], symbols: list[str], shared: Any, stop: Any) -> int:
        clients = [Client(self, sym, True) for sym in slow_symbols]
        for c in clients:
            k = symbols.index(c.symbol)
            c.ref = lambda k=k: float(shared[k])
            await self.connect(c)
        throttle = asyncio.get_running_loop().create_task(self.throttle(clients))
        await asyncio.to_thread(stop.wait)
        self.running = False
        throttle.cancel()
        return sum(c.bytes for c in clients)

    async def throttle(self, slow: list[Client]) -> None:
        """Resume a slow client once a healthy one has read ten times as much.

        The pause itself happens in :meth:`Client.on_ws_frame`, as soon as it is ahead.
        """
        while True:
            await asyncio.sleep(0.005)
            for c in slow:
                t = c.transport
                if t is None or c.ref is None:
                    continue
                if c.paused and c.bytes <= c.ref() / 10:
                    t.underlying_transport.resume_reading()
                    c.paused = False


def _slow_side(
    url: str, slow_symbols: list[str], symbols: list[str], shared: Any, stop: Any, results: Any
) -> None:
    """Child process: run the slow clients at low priority until ``stop`` is set."""
    os.nice(10)
    side = SlowSide(url)
    read = uvloop.run(side.run(slow_symbols, symbols, shared, stop)) if slow_symbols else 0
    results.put((read, side.reconnects))


def _pct(sorted_ns: list[int], q: float) -> float:
    if not sorted_ns:
        return float("nan")
    return sorted_ns[min(len(sorted_ns) - 1, int(q * len(sorted_ns)))] / 1e6


def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except FileNotFoundError:
        pass
    return 0


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def table(rows: list[dict[str, Any]]) -> str:
    out = [
        "| run | healthy p50 ms | healthy p99 ms | p99.9 ms | healthy frames/s | server CPU "
        "| healthy clients' CPU | server RSS peak MiB | slow read / healthy "
        "| conflated (delta+snap) | 4001 closes |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        s = r["server_slow"]
        closes = sum(s.get("closes", {}).values())
        out.append(
            f"| {r['slow_pct']:g}% slow ({r['slow_clients']}/{r['clients']}) "
            f"| {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['p999_ms']:.2f} "
            f"| {r['frames_per_s']:,.0f} | {r['server_cpu']:.0%} | {r['client_cpu']:.0%} "
            f"| {r['rss_peak_mb']:.1f} "
            f"| {r['slow_read_ratio']:.2f} "
            f"| {s.get('conflated', 0)}+{s.get('conflated_snapshots', 0)} | {closes} |"
        )
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--symbols", type=int, default=4)
    ap.add_argument("--rate", type=float, default=10000, help="book updates/s per symbol")
    ap.add_argument("--seconds", type=float, default=20, help="measured time per run")
    ap.add_argument("--warmup", type=float, default=3)
    ap.add_argument("--slow-pct", type=float, default=10)
    ap.add_argument("--repeat", type=int, default=3, help="alternating clean/slow pairs")
    ap.add_argument("--json", help="also write the raw results here")
    ap.add_argument("server_args", nargs="*", help="extra 'tickwire serve' args (after --)")
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {1})
    gc.disable()  # the client side must not add GC pauses to the latencies it measures
    rows = []
    # Alternate the two runs: on a shared machine, noise then hits both alike.
    for _ in range(args.repeat):
        for pct in (0.0, args.slow_pct):
            rows.append(uvloop.run(Bench(args, pct).run()))
            gc.collect()
    print(table(rows))
    clean = sorted(r["p99_ms"] for r in rows if r["slow_pct"] == 0)
    slow = sorted(r["p99_ms"] for r in rows if r["slow_pct"] != 0)
    ratio = slow[len(slow) // 2] / clean[len(clean) // 2]
    print(f"\nhealthy p99, median of {args.repeat}: slow/clean = {ratio:.2f}x")
    print(json.dumps(rows[-1]["server_slow"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
