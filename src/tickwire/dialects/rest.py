"""What the venues' REST endpoints read, and how they answer (Sans-I/O).

Each venue module turns a request (path and query parameters) into a
:class:`RestResponse` from a :class:`MarketView`: the gateway's live state, seen through
the few reads REST needs. The I/O layer (``tickwire.server.venues``) only maps HTTP to
these functions, so every answer is testable without a socket.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol

from ..protocol import Ticker, Trade
from .candles import Candles, decimals
from .markets import Market, Markets

__all__ = [
    "BookView",
    "MarketView",
    "RestError",
    "RestResponse",
    "Route",
    "answer",
    "int_param",
    "precision",
    "step",
]


class BookView(Protocol):
    """A book snapshot: ``seq`` (the native channel's) and levels, best first."""

    seq: int
    bids: list[tuple[str, str]]
    asks: list[tuple[str, str]]


class MarketView(Protocol):
    """The gateway's live market, as REST endpoints read it."""

    @property
    def markets(self) -> Markets: ...

    def book(self, symbol: str, depth: int | None) -> BookView:
        """The book now, never older than a diff already sent on a stream."""

    def trades(self, symbol: str) -> list[Trade]:
        """The most recent trades, oldest first."""

    def candles(self, symbol: str) -> Candles:
        """The symbol's candles."""

    def ticker(self, symbol: str) -> Ticker:
        """The symbol's ticker now."""

    def now_ms(self) -> int:
        """Wall-clock time in ms since the epoch."""


class RestResponse:
    """An HTTP answer: status, JSON body bytes and extra headers."""

    __slots__ = ("status", "body", "headers")

    def __init__(self, body: bytes, status: int = 200, headers: Mapping[str, str] | None = None):
        self.status = status
        self.body = body
        self.headers = dict(headers or {})


class RestError(Exception):
    """A request a venue refuses: ``status`` and the venue's own JSON error ``body``."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(body.decode(errors="replace"))
        self.status = status
        self.body = body


def int_param(
    params: Mapping[str, str],
    name: str,
    default: int | None,
    bad: Exception,
    low: int = 0,
    high: int | None = None,
) -> int | None:
    """Read an integer query parameter, raising ``bad`` when malformed or out of range."""
    text = params.get(name)
    if text is None or text == "":
        return default
    if not text.isdigit() or len(text) > 20:
        raise bad
    value = int(text)
    if value < low or (high is not None and value > high):
        raise bad
    return value


#: One REST endpoint: the view and the query parameters to the JSON body.
Route = Callable[["MarketView", Mapping[str, str]], bytes]


def answer(
    routes: Mapping[str, Route],
    view: MarketView,
    path: str,
    params: Mapping[str, str],
    unknown: bytes,
) -> RestResponse:
    """Answer ``GET path`` from a venue's ``routes``: its body, the venue's error with
    its status, or ``unknown`` with a 404."""
    route = routes.get(path.rstrip("/") or "/")
    if route is None:
        return RestResponse(unknown, 404)
    try:
        return RestResponse(route(view, params))
    except RestError as exc:
        return RestResponse(exc.body, exc.status)


def step(decimals: int) -> str:
    """The smallest increment with ``decimals`` digits after the point (``0.01``)."""
    return "1" if decimals == 0 else "0." + "0" * (decimals - 1) + "1"


def precision(view: MarketView, market: Market) -> tuple[int, int]:
    """The price and quantity decimals the symbol's book is written with."""
    book = view.book(market.symbol, 1)
    level = (book.bids or book.asks or [("0.00", "0.0000")])[0]
    return decimals(level[0]), decimals(level[1])
