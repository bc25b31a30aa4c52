"""Reconnect delays: capped exponential backoff with full jitter (Sans-I/O).

When a server restarts, every client loses its connection at the same instant. Without
jitter they would all come back in the same millisecond, again and again at each
doubling; "full jitter" (a uniform draw between 0 and the exponential ceiling, as in
the AWS architecture blog's *Exponential Backoff And Jitter*) spreads them out while
keeping the expected delay short.
"""

from __future__ import annotations

import random

from ..exceptions import ConfigError

__all__ = ["Backoff"]


class Backoff:
    """Delays for successive reconnect attempts.

    Args:
        initial: the ceiling of the first delay, in seconds.
        maximum: the cap of every delay, in seconds.
        factor: the growth of the ceiling per failed attempt.
        rng: the random source (seed one in tests for repeatable delays).

    Raises:
        ConfigError: a delay is negative, ``maximum < initial`` or ``factor < 1``.
    """

    def __init__(
        self,
        initial: float = 0.1,
        maximum: float = 5.0,
        factor: float = 2.0,
        rng: random.Random | None = None,
    ) -> None:
        if initial < 0 or maximum < initial or factor < 1:
            raise ConfigError("backoff needs 0 <= initial <= maximum and factor >= 1")
        self.initial = initial
        self.maximum = maximum
        self.factor = factor
        self.rng = rng or random.Random()
        self.attempts = 0

    def ceiling(self) -> float:
        """The upper bound of the next delay."""
        # min() before the power would overflow only after ~1000 attempts; cap the
        # exponent instead so a long outage never raises OverflowError.
        return min(self.maximum, self.initial * self.factor ** min(self.attempts, 64))

    def next_delay(self) -> float:
        """Return the delay before the next attempt and count the attempt."""
        delay = self.rng.uniform(0, self.ceiling())
        self.attempts += 1
        return delay

    def reset(self) -> None:
        """Start again from ``initial``: call it once a connection proved healthy."""
        self.attempts = 0
