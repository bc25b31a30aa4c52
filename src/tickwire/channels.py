"""The hub's channels and what it needs of a subscriber (Sans-I/O).

A :class:`Channel` is one ``book.<SYMBOL>``, ``trades.<SYMBOL>`` or ``ticker.<SYMBOL>``
stream: its seq, the batch pending for the next flush, its history ring and its
subscribers; a :class:`PrivateChannel` is one user's ``orders.<USER>``. The
:class:`~tickwire.hub.Hub` owns and mutates them; the gateway and the metrics only read
them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Protocol, cast

from .codec import Wire
from .engine import SymbolState
from .history import History
from .lag import Lag, LevelTracker, SubscriptionStats
from .protocol import BookUpdate, OrderUpdate, Trade

__all__ = ["RECENT_ORDERS", "Channel", "PrivateChannel", "Subscriber"]

#: Recent order events kept per private channel for its snapshots.
RECENT_ORDERS = 50


class Subscriber(Protocol):
    """What the hub needs from a connection.

    ``outbox`` collects the frames to write at the end of the tick; ``channels`` is
    owned by the hub (the channels this subscriber is in); ``slow`` holds the
    slow-consumer telemetry of its subscriptions that ever lagged (hub-owned too).

    ``deliver`` is None (frames are queued in ``outbox`` and the subscriber listed in
    :attr:`Hub.dirty`, so a connection on several channels gets one write per tick) or a
    callable that writes a frame at once, in order. The gateway sets it to the
    transport's ``write`` for a connection on exactly one channel: that is the common
    market-data case, and it makes a delivery one C call, as in a bare fan-out loop.
    Frames the hub leaves in ``outbox`` (subscribe answers) must be written before
    anything else is delivered.
    """

    outbox: list[bytes]
    channels: dict[str, Channel]
    slow: dict[str, SubscriptionStats]
    deliver: Callable[[bytes], object] | None


class Channel:
    """One channel: its sequence, pending batch, history ring and subscribers.

    Args:
        name, kind: ``<kind>.<symbol>`` and its kind (``book``, ``trades``, ``ticker``).
        state: the symbol's engine state.
        history_limit: frame bytes kept in :attr:`history` for resume.
    """

    __slots__ = (
        "name",
        "kind",
        "state",
        "seq",
        "pending",
        "subscribers",
        "groups",
        "history",
        "last_sent",
        "ticker_due",
        "fault",
        "lagging",
        "touched",
        "stale",
        "waiting",
    )

    def __init__(self, name: str, kind: str, state: SymbolState, history_limit: int) -> None:
        self.name = name
        self.kind = kind
        self.state = state
        # Last seq delivered to subscribers (book: updates, trades: trades, ticker:
        # ticker messages).
        self.seq = 0
        # Updates applied to the engine but not yet sent.
        self.pending: list[BookUpdate] | list[Trade] = []
        # JSON subscribers; those on other wires (msgpack, deflate) are grouped by wire
        # in ``groups``, which holds no empty group (see "Encodings" in tickwire.hub).
        self.subscribers: dict[Subscriber, None] = {}
        self.groups: dict[Wire, dict[Subscriber, None]] = {}
        self.history = History(history_limit)
        self.last_sent = 0.0
        self.ticker_due = False
        # Test-only fault for the next message (see Hub.inject_fault); None in production.
        self.fault: str | None = None
        # Paused subscribers, out of ``subscribers`` until they catch up.
        self.lagging: dict[Subscriber, Lag] = {}
        # Book only, while ``lagging``: the levels changed since the laggards' seqs.
        self.touched: LevelTracker | None = None
        # True while the source knows this channel's state has a hole (Hub.invalidate).
        self.stale = False
        # Subscriptions not served yet: subscriber -> (epoch, since, deadline or None).
        self.waiting: dict[Subscriber, tuple[str | None, int | None, float | None]] = {}


class PrivateChannel(Channel):
    """One user's ``orders.<USER>`` channel: seq, history and subscribers like trades.

    It has no market state (``state`` is None); snapshots carry :attr:`recent`.
    """

    __slots__ = ("user", "recent")

    def __init__(self, user: str, history_limit: int) -> None:
        super().__init__(f"orders.{user}", "orders", cast(SymbolState, None), history_limit)
        self.user = user
        self.recent: deque[OrderUpdate] = deque(maxlen=RECENT_ORDERS)
