"""When a fault fires and whom it hits: schedules, windows, targeting, seeded draws
(Sans-I/O: the time is passed in).

An :class:`ActiveFault` is a :class:`~tickwire.faults.spec.FaultSpec` loaded at a time
(``start``, monotonic seconds). Its firings are at ``start + at + k * every``; a window
kind's window is open from each firing for ``duration`` (0: until cleared). Whether a
connection is targeted is decided once per connection by a draw seeded with the
fault's seed, its id and the connection's id, so a scenario replayed against the same
sequence of connections hits the same ones; every other draw (a firing's
``probability``, a random-mode message, jitter) comes from the fault's own seeded
generator.
"""

from __future__ import annotations

import random
from typing import Any

from .spec import MESSAGE_KINDS, FaultSpec

__all__ = ["ActiveFault"]


class ActiveFault:
    """A loaded fault: its schedule state and what it did.

    Attributes:
        id: its number in the gateway (the admin API's ``/api/v1/faults/{id}``).
        spec: what it is.
        start: when it was loaded (monotonic seconds).
        origin: ``"file"`` (the scenario) or ``"api"``.
        fired: firings so far.
        applied: applications to a connection, a message or a request so far.
        targeted: connections chosen as targets so far.
        connections: their ids.
    """

    def __init__(self, fault_id: int, spec: FaultSpec, start: float, origin: str = "api") -> None:
        self.id = fault_id
        self.spec = spec
        self.start = start
        self.origin = origin
        self.fired = 0
        self.applied = 0
        self.targeted = 0
        #: The connections it was applied to or set up on.
        self.connections: set[int] = set()
        self.rng = random.Random(f"{spec.seed}:{fault_id}:draws")

    # -- time --------------------------------------------------------------------------

    def first(self) -> float:
        """The time of the first firing."""
        return self.start + self.spec.at

    def due(self, now: float) -> int:
        """How many firings are due at ``now`` that were not counted yet (counts them)."""
        spec = self.spec
        if spec.random_mode or now < self.first():
            return 0
        if spec.every:
            total = int((now - self.first()) / spec.every) + 1
        else:
            total = 1
        limit = spec.firings()
        if limit:
            total = min(total, limit)
        new = max(0, total - self.fired)
        self.fired += new
        return new

    def window_open(self, now: float) -> bool:
        """True while a window (window kinds, random mode) is open at ``now``."""
        spec = self.spec
        elapsed = now - self.first()
        if elapsed < 0:
            return False
        if spec.every:
            k = int(elapsed / spec.every)
            limit = spec.firings()
            if limit and k >= limit:
                return False
            elapsed -= k * spec.every
        return not spec.duration or elapsed < spec.duration

    def finished(self, now: float) -> bool:
        """True once the fault can do nothing more (it may be dropped from the list)."""
        spec = self.spec
        limit = spec.firings()
        if spec.random_mode or spec.kind not in MESSAGE_KINDS | {"stall", "disconnect", "burst"}:
            if spec.kind == "max_connection_age" or not spec.duration:
                return False
            if spec.every and not limit:
                return False
            last = self.first() + (limit - 1) * spec.every if limit else self.first()
            return now >= last + spec.duration
        return bool(limit) and self.fired >= limit

    # -- targets and draws -------------------------------------------------------------

    def targets(self, conn_id: int, venue: str) -> bool:
        """True when the connection ``conn_id`` (speaking ``venue``) is targeted.

        The share is drawn once per connection from the seed, the fault's id and the
        connection's id: repeatable, and independent of the other connections.
        """
        spec = self.spec
        if not spec.targets_venue(venue):
            return False
        if spec.kind == "checksum" and venue == "binance":
            return False  # Binance's book messages carry no checksum
        if spec.share >= 1:
            return True
        return random.Random(f"{spec.seed}:{self.id}:{conn_id}").random() < spec.share

    def symbol(self, symbol: str) -> bool:
        """True when book messages of ``symbol`` may be faulted."""
        return not self.spec.symbols or symbol in self.spec.symbols

    def draw(self) -> bool:
        """One draw of ``probability`` (always True at 1)."""
        p = self.spec.probability
        return p >= 1 or self.rng.random() < p

    def as_dict(self, now: float) -> dict[str, Any]:
        """The admin API's view of it."""
        return {
            "id": self.id,
            "origin": self.origin,
            "line": self.spec.line or None,
            **self.spec.as_dict(),
            "active": not self.finished(now),
            "fired": self.fired,
            "targeted": self.targeted,
            "connections": sorted(self.connections),
            "applied": self.applied,
            "age_s": round(now - self.start, 3),
        }
