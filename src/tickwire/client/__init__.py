"""The tickwire SDK (asyncio): verified local books and streams that heal themselves.

:class:`Client` connects, subscribes, keeps one :class:`~tickwire.book.Book` per
``book.<SYMBOL>`` channel verified by sequence and checksum, resyncs a channel that
breaks, reconnects with jittered backoff, resumes every channel from its last ``seq``,
and exposes counters and lag. With a ``token`` it logs in on every connection, keeps
the login fresh before the token expires, and follows the user's private
``orders.<USER>`` channel with the same sequence checks. The integrity rules live in the Sans-I/O
:mod:`tickwire.client.sync`; see ``docs/client.md``.
"""

from __future__ import annotations

from .backoff import Backoff
from .connection import Client, ClientStats
from .events import (
    BookChanged,
    ChannelStatus,
    Connected,
    Disconnected,
    Event,
    OrdersReceived,
    SyncState,
    TickerChanged,
    TradesReceived,
)
from .sync import ChannelCounters, ChannelSync, ClientProtocol, LagWindow

__all__ = [
    "Backoff",
    "BookChanged",
    "ChannelCounters",
    "ChannelStatus",
    "ChannelSync",
    "Client",
    "ClientProtocol",
    "ClientStats",
    "Connected",
    "Disconnected",
    "Event",
    "LagWindow",
    "OrdersReceived",
    "SyncState",
    "TickerChanged",
    "TradesReceived",
]
