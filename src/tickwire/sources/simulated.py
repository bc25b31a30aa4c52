"""The embedded simulator as a :class:`~tickwire.sources.Source` (the default)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from ..exceptions import ConfigError, IntegrityError
from ..simulator import HAVE_CORE, CoreBatch, MarketSimulator, core_state
from . import Batch, Sink

if TYPE_CHECKING:
    from .. import _market
    from ..engine import Engine, StateSnapshot

__all__ = ["SimulatorSource"]


def _live(symbol: str, core: _market.Flow, engine: Engine) -> Callable[[], StateSnapshot]:
    return lambda: core_state(symbol, core, engine.epoch)


class SimulatorSource:
    """Pulls due order flow from a :class:`~tickwire.simulator.MarketSimulator`.

    With the compiled core (``core`` True, or None and the core is built), each symbol's
    batch arrives numbered and encoded, and is relayed to the sink as a leader's batch
    would be (:meth:`Sink.relay`): the engine follows the core's state instead of
    applying every update (:meth:`Sink.follow`). Otherwise the batches go back to the
    tick loop, which publishes them through the engine.

    Args:
        simulator: the market; its clock decides each batch's event time.
        core: use the compiled core (None: when it is built and the gateway batches).
    """

    def __init__(self, simulator: MarketSimulator, core: bool | None = None) -> None:
        self.simulator = simulator
        self.core = core
        self._due = simulator.due
        self._batches = simulator.batches
        self._sink: Sink | None = None

    @property
    def generated(self) -> int:
        """Book updates generated so far."""
        return self.simulator.generated

    @property
    def skipped(self) -> int:
        """Book updates dropped because the tick loop fell behind."""
        return self.simulator.skipped

    async def start(self, sink: Sink) -> None:
        """Seed every book through ``sink``: complete at once.

        Raises:
            ConfigError: the core was asked for but is not built, or cannot serve this
                gateway (unbatched sends).
        """
        sim = self.simulator
        if self.core and not sink.batch:
            raise ConfigError("--market-core c needs --batch-ms > 0 (a batch per tick)")
        if self.core or (self.core is None and HAVE_CORE and sink.batch):
            sim.use_core()
            self._sink = sink
            for batch in sim.core_seeds():
                sink.follow(batch.symbol, _live(batch.symbol, batch.core, sink.engine))
                self._relay(sink, batch, 0.0)
        else:
            for symbol, updates, trades in sim.seed_books():
                sink.publish(symbol, updates, trades)
        sink.incomplete.difference_update(f.symbol for f in sim.flows)

    @staticmethod
    def _relay(sink: Sink, batch: CoreBatch, now: float) -> None:
        if not sink.relay((batch,), now):
            raise IntegrityError(batch.symbol, "the market core is out of step with the sink")

    def poll(self, now: float) -> Iterable[Batch]:
        """Generate the updates due at ``now`` (exact long-run rate), one symbol at a time.

        With the core, each symbol's batch is relayed (written) before the next one is
        generated, and nothing is returned.
        """
        sink = self._sink
        if sink is None:
            return self._batches(self._due(now))
        for batch in self.simulator.core_batches(self._due(now)):
            self._relay(sink, batch, now)
        return ()

    def on_arrival(self, callback: Callable[[], None]) -> None:
        """Polled on the clock: nothing arrives by itself."""

    def burst(self, now: float) -> None:
        """Multiply the rate for ``burst_seconds`` (SIGUSR1)."""
        self.simulator.start_burst(now)

    async def stop(self) -> None:
        """Nothing to release."""

    def stats(self) -> dict[str, Any]:
        """The source kind and its counters."""
        return {
            "kind": "sim",
            "core": "c" if self._sink is not None else "python",
            "generated": self.generated,
            "skipped": self.skipped,
        }
