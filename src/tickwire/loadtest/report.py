"""Worker reports, their merge, and the bench result in JSON and text (Sans-I/O).

Each worker process of ``tickwire bench`` sends :class:`WorkerReport` objects to the
parent through a pipe: progress reports while it runs and one final report with its
latency histogram. :func:`summarize` merges the finals into the result the user sees;
every number in it is a sum over workers (histograms included, see
:mod:`tickwire.loadtest.histogram`), except the per-process CPU list.

The JSON written by ``tickwire bench --json`` is :meth:`BenchResult.to_json`; its fields
are documented in ``docs/bench-tool.md`` and listed in :data:`RESULT_FIELDS`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from .histogram import Histogram
from .tally import Counters

__all__ = [
    "CLIENT_BOUND_CPU_PCT",
    "LATENCY_FIELDS",
    "RESULT_FIELDS",
    "BenchResult",
    "WorkerReport",
    "format_progress",
    "format_text",
    "summarize",
]

#: A worker above this share of one core was probably the bottleneck itself.
CLIENT_BOUND_CPU_PCT = 90.0

#: Keys of the ``latency_ms`` object.
LATENCY_FIELDS = ("count", "negative", "mean", "p50", "p90", "p99", "p999", "max")

#: Top-level keys of the ``--json`` output, in order.
RESULT_FIELDS = (
    "tool",
    "version",
    "url",
    "conns",
    "channels",
    "procs",
    "duration_s",
    "warmup_s",
    "elapsed_s",
    "connected",
    "connect_errors",
    "disconnects",
    "gaps",
    "deliveries",
    "deliveries_per_s",
    "messages",
    "messages_per_s",
    "bytes",
    "bytes_per_s",
    "latency_ms",
    "client_cpu_pct",
    "client_bound",
    "ended_early",
    "totals",
    "errors",
    "dialect",
    "checksum_failures",
    "clock_offset_ms",
    "clock_offset_source",
    "latency_definition",
)

#: How latency is defined for tickwire's own protocol (venues: LATENCY_DEFINITION).
NATIVE_LATENCY = "receive time minus each update's ts (ns, the gateway's event time)"


class WorkerReport(msgspec.Struct):
    """What one worker process tells the parent (pickled through a pipe).

    Attributes:
        worker: the worker's number, 0-based.
        phase: ``"ready"`` (connections made), ``"progress"`` or ``"final"``.
        conns: connections assigned to this worker.
        open: connections open right now.
        connect_errors: connections that could not be opened (each attempted once).
        disconnects: connections the server or network closed before the end.
        totals: counters since the first connection (warm-up included).
        window: counters of the measurement window (final report only).
        window_s: length of the window this worker measured, in seconds.
        cpu_s: CPU seconds this process used during the window.
        hist: the latency histogram of the window as ``(bucket, count)`` pairs.
        hist_total, hist_sum, hist_max, hist_negative: its scalar fields.
        ended_early: every connection closed before the window's end.
        errors: a few error descriptions (connect failures, server errors, closes).
    """

    worker: int
    phase: str
    conns: int = 0
    open: int = 0
    connect_errors: int = 0
    disconnects: int = 0
    totals: Counters = msgspec.field(default_factory=Counters)
    window: Counters = msgspec.field(default_factory=Counters)
    window_s: float = 0.0
    cpu_s: float = 0.0
    hist: list[tuple[int, int]] = []
    hist_total: int = 0
    hist_sum: int = 0
    hist_max: int = 0
    hist_negative: int = 0
    ended_early: bool = False
    errors: list[str] = []

    def histogram(self) -> Histogram:
        """Rebuild this worker's latency histogram."""
        return Histogram.from_sparse(
            self.hist, self.hist_total, self.hist_sum, self.hist_max, self.hist_negative
        )

    @property
    def cpu_pct(self) -> float:
        """CPU use during the window, in percent of one core."""
        return 100.0 * self.cpu_s / self.window_s if self.window_s > 0 else 0.0


@dataclass
class BenchResult:
    """The merged outcome of a bench run; :meth:`to_json` is the ``--json`` output."""

    url: str
    conns: int
    channels: list[str]
    procs: int
    duration_s: float
    warmup_s: float
    elapsed_s: float
    connected: int
    connect_errors: int
    disconnects: int
    window: Counters
    totals: Counters
    hist: Histogram
    client_cpu_pct: list[float]
    ended_early: bool
    errors: list[str]
    dialect: str = ""
    clock_offset_ns: int = 0
    clock_offset_source: str = ""

    @property
    def latency_definition(self) -> str:
        """What the latency of this run measures (the venue's own event time field)."""
        if not self.dialect:
            return NATIVE_LATENCY
        from ..dialects.decode import LATENCY_DEFINITION

        return LATENCY_DEFINITION[self.dialect]

    @property
    def client_bound(self) -> bool:
        """True when a worker used more than :data:`CLIENT_BOUND_CPU_PCT` of a core."""
        return any(p > CLIENT_BOUND_CPU_PCT for p in self.client_cpu_pct)

    def rate(self, count: int) -> float:
        """``count`` per second of the measured window (0 when there was none)."""
        return count / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def latency_ms(self) -> dict[str, float | int]:
        """The ``latency_ms`` object: quantiles of update latency in milliseconds."""
        h = self.hist

        def ms(ns: float) -> float:
            return round(ns / 1e6, 4)

        return {
            "count": h.total,
            "negative": h.negative,
            "mean": ms(h.mean()),
            "p50": ms(h.quantile(0.50)),
            "p90": ms(h.quantile(0.90)),
            "p99": ms(h.quantile(0.99)),
            "p999": ms(h.quantile(0.999)),
            "max": ms(h.max),
        }

    def to_json(self) -> dict[str, Any]:
        """Return the result as the documented JSON object (keys in RESULT_FIELDS)."""
        w = self.window
        return {
            "tool": "tickwire bench",
            "version": 1,
            "url": self.url,
            "conns": self.conns,
            "channels": self.channels,
            "procs": self.procs,
            "duration_s": self.duration_s,
            "warmup_s": self.warmup_s,
            "elapsed_s": round(self.elapsed_s, 4),
            "connected": self.connected,
            "connect_errors": self.connect_errors,
            "disconnects": self.disconnects,
            "gaps": w.gaps,
            "deliveries": w.deliveries,
            "deliveries_per_s": round(self.rate(w.deliveries), 1),
            "messages": w.messages,
            "messages_per_s": round(self.rate(w.messages), 1),
            "bytes": w.bytes,
            "bytes_per_s": round(self.rate(w.bytes), 1),
            "latency_ms": self.latency_ms(),
            "client_cpu_pct": [round(p, 1) for p in self.client_cpu_pct],
            "client_bound": self.client_bound,
            "ended_early": self.ended_early,
            "totals": msgspec.structs.asdict(self.totals),
            "errors": self.errors,
            "dialect": self.dialect or None,
            "checksum_failures": w.checksum_failures,
            "clock_offset_ms": round(self.clock_offset_ns / 1e6, 3),
            "clock_offset_source": self.clock_offset_source,
            "latency_definition": self.latency_definition,
        }


def summarize(
    finals: Sequence[WorkerReport],
    *,
    url: str,
    conns: int,
    channels: Sequence[str],
    duration_s: float,
    warmup_s: float,
    max_errors: int = 10,
    dialect: str = "",
    clock_offset_ns: int = 0,
    clock_offset_source: str = "",
) -> BenchResult:
    """Merge the final reports of all workers into one result.

    Counters and histograms are summed. The window length is the longest any worker
    measured (workers share one schedule, so they differ by milliseconds; a worker
    whose connections all closed early measured less, and then the run ended early).

    Args:
        finals: one final report per worker that finished; a worker that died sends
            none, and its connections count as neither connected nor failed.
        url, conns, channels, duration_s, warmup_s: the run's settings, echoed.
        max_errors: how many error descriptions to keep in the result.
        dialect, clock_offset_ns, clock_offset_source: a venue run's settings, echoed.

    Returns:
        The merged result.
    """
    hist = Histogram()
    window = Counters()
    totals = Counters()
    errors: list[str] = []
    for r in finals:
        hist.merge(r.histogram())
        window = window + r.window
        totals = totals + r.totals
        for e in r.errors:
            if len(errors) < max_errors and e not in errors:
                errors.append(e)
    connect_errors = sum(r.connect_errors for r in finals)
    return BenchResult(
        url=url,
        conns=conns,
        channels=list(channels),
        procs=len(finals),
        duration_s=duration_s,
        warmup_s=warmup_s,
        elapsed_s=max((r.window_s for r in finals), default=0.0),
        connected=sum(r.conns - r.connect_errors for r in finals),
        connect_errors=connect_errors,
        disconnects=sum(r.disconnects for r in finals),
        window=window,
        totals=totals,
        hist=hist,
        client_cpu_pct=[r.cpu_pct for r in finals],
        ended_early=any(r.ended_early for r in finals),
        errors=errors,
        dialect=dialect,
        clock_offset_ns=clock_offset_ns,
        clock_offset_source=clock_offset_source,
    )


def _si(value: float, unit: str = "") -> str:
    for factor, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.2f}{prefix}{unit}"
    return f"{value:.0f}{unit}"


def format_progress(
    elapsed: float,
    phase: str,
    open_conns: int,
    conns: int,
    deliveries_per_s: float,
    messages_per_s: float,
    bytes_per_s: float,
    gaps: int,
    disconnects: int,
) -> str:
    """Return the one-line progress display (no newline or carriage return)."""
    return (
        f"{phase:>7} {elapsed:6.1f}s  conns {open_conns}/{conns}  "
        f"{_si(deliveries_per_s)} deliveries/s  {_si(messages_per_s)} msg/s  "
        f"{_si(bytes_per_s, 'B')}/s  gaps {gaps}  disconnects {disconnects}"
    )


def format_text(result: BenchResult) -> str:
    """Return the human-readable report printed at the end of a run."""
    w = result.window
    lat = result.latency_ms()
    cpu = ", ".join(f"{p:.0f}%" for p in result.client_cpu_pct) or "-"
    lines = [
        f"tickwire bench {result.url}",
        f"  connections  {result.connected}/{result.conns} connected, "
        f"{result.connect_errors} failed, {result.disconnects} disconnected, "
        f"{result.procs} process(es)",
        f"  window       {result.elapsed_s:.2f}s after {result.warmup_s:g}s warm-up"
        + ("  (ended early: every connection closed)" if result.ended_early else ""),
        f"  deliveries   {w.deliveries:,}  ({_si(result.rate(w.deliveries))}/s)",
        f"  messages     {w.messages:,}  ({_si(result.rate(w.messages))}/s)",
        f"  bytes        {w.bytes:,}  ({_si(result.rate(w.bytes), 'B')}/s)",
        f"  gaps         {w.gaps}",
        f"  latency ms   p50 {lat['p50']}  p90 {lat['p90']}  p99 {lat['p99']}  "
        f"p99.9 {lat['p999']}  max {lat['max']}  (n={lat['count']:,})",
        f"  client cpu   {cpu} of a core per process",
    ]
    if result.dialect:
        lines[1:1] = [f"  dialect      {result.dialect}"]
        lines[7:7] = [f"  checksums    {w.checksum_failures} failed"]
        lines += [
            f"  clock offset {result.clock_offset_ns / 1e6:g} ms ({result.clock_offset_source})",
            f"  latency is   {result.latency_definition}",
        ]
    if lat["negative"]:
        lines.append(
            f"  note: {lat['negative']:,} updates had a ts in the future: the server's clock "
            "is ahead of this host's; their latency counts as 0"
        )
    for e in result.errors:
        lines.append(f"  error: {e}")
    if result.client_bound:
        lines.append(
            "WARNING: the load generator itself was the bottleneck (a worker process used "
            f"over {CLIENT_BOUND_CPU_PCT:.0f}% of a core): these numbers are a client limit, "
            "not a server limit. Run with more --procs (on more cores, or another host)."
        )
    return "\n".join(lines)
