"""The parent process of ``tickwire bench``: start workers, keep time, merge (I/O).

The parent does no network I/O itself. It starts the worker processes
(:mod:`tickwire.loadtest.worker`), waits until every one has made its connections,
gives them all one measurement window (warm-up end and run end, on the host's monotonic
clock), draws the progress line from their periodic reports, and merges their final
reports (:func:`tickwire.loadtest.report.summarize`). Every wait is bounded: a worker
that does not report in time is terminated and its share is missing from the result.
"""

from __future__ import annotations

import multiprocessing
import signal
import sys
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection as Pipe
from multiprocessing.connection import wait
from typing import Any, TextIO

from .plan import plan
from .report import BenchResult, WorkerReport, format_progress, summarize
from .tally import Counters
from .worker import WorkerConfig, worker_main

__all__ = ["BenchConfig", "run_bench"]

#: Seconds a worker process may take to start (import, spawn) before connecting.
_SPAWN_GRACE = 20.0
#: Seconds a worker may take to close its connections and send its final report.
_FINISH_GRACE = 5.0


@dataclass(frozen=True)
class BenchConfig:
    """Settings of one ``tickwire bench`` run (see ``tickwire bench --help``).

    Attributes:
        url: the feed, ``ws://host:port/path`` (or ``wss://``).
        channels: the channel list; connection ``i`` starts at ``channels[i % n]``.
        conns: connections in all.
        procs: worker processes (resolved, at least 1).
        duration: seconds measured after the warm-up.
        warmup: seconds connected and counting before the measured window opens.
        per_conn: channels each connection subscribes.
        connect_timeout: per connection: TCP connect plus WebSocket handshake.
        progress: draw the live progress line on ``err``.
        encoding: ``"json"`` or ``"msgpack"`` (subprotocol ``tickwire.v1.<encoding>``).
        deflate: offer permessage-deflate (the server needs ``--deflate``).
        dialect: a venue's feed instead of tickwire's (``binance``, ``okx``, ``kraken``).
        rest: the venue's REST base (Binance snapshots; ``--clock-offset auto``).
        depth: Kraken's book depth (0: 100).
        clock_offset: ``"0"``, milliseconds (the venue's clock minus this host's), or
            ``"auto"`` (measured from the venue's REST time endpoint).
        keepalive_s: a venue connection quiet this long gets the venue's ping (OKX
            ``ping``, Kraken ``{"method":"ping"}``).
    """

    url: str
    channels: list[str]
    conns: int = 10
    procs: int = 1
    duration: float = 10.0
    warmup: float = 2.0
    per_conn: int = 1
    connect_timeout: float = 10.0
    progress: bool = True
    encoding: str = "json"
    deflate: bool = False
    dialect: str = ""
    rest: str = ""
    depth: int = 0
    clock_offset: str = "0"
    keepalive_s: float = 15.0


def measure_offset(dialect: str, rest: str, samples: int = 5) -> tuple[int, int]:
    """The venue's clock minus this host's, in ns, and the round trip it is good to
    (``--clock-offset auto``): ``samples`` requests to the venue's REST time endpoint.

    Raises:
        ConfigError: no REST base, no time endpoint, or no answer.
    """
    import urllib.request

    from ..exceptions import ConfigError
    from .venue import TIME_PATHS, estimate_offset, parse_server_time

    path = TIME_PATHS.get(dialect)
    if path is None:
        raise ConfigError(f"--clock-offset auto: {dialect} has no millisecond time endpoint")
    if not rest:
        raise ConfigError("--clock-offset auto needs --rest (the venue's REST base)")
    url = rest.rstrip("/") + path
    taken: list[tuple[int, int, int]] = []
    for _ in range(samples):
        sent = time.time_ns()
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                body = resp.read()
        except OSError as exc:
            raise ConfigError(f"--clock-offset auto: GET {url} failed: {exc}") from None
        received = time.time_ns()
        taken.append((sent, received, parse_server_time(dialect, body)))
    return estimate_offset(taken)


def resolve_offset(config: BenchConfig) -> tuple[int, str]:
    """The clock offset (ns) a run assumes, and how it was obtained (for the report)."""
    if not config.dialect:
        return 0, ""
    value = config.clock_offset
    if value == "auto":
        offset, rtt = measure_offset(config.dialect, config.rest)
        return offset, f"measured from the venue's REST time (round trip {rtt / 1e6:.3f} ms)"
    ms = float(value)
    if ms == 0:
        return 0, "assumed 0: this host's clock is taken as the venue's"
    return int(ms * 1e6), "given with --clock-offset"


class _Progress:
    """The live progress line: ``\\r``-rewritten on a terminal, one line a second otherwise."""

    def __init__(self, err: TextIO, enabled: bool, conns: int) -> None:
        self.err = err
        self.enabled = enabled
        self.tty = enabled and err.isatty()
        self.interval = 0.5 if self.tty else 1.0
        self.conns = conns
        self.started = time.monotonic()
        self.last_t = self.started
        self.last = Counters()
        self.next_draw = self.started + self.interval
        self.drawn = False

    def update(self, phase: str, reports: dict[int, WorkerReport], force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (now < self.next_draw and not force):
            return
        totals = Counters()
        for r in reports.values():
            totals = totals + r.totals
        dt = max(now - self.last_t, 1e-9)
        delta = totals - self.last
        line = format_progress(
            now - self.started,
            phase,
            sum(r.open for r in reports.values()),
            self.conns,
            delta.deliveries / dt,
            delta.messages / dt,
            delta.bytes / dt,
            totals.gaps,
            sum(r.disconnects for r in reports.values()),
        )
        self.last, self.last_t = totals, now
        self.next_draw = now + self.interval
        if self.tty:
            self.err.write("\r" + line + "\x1b[K")
        else:
            self.err.write(line + "\n")
        self.err.flush()
        self.drawn = True

    def close(self) -> None:
        if self.tty and self.drawn:
            self.err.write("\r\x1b[K")
            self.err.flush()


def _collect(
    pipes: dict[int, Pipe],
    latest: dict[int, WorkerReport],
    finals: dict[int, WorkerReport],
    timeout: float,
) -> None:
    """Read every report available within ``timeout`` seconds into latest/finals."""
    if not pipes:
        time.sleep(max(0.0, timeout))
        return
    for ready in wait(list(pipes.values()), timeout):
        assert isinstance(ready, Pipe)
        worker = next(k for k, p in pipes.items() if p is ready)
        try:
            report = ready.recv()
        except (EOFError, OSError):
            del pipes[worker]  # the worker exited: no more reports from it
            continue
        if isinstance(report, WorkerReport):
            latest[worker] = report
            if report.phase == "final":
                finals[worker] = report
                del pipes[worker]


def _send_all(pipes: dict[int, Pipe], message: tuple[Any, ...]) -> None:
    for p in pipes.values():
        try:
            p.send(message)
        except OSError:
            pass


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _catch_sigterm() -> Any:
    """Turn SIGTERM into KeyboardInterrupt; return the old handler (None: not installed)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _interrupt)


def run_bench(config: BenchConfig, err: TextIO | None = None) -> BenchResult:
    """Run a bench and return the merged result.

    Args:
        config: what to run.
        err: where the progress line goes (default ``sys.stderr``).

    Returns:
        The result; ``connected == 0`` when no connection could be made, and
        ``procs`` smaller than asked when a worker died or hung (it is terminated).
    """
    err = sys.stderr if err is None else err
    shares = plan(config.conns, config.channels, config.procs, config.per_conn)
    offset_ns, offset_source = resolve_offset(config)
    ctx = multiprocessing.get_context("spawn")
    procs: dict[int, Any] = {}
    pipes: dict[int, Pipe] = {}
    for k, subs in enumerate(shares):
        parent_end, child_end = ctx.Pipe(duplex=True)
        wc = WorkerConfig(
            worker=k,
            url=config.url,
            subscriptions=subs,
            connect_timeout=config.connect_timeout,
            encoding=config.encoding,
            deflate=config.deflate,
            dialect=config.dialect,
            rest=config.rest,
            depth=config.depth,
            clock_offset_ns=offset_ns,
            keepalive_s=config.keepalive_s,
        )
        p = ctx.Process(target=worker_main, args=(wc, child_end), name=f"tickwire-bench-{k}")
        p.daemon = True
        p.start()
        child_end.close()
        procs[k], pipes[k] = p, parent_end

    latest: dict[int, WorkerReport] = {}
    finals: dict[int, WorkerReport] = {}
    progress = _Progress(err, config.progress, config.conns)
    # SIGTERM, like Ctrl-C, ends the run early but still merges and prints the results.
    old_term = _catch_sigterm()
    try:
        try:
            # Phase 1: every worker connects (each attempt is bounded by connect_timeout).
            deadline = time.monotonic() + config.connect_timeout + _SPAWN_GRACE
            while pipes and time.monotonic() < deadline:
                if all(k in latest or k not in pipes for k in procs):
                    break
                _collect(pipes, latest, finals, 0.1)
                progress.update("connect", latest)
            if sum(r.open for r in latest.values()) == 0:
                _send_all(pipes, ("stop",))
                end = time.monotonic() + _FINISH_GRACE
            else:
                # Phase 2: one window for all; the workers keep the time themselves.
                start = time.monotonic() + config.warmup
                end = start + config.duration
                _send_all(pipes, ("go", start, end))
                while pipes and time.monotonic() < end:
                    _collect(pipes, latest, finals, min(0.1, max(0.0, end - time.monotonic())))
                    phase = "warmup" if time.monotonic() < start else "measure"
                    progress.update(phase, latest)
                end += _FINISH_GRACE
        except KeyboardInterrupt:
            _send_all(pipes, ("stop",))
            end = time.monotonic() + _FINISH_GRACE
        # Phase 3: final reports, within a grace period.
        while pipes and time.monotonic() < end:
            _collect(pipes, latest, finals, min(0.2, max(0.0, end - time.monotonic())))
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
        progress.close()
        for k, p in procs.items():
            p.join(timeout=1.0 if k in finals else 0.1)
            if p.is_alive():
                p.terminate()
                p.join(timeout=2.0)
        for pipe in pipes.values():
            pipe.close()

    result = summarize(
        [finals[k] for k in sorted(finals)],
        url=config.url,
        conns=config.conns,
        channels=config.channels,
        duration_s=config.duration,
        warmup_s=config.warmup,
        dialect=config.dialect,
        clock_offset_ns=offset_ns,
        clock_offset_source=offset_source,
    )
    missing = sorted(set(procs) - set(finals))
    if missing:
        result.errors.append(f"worker(s) {missing} sent no final report and were stopped")
    return result
