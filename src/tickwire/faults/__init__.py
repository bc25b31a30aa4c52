"""Scripted venue-level faults, for testing trading clients (Sans-I/O).

* :mod:`~tickwire.faults.spec`: a fault's kind, target, schedule and parameters, and
  scenario files (TOML) checked with errors that name the line;
* :mod:`~tickwire.faults.schedule`: when a fault fires, whom it targets (seeded);
* :mod:`~tickwire.faults.wire`: what a targeted connection's frames go through (book
  messages classified per protocol by each dialect's hook), and its pacing;
* :mod:`~tickwire.faults.stale`: books kept N updates behind the stream.

The I/O side (timers, connections, the admin API) is :mod:`tickwire.server.faults`.
Every application of a fault is told to a :class:`FaultListener` (the connectivity
report). See ``docs/connectivity-testing.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from .schedule import ActiveFault
from .spec import KINDS, PROTOCOLS, FaultSpec, Scenario, parse_fault, parse_scenario

__all__ = [
    "KINDS",
    "PROTOCOLS",
    "ActiveFault",
    "FaultListener",
    "FaultSpec",
    "Scenario",
    "parse_fault",
    "parse_scenario",
]


class FaultListener(Protocol):
    """Told of every application of a fault (the connectivity report listens).

    ``conn_id`` is the gateway's connection id (None for what is not one connection's:
    a ``burst``, a REST answer); ``kind`` the fault's kind; ``detail`` at least
    ``fault`` (its id), ``name``, ``venue`` and what was done (``symbol``, ``seq``,
    ``code``, ``action`` ...); ``now`` is ``time.monotonic()``.
    """

    def fault(
        self, conn_id: int | None, kind: str, detail: Mapping[str, object], now: float
    ) -> None: ...
