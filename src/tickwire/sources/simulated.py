"""The embedded simulator as a :class:`~tickwire.sources.Source` (the default)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from ..simulator import MarketSimulator
from . import Batch, Sink

__all__ = ["SimulatorSource"]


class SimulatorSource:
    """Pulls due order flow from a :class:`~tickwire.simulator.MarketSimulator`.

    Args:
        simulator: the market; its clock decides each batch's event time.
    """

    def __init__(self, simulator: MarketSimulator) -> None:
        self.simulator = simulator
        self._due = simulator.due
        self._batches = simulator.batches

    @property
    def generated(self) -> int:
        """Book updates generated so far."""
        return self.simulator.generated

    @property
    def skipped(self) -> int:
        """Book updates dropped because the tick loop fell behind."""
        return self.simulator.skipped

    async def start(self, sink: Sink) -> None:
        """Seed every book through ``sink``: complete at once."""
        for symbol, updates, trades in self.simulator.seed_books():
            sink.publish(symbol, updates, trades)
        sink.incomplete.difference_update(f.symbol for f in self.simulator.flows)

    def poll(self, now: float) -> Iterable[Batch]:
        """Generate the updates due at ``now`` (exact long-run rate), one symbol at a time."""
        return self._batches(self._due(now))

    def on_arrival(self, callback: Callable[[], None]) -> None:
        """Polled on the clock: nothing arrives by itself."""

    def burst(self, now: float) -> None:
        """Multiply the rate for ``burst_seconds`` (SIGUSR1)."""
        self.simulator.start_burst(now)

    async def stop(self) -> None:
        """Nothing to release."""

    def stats(self) -> dict[str, Any]:
        """The source kind and its counters."""
        return {"kind": "sim", "generated": self.generated, "skipped": self.skipped}
