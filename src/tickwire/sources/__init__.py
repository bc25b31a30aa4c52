"""Market sources: what feeds a gateway's (or a publisher's) engine.

A source produces ``(symbol, updates, trades)`` batches. The I/O layer drives it the same
way whatever it is (``docs/scaling.md``):

* :meth:`Source.start` seeds or loads the books through a :class:`Sink` (the hub, or the
  publisher's bus sink) and returns once every book it can serve is complete;
* :meth:`Source.poll` is called once per tick with the monotonic clock and returns the
  batches due now, which the tick loop publishes -- one call per tick, so the embedded
  simulator costs the hot loop what it always did;
* control events -- a book known to have a hole, a complete state to load, a new epoch
  of the leading engine -- go straight to the sink (:meth:`Sink.invalidate`,
  :meth:`Sink.restore`, :meth:`Sink.reset`).

Sources: :class:`~tickwire.sources.simulated.SimulatorSource` (the embedded market, the
default), :class:`~tickwire.sources.replay.ReplaySource` (an NDJSON recording at recorded
or scaled speed), :class:`~tickwire.sources.tardis.TardisSource` (tardis.dev CSV
datasets), :class:`~tickwire.sources.nats.NatsSource` (a publisher's engine followed over
NATS) and :class:`~tickwire.sources.ingest.IngestSource` (the ingest
protocol, from any matching engine or feed handler: ``docs/ingest.md``).
:func:`make_source` picks one from ``--source``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from ..engine import Engine, LeaderBatch, RawTrade, StateSnapshot
from ..exceptions import ConfigError
from ..protocol import BookUpdate

if TYPE_CHECKING:
    from ..server.config import GatewayConfig

__all__ = ["Batch", "RawTrade", "Sink", "Source", "make_source"]

#: One symbol's events of one instant: book updates in order, then trades.
Batch = tuple[str, list[BookUpdate], list[RawTrade]]


class Sink(Protocol):
    """Where a source's events go: :class:`~tickwire.hub.Hub` in a gateway."""

    engine: Engine
    #: Symbols whose state is not known complete; a source discards what it loaded.
    incomplete: set[str]
    #: Whether batches are sent once per tick (False: every update on its own).
    batch: bool

    def publish(self, symbol: str, updates: list[BookUpdate], trades: Iterable[RawTrade]) -> None:
        """Apply one batch (numbered by the engine) and queue it."""

    def relay(self, batches: Sequence[LeaderBatch], now: float) -> bool:
        """Send a leader's encoded batches of one symbol as they are; False:
        :meth:`publish` them instead."""

    def rebase(self, snap: StateSnapshot) -> None:
        """Adopt the leader's state at the current seqs instead of what was deferred."""

    def follow(self, symbol: str, live: Callable[[], StateSnapshot]) -> None:
        """Relay a leader in this process that holds ``symbol``'s state (``live()``)."""

    def restore(self, snap: StateSnapshot) -> None:
        """Load a complete state of one symbol (a hole or a new epoch is healed)."""

    def invalidate(self, symbol: str) -> None:
        """Stop serving ``symbol``: its state is known to have a hole."""

    def revalidate(self, symbol: str) -> None:
        """Serve ``symbol`` again without a snapshot: its chain proved intact."""

    def reset(self, epoch: str) -> None:
        """Adopt the leading engine's new epoch: every symbol is empty until restored."""

    def add_symbol(self, symbol: str) -> None:
        """Start serving a symbol found at run time; it is stale until restored."""

    def status(self, symbol: str, status: str) -> None:
        """The source reported ``symbol``'s trading status (tickers carry it)."""


class Source(Protocol):
    """A market source driven by the tick loop (see the module docstring)."""

    @property
    def generated(self) -> int:
        """Book updates produced so far (exported as a metric)."""

    @property
    def skipped(self) -> int:
        """Updates dropped because the process fell behind (the simulator's backlog)."""

    async def start(self, sink: Sink) -> None:
        """Seed or load the books into ``sink``; return when they are complete."""

    def poll(self, now: float) -> Iterable[Batch]:
        """Return the batches due at monotonic time ``now`` (called once per tick).

        May be lazy (a generator): the tick loop sends each batch before taking the next.
        """

    def on_arrival(self, callback: Callable[[], None]) -> None:
        """Have ``callback`` called when data arrives, so the tick loop polls at once
        (a push source: the bus); sources polled on the clock ignore it."""

    def burst(self, now: float) -> None:
        """Spike the flow now (SIGUSR1); sources that do not generate flow ignore it."""

    async def stop(self) -> None:
        """Release connections and files."""

    def stats(self) -> dict[str, Any]:
        """Counters for the exit stats and the admin API."""


#: ``--market-core`` -> the ``core`` argument of the sources that have one.
_CORES: dict[str, bool | None] = {"auto": None, "c": True, "python": False}


def make_source(config: GatewayConfig) -> Source:
    """Build the source ``config.source`` names.

    ``sim`` (default) is the embedded simulator; ``binance+wss://...``,
    ``okx+wss://...`` and ``kraken+wss://...`` follow a venue's public feed
    (:mod:`tickwire.sources.venue`, ``docs/venue-feeds.md``); ``nats://HOST:PORT`` (comma-separated
    for a cluster) follows a ``tickwire publish`` over NATS; ``ingest+nats://HOST:PORT``
    takes the ingest protocol (``docs/ingest.md``) from any process, ``-`` or
    ``ingest:PATH`` as NDJSON from standard input or a file; ``tardis:PATH[,PATH...]``
    (or paths ending in ``.csv`` / ``.csv.gz``) replays tardis.dev CSV datasets
    (``docs/venue-feeds.md``); anything else is the path of an NDJSON recording
    (``replay:PATH`` also works). Replays play at ``replay_speed``.

    Raises:
        ConfigError: a replay file cannot be read or a speed is malformed.
    """
    spec = config.source
    from .venue import is_venue_spec, parse_venue_spec

    if spec == "sim":
        from ..simulator import MarketSimulator
        from .simulated import SimulatorSource

        return SimulatorSource(
            MarketSimulator(
                config.symbols,
                config.rate,
                config.seed,
                burst_every=config.burst_every_s,
                burst_factor=config.burst_factor,
                burst_seconds=config.burst_seconds,
            ),
            core=_CORES[config.market_core],
        )
    if spec == "-" or spec.startswith("ingest:"):
        from .ingest import StreamIngestSource, ndjson_lines

        path = "-" if spec == "-" else spec.removeprefix("ingest:")
        if path != "-" and not os.path.exists(path):
            raise ConfigError(f"--source {spec}: no such file or pipe")
        return StreamIngestSource(
            ndjson_lines(path),
            config.symbols,
            silent_after=config.ingest_silent_s,
            core=_CORES[config.market_core],
        )
    if spec.startswith("ingest+"):
        from .ingest import IngestSource

        return IngestSource(
            spec.removeprefix("ingest+"),
            config.symbols,
            prefix=config.bus_prefix,
            silent_after=config.ingest_silent_s,
            timeout=config.source_timeout_s,
            core=_CORES[config.market_core],
        )
    if is_venue_spec(spec):
        from .venue import VenueSource

        return VenueSource(
            spec,
            config.symbols,
            rest=config.venue_rest,
            depth=config.venue_depth,
            timeout=config.source_timeout_s,
            idle_timeout=config.venue_idle_timeout_s,
            ping_interval=config.ping_interval_s,
            ping_timeout=config.ping_timeout_s,
        )
    if spec.startswith(("nats://", "tls://")):
        from .nats import NatsSource

        return NatsSource(
            spec, config.symbols, prefix=config.bus_prefix, timeout=config.source_timeout_s
        )
    from ..tardis import is_tardis_spec, parse_symbol_map
    from .replay import ReplaySource, parse_speed

    if spec.partition("+")[0] in ("binance", "okx", "kraken"):
        parse_venue_spec(spec)  # raises a ConfigError naming the accepted forms
    if is_tardis_spec(spec):
        from .tardis import TardisSource

        paths = [p for p in spec.removeprefix("tardis:").split(",") if p]
        return TardisSource(
            paths,
            parse_speed(config.replay_speed),
            config.symbols,
            parse_symbol_map(config.replay_symbol_map),
        )
    path = spec.removeprefix("replay:")
    return ReplaySource(path, parse_speed(config.replay_speed))
