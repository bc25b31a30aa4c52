"""The ingest protocol v1: a market from any matching engine or feed handler (Sans-I/O).

An external source publishes, per symbol, JSON or msgpack messages (``docs/ingest.md``,
``schema/ingest-v1.schema.json``): an L2 ``snapshot`` and ``update`` bundles (level
changes with absolute quantities, 0 deletes, and trades), or an L3 ``orders_snapshot``
and ``orders`` bundles (add / modify / cancel / execute), plus ``status`` and
``heartbeat``. Every data message carries the source's own sequence number ``seq``
(per symbol, +1 per message) and its event time ``ts`` (ns since the Unix epoch).

This module turns bytes into validated events and keeps, per symbol, the state machine
that decides what may be served:

* :func:`decode` -- bytes to one :data:`Message` (msgspec tagged union), or an
  :class:`~tickwire.exceptions.IngestError` with a precise reason;
* :class:`SymbolFeed` -- one symbol: source seq tracking, the L3 order book and the L2
  levels derived from it, checks (crossed, negative, unknown orders), and what to do;
* :class:`IngestFeed` -- every symbol of a source: routes, counts rejections by reason,
  rate-limits the log (one line per symbol and reason, then a summary every
  :data:`LOG_EVERY` seconds), reports silence, and lists the snapshots to request.

Nothing here touches a socket or a clock: the I/O layer (:mod:`tickwire.sources.ingest`)
passes ``now`` and applies :attr:`IngestFeed.out` to its sink in order: a
:class:`Publish` is an engine batch (numbered and encoded: the feed leads the symbol's
engine state, and the sink relays it), :class:`Invalidate` makes the symbol stale
(``Hub.invalidate``: clients get nothing until it recovers), :class:`Load` loads a
complete book (``Hub.restore``: every client gets a fresh snapshot), and
:class:`StatusChange` passes on the source's trading status (tickers carry it).

States of a symbol::

    WAITING  no snapshot yet: data is buffered, a snapshot is requested
    LIVE     in sync: each message applies if its seq is the next one
    STALE    a message was rejected: the book is not served; data is buffered
             until a snapshot (in stream, or the reply to a request) loads it

A duplicate (``seq`` at or below the last applied) is dropped and counted; the book
is unaffected, so the symbol stays live. Everything else the source gets wrong makes
the symbol stale.
"""

from __future__ import annotations

import logging
import re
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Literal, NoReturn, Protocol

import msgspec

from .book import Book, Level
from .engine import StateSnapshot, SymbolState
from .exceptions import ConfigError, IngestError
from .protocol import BookUpdate, Delta, Ticker, Trades, delta_updates, encode

try:
    from . import _market
except ImportError:  # built without a C compiler: PyLevels does the same
    _market = None  # type: ignore[assignment]

__all__ = [
    "LOG_EVERY",
    "REASONS",
    "VERSION",
    "Add",
    "Cancel",
    "Execute",
    "IngestFeed",
    "Invalidate",
    "L2Snapshot",
    "L2Update",
    "Load",
    "Message",
    "Modify",
    "OrderEvents",
    "OrdersSnapshot",
    "Publish",
    "PyLevels",
    "SourceHeartbeat",
    "Status",
    "StatusChange",
    "SymbolFeed",
    "canonical",
    "decode",
    "encode_json",
    "encode_msgpack",
    "new_levels",
]

log = logging.getLogger("tickwire.ingest")

#: The protocol version this module speaks (``"v": 1`` in every message).
VERSION = 1

#: Rejection reasons, the ``reason`` label of ``tickwire_ingest_rejected_total``.
REASONS = (
    "schema",  # not a v1 message: bad JSON/msgpack, a missing or mistyped field
    "version",  # "v" is not 1
    "decimal",  # a price or quantity is not an exact decimal string
    "negative",  # a negative quantity, or a price <= 0
    "crossed",  # best bid >= best ask after a message
    "gap",  # seq skipped ahead (a lost or reordered message)
    "duplicate",  # seq at or below the last applied: dropped, book unaffected
    "order",  # L3: unknown or duplicate order id, execute above the remaining qty
    "mismatch",  # a snapshot at the current seq differs from the book built so far
    "symbol",  # unknown or malformed symbol, or the body names another than the subject
    "kind",  # L2 data for an L3 symbol or the reverse
    "time",  # ts is not nanoseconds since the Unix epoch
    "overflow",  # too many buffered messages while waiting for a snapshot
)

#: Seconds between two log lines of one (symbol, reason).
LOG_EVERY = 10.0

#: Messages held per symbol while waiting for a snapshot; past it the oldest go (then
#: the snapshot that ends the wait must be newer than them, or the symbol asks again).
MAX_BUFFERED = 2_000

#: Event times below this are not nanoseconds (1973 in ns; 10^15 ms is year 33658).
MIN_TS = 10**17

Side = Literal["bid", "ask"]
TakerSide = Literal["buy", "sell"]


# -- messages ----------------------------------------------------------------------------


class L2Snapshot(msgspec.Struct, tag="snapshot", tag_field="type", frozen=True):
    """All levels of ``symbol`` after source message ``seq``: ``[price, qty]`` pairs."""

    v: int
    symbol: str
    seq: int
    ts: int
    bids: list[tuple[str, str]]
    asks: list[tuple[str, str]]


class L2Update(msgspec.Struct, tag="update", tag_field="type", frozen=True):
    """Source message ``seq``: level changes ``[side, price, qty]`` (absolute, "0"
    deletes) and trades ``[price, qty, taker side]``, all at ``ts``."""

    v: int
    symbol: str
    seq: int
    ts: int
    changes: list[tuple[Side, str, str]] = []
    trades: list[tuple[str, str, TakerSide]] = []


class Add(msgspec.Struct, tag="add", array_like=True, frozen=True):
    """``["add", order id, side, price, qty]``: a new resting order."""

    id: str
    side: Side
    price: str
    qty: str


class Modify(msgspec.Struct, tag="modify", array_like=True, frozen=True):
    """``["modify", order id, qty]`` or ``[..., qty, price]``: its new remaining
    quantity (and price)."""

    id: str
    qty: str
    price: str | None = None


class Cancel(msgspec.Struct, tag="cancel", array_like=True, frozen=True):
    """``["cancel", order id]``: the order leaves the book."""

    id: str


class Execute(msgspec.Struct, tag="execute", array_like=True, frozen=True):
    """``["execute", order id, qty]`` or ``[..., qty, price]``: a trade against a
    resting order (at its price unless given); the taker is the other side."""

    id: str
    qty: str
    price: str | None = None


OrderEvent = Add | Modify | Cancel | Execute


class OrdersSnapshot(msgspec.Struct, tag="orders_snapshot", tag_field="type", frozen=True):
    """Every resting order of ``symbol`` after source message ``seq``:
    ``[order id, side, price, qty]``."""

    v: int
    symbol: str
    seq: int
    ts: int
    orders: list[tuple[str, Side, str, str]]


class OrderEvents(msgspec.Struct, tag="orders", tag_field="type", frozen=True):
    """Source message ``seq``: L3 events in order, all at ``ts``."""

    v: int
    symbol: str
    seq: int
    ts: int
    events: list[OrderEvent]


class Status(msgspec.Struct, tag="status", tag_field="type", frozen=True):
    """The symbol's trading status (no seq: out of band)."""

    v: int
    symbol: str
    status: Literal["open", "halted", "closed"]
    ts: int = 0


class SourceHeartbeat(msgspec.Struct, tag="heartbeat", tag_field="type", frozen=True):
    """The source is alive and its last message of ``symbol`` was ``seq``."""

    v: int
    symbol: str
    seq: int
    ts: int = 0


Message = L2Snapshot | L2Update | OrdersSnapshot | OrderEvents | Status | SourceHeartbeat
Snapshot = L2Snapshot | OrdersSnapshot

_json = msgspec.json.Decoder(Message)
_msgpack = msgspec.msgpack.Decoder(Message)
_json_encoder = msgspec.json.Encoder()
_msgpack_encoder = msgspec.msgpack.Encoder()


def encode_json(msg: Message) -> bytes:
    """Encode a message as JSON (what a Python feeder may use)."""
    return _json_encoder.encode(msg)


def encode_msgpack(msg: Message) -> bytes:
    """Encode a message as msgpack."""
    return _msgpack_encoder.encode(msg)


def decode(data: bytes) -> Message:
    """Decode one ingest message: JSON when it starts with ``{``, else msgpack.

    Raises:
        IngestError: ``schema`` (not a v1 message, with msgspec's path to the fault),
            ``version``, or ``time``.
    """
    try:
        if data[:1] == b"{" or data[:1].isspace():
            msg: Message = _json.decode(data)
        else:
            msg = _msgpack.decode(data)
    except msgspec.DecodeError as exc:  # ValidationError is a subclass
        raise IngestError("schema", str(exc)[:200]) from None
    if msg.v != VERSION:
        raise IngestError("version", f"version {msg.v} (this gateway speaks {VERSION})")
    ts = msg.ts
    if (ts or not isinstance(msg, Status | SourceHeartbeat)) and not MIN_TS <= ts < 1 << 63:
        raise IngestError("time", f"ts {ts} is not nanoseconds since the Unix epoch")
    return msg


# -- decimals ----------------------------------------------------------------------------

_DECIMAL = re.compile(r"([0-9]{1,24})(?:\.([0-9]{1,18}))?\Z")
_canonical: dict[str, str] = {}


def canonical(text: str) -> str:
    """The canonical form of a non-negative decimal string: no leading zeros, no
    trailing fractional zeros, no lone point ("001.50" -> "1.5", "0.0" -> "0").

    Raises:
        IngestError: ``negative`` for a leading minus, ``decimal`` for anything that is
            not digits with an optional fraction (floats, exponents, blanks, NaN).
    """
    out = _canonical.get(text)
    if out is not None:
        return out
    m = _DECIMAL.match(text)
    if m is None:
        if text[:1] == "-" and _DECIMAL.match(text[1:]):
            raise IngestError("negative", f"negative value {text[:40]!r}")
        raise IngestError("decimal", f"{text[:40]!r} is not an exact decimal string")
    whole, frac = m.groups()
    whole = whole.lstrip("0") or "0"
    frac = (frac or "").rstrip("0")
    out = f"{whole}.{frac}" if frac else whole
    if len(_canonical) > 200_000:
        _canonical.clear()
    _canonical[text] = out
    return out


_prices: dict[str, str] = {}


def _price(text: str) -> str:
    price = _prices.get(text)
    if price is not None:
        return price
    price = canonical(text)
    if price == "0":
        raise IngestError("negative", "price 0")
    if len(_prices) > 200_000:
        _prices.clear()
    _prices[text] = price
    return price


def _positive(text: str, what: str) -> str:
    qty = canonical(text)
    if qty == "0":
        raise IngestError("negative", f"{what} quantity 0")
    return qty


_sizes: dict[str, tuple[Decimal, str]] = {}
_ZERO = Decimal(0)


def _size(text: str, what: str | None) -> tuple[Decimal, str]:
    """An order quantity as ``(Decimal, canonical text)``, cached when it is not zero
    (a cached one is positive); ``what`` names a quantity that must be positive.

    Raises:
        IngestError: as :func:`canonical`, or ``negative`` for a zero ``what``.
    """
    found = _sizes.get(text)
    if found is not None:
        return found
    canon = canonical(text) if what is None else _positive(text, what)
    size = (Decimal(canon), canon)
    if canon != "0":
        if len(_sizes) > 200_000:
            _sizes.clear()
        _sizes[text] = size
    return size


def _decimal_text(value: Decimal) -> str:
    """The canonical text of a non-negative Decimal (an L3 level's total)."""
    text = format(value, "f")
    whole, _, frac = text.partition(".")
    if frac:
        frac = frac.rstrip("0")
        text = f"{whole}.{frac}" if frac else whole
    if len(whole) > 24 or len(frac) > 18 or whole[:1] == "-":
        return canonical(text)  # out of the protocol's range: its error
    return text


# -- the book ----------------------------------------------------------------------------

#: What :meth:`Levels.apply` and :meth:`Levels.load` return for a rejected message: the
#: index of the first change (or pair) that is not valid, or the crossed best bid and ask.
Fault = int | tuple[str, str]


class Levels(Protocol):
    """One ingest symbol's L2 book, validating as it applies (:class:`PyLevels`, or the
    compiled ``tickwire._market.Levels``: the same results and bytes, at a fraction of
    the CPU)."""

    def apply(self, changes: Sequence[Sequence[str]], ts: int, seq: int, /) -> bytes | Fault: ...
    def check(self, changes: Sequence[Sequence[str]], /) -> int: ...
    def load(
        self, bids: Sequence[Sequence[str]], asks: Sequence[Sequence[str]], /
    ) -> Fault | None: ...
    def bids(self, depth: int = -1, /) -> list[Level]: ...
    def asks(self, depth: int = -1, /) -> list[Level]: ...
    def top(self) -> tuple[str | None, str | None, str | None, str | None]: ...
    def checksum(self) -> int: ...
    def depth(self) -> tuple[int, int]: ...


class PyLevels:
    """One ingest symbol's L2 book that validates as it applies (the reference of the
    compiled ``tickwire._market.Levels``, which must return the same values and bytes).

    :meth:`apply` takes a message's level changes ``[side, price, qty]`` as the source
    wrote them, canonicalizes and applies them, rejects a crossed book and returns the
    message's ``delta`` JSON (``prev_seq`` is ``seq``), checksum included: the book the
    checks need is the one clients get, so each change is applied once. A rejected
    message leaves the book as it was and returns where it failed (:data:`Fault`).

    Args:
        book_ch: the JSON string of the ``book.<SYMBOL>`` channel name, quotes included.
    """

    __slots__ = ("ch", "book")

    def __init__(self, book_ch: bytes) -> None:
        self.ch: str = msgspec.json.decode(book_ch)
        self.book = Book()

    def _updates(self, changes: Sequence[Sequence[str]], ts: int) -> list[BookUpdate] | int:
        prices, qtys = _prices.get, _canonical.get
        try:
            # The caches inlined (the common case: a price and a quantity seen before).
            updates = [
                BookUpdate(side, prices(p) or _price(p), qtys(q) or canonical(q), ts)  # type: ignore[arg-type]
                for side, p, q in changes
            ]
            if {u.side for u in updates} <= _SIDES:
                return updates
        except (IngestError, TypeError, ValueError):
            pass
        for i, change in enumerate(changes):  # where it failed
            try:
                side, p, q = change
                _price(p), canonical(q)
            except (IngestError, TypeError, ValueError):
                return i
            if side not in _SIDES:
                return i
        raise AssertionError("unreachable: a change failed")

    def apply(self, changes: Sequence[Sequence[str]], ts: int, seq: int, /) -> bytes | Fault:
        """The changes applied: their ``delta`` JSON, else the fault (nothing applied)."""
        if not changes:
            return b""
        updates = self._updates(changes, ts)
        if isinstance(updates, int):
            return updates
        book = self.book
        bids, asks = book._bids.levels, book._asks.levels
        before = [
            (u.side, u.price, (bids if u.side == "bid" else asks).get(u.price, "0"))
            for u in updates
        ]
        book.apply_updates(updates)
        crossed = _crossed(book)
        if crossed is not None:
            for side, price, qty in reversed(before):
                book.apply(side, price, qty)
            return crossed
        return encode_delta(self.ch, seq + len(updates), seq, book.checksum(), updates)

    def check(self, changes: Sequence[Sequence[str]], /) -> int:
        """The index of the first change that is not valid, or -1."""
        updates = self._updates(changes, 0)
        return updates if isinstance(updates, int) else -1

    def load(self, bids: Sequence[Sequence[str]], asks: Sequence[Sequence[str]], /) -> Fault | None:
        """Replace the book with a snapshot's levels (zero quantities skipped, a price
        twice keeps the last); None, or the fault (the book unchanged)."""
        book = Book()
        for i, (side, pair) in enumerate([("bid", b) for b in bids] + [("ask", a) for a in asks]):
            try:
                p, q = pair
                price, qty = _price(p), canonical(q)
            except (IngestError, TypeError, ValueError):
                return i
            if qty != "0":
                book.apply(side, price, qty)
        crossed = _crossed(book)
        if crossed is None:
            self.book = book
        return crossed

    def bids(self, depth: int = -1, /) -> list[Level]:
        """Bid levels, best first (``depth`` of them; -1: all)."""
        return self.book.bids(None if depth < 0 else depth)

    def asks(self, depth: int = -1, /) -> list[Level]:
        """Ask levels, best first (``depth`` of them; -1: all)."""
        return self.book.asks(None if depth < 0 else depth)

    def top(self) -> tuple[str | None, str | None, str | None, str | None]:
        """``(bid, bid_qty, ask, ask_qty)``, None for an empty side."""
        bid, ask = self.book.best_bid(), self.book.best_ask()
        return (
            bid[0] if bid else None,
            bid[1] if bid else None,
            ask[0] if ask else None,
            ask[1] if ask else None,
        )

    def checksum(self) -> int:
        """The book's CRC32 (:meth:`tickwire.book.Book.checksum`)."""
        return self.book.checksum()

    def depth(self) -> tuple[int, int]:
        """``(bids, asks)`` level counts."""
        return self.book.depth()


_SIDES = {"bid", "ask"}


def _crossed(book: Book) -> tuple[str, str] | None:
    bid, ask = book.best_bid(), book.best_ask()
    if bid is not None and ask is not None and Decimal(bid[0]) >= Decimal(ask[0]):
        return bid[0], ask[0]
    return None


def encode_delta(
    ch: str, seq: int, prev_seq: int, checksum: int, updates: list[BookUpdate]
) -> bytes:
    """A ``delta`` message's JSON, as the hub encodes it."""
    return encode(Delta(ch, seq, prev_seq, checksum, updates))


#: Whether the compiled ``Levels`` is built.
HAVE_LEVELS = _market is not None and hasattr(_market, "Levels")


def new_levels(symbol: str, core: bool | None = None) -> Levels:
    """An empty book of ``symbol``: compiled when ``core`` (None: when built).

    Raises:
        ConfigError: ``core`` is True and the compiled core is not built.
    """
    ch = msgspec.json.encode(f"book.{symbol}")
    if core or (core is None and HAVE_LEVELS):
        if not HAVE_LEVELS:
            raise ConfigError("the compiled market core is not built (no C compiler?)")
        levels: Levels = _market.Levels(ch)
        return levels
    return PyLevels(ch)


# -- actions for the I/O layer -----------------------------------------------------------


class Publish:
    """One message applied by the symbol's leading engine (the feed): a numbered batch
    with its client messages encoded, book updates ``(prev_book, book]`` and trades
    ``(prev_trade, trade]`` (a :class:`~tickwire.engine.LeaderBatch`).

    A sink relays it (``Sink.relay``: the engine follows the feed's state) or, when it
    cannot, publishes :meth:`book_updates` and :attr:`trades` through its own engine,
    which numbers them the same.
    """

    __slots__ = (
        "symbol",
        "prev_book",
        "book",
        "prev_trade",
        "trade",
        "book_json",
        "trades_json",
        "trades",
        "ts",
        "_top",
        "_stats",
    )

    def __init__(
        self,
        symbol: str,
        prev_book: int,
        book: int,
        prev_trade: int,
        trade: int,
        book_json: bytes,
        trades_json: bytes,
        trades: list[tuple[str, str, str, int]],
        ts: int,
        top: tuple[str | None, str | None, str | None, str | None],
        stats: tuple[
            str | None, str | None, Decimal | None, Decimal | None, Decimal, int, int, str | None
        ],
    ) -> None:
        self.symbol = symbol
        self.prev_book = prev_book
        self.book = book
        self.prev_trade = prev_trade
        self.trade = trade
        self.book_json = book_json
        self.trades_json = trades_json
        #: Raw trades ``(price, qty, taker side, ts)``, canonical.
        self.trades = trades
        self.ts = ts
        self._top = top
        self._stats = stats

    @property
    def updates(self) -> list[BookUpdate]:
        """The book updates (decoded from :attr:`book_json`)."""
        return self.book_updates()

    def book_updates(self) -> list[BookUpdate]:
        """The book updates (decoded from :attr:`book_json`)."""
        return delta_updates(self.book_json)

    def raw_trades(self) -> list[tuple[str, str, str, int]]:
        """The trades, unnumbered."""
        return self.trades

    def event_time(self) -> int:
        """The source's ``ts`` of the message."""
        return self.ts

    def size(self) -> int:
        """Book updates in the batch."""
        return self.book - self.prev_book

    def leader_ticker(self) -> Ticker:
        """The symbol's ticker right after this batch (``ch`` empty, seqs 0)."""
        bid, bid_qty, ask, ask_qty = self._top
        last, open_, high, low, volume, count, ts, status = self._stats
        return Ticker(
            "",
            0,
            0,
            ts,
            bid=bid,
            bid_qty=bid_qty,
            ask=ask,
            ask_qty=ask_qty,
            last=last,
            open=open_,
            high=None if high is None else str(high),
            low=None if low is None else str(low),
            volume=str(volume),
            trades=count,
            status=status,
        )


@dataclass(frozen=True, slots=True)
class Invalidate:
    """Stop serving ``symbol``: the source's state can no longer be trusted."""

    symbol: str
    reason: str


@dataclass(frozen=True, slots=True)
class StatusChange:
    """``symbol``'s trading status, as the source reported it (tickers carry it)."""

    symbol: str
    status: str


@dataclass(frozen=True, slots=True)
class Load:
    """Serve this complete state of ``symbol`` (a snapshot loaded; ``epoch`` empty):
    its book seq is one past the last, so no resume chains across."""

    symbol: str
    state: StateSnapshot

    @property
    def bids(self) -> list[Level]:
        """The loaded bids, best first."""
        return self.state.bids

    @property
    def asks(self) -> list[Level]:
        """The loaded asks, best first."""
        return self.state.asks


Action = Publish | Invalidate | Load | StatusChange


# -- one symbol --------------------------------------------------------------------------


@dataclass(slots=True)
class _Order:
    side: str
    price: str
    qty: Decimal


class SymbolFeed:
    """The state machine of one symbol (see the module docstring), and the symbol's
    leading engine: its book (:class:`Levels`, validated as it is applied), seqs and
    trade statistics, which the sink's engine follows (``Engine.follow``).

    :meth:`take` returns the actions one message leads to, or raises
    :class:`~tickwire.exceptions.IngestError` (the symbol is then stale: the caller
    emits :class:`Invalidate` and asks for a snapshot).
    """

    __slots__ = (
        "symbol",
        "core",
        "state",
        "kind",
        "seq",
        "levels",
        "leader",
        "orders",
        "totals",
        "buffer",
        "status",
        "last_arrival",
        "silent",
        "messages",
        "changes",
        "trades",
        "overflowed",
    )

    def __init__(self, symbol: str, now: float, core: bool | None = None) -> None:
        self.symbol = symbol
        self.core = core
        self.state = "waiting"
        #: "l2" or "l3" once a snapshot said so.
        self.kind: str | None = None
        self.seq = 0
        self.levels = new_levels(symbol, core)
        #: The engine state this feed leads: book and trade seqs, trade statistics
        #: (its book is :attr:`levels`).
        self.leader = SymbolState(symbol)
        # L3: order id -> order; (side, price) -> total quantity.
        self.orders: dict[str, _Order] = {}
        self.totals: dict[tuple[str, str], Decimal] = {}
        self.buffer: deque[L2Update | OrderEvents] = deque()
        self.status = "open"
        self.last_arrival = now
        self.silent = False
        self.messages = 0
        self.changes = 0
        self.trades = 0
        #: Buffered messages dropped (oldest first) since the feed last counted them.
        self.overflowed = 0

    @property
    def book(self) -> Book:
        """A copy of the book as a :class:`~tickwire.book.Book` (inspection, tests)."""
        book = Book()
        book.load(self.levels.bids(), self.levels.asks())
        return book

    def export(self, epoch: str) -> StateSnapshot:
        """The complete engine state of the symbol now (what the sink's engine follows)."""
        return self.leader.export(epoch, (self.levels.bids(), self.levels.asks()))

    # -- snapshots -----------------------------------------------------------------------

    def load(self, snap: Snapshot) -> Load:
        """Build the book of ``snap`` (validated: decimals, no crossed book).

        Raises:
            IngestError: the snapshot is invalid (the symbol stays or goes stale).
        """
        levels = new_levels(self.symbol, self.core)
        orders: dict[str, _Order] = {}
        totals: dict[tuple[str, str], Decimal] = {}
        if isinstance(snap, L2Snapshot):
            fault = levels.load(snap.bids, snap.asks)
            if isinstance(fault, int):
                price, qty = (*snap.bids, *snap.asks)[fault]
                _price(price), canonical(qty)
                raise IngestError("decimal", f"level {fault} of the snapshot")
        else:
            for oid, side, price, qty in snap.orders:
                if oid in orders:
                    raise IngestError("order", f"order {oid[:40]!r} twice in the snapshot")
                p, q = _price(price), _positive(qty, "order")
                size = Decimal(q)
                orders[oid] = _Order(side, p, size)
                key = (side, p)
                totals[key] = totals.get(key, Decimal(0)) + size
            pairs = {
                side: [(p, _decimal_text(total)) for (s, p), total in totals.items() if s == side]
                for side in ("bid", "ask")
            }
            fault = levels.load(pairs["bid"], pairs["ask"])
        if fault is not None:
            assert not isinstance(fault, int)
            raise IngestError("crossed", f"best bid {fault[0]} >= best ask {fault[1]}")
        self.kind = "l2" if isinstance(snap, L2Snapshot) else "l3"
        self.levels, self.orders, self.totals = levels, orders, totals
        self.seq = snap.seq
        self.state = "live"
        # The content jumps: the book seq moves one past the last, so no resume chains
        # across the load.
        leader = self.leader
        leader.book_seq += 1
        leader.last_ts = max(leader.last_ts, snap.ts)
        return Load(self.symbol, self.export(""))

    def snapshot(self, snap: Snapshot) -> list[Action]:
        """Take a snapshot: load it (waiting, stale, ahead or different), else check it.

        Buffered messages after it are applied at once, in seq order.

        Raises:
            IngestError: the snapshot is invalid, or older than the live book.
            _Recovered: it was loaded, but something is reported (a gap or a mismatch
                with the live book, or a buffered message rejected after it).
        """
        actions: list[Action] = []
        error: IngestError | None = None
        if self.state == "live":
            if snap.seq < self.seq:
                raise IngestError(
                    "duplicate", f"snapshot at seq {snap.seq}, behind the book at {self.seq}"
                )
            if snap.seq == self.seq and self._matches(snap):
                return []  # the source confirms the book: nothing to do
            if snap.seq > self.seq:
                error = IngestError("gap", f"snapshot at seq {snap.seq}, the book at {self.seq}")
            else:
                error = IngestError(
                    "mismatch", f"snapshot at seq {snap.seq} differs from the book built so far"
                )
            # Loaded anyway (it is the source's truth), but reported.
            actions.append(Invalidate(self.symbol, error.reason))
        actions.append(self.load(snap))
        try:
            self._drain(actions)
        except IngestError as exc:
            raise _Recovered(exc, actions, stale=True) from None
        if error is not None:
            raise _Recovered(error, actions, stale=False)
        return actions

    def _matches(self, snap: Snapshot) -> bool:
        try:
            fresh = SymbolFeed(self.symbol, self.last_arrival, self.core)
            fresh.load(snap)
        except IngestError:
            return False
        return (
            fresh.kind == self.kind
            and fresh.levels.bids() == self.levels.bids()
            and fresh.levels.asks() == self.levels.asks()
        )

    def _drain(self, out: list[Action]) -> None:
        """Apply the buffered messages that follow the loaded snapshot, in seq order."""
        buffered, self.buffer = self.buffer, deque()
        for msg in sorted(buffered, key=lambda m: m.seq):
            if msg.seq > self.seq:
                out.extend(self.take(msg))

    # -- the stream ----------------------------------------------------------------------

    def take(self, msg: L2Update | OrderEvents) -> list[Action]:
        """Apply one data message in stream order.

        Raises:
            IngestError: rejected; the symbol is stale (``duplicate``: dropped, still live).
        """
        if self.state != "live":
            self.buffer.append(msg)
            if len(self.buffer) > MAX_BUFFERED:
                self.buffer.popleft()
                self.overflowed += 1
            return []
        if msg.seq != self.seq + 1:
            if msg.seq <= self.seq:
                raise IngestError(
                    "duplicate", f"seq {msg.seq} at or below the last applied {self.seq}"
                )
            self.state = "stale"
            self.buffer.append(msg)
            raise IngestError(
                "gap", f"seq {msg.seq} after {self.seq}: {msg.seq - self.seq - 1} lost"
            )
        self.state = "stale"  # until the message proves valid
        if isinstance(msg, L2Update):
            if self.kind != "l2":
                raise IngestError("kind", "an L2 update for a symbol loaded from orders")
            action = self._l2(msg)
        else:
            if self.kind != "l3":
                raise IngestError("kind", "L3 orders for a symbol loaded from levels")
            action = self._l3(msg)
        self.state = "live"
        self.seq = msg.seq
        self.messages += 1
        if action is None:
            return []
        self.changes += action.book - action.prev_book
        self.trades += action.trade - action.prev_trade
        return [action]

    def heartbeat(self, seq: int) -> None:
        """The source's last message is ``seq``: one ahead of the book is a lost one.

        Raises:
            IngestError: ``gap``.
        """
        if self.state == "live" and seq > self.seq:
            self.state = "stale"
            raise IngestError("gap", f"heartbeat at seq {seq}, the book at {self.seq}")

    def _l2(self, msg: L2Update) -> Publish | None:
        ts = msg.ts
        trades: list[tuple[str, str, str, int]] = []
        if msg.trades:
            try:
                trades = [(_price(p), _positive(q, "trade"), side, ts) for p, q, side in msg.trades]
            except IngestError:
                # A change that is not valid is reported first (it comes first).
                fault = self.levels.check(msg.changes)
                if fault >= 0:
                    _change_fault(msg.changes, fault)
                raise
        return self._apply(msg.changes, trades, ts)

    def _apply(
        self,
        changes: Sequence[Sequence[str]],
        trades: list[tuple[str, str, str, int]],
        ts: int,
    ) -> Publish | None:
        """Apply a message's level changes once (validated), number them and its trades."""
        leader = self.leader
        prev_book, prev_trade = leader.book_seq, leader.trade_seq
        book_json = self.levels.apply(changes, ts, prev_book)
        if not isinstance(book_json, bytes):
            if isinstance(book_json, int):
                _change_fault(changes, book_json)
            raise IngestError("crossed", f"best bid {book_json[0]} >= best ask {book_json[1]}")
        if not book_json and not trades:
            return None
        trades_json = b""
        if book_json:
            leader.book_seq = prev_book + len(changes)
            leader.last_ts = ts
        if trades:
            numbered = leader.number_trades(trades)
            trades_json = encode(
                Trades(f"trades.{self.symbol}", leader.trade_seq, prev_trade, numbered)
            )
        return Publish(
            self.symbol,
            prev_book,
            leader.book_seq,
            prev_trade,
            leader.trade_seq,
            book_json,
            trades_json,
            trades,
            ts,
            self.levels.top(),
            (
                leader.last,
                leader.open,
                leader.high,
                leader.low,
                leader.volume,
                leader.trade_count,
                leader.last_ts,
                leader.status,
            ),
        )

    def _l3(self, msg: OrderEvents) -> Publish | None:
        ts = msg.ts
        orders, levels, sizes = self.orders, self.totals, _sizes
        touched: dict[tuple[str, str], None] = {}
        trades: list[tuple[str, str, str, int]] = []

        def move(side: str, price: str, delta: Decimal) -> None:
            key = (side, price)
            total = levels.get(key, _ZERO) + delta
            if total:
                levels[key] = total
            else:
                levels.pop(key, None)
            touched[key] = None

        for ev in msg.events:
            if isinstance(ev, Add):
                if ev.id in orders:
                    raise IngestError("order", f"add of order {ev.id[:40]!r}, already resting")
                price = _prices.get(ev.price) or _price(ev.price)
                size = (sizes.get(ev.qty) or _size(ev.qty, "add"))[0]
                orders[ev.id] = _Order(ev.side, price, size)
                move(ev.side, price, size)
                continue
            order = orders.get(ev.id)
            if order is None:
                kind = type(ev).__name__.lower()
                raise IngestError("order", f"{kind} of unknown order {ev.id[:40]!r}")
            if isinstance(ev, Cancel):
                del orders[ev.id]
                move(order.side, order.price, -order.qty)
            elif isinstance(ev, Modify):
                size = (sizes.get(ev.qty) or _size(ev.qty, None))[0]
                price = order.price if ev.price is None else _price(ev.price)
                move(order.side, order.price, -order.qty)
                if size:
                    order.qty, order.price = size, price
                    move(order.side, price, size)
                else:
                    del orders[ev.id]
            else:
                size, text = sizes.get(ev.qty) or _size(ev.qty, "execute")
                if size > order.qty:
                    raise IngestError(
                        "order",
                        f"execute of {ev.qty[:40]} on order {ev.id[:40]!r} "
                        f"with {_decimal_text(order.qty)} left",
                    )
                price = order.price if ev.price is None else _price(ev.price)
                order.qty -= size
                move(order.side, order.price, -size)
                if not order.qty:
                    del orders[ev.id]
                taker = "sell" if order.side == "bid" else "buy"
                trades.append((price, text, taker, ts))
        changes = [
            (side, price, _decimal_text(levels[(side, price)]) if (side, price) in levels else "0")
            for side, price in touched
        ]
        return self._apply(changes, trades, ts)


class _Recovered(Exception):
    """Internal: a rejection that was healed at once (the actions still apply)."""

    def __init__(self, error: IngestError, actions: list[Action], stale: bool) -> None:
        super().__init__(str(error))
        self.error = error
        self.actions = actions
        self.stale = stale


def _change_fault(changes: Sequence[Sequence[str]], index: int) -> NoReturn:
    """Raise the error of change ``index``, which the book found not valid."""
    change = changes[index]
    if len(change) == 3:
        side, price, qty = change
        _price(price), canonical(qty)
        if side not in ("bid", "ask"):
            raise IngestError("schema", f"side {side[:40]!r}")
    raise IngestError("schema", f"change {index} is not [side, price, qty]")


# -- every symbol of a source ------------------------------------------------------------


_SYMBOL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-/:]{0,31}\Z")


@dataclass
class _LogState:
    next_at: float = 0.0
    suppressed: int = 0


@dataclass
class IngestFeed:
    """All symbols of one ingest source (Sans-I/O).

    Args:
        symbols: the symbols allowed (empty: any valid name, up to ``max_symbols``).
        silent_after: seconds without a message after which a symbol is reported silent.
        max_symbols: symbols at most when any are allowed.
        core: the compiled book (``tickwire._market.Levels``): True, False
            (:class:`PyLevels`) or None (when built).

    Raises:
        ConfigError: ``core`` is True and the compiled core is not built.
    """

    symbols: list[str] = field(default_factory=list)
    silent_after: float = 5.0
    max_symbols: int = 1000
    core: bool | None = None
    #: Per symbol state machines, created by the symbol's first valid message.
    feeds: dict[str, SymbolFeed] = field(default_factory=dict)
    #: Actions for the sink, in order; the I/O layer takes and clears it.
    out: list[Action] = field(default_factory=list)
    #: Symbols whose snapshot the I/O layer should request from the source.
    requests: set[str] = field(default_factory=set)
    #: Rejections by reason (every reason of :data:`REASONS` present).
    rejected: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))
    received: int = 0
    loads: int = 0
    silences: int = 0
    _logs: dict[tuple[str, str], _LogState] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.core and not HAVE_LEVELS:
            raise ConfigError("the compiled market core is not built (no C compiler?)")

    def receive(
        self, subject_symbol: str | None, data: bytes, now: float, reply: bool = False
    ) -> None:
        """Take one message of ``subject_symbol`` (from its subject) at ``now``.

        ``subject_symbol`` None: a stream without subjects (NDJSON), the body names it.
        ``reply``: it answers a snapshot request (only snapshots are accepted).
        Never raises: a rejection is counted, logged (rate-limited) and acted on.
        """
        self.received += 1
        try:
            msg = decode(data)
        except IngestError as exc:
            if subject_symbol is not None:
                self._arrival(subject_symbol, now)
            self._reject(subject_symbol or "?", exc, now)
            return
        symbol = msg.symbol if subject_symbol is None else subject_symbol
        feed = self._arrival(symbol, now)
        try:
            if msg.symbol != symbol:
                raise IngestError(
                    "symbol", f"body names {msg.symbol[:40]!r}, the subject {symbol[:40]!r}"
                )
            if feed is None:
                feed = self._new(symbol, now)
            if reply and not isinstance(msg, L2Snapshot | OrdersSnapshot):
                raise IngestError("schema", "a snapshot reply must be a snapshot")
            self._dispatch(feed, msg, reply)
        except IngestError as exc:
            self._reject(symbol, exc, now)
        except _Recovered as rec:
            self.out.extend(rec.actions)
            self.loads += 1
            self._reject(symbol, rec.error, now, stale=rec.stale)

    def _arrival(self, symbol: str, now: float) -> SymbolFeed | None:
        feed = self.feeds.get(symbol)
        if feed is not None:
            feed.last_arrival = now
            if feed.silent:
                feed.silent = False
                log.warning("ingest %s: the source speaks again", symbol)
        return feed

    def _new(self, symbol: str, now: float) -> SymbolFeed:
        if self.symbols:
            if symbol not in self.symbols:
                raise IngestError("symbol", f"{symbol[:40]!r} is not one of --symbols")
        elif _SYMBOL.match(symbol) is None:
            raise IngestError("symbol", f"{symbol[:40]!r} is not a valid symbol name")
        elif len(self.feeds) >= self.max_symbols:
            raise IngestError("symbol", f"more than {self.max_symbols} symbols")
        feed = self.feeds[symbol] = SymbolFeed(symbol, now, self.core)
        return feed

    def _dispatch(self, feed: SymbolFeed, msg: Message, reply: bool) -> None:
        if isinstance(msg, L2Update | OrderEvents):
            was_live = feed.state == "live"
            self.out.extend(feed.take(msg))
            if feed.overflowed:
                self.rejected["overflow"] += feed.overflowed
                feed.overflowed = 0
                self._log(
                    feed.symbol,
                    IngestError("overflow", f"over {MAX_BUFFERED} messages held for a snapshot"),
                    feed.last_arrival,
                )
            if not was_live and msg.seq > feed.seq:
                self.requests.add(feed.symbol)  # waiting or stale: ask (again)
        elif isinstance(msg, L2Snapshot | OrdersSnapshot):
            if reply and feed.state == "live" and msg.seq != feed.seq:
                # A late or early reply (it does not travel with the stream): the book
                # is live, and the stream itself shows any gap.
                return
            actions = feed.snapshot(msg)
            if actions:
                self.loads += 1
            self.out.extend(actions)
            self.requests.discard(feed.symbol)
        elif isinstance(msg, SourceHeartbeat):
            if feed.state != "live":
                if msg.seq > feed.seq or feed.state == "waiting":
                    self.requests.add(feed.symbol)
                return
            feed.heartbeat(msg.seq)
        else:
            if msg.status != feed.status:
                log.warning("ingest %s: status %s -> %s", feed.symbol, feed.status, msg.status)
                feed.status = msg.status
            if feed.leader.status != msg.status:
                feed.leader.status = msg.status
                if feed.kind is not None:  # loaded: served (else the load carries it)
                    self.out.append(StatusChange(feed.symbol, msg.status))

    def _reject(self, symbol: str, exc: IngestError, now: float, stale: bool = True) -> None:
        self.rejected[exc.reason] += 1
        feed = self.feeds.get(symbol)
        if feed is not None and exc.reason != "duplicate" and stale:
            if feed.state != "waiting":
                feed.state = "stale"
                self.out.append(Invalidate(symbol, exc.reason))
            self.requests.add(symbol)
        self._log(symbol, exc, now)

    def _log(self, symbol: str, exc: IngestError, now: float) -> None:
        key = (symbol if symbol in self.feeds else "?", exc.reason)
        st = self._logs.get(key)
        if st is None:
            if len(self._logs) > 50_000:  # symbols x reasons, bounded
                self._logs.clear()
            st = self._logs[key] = _LogState()
        if now < st.next_at:
            st.suppressed += 1
            return
        more = (
            f" ({st.suppressed} more like it in the last {LOG_EVERY:g}s)" if st.suppressed else ""
        )
        level = logging.INFO if exc.reason == "duplicate" else logging.WARNING
        log.log(level, "ingest %s rejected: %s: %s%s", symbol[:40], exc.reason, exc.detail, more)
        st.next_at = now + LOG_EVERY
        st.suppressed = 0

    def check(self, now: float) -> list[str]:
        """Report symbols silent for :attr:`silent_after` seconds (once each); return them."""
        newly: list[str] = []
        limit = now - self.silent_after
        for feed in self.feeds.values():
            if not feed.silent and feed.last_arrival < limit:
                feed.silent = True
                self.silences += 1
                newly.append(feed.symbol)
                log.warning(
                    "ingest %s: no message from the source for %gs", feed.symbol, self.silent_after
                )
        return newly

    def stats(self) -> dict[str, object]:
        """Counters and the state of every symbol."""
        return {
            "received": self.received,
            "loads": self.loads,
            "silences": self.silences,
            "rejected": dict(self.rejected),
            "symbols": {
                s: {
                    "state": f.state,
                    "kind": f.kind,
                    "seq": f.seq,
                    "status": f.status,
                    "silent": f.silent,
                    "messages": f.messages,
                    "changes": f.changes,
                    "trades": f.trades,
                }
                for s, f in self.feeds.items()
            },
        }
