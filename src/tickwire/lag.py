"""Slow-consumer lag: conflating a lagging subscriber's book updates (Sans-I/O).

A subscriber too slow to take every frame (its connection's write buffer is over the
high watermark) stops being sent them; when it drains it gets **one** catch-up message
instead of the backlog (see ``docs/slow-consumers.md`` and :mod:`tickwire.hub`). For an
order book that message is a merged delta: the latest update of every price level
changed since the subscriber's last seq. :class:`LevelTracker` keeps what that takes --
one dict store per update, shared by every subscriber lagging on the same book -- and
builds the merged level list, or says a snapshot is the smaller catch-up. It knows
nothing of channels or connections: a feed in another format (an exchange dialect)
conflates its own laggards with the same class.

:class:`Lag` and :class:`SubscriptionStats` are the hub's per-subscription records;
:func:`lagging_subscriptions` ranks the laggards of any channels for telemetry.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from .protocol import BookUpdate

__all__ = [
    "CONFLATED_KINDS",
    "MIN_TRACKED_LEVELS",
    "UPDATE_VS_LEVEL",
    "Lag",
    "LaggingChannel",
    "LevelTracker",
    "SubscriptionStats",
    "lagging_subscriptions",
]

#: Channel kinds whose paused subscribers are conflated rather than queued: a book
#: delta or a ticker can be merged into a newer one without losing information.
#: Trades cannot, so ``trades.*`` subscriptions never lag.
CONFLATED_KINDS = frozenset(("book", "ticker"))

#: A merged delta update costs about this many times the bytes of a snapshot level
#: (``{"side":"bid","price":"..","qty":"..","ts":..}`` vs ``["..",".."]``); past it a
#: snapshot is the smaller catch-up.
UPDATE_VS_LEVEL = 3.3

#: A tracker restarts when it holds more levels than the book (at least this many).
MIN_TRACKED_LEVELS = 64


class LevelTracker:
    """The latest update of every price level changed after seq :attr:`since`.

    Feed it every batch of a book's updates, in order, while someone lags on it; ask it
    for the merged updates that take a subscriber from its seq to the last one tracked.
    Applying the merged list to the book at ``seq`` gives the same book as applying
    every update of ``(seq, last]`` (each level ends at its latest quantity).

    Args:
        seq: the book's seq when tracking starts: merges are possible from it on.
        update_cost: bytes of one merged update over the bytes of one snapshot level
            (the catch-up's encoding); :meth:`merged_since` prefers a snapshot past it.
    """

    __slots__ = ("levels", "since", "update_cost")

    def __init__(self, seq: int, update_cost: float = UPDATE_VS_LEVEL) -> None:
        # (side, price) -> (seq of its latest update, that update).
        self.levels: dict[tuple[str, str], tuple[int, BookUpdate]] = {}
        self.since = seq
        self.update_cost = update_cost

    def __len__(self) -> int:
        return len(self.levels)

    def track(self, updates: Sequence[BookUpdate], seq: int, depth: int) -> None:
        """Record one batch: ``updates`` are seqs ``(seq - len(updates), seq]``.

        ``depth`` is the number of levels the book holds (both sides; it need not be
        exact). When more levels changed than that, a snapshot is the smaller catch-up
        for everyone lagging now, and tracking restarts at ``seq``.
        """
        levels = self.levels
        n = seq - len(updates)
        for u in updates:
            n += 1
            levels[(u.side, u.price)] = (n, u)
        if len(levels) > max(MIN_TRACKED_LEVELS, depth):
            self.clear(seq)

    def merged_since(self, seq: int, depth: int) -> list[BookUpdate] | None:
        """The latest update of each level changed after ``seq``, or None for a snapshot.

        None when tracking (re)started after ``seq`` (the changes before are unknown),
        or when the merged updates would outweigh a snapshot of a book of ``depth``
        levels. The updates come in the order their levels were first changed since
        tracking started; a level appears once.
        """
        if seq < self.since:
            return None
        merged = [u for n, u in self.levels.values() if n > seq]
        if len(merged) * self.update_cost > depth:
            return None
        return merged

    def clear(self, seq: int) -> None:
        """Forget every level: merges are possible again from ``seq`` on."""
        self.levels.clear()
        self.since = seq


class Lag:
    """A paused subscription: not sent frames since ``seq`` (at monotonic ``since``)."""

    __slots__ = ("seq", "since")

    def __init__(self, seq: int, since: float) -> None:
        self.seq = seq
        self.since = since


class SubscriptionStats:
    """Slow-consumer telemetry of one subscription (created the first time it lags).

    Attributes:
        lags: times the subscription was paused (its connection over the high mark).
        conflated: merged deltas (or latest tickers) sent on catch-up.
        snapshots: catch-ups sent as a snapshot because it was smaller.
        skipped: updates the subscriber never received one by one (seq span of the
            catch-ups minus the updates they carried).
        max_lag_seq: largest seq distance behind the channel seen at a catch-up.
        max_lag_s: longest time spent lagging, in seconds.
    """

    __slots__ = ("lags", "conflated", "snapshots", "skipped", "max_lag_seq", "max_lag_s")

    def __init__(self) -> None:
        self.lags = 0
        self.conflated = 0
        self.snapshots = 0
        self.skipped = 0
        self.max_lag_seq = 0
        self.max_lag_s = 0.0


class LaggingChannel(Protocol):
    """What :func:`lagging_subscriptions` reads of a channel."""

    @property
    def name(self) -> str: ...
    @property
    def seq(self) -> int: ...
    @property
    def lagging(self) -> Mapping[Any, Lag]: ...


def lagging_subscriptions(
    channels: Iterable[LaggingChannel], now: float, limit: int = 20
) -> list[dict[str, object]]:
    """Return the ``limit`` subscriptions of ``channels`` lagging the most.

    Each entry: ``ch``, ``lag_seq`` (channel seq minus the subscriber's), ``lag_ms``
    (time since it stopped receiving frames) and the subscriber itself (``sub``).
    """
    rows: list[tuple[float, int, object, str]] = []
    for ch in channels:
        for sub, lag in ch.lagging.items():
            rows.append((now - lag.since, ch.seq - lag.seq, sub, ch.name))
    rows.sort(key=lambda r: (r[0], r[1]), reverse=True)
    return [
        {"ch": name, "lag_seq": lag_seq, "lag_ms": round(age * 1000, 1), "sub": sub}
        for age, lag_seq, sub, name in rows[:limit]
    ]
