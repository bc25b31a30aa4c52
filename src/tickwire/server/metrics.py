"""Gateway telemetry: per-tick histograms, the Prometheus collector, the dashboard sampler.

The hot path pays (almost) nothing for any of this. The hub and gateway already count
frames, bytes, deliveries, conflations and slow-consumer closes as plain integers; the
:class:`GatewayCollector` reads them only when Prometheus scrapes ``/metrics``. The few
figures that need a new measurement -- publish-to-write latency, updates per delta
message, event-loop lag -- are taken **once per tick** by the tick loop through
:meth:`TickStats.tick` (three ``bisect`` calls into fixed buckets), never per delivery.

Rates (deliveries/s, bytes/s) are Prometheus' job (``rate(tickwire_deliveries_total[1m])``);
for the dashboard, which has no Prometheus behind it, :class:`Sampler` turns the same
counters into one point per second (rates, latency p50/p99 from the histogram's bucket
deltas, connections) and keeps the last few minutes of them.

Nothing here reads a clock or touches a socket: times are passed in.
"""

from __future__ import annotations

import asyncio
import bisect
from collections import deque
from collections.abc import Iterator, Mapping, Sequence, Set
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from ..dialects import VENUES, DialectFeed

if TYPE_CHECKING:
    from ..engine import Engine
    from ..hub import Hub
    from ..protocol import Snapshot
    from ..sources import Source
    from .config import GatewayConfig
    from .connection import Connection
    from .faults import FaultManager

__all__ = [
    "BATCH_BUCKETS",
    "LAG_BUCKETS",
    "LATENCY_BUCKETS",
    "FixedHistogram",
    "GatewayCollector",
    "GatewayView",
    "Sample",
    "Sampler",
    "TickStats",
    "make_registry",
]


def _log_buckets(low: float, high: float, steps: Sequence[float]) -> tuple[float, ...]:
    """Upper bounds ``decade * step`` for each decade from ``low`` up to ``high``."""
    out: list[float] = []
    decade = low
    while decade <= high:
        for step in steps:
            bound = float(f"{decade * step:.6g}")
            if bound <= high:
                out.append(bound)
        decade *= 10
    return tuple(out)


#: Publish-to-write latency bounds, seconds: 10 µs .. 10 s in steps of about 1.5x, fine
#: enough for a p99 read off the buckets (the dashboard interpolates inside one).
LATENCY_BUCKETS = _log_buckets(1e-5, 10.0, (1, 1.5, 2, 3, 5, 7))
#: Event-loop lag bounds (tick lateness), seconds: 10 µs .. 10 s.
LAG_BUCKETS = _log_buckets(1e-5, 10.0, (1, 2, 5))
#: Updates per delta message: 1 .. 100,000.
BATCH_BUCKETS = _log_buckets(1.0, 100_000.0, (1, 2, 5))


class FixedHistogram:
    """A histogram with fixed upper bounds; one ``observe`` is a ``bisect`` and two adds.

    Unlike ``prometheus_client.Histogram`` it takes no lock and keeps non-cumulative
    counts; :meth:`cumulative` gives the Prometheus form at scrape time. The last count
    is the ``+Inf`` bucket.

    Args:
        bounds: the finite upper bounds, ascending.
    """

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """Count one observation (``le`` semantics: a value equal to a bound is in it)."""
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        """Observations so far."""
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, float]]:
        """Return ``[(le, cumulative count)]`` including ``+Inf``, as Prometheus wants."""
        out: list[tuple[str, float]] = []
        total = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += n
            out.append(("+Inf" if bound == float("inf") else repr(bound), float(total)))
        return out

    def quantile(self, q: float, since: Sequence[int] | None = None) -> float | None:
        """Estimate the ``q`` quantile, optionally of the observations after ``since``.

        Interpolates linearly inside the bucket, like PromQL's ``histogram_quantile``;
        an observation in ``+Inf`` reports the largest bound.

        Args:
            q: the quantile, 0..1.
            since: an earlier copy of :attr:`counts`; only the difference is used.

        Returns:
            The estimate, or None when there is no observation.
        """
        counts = (
            self.counts
            if since is None
            else [a - b for a, b in zip(self.counts, since, strict=True)]
        )
        total = sum(counts)
        if total <= 0:
            return None
        rank = q * total
        seen = 0
        for i, n in enumerate(counts):
            if n and seen + n >= rank:
                if i == len(self.bounds):
                    return self.bounds[-1]
                low = self.bounds[i - 1] if i else 0.0
                high = self.bounds[i]
                return low + (high - low) * max(rank - seen, 0.0) / n
            seen += n
        return self.bounds[-1]


class TickStats:
    """What the tick loop measures once per tick.

    Attributes:
        latency: seconds from the event time (``ts``) of the oldest update of a tick
            to the end of the tick's write loop, one sample per tick that wrote.
        batch: updates in one delta message (the first book batch of each tick).
        loop_lag: how late each tick started against its deadline: the event loop's
            lag, or overrun when a tick's work takes longer than the tick.
        ticks: ticks run.
        max_loop_lag: largest lag since the last :meth:`take_max_lag`.
    """

    __slots__ = ("latency", "batch", "loop_lag", "ticks", "max_loop_lag")

    def __init__(self) -> None:
        self.latency = FixedHistogram(LATENCY_BUCKETS)
        self.batch = FixedHistogram(BATCH_BUCKETS)
        self.loop_lag = FixedHistogram(LAG_BUCKETS)
        self.ticks = 0
        self.max_loop_lag = 0.0

    def tick(self, lag: float, latency_ns: int, batch: int) -> None:
        """Record one tick: its lateness and, when it wrote updates, latency and batch.

        Args:
            lag: seconds the tick started after its deadline.
            latency_ns: publish-to-write latency in ns; negative when nothing was written.
            batch: updates in the sampled delta message; 0 when there was none.
        """
        self.ticks += 1
        if lag < 0.0:
            # The loop's timers may fire a hair early (its clock resolution).
            lag = 0.0
        self.loop_lag.observe(lag)
        if lag > self.max_loop_lag:
            self.max_loop_lag = lag
        if latency_ns >= 0:
            self.latency.observe(latency_ns * 1e-9)
        if batch > 0:
            self.batch.observe(batch)

    def take_max_lag(self) -> float:
        """Return the largest lag since the previous call, and start over."""
        lag, self.max_loop_lag = self.max_loop_lag, 0.0
        return lag


# -- Prometheus --------------------------------------------------------------------------


def _histogram(name: str, doc: str, hist: FixedHistogram, unit: str = "") -> HistogramMetricFamily:
    return HistogramMetricFamily(
        name, doc, buckets=hist.cumulative(), sum_value=hist.sum, unit=unit
    )


class GatewayView(Protocol):
    """What telemetry reads of a gateway (:class:`~tickwire.server.gateway.Gateway`).

    The collector, the sampler and the admin listener only read these; they are
    handed the gateway, which this module does not import (the gateway imports it).
    """

    @property
    def config(self) -> GatewayConfig: ...
    @property
    def engine(self) -> Engine: ...
    @property
    def hub(self) -> Hub: ...
    @property
    def source(self) -> Source: ...
    @property
    def connections(self) -> Mapping[int, Connection]: ...
    @property
    def tick_stats(self) -> TickStats: ...
    @property
    def incomplete_books(self) -> Set[str]: ...
    @property
    def draining(self) -> asyncio.Event | None: ...
    @property
    def port(self) -> int: ...
    @property
    def accepted(self) -> int: ...
    @property
    def rejected(self) -> int: ...
    @property
    def rejected_by_code(self) -> Mapping[str, int]: ...
    @property
    def closes_by_code(self) -> Mapping[int, int]: ...
    @property
    def slow_closes(self) -> Mapping[str, int]: ...
    @property
    def buffered_total(self) -> int: ...
    @property
    def max_buffered_total(self) -> int: ...
    @property
    def feed(self) -> DialectFeed: ...
    @property
    def faults(self) -> FaultManager | None: ...

    def enable_faults(self) -> FaultManager:
        """The fault manager, made on first use."""

    def books_complete(self) -> bool:
        """True once every served book holds a complete state."""

    def uptime(self) -> float:
        """Seconds since the gateway was created."""

    def stats(self) -> dict[str, Any]:
        """Counters since start."""

    def book_snapshot(self, symbol: str, depth: int | None = None) -> Snapshot:
        """The book of ``symbol`` as a subscription would start now."""


class GatewayCollector(Collector):
    """Builds every ``tickwire_*`` metric from the gateway's counters at scrape time.

    Args:
        gateway: the running gateway; only read, never changed.
        sampler: the dashboard sampler, for the per-second rate gauges.
    """

    def __init__(self, gateway: GatewayView, sampler: Sampler | None = None) -> None:
        self.gateway = gateway
        self.sampler = sampler

    def collect(self) -> Iterator[Metric]:
        gw = self.gateway
        hub = gw.hub
        yield InfoMetricFamily(
            "tickwire_build",
            "Gateway identity: engine epoch and symbol count.",
            value={"epoch": gw.engine.epoch, "symbols": str(len(gw.engine.symbols))},
        )
        yield GaugeMetricFamily(
            "tickwire_ready", "1 when every book is complete (/readyz).", float(gw.books_complete())
        )
        yield GaugeMetricFamily(
            "tickwire_connections", "Open WebSocket connections.", float(len(gw.connections))
        )
        yield CounterMetricFamily(
            "tickwire_connections_accepted",
            "WebSocket connections accepted since start.",
            float(gw.accepted),
        )
        subs = GaugeMetricFamily(
            "tickwire_subscriptions",
            "Client subscribers per channel (lagging ones included; the venue dialects'"
            " taps are counted in tickwire_venue_subscriptions).",
            labels=["channel", "kind"],
        )
        taps = {name for tap in gw.feed.taps.values() for name in tap.channels}
        seqs = GaugeMetricFamily(
            "tickwire_channel_seq", "Last seq sent on each channel.", labels=["channel", "kind"]
        )
        for ch in hub.channels.values():
            grouped = sum(map(len, ch.groups.values())) if ch.groups else 0
            count = len(ch.subscribers) + grouped + len(ch.lagging) - (ch.name in taps)
            subs.add_metric([ch.name, ch.kind], float(count))
            seqs.add_metric([ch.name, ch.kind], float(ch.seq))
        yield subs
        yield seqs
        yield from _venue_metrics(gw)
        yield CounterMetricFamily(
            "tickwire_deliveries",
            "Updates (book levels, trades, tickers) delivered to subscribers, summed over "
            "subscribers: rate() of it is deliveries/s.",
            float(hub.updates_out),
        )
        yield CounterMetricFamily(
            "tickwire_frames_out", "WebSocket frames queued to subscribers.", float(hub.frames_out)
        )
        yield CounterMetricFamily(
            "tickwire_sent_bytes", "Frame bytes queued to subscribers.", float(hub.bytes_out)
        )
        yield CounterMetricFamily(
            "tickwire_messages_built",
            "Messages encoded (once each, shared by every subscriber).",
            float(hub.messages_built),
        )
        yield CounterMetricFamily(
            "tickwire_source_updates",
            "Book updates produced by the source.",
            float(gw.source.generated),
        )
        yield CounterMetricFamily(
            "tickwire_source_skipped",
            "Source updates dropped because the process fell behind (simulator backlog).",
            float(gw.source.skipped),
        )
        rates = self.sampler.last if self.sampler is not None else None
        yield GaugeMetricFamily(
            "tickwire_deliveries_per_second",
            "Deliveries per second over the last second (prefer rate() in PromQL).",
            rates.deliveries_s if rates else 0.0,
        )
        yield GaugeMetricFamily(
            "tickwire_sent_bytes_per_second",
            "Bytes per second over the last second (prefer rate() in PromQL).",
            rates.bytes_s if rates else 0.0,
        )
        ticks = gw.tick_stats
        yield _histogram(
            "tickwire_publish_to_write_seconds",
            "Event time of the oldest update of a tick to the end of its writes, per tick.",
            ticks.latency,
        )
        yield _histogram(
            "tickwire_batch_updates",
            "Updates per delta message, sampled once per tick.",
            ticks.batch,
        )
        yield _histogram(
            "tickwire_event_loop_lag_seconds",
            "How late each pass started against its deadline: event-loop lag.",
            ticks.loop_lag,
        )
        yield CounterMetricFamily("tickwire_ticks", "Ticks run.", float(ticks.ticks))
        yield CounterMetricFamily(
            "tickwire_slow_consumer_pauses",
            "Times a connection crossed its high watermark (its books started conflating).",
            float(hub.pauses),
        )
        yield GaugeMetricFamily(
            "tickwire_slow_consumer_paused",
            "Connections over their high watermark now.",
            float(len(hub.paused)),
        )
        conflations = CounterMetricFamily(
            "tickwire_conflations",
            "Catch-up messages sent to lagging subscriptions, by form.",
            labels=["form"],
        )
        conflations.add_metric(["merged"], float(hub.conflated))
        conflations.add_metric(["snapshot"], float(hub.conflated_snapshots))
        yield conflations
        yield CounterMetricFamily(
            "tickwire_conflated_updates_skipped",
            "Updates lagging subscribers never received one by one (merged away).",
            float(hub.updates_skipped),
        )
        closes = CounterMetricFamily(
            "tickwire_slow_consumer_closes",
            "Connections closed with 4001 (slow consumer), by cause.",
            labels=["cause"],
        )
        for cause, n in sorted(gw.slow_closes.items()):
            closes.add_metric([cause], float(n))
        yield closes
        all_closes = CounterMetricFamily(
            "tickwire_server_closes",
            "Connections the server closed, by WebSocket close code.",
            labels=["code"],
        )
        for close_code, count in sorted(gw.closes_by_code.items()):
            all_closes.add_metric([str(close_code)], float(count))
        yield all_closes
        rejected = CounterMetricFamily(
            "tickwire_rejected_requests",
            "Client requests answered with an error, by error code.",
            labels=["code"],
        )
        for code, n in sorted(gw.rejected_by_code.items()):
            rejected.add_metric([code], float(n))
        yield rejected
        yield GaugeMetricFamily(
            "tickwire_buffered_bytes",
            "Bytes waiting in all transports' write buffers (last sweep).",
            float(gw.buffered_total),
        )
        yield GaugeMetricFamily(
            "tickwire_buffered_bytes_max",
            "Largest total of write-buffered bytes seen by the half-second sweep (sampled).",
            float(gw.max_buffered_total),
        )
        yield GaugeMetricFamily(
            "tickwire_uptime_seconds", "Seconds since the gateway started.", gw.uptime()
        )
        source_metrics = getattr(gw.source, "metrics", None)
        if source_metrics is not None:
            yield from source_metrics()  # an ingest source's tickwire_ingest_*


def make_registry(gateway: GatewayView, sampler: Sampler | None = None) -> CollectorRegistry:
    """Return a registry with the gateway's collector and the process/GC collectors.

    A registry of its own, not prometheus-client's global one, so two gateways in one
    process (tests) never share or clash on metrics.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GatewayCollector(gateway, sampler))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


# -- dashboard ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sample:
    """One dashboard point: rates over the second before ``t`` and gauges at ``t``.

    ``t`` is wall-clock seconds since the epoch (for the chart axis).

    Latencies are milliseconds (None when no tick wrote anything in that second).
    """

    t: float
    deliveries_s: float
    bytes_s: float
    frames_s: float
    source_s: float
    connections: int
    p50_ms: float | None
    p99_ms: float | None
    loop_lag_ms: float
    batch_mean: float | None
    paused: int
    conflations_s: float
    slow_closes: int

    def as_dict(self) -> dict[str, Any]:
        """The point as JSON-ready data (floats rounded for the wire)."""
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, float):
                out[key] = round(value, 4)
        return out


@dataclass(frozen=True, slots=True)
class _Counters:
    t: float
    deliveries: int
    bytes: int
    frames: int
    source: int
    conflations: int
    latency: tuple[int, ...]
    batch_count: int
    batch_sum: float


class Sampler:
    """Turns cumulative counters into per-second dashboard points (Sans-I/O).

    Call :meth:`sample` about once a second with the gateway; it keeps the last
    ``keep`` points in :attr:`points`.

    Args:
        keep: points kept (300 = five minutes at one a second).
    """

    def __init__(self, keep: int = 300) -> None:
        self.points: deque[Sample] = deque(maxlen=keep)
        self._prev: _Counters | None = None

    @property
    def last(self) -> Sample | None:
        """The newest point, if any."""
        return self.points[-1] if self.points else None

    def sample(self, gateway: GatewayView, now: float, wall: float) -> Sample | None:
        """Read the counters; return the new point (None the first time).

        Args:
            gateway: whose counters to read.
            now: monotonic seconds, for the rates.
            wall: wall-clock seconds, the point's ``t``.
        """
        hub = gateway.hub
        ticks = gateway.tick_stats
        cur = _Counters(
            t=now,
            deliveries=hub.updates_out,
            bytes=hub.bytes_out,
            frames=hub.frames_out,
            source=gateway.source.generated,
            conflations=hub.conflated + hub.conflated_snapshots,
            latency=tuple(ticks.latency.counts),
            batch_count=ticks.batch.count,
            batch_sum=ticks.batch.sum,
        )
        prev, self._prev = self._prev, cur
        lag = ticks.take_max_lag()
        if prev is None or now <= prev.t:
            return None
        dt = now - prev.t
        p50 = ticks.latency.quantile(0.5, prev.latency)
        p99 = ticks.latency.quantile(0.99, prev.latency)
        batches = cur.batch_count - prev.batch_count
        point = Sample(
            t=wall,
            deliveries_s=(cur.deliveries - prev.deliveries) / dt,
            bytes_s=(cur.bytes - prev.bytes) / dt,
            frames_s=(cur.frames - prev.frames) / dt,
            source_s=(cur.source - prev.source) / dt,
            connections=len(gateway.connections),
            p50_ms=p50 * 1000 if p50 is not None else None,
            p99_ms=p99 * 1000 if p99 is not None else None,
            loop_lag_ms=lag * 1000,
            batch_mean=(cur.batch_sum - prev.batch_sum) / batches if batches else None,
            paused=len(hub.paused),
            conflations_s=(cur.conflations - prev.conflations) / dt,
            slow_closes=sum(gateway.slow_closes.values()),
        )
        self.points.append(point)
        return point


def _venue_metrics(gw: GatewayView) -> Iterator[Metric]:
    """The venue dialects' connections, subscriptions and output."""
    feed = gw.feed
    conns = GaugeMetricFamily(
        "tickwire_venue_connections", "Open connections per venue dialect.", labels=["venue"]
    )
    subs = GaugeMetricFamily(
        "tickwire_venue_subscriptions",
        "Subscribers of venue streams, per venue (lagging ones included).",
        labels=["venue"],
    )
    by_venue: dict[str, int] = {}
    for conn in gw.connections.values():
        session = getattr(conn, "session", None)
        if session is not None:
            by_venue[session.venue] = by_venue.get(session.venue, 0) + 1
    streams: dict[str, int] = {}
    for stream in feed.streams.values():
        venue = stream.key.partition("|")[0]
        streams[venue] = streams.get(venue, 0) + len(stream.subscribers) + len(stream.lagging)
    for venue in VENUES:
        conns.add_metric([venue], float(by_venue.get(venue, 0)))
        subs.add_metric([venue], float(streams.get(venue, 0)))
    yield conns
    yield subs
    yield CounterMetricFamily(
        "tickwire_venue_frames_out",
        "Frame writes to venue subscribers (one write may carry several frames).",
        float(feed.frames_out),
    )
    yield CounterMetricFamily(
        "tickwire_venue_sent_bytes", "Bytes written to venue subscribers.", float(feed.bytes_out)
    )
    yield CounterMetricFamily(
        "tickwire_venue_renders",
        "Venue stream payloads rendered (once each, shared by the stream's subscribers).",
        float(feed.renders),
    )
    yield CounterMetricFamily(
        "tickwire_venue_catch_ups",
        "Catch-ups sent to venue subscribers that lagged (merged book events, tickers).",
        float(feed.conflated),
    )
