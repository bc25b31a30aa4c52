"""Exchange dialects: the gateway's market served as Binance, OKX and Kraken serve theirs.

Each venue is a Sans-I/O module: its connect paths and requests (a session per
connection), its streams (renderers that encode a window, trades or a ticker once for
every subscriber), and its REST answers. :mod:`tickwire.dialects.feed` taps the hub's
native channels and drives the renderers; the hub and the engine know nothing of
venues. The I/O layer is :mod:`tickwire.server.venues`. See ``docs/dialects.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from . import binance, kraken, okx
from .feed import DialectFeed, DialectSubscriber
from .markets import DEFAULT_QUOTE, Market, Markets
from .rest import MarketView, RestResponse

__all__ = [
    "DEFAULT_QUOTE",
    "VENUES",
    "DialectFeed",
    "DialectSubscriber",
    "Market",
    "Markets",
    "Session",
    "fault_hooks",
    "open_session",
    "rest",
]

#: The venues served, by URL prefix (``/binance/...``).
VENUES = ("binance", "okx", "kraken")


class Session(Protocol):
    """One venue connection's requests and subscriptions (Sans-I/O)."""

    venue: str

    def open(self, sub: DialectSubscriber) -> None:
        """The connection is open: send what the venue sends first, join URL streams."""

    def receive(self, sub: DialectSubscriber, text: bytes) -> None:
        """Handle one text message from the client."""

    def rate_limited(self, reason: str) -> bytes:
        """The venue's frame for a message dropped over the rate limit."""


def venue_of(path: str) -> tuple[str, str] | None:
    """Split ``/binance/ws/x`` into ``("binance", "/ws/x")``; None for other paths."""
    for venue in VENUES:
        prefix = "/" + venue
        if path == prefix or path.startswith(prefix + "/"):
            return venue, path[len(prefix) :]
    return None


def open_session(
    feed: DialectFeed, venue: str, path: str, query: Mapping[str, str]
) -> Session | None:
    """The session for a venue connect path (after its prefix), or None if unknown."""
    if venue == "binance":
        return binance.open_session(feed, path, query)
    if venue == "okx":
        return okx.open_session(feed, path, query)
    if venue == "kraken":
        return kraken.open_session(feed, path, query)
    return None


def rest(view: MarketView, venue: str, path: str, params: Mapping[str, str]) -> RestResponse:
    """Answer a venue REST ``GET`` (``path`` after the venue prefix)."""
    if venue == "okx":
        return okx.rest(view, path, params)
    if venue == "kraken":
        return kraken.rest(view, path, params)
    return binance.rest(view, path, params)


def fault_hooks(venue: str) -> binance.FaultHooks | okx.FaultHooks | kraken.FaultHooks:
    """The fault engine's hook for ``venue`` (:class:`tickwire.faults.wire.ProtocolHooks`)."""
    if venue == "okx":
        return okx.FAULT_HOOKS
    if venue == "kraken":
        return kraken.FAULT_HOOKS
    return binance.FAULT_HOOKS
