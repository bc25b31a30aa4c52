"""What the SDK hands to its user: frozen, slotted event objects (Sans-I/O).

Every event names its ``channel`` and ``symbol``. Book and trade events are produced only
for messages that passed the integrity checks (``prev_seq`` chains, checksum matches), so
anything an application receives as data is valid; when a channel goes wrong it gets a
:class:`ChannelStatus` event instead, and its data stops until it is healed.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ..protocol import BookUpdate, OrderUpdate, Ticker, Trade

__all__ = [
    "BookChanged",
    "ChannelStatus",
    "Connected",
    "Disconnected",
    "Event",
    "OrdersReceived",
    "SyncState",
    "TickerChanged",
    "TradesReceived",
]


class SyncState(enum.Enum):
    """Where a channel stands; see :mod:`tickwire.client.sync` for the transitions."""

    #: Subscribed (or re-subscribed after a reconnect); waiting for the server's answer.
    SYNCING = "syncing"
    #: Every message so far chained and verified; data is current.
    LIVE = "live"
    #: A gap or checksum failure was seen; a resync is in flight; data is not delivered.
    STALE = "stale"


@dataclass(frozen=True, slots=True)
class BookChanged:
    """The local book of ``symbol`` changed and is verified at ``seq``.

    ``updates`` are the levels of a delta in order (empty for a snapshot). The book
    itself is read with :meth:`tickwire.client.Client.book`; inside an ``on_event``
    callback it is exactly at ``seq``, in ``async for`` it may already be further on.
    """

    channel: str
    symbol: str
    seq: int
    updates: list[BookUpdate]
    snapshot: bool = False


@dataclass(frozen=True, slots=True)
class TradesReceived:
    """Trades on ``symbol``; ``trades[i].id`` are consecutive, ending at ``seq``.

    ``snapshot`` is True for the recent trades that come with a (re)subscription and
    that the application has not seen as live trades.
    """

    channel: str
    symbol: str
    seq: int
    trades: list[Trade]
    snapshot: bool = False


@dataclass(frozen=True, slots=True)
class OrdersReceived:
    """Events of the logged-in user's orders (``orders.<USER>``; ``symbol`` is the user).

    ``orders[i].id`` are consecutive, ending at ``seq``. ``snapshot`` is True for the
    recent events that come with a first subscription (history, not news).
    """

    channel: str
    symbol: str
    seq: int
    orders: list[OrderUpdate]
    snapshot: bool = False


@dataclass(frozen=True, slots=True)
class TickerChanged:
    """A new ticker (top of book and rolling statistics) for ``symbol``."""

    channel: str
    symbol: str
    ticker: Ticker


@dataclass(frozen=True, slots=True)
class ChannelStatus:
    """``channel`` moved to ``state``; ``reason`` says why, for logs and humans."""

    channel: str
    symbol: str
    state: SyncState
    reason: str


@dataclass(frozen=True, slots=True)
class Connected:
    """A connection is up and its subscribe request was sent; ``attempt`` counts from 1."""

    url: str
    attempt: int


@dataclass(frozen=True, slots=True)
class Disconnected:
    """The connection ended; ``code`` is the WebSocket close code (None: no close frame)."""

    url: str
    code: int | None
    reason: str


Event = (
    BookChanged
    | TradesReceived
    | OrdersReceived
    | TickerChanged
    | ChannelStatus
    | Connected
    | Disconnected
)
