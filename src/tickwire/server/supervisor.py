"""``tickwire serve --workers N``: N gateway processes sharing one port, supervised.

One Python process uses one core; the supervisor runs N gateway processes (``tickwire
serve --reuse-port ...``) that all listen on the same address with ``SO_REUSEPORT``,
so the kernel spreads new connections across them. It does no I/O on the data path.

* **Port**: the supervisor binds (never listens on) a ``SO_REUSEPORT`` socket first, so
  ``--port 0`` resolves to one free port that every worker then shares, and the port
  stays reserved while a worker restarts.
* **Readiness**: a worker prints its ``serving`` line once its books are complete and
  it listens (with ``--source nats://`` that is after its snapshots); the supervisor
  prints its own ``serving`` line when every worker has.
* **Supervision**: a worker that exits while the supervisor is not stopping is started
  again (after 0.5 s, doubling up to 5 s while it keeps dying within 10 s of its start).
  Its clients reconnect -- the kernel sends them to a live worker -- and resume.
* **Reload**: SIGHUP is passed on to every worker, which reloads its configuration
  (``docs/configuration.md``).
* **Shutdown**: SIGTERM or SIGINT is forwarded to every worker, which drains (going-away
  close to each client); workers still alive after ``drain_timeout`` are killed. The
  supervisor then prints one JSON line of stats on stderr: each worker's exit stats and
  the restart count.

Each worker has its own engine. With the embedded simulator each therefore has its own
market and epoch, and a client that moves to another worker gets a fresh snapshot; use a
bus (``--source nats://``) for one consistent feed across workers (``docs/scaling.md``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

__all__ = ["Supervisor", "worker_argv"]

log = logging.getLogger("tickwire.supervisor")

_SERVING = re.compile(rb"ws://\S+ \(epoch (\S+)\)")


def worker_argv(argv: list[str], port: int, admin_port: int | None) -> list[str]:
    """Turn the supervisor's ``serve`` arguments into one worker's.

    Drops ``--workers``, ``--port`` and ``--admin-port`` (in both ``--opt V`` and
    ``--opt=V`` forms) and adds the shared port, ``--reuse-port`` and the worker's
    admin port (or ``off``).
    """
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in ("--workers", "--port", "--admin-port", "--stats-file"):
            skip = "=" not in arg
            continue
        out.append(arg)
    admin = "off" if admin_port is None else str(admin_port)
    return [*out, "--port", str(port), "--reuse-port", "--admin-port", admin]


class Worker:
    """One supervised gateway process."""

    def __init__(self, index: int, stats_path: str) -> None:
        self.index = index
        self.stats_path = stats_path
        self.proc: asyncio.subprocess.Process | None = None
        self.epoch: str | None = None
        self.started = 0.0
        self.restarts = 0
        self.delay = 0.5
        self.ready = asyncio.Event()


class Supervisor:
    """Starts, watches and stops N workers (see the module docstring).

    Args:
        argv: the ``serve`` arguments given to the supervisor (without ``serve``).
        workers: how many gateway processes.
        host, port: the shared listening address (port 0: pick a free one).
        admin_port: the first worker's admin port (worker i gets ``admin_port + i``);
            None: no admin listener.
        drain_timeout: seconds workers get to drain after SIGTERM.
        announce: called with ``(port, epochs, pids)`` once every worker is ready.
    """

    def __init__(
        self,
        argv: list[str],
        workers: int,
        host: str,
        port: int,
        *,
        admin_port: int | None = None,
        drain_timeout: float = 10.0,
        announce: Callable[[int, list[str], list[int]], None] | None = None,
    ) -> None:
        self.argv = argv
        self.host = host
        self.port = port
        self.admin_port = admin_port
        self.drain_timeout = drain_timeout
        self.announce = announce
        self.tmp = tempfile.mkdtemp(prefix="tickwire-workers-")
        self.workers = [
            Worker(i, os.path.join(self.tmp, f"worker-{i}.json")) for i in range(workers)
        ]
        self.stopping = asyncio.Event()
        self.restarts = 0
        self._reserve: socket.socket | None = None

    def reserve_port(self) -> int:
        """Bind a SO_REUSEPORT socket (not listening) so every worker gets this port."""
        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((self.host, self.port))
        self._reserve = sock
        self.port = sock.getsockname()[1]
        return self.port

    async def run(self) -> dict[str, Any]:
        """Run until SIGTERM/SIGINT; return the combined stats (also printed)."""
        self.reserve_port()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self.hangup)
        watchers = [asyncio.create_task(self._watch(w)) for w in self.workers]
        ready: asyncio.Future[Any] = asyncio.gather(*(w.ready.wait() for w in self.workers))
        stop: asyncio.Future[Any] = asyncio.ensure_future(self.stopping.wait())
        await asyncio.wait([ready, stop], return_when=asyncio.FIRST_COMPLETED)
        if ready.done() and self.announce is not None:
            self.announce(
                self.port,
                [w.epoch or "?" for w in self.workers],
                [w.proc.pid for w in self.workers if w.proc is not None],
            )
        await self.stopping.wait()
        ready.cancel()
        await self._stop_all()
        for task in watchers:
            task.cancel()
        stats = self.stats()
        sys.stderr.write(json.dumps(stats) + "\n")
        sys.stderr.flush()
        if self._reserve is not None:
            self._reserve.close()
        return stats

    def stats(self) -> dict[str, Any]:
        """Each worker's last exit stats, summed counters and the restart count."""
        per: list[dict[str, Any]] = []
        for w in self.workers:
            try:
                with open(w.stats_path) as f:
                    per.append(json.loads(f.read()))
            except (OSError, ValueError):
                per.append({})
        total: dict[str, Any] = {
            "server": "tickwire",
            "supervisor_pid": os.getpid(),
            "workers": len(self.workers),
            "restarts": self.restarts,
        }
        for key in ("frames_out", "bytes_out", "updates_out", "messages_built", "generated"):
            total[key] = sum(int(p.get(key, 0)) for p in per)
        total["per_worker"] = per
        return total

    def hangup(self) -> None:
        """SIGHUP: pass it on; each worker reloads its configuration itself."""
        for w in self.workers:
            if w.proc is not None and w.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    w.proc.send_signal(signal.SIGHUP)

    # -- one worker --------------------------------------------------------------------

    async def _spawn(self, w: Worker) -> asyncio.subprocess.Process:
        admin = None if self.admin_port is None else self.admin_port + w.index
        args = worker_argv(self.argv, self.port, admin)
        # --workers 1: a [listen] workers of the file or environment is the supervisor's.
        cmd = [
            *(sys.executable, "-m", "tickwire", "serve", *args),
            *("--workers", "1", "--stats-file", w.stats_path),
        ]
        w.started = time.monotonic()
        return await asyncio.create_subprocess_exec(
            *cmd, stdout=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL
        )

    async def _watch(self, w: Worker) -> None:
        """Keep worker ``w`` running until the supervisor stops."""
        while not self.stopping.is_set():
            proc = w.proc = await self._spawn(w)
            assert proc.stdout is not None
            async for line in proc.stdout:
                m = _SERVING.search(line)
                if m and not w.ready.is_set():
                    w.epoch = m.group(1).decode()
                    w.ready.set()
                    if w.restarts:
                        log.warning("worker %d (pid %d) ready again", w.index, proc.pid)
                sys.stderr.write(f"[worker {w.index}] {line.decode(errors='replace')}")
            code = await proc.wait()
            if self.stopping.is_set():
                return
            w.ready.clear()
            quick = time.monotonic() - w.started < 10.0
            w.delay = min(w.delay * 2, 5.0) if quick else 0.5
            w.restarts += 1
            self.restarts += 1
            log.warning(
                "worker %d (pid %d) exited with %s; restarting in %.1fs",
                w.index,
                proc.pid,
                code,
                w.delay,
            )
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), w.delay)

    async def _stop_all(self) -> None:
        procs = [w.proc for w in self.workers if w.proc is not None]
        for proc in procs:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.gather(*(p.wait() for p in procs)), self.drain_timeout)
        except TimeoutError:
            for proc in procs:
                if proc.returncode is None:
                    log.warning("worker pid %d did not drain; killing it", proc.pid)
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
            await asyncio.gather(*(p.wait() for p in procs))
