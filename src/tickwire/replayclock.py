"""The replay clock: one data time for every client of a replaying gateway (Sans-I/O).

A replay source (a tickwire recording, tardis.dev CSVs) asks the clock which data time
is due at the monotonic time ``now``; the clock maps it as ``anchor_data + (now -
anchor_now) x speed`` and is re-anchored by every control: pause freezes it, resume
starts it again from where it stood, a speed change keeps the data time and changes the
slope, a seek jumps. ``max`` speed (0) makes everything due (the source bounds the work
per tick); the position then is the last event played, which the source reports with
:meth:`ReplayClock.played`. Nothing here reads a clock: ``now`` is an argument.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

from .exceptions import ReplayControlError

__all__ = ["ReplayClock", "format_time", "parse_time"]

#: Largest speed factor accepted (beyond it, use max).
MAX_SPEED = 1_000_000.0


def parse_time(text: str) -> int:
    """Turn ``2024-03-01T00:00:05.250Z`` (ISO 8601; no zone: UTC) or epoch
    milliseconds (``1709251205250``) into nanoseconds since the epoch.

    Raises:
        ReplayControlError: neither form (status 400).
    """
    raw = text.strip()
    if raw.isdigit() and len(raw) <= 16:
        return int(raw) * 1_000_000
    try:
        when = datetime.fromisoformat(raw)
    except ValueError:
        raise ReplayControlError(
            f"to must be an ISO 8601 time (2024-03-01T00:00:05Z) or epoch milliseconds, "
            f"not {raw[:40]!r}"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    delta = when - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000


def format_time(ns: int | None) -> str | None:
    """ISO 8601 UTC with microseconds (None stays None)."""
    if ns is None:
        return None
    when = datetime.fromtimestamp(ns // 1000 / 1e6, UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.%f") + "Z"


def parse_factor(text: str) -> float:
    """``10``, ``x10``, ``0.5`` or ``max`` (0) as a speed factor.

    Raises:
        ReplayControlError: anything else (status 400).
    """
    raw = text.strip().lower()
    if raw == "max":
        return 0.0
    try:
        speed = float(raw.removeprefix("x"))
    except ValueError:
        speed = math.nan
    if not 0 < speed <= MAX_SPEED:
        raise ReplayControlError(
            f"x must be a positive number up to {MAX_SPEED:g} (x10, 0.5) or max, not {raw[:40]!r}"
        )
    return speed


class ReplayClock:
    """Data time as a function of the monotonic clock, under pause, speed and seek.

    Args:
        speed: 1 = real time, 10 = ten times faster, 0 = max (no pacing).
    """

    def __init__(self, speed: float = 1.0) -> None:
        self.speed = speed
        self.paused = False
        self._anchor_now = 0.0
        self._anchor_data: int | None = None
        #: The time of the last event played (None: nothing yet).
        self.position: int | None = None

    @property
    def started(self) -> bool:
        return self._anchor_data is not None

    def state(self, now: float) -> dict[str, object]:
        """The clock as the replay admin API shows it (data time, position, speed)."""
        t = self.time(now)
        return {
            "time": format_time(t),
            "time_ns": t,
            "position": format_time(self.position),
            "position_ns": self.position,
            "speed": self.speed or "max",
            "paused": self.paused,
        }

    def start(self, data_ns: int, now: float) -> None:
        """Start at data time ``data_ns`` (the first event's) at ``now``."""
        self._anchor_data = data_ns
        self._anchor_now = now
        if self.position is None:
            self.position = data_ns

    def time(self, now: float) -> int | None:
        """The data time at ``now`` (paused: where it stopped; max: the position)."""
        if self._anchor_data is None:
            return self.position
        if self.paused:
            return self._anchor_data
        if not self.speed:
            return self.position
        return self._anchor_data + int((now - self._anchor_now) * self.speed * 1e9)

    def due(self, now: float) -> float:
        """Events at or before this data time are due (paused: none, max: all)."""
        if self.paused:
            return -math.inf
        if not self.speed or self._anchor_data is None:
            return math.inf
        return self._anchor_data + (now - self._anchor_now) * self.speed * 1e9

    def played(self, ts: int) -> None:
        """An event at data time ``ts`` was played."""
        if self.position is None or ts > self.position:
            self.position = ts

    def _reanchor(self, now: float) -> None:
        t = self.time(now)
        if t is not None:
            if self.position is not None and self.speed and not self.paused:
                # Playing paced: the clock may be past the last event (a quiet spell).
                t = max(t, self.position)
            self._anchor_data = t
        self._anchor_now = now

    def pause(self, now: float) -> None:
        """Freeze the data time."""
        if not self.paused:
            self._reanchor(now)
            self.paused = True

    def resume(self, now: float) -> None:
        """Let the data time run again from where it stood."""
        if self.paused:
            self.paused = False
            self._anchor_now = now

    def set_speed(self, speed: float, now: float) -> None:
        """Change the slope at the current data time."""
        if not self.paused:
            self._reanchor(now)
        self.speed = speed

    def seek(self, data_ns: int, now: float) -> None:
        """Jump to data time ``data_ns`` (the events up to it were applied)."""
        self._anchor_data = data_ns
        self._anchor_now = now
        self.position = data_ns
