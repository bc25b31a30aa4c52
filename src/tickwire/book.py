"""The L2 order book shared by the server's engine and the client SDK (Sans-I/O).

A book maps price levels to absolute quantities on two sides. Prices and quantities are
canonical decimal strings exactly as they travel on the wire ("100.25", "1.5000"); they
are never converted to floats. Ordering uses :class:`decimal.Decimal` keys computed once
per new level, so a quantity change on an existing level costs one dict store.

Checksum (the exact string form, the same as Kraken's WebSocket v2 book checksum)::

    for each of the top 10 asks, lowest price first, then
    for each of the top 10 bids, highest price first:
        append  strip(price) + strip(qty)
    where strip(x) = x with every "." removed, then leading "0"s removed
    checksum = CRC32 (zlib, unsigned 32-bit) of the ASCII bytes of the whole string

Example: asks [("100.5", "0.0100")], bids [("100.0", "2.0000")] gives the string
"1005100" + "100020000" and the checksum ``zlib.crc32(b"1005100100020000")``.
Fixed vectors live in ``tests/test_book.py``.
"""

from __future__ import annotations

import zlib
from bisect import bisect_left, insort
from collections.abc import Iterable, Sequence
from decimal import Decimal, InvalidOperation
from typing import Protocol

from .exceptions import BookError

__all__ = ["CHECKSUM_DEPTH", "Book", "Level", "checksum_string", "is_zero"]

#: Levels per side covered by the checksum.
CHECKSUM_DEPTH = 10

#: One price level on the wire: ``(price, qty)``.
Level = tuple[str, str]


class _Update(Protocol):
    @property
    def side(self) -> str: ...
    @property
    def price(self) -> str: ...
    @property
    def qty(self) -> str: ...


def is_zero(qty: str) -> bool:
    """Return True when a canonical quantity string means "delete this level"."""
    return not qty.strip("0.")


def _strip(value: str) -> str:
    return value.replace(".", "").lstrip("0")


def _key(price: str) -> Decimal:
    try:
        key = Decimal(price)
    except InvalidOperation:
        raise BookError(f"price is not a decimal string: {price!r}") from None
    if not key.is_finite() or key <= 0:
        raise BookError(f"price must be a positive finite decimal: {price!r}")
    return key


def checksum_string(asks: Iterable[Level], bids: Iterable[Level]) -> str:
    """Build the checksum input string from asks (best first) and bids (best first).

    Only the first :data:`CHECKSUM_DEPTH` levels of each side are used.
    """
    parts: list[str] = []
    for side in (asks, bids):
        for n, (price, qty) in enumerate(side):
            if n == CHECKSUM_DEPTH:
                break
            parts.append(_strip(price) + _strip(qty))
    return "".join(parts)


class _Side:
    """One side of a book: level dict plus price keys kept sorted best-first."""

    __slots__ = ("levels", "order", "keys", "sign", "frags")

    def __init__(self, sign: int) -> None:
        self.levels: dict[str, str] = {}
        # Sorted best-first: asks ascending, bids by descending price (negated keys).
        self.order: list[tuple[Decimal, str]] = []
        # The order entry of each price, so a delete needs no Decimal parse.
        self.keys: dict[str, tuple[Decimal, str]] = {}
        self.sign = sign
        # Cached checksum fragments of levels, dropped whenever the level changes.
        self.frags: dict[str, str] = {}

    def set(self, price: str, qty: str) -> None:
        levels = self.levels
        if not qty.strip("0."):  # is_zero(qty), inlined: this is the hot path
            if levels.pop(price, None) is not None:
                self.frags.pop(price, None)
                order = self.order
                del order[bisect_left(order, self.keys.pop(price))]
            return
        if price in levels:
            self.frags.pop(price, None)
        else:
            entry = self.keys[price] = (_key(price) * self.sign, price)
            insort(self.order, entry)
        levels[price] = qty

    def top(self, depth: int | None) -> list[Level]:
        levels = self.levels
        order = self.order if depth is None else self.order[:depth]
        return [(price, levels[price]) for _, price in order]

    def fragments(self) -> str:
        frags = self.frags
        levels = self.levels
        out = []
        for _, price in self.order[:CHECKSUM_DEPTH]:
            frag = frags.get(price)
            if frag is None:
                frag = frags[price] = _strip(price) + _strip(levels[price])
            out.append(frag)
        return "".join(out)


class Book:
    """An L2 book with exact decimal levels, top-N views and a CRC32 checksum.

    The same class backs the server's authoritative books and the SDK's local copies, so
    both compute the checksum with the same code.
    """

    __slots__ = ("_bids", "_asks")

    def __init__(self) -> None:
        self._bids = _Side(-1)
        self._asks = _Side(1)

    # -- updates ---------------------------------------------------------------------

    def apply(self, side: str, price: str, qty: str) -> None:
        """Set the absolute quantity of one level; a zero quantity deletes it.

        Args:
            side: ``"bid"`` or ``"ask"``.
            price: canonical decimal string.
            qty: canonical decimal string; ``"0"`` (any number of zeros) deletes.

        Raises:
            BookError: the side is unknown or the price is not a positive decimal.
        """
        if side == "bid":
            self._bids.set(price, qty)
        elif side == "ask":
            self._asks.set(price, qty)
        else:
            raise BookError(f"side must be 'bid' or 'ask', not {side!r}")

    def apply_updates(self, updates: Iterable[_Update]) -> None:
        """Apply objects with ``side``, ``price`` and ``qty`` attributes, in order.

        Same effect as calling :meth:`apply` for each. The common case (a quantity change
        on an existing level) is inlined: this loop runs once per book update on the
        server, so it is the engine's hot path.
        """
        bids, asks = self._bids, self._asks
        bid_levels, ask_levels = bids.levels, asks.levels
        bid_frags, ask_frags = bids.frags, asks.frags
        for u in updates:
            side = u.side
            price = u.price
            qty = u.qty
            if side == "bid":
                if price in bid_levels and qty.strip("0."):
                    bid_levels[price] = qty
                    bid_frags.pop(price, None)
                else:
                    bids.set(price, qty)
            elif side == "ask":
                if price in ask_levels and qty.strip("0."):
                    ask_levels[price] = qty
                    ask_frags.pop(price, None)
                else:
                    asks.set(price, qty)
            else:
                raise BookError(f"side must be 'bid' or 'ask', not {side!r}")

    def load(self, bids: Iterable[Sequence[str]], asks: Iterable[Sequence[str]]) -> None:
        """Replace the whole book with a snapshot's levels."""
        self._bids = _Side(-1)
        self._asks = _Side(1)
        for price, qty in bids:
            self._bids.set(price, qty)
        for price, qty in asks:
            self._asks.set(price, qty)

    def clear(self) -> None:
        """Remove every level."""
        self.load((), ())

    # -- views -----------------------------------------------------------------------

    def bids(self, depth: int | None = None) -> list[Level]:
        """Return up to ``depth`` bid levels, best (highest) first; None means all."""
        return self._bids.top(depth)

    def asks(self, depth: int | None = None) -> list[Level]:
        """Return up to ``depth`` ask levels, best (lowest) first; None means all."""
        return self._asks.top(depth)

    def best_bid(self) -> Level | None:
        """Return the best bid level, or None when the side is empty."""
        top = self._bids.top(1)
        return top[0] if top else None

    def best_ask(self) -> Level | None:
        """Return the best ask level, or None when the side is empty."""
        top = self._asks.top(1)
        return top[0] if top else None

    def spread(self) -> Decimal | None:
        """Return best ask minus best bid, or None when a side is empty."""
        bid, ask = self.best_bid(), self.best_ask()
        if bid is None or ask is None:
            return None
        return Decimal(ask[0]) - Decimal(bid[0])

    def depth(self) -> tuple[int, int]:
        """Return the number of levels as ``(bids, asks)``."""
        return len(self._bids.levels), len(self._asks.levels)

    def checksum(self) -> int:
        """Return the CRC32 of the top 10 levels in the documented string form."""
        return zlib.crc32((self._asks.fragments() + self._bids.fragments()).encode())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Book):
            return NotImplemented
        return self._bids.levels == other._bids.levels and self._asks.levels == other._asks.levels

    def __repr__(self) -> str:
        nb, na = self.depth()
        return f"<Book bids={nb} asks={na} best={self.best_bid()}/{self.best_ask()}>"
