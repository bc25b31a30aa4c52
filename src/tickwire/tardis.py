"""tardis.dev CSV datasets as a market (Sans-I/O): the reader and the book model.

Three of tardis.dev's downloadable CSV layouts are read (``docs/venue-feeds.md``):

* ``incremental_book_L2``: ``exchange,symbol,timestamp,local_timestamp,is_snapshot,
  side,price,amount`` -- absolute amounts per level (0 deletes), ``side`` ``bid`` or
  ``ask``; a run of ``is_snapshot=true`` rows after a non-snapshot row starts a new book;
* ``trades``: ``exchange,symbol,timestamp,local_timestamp,id,side,price,amount`` --
  ``side`` is the taker's (``buy``, ``sell``; ``unknown`` cannot be served);
* ``book_snapshot_25`` (and any ``book_snapshot_N``): ``exchange,symbol,timestamp,
  local_timestamp`` then ``asks[i].price``, ``asks[i].amount``, ``bids[i].price``,
  ``bids[i].amount`` -- the top N levels after each change (empty cells: fewer levels).

Columns are found by name in the header, so their order does not matter. Times are
microseconds since the Unix epoch; the replay orders and paces by ``local_timestamp``
(when the collector received the message: monotonic in a file, the time a backtest
lives in) and stamps updates and trades with ``timestamp`` (the exchange's), in ns.

Numbers are kept exact: tardis writes ``0.1``, ``1e-05`` or ``100.0``; each is parsed
from its text (:class:`decimal.Decimal`, never ``float``) and written back as the plain
decimal string (``0.1``, ``0.00001``, ``100``).

:func:`read_events` turns one file's lines into events (rows of one exchange message
grouped: same symbol, same ``local_timestamp``) and :class:`Problem` reports;
:func:`merge` interleaves several files by time; :class:`TardisModel` applies the
events to its own books and says what to serve: batches to publish, snapshots to
restore, symbols to mark stale. It detects what tardis data lets one detect (it has no
sequence numbers): a book crossed after an update, an invalid amount, time going
backwards, updates before any snapshot, a malformed row, and a ``book_snapshot_N``
that disagrees with the incremental book at the same time. Such a symbol is stale --
not served -- until its next snapshot.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import NamedTuple

from .engine import Engine, RawTrade, StateSnapshot
from .exceptions import ConfigError, DataError, RequestError
from .protocol import BookUpdate, parse_channel

__all__ = [
    "BOOK",
    "PROBLEMS",
    "TOP",
    "TRADES",
    "BookEvent",
    "Problem",
    "TardisModel",
    "TopEvent",
    "TradeEvent",
    "detect_layout",
    "exact_decimal",
    "is_tardis_spec",
    "merge",
    "parse_symbol_map",
    "read_events",
]

#: Layout names (tardis.dev's data types).
BOOK = "incremental_book_L2"
TRADES = "trades"
TOP = "book_snapshot"

#: The data problems reported (log once per kind and symbol, counted in stats).
PROBLEMS = (
    "bad_row",  # a row that cannot be read (columns, numbers, side, time)
    "time_backwards",  # local_timestamp lower than the previous row's in the file
    "invalid_amount",  # a negative book amount
    "before_snapshot",  # book updates of a symbol that has no book yet
    "crossed",  # best bid >= best ask after an exchange message was applied
    "snapshot_mismatch",  # book_snapshot_N differs from the incremental book
    "unknown_side",  # a trade whose taker side is unknown (cannot be served)
)

_BOOK_COLUMNS = ("symbol", "timestamp", "local_timestamp", "is_snapshot", "side", "price", "amount")
_TRADE_COLUMNS = ("symbol", "timestamp", "local_timestamp", "side", "price", "amount")
_TOP_COLUMNS = ("symbol", "timestamp", "local_timestamp", "asks[0].price", "bids[0].price")

#: Digits and exponent a number may have (a row cannot make the reader build huge text).
_MAX_EXPONENT = 40
_MAX_DIGITS = 40


def is_tardis_spec(spec: str) -> bool:
    """Whether ``--source`` names tardis CSVs: ``tardis:PATHS`` or paths ending in
    ``.csv`` / ``.csv.gz``."""
    if spec.startswith("tardis:"):
        return True
    first = spec.split(",")[0].lower()
    return first.endswith((".csv", ".csv.gz"))


def parse_symbol_map(items: Sequence[str] | None) -> dict[str, str]:
    """``["BTCUSDT=BTC-USDT", ...]`` as a dict.

    Raises:
        ConfigError: an item is not ``FILE_SYMBOL=SERVED``.
    """
    out: dict[str, str] = {}
    for item in items or ():
        raw, eq, served = item.partition("=")
        if not eq or not raw.strip() or not served.strip():
            raise ConfigError(
                f"--replay-symbol-map takes FILE_SYMBOL=SERVED pairs, not {item[:60]!r}"
            )
        out[raw.strip()] = served.strip()
    return out


def exact_decimal(text: str) -> str:
    """Return ``text`` as a plain, exact decimal string (``1e-05`` -> ``0.00001``).

    Raises:
        ValueError: not a finite decimal number of reasonable size.
    """
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise ValueError(f"not a number: {text[:40]!r}") from None
    if not value.is_finite():
        raise ValueError(f"not a finite number: {text[:40]!r}")
    sign, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)
    if abs(exponent) > _MAX_EXPONENT or len(digits) > _MAX_DIGITS:
        raise ValueError(f"number out of range: {text[:40]!r}")
    out = format(value, "f")
    if "." in out:
        out = out.rstrip("0").rstrip(".")
    if out in ("-0", ""):
        out = "0"
    return out


class BookEvent(NamedTuple):
    """The rows of one exchange message of one symbol (same ``local_timestamp``)."""

    local_ns: int
    ts_ns: int
    symbol: str
    snapshot: bool
    #: ``(side, price, amount)``: side ``bid``/``ask``, exact decimal strings.
    levels: list[tuple[str, str, str]]
    path: str
    line: int


class TradeEvent(NamedTuple):
    """Consecutive trades of one symbol at one ``local_timestamp``."""

    local_ns: int
    symbol: str
    #: ``(price, amount, side, ts_ns)``: side ``buy``/``sell``/``unknown``.
    trades: list[tuple[str, str, str, int]]
    path: str
    line: int


class TopEvent(NamedTuple):
    """One ``book_snapshot_N`` row: the top levels, best first."""

    local_ns: int
    ts_ns: int
    symbol: str
    bids: list[tuple[str, str]]
    asks: list[tuple[str, str]]
    path: str
    line: int
    #: The layout's N (book_snapshot_25: 25): a side with fewer levels is the whole side.
    depth: int = 25


class Problem(NamedTuple):
    """A data problem found while reading (``kind`` is one of :data:`PROBLEMS`)."""

    kind: str
    #: The symbol it concerns (None: the row was too broken to tell).
    symbol: str | None
    path: str
    line: int
    detail: str
    #: When it happened (0: unknown).
    local_ns: int = 0


Event = BookEvent | TradeEvent | TopEvent


def detect_layout(path: str, header: Sequence[str]) -> str:
    """Name the layout of a file from its header row (:data:`BOOK`, :data:`TRADES`, :data:`TOP`).

    Raises:
        ConfigError: the header is none of them (names the file and what is missing).
    """
    cols = set(header)
    need: tuple[str, ...]
    if "is_snapshot" in cols:
        layout, need = BOOK, _BOOK_COLUMNS
    elif any(c.startswith(("asks[", "bids[")) for c in cols):
        layout, need = TOP, _TOP_COLUMNS
    elif "id" in cols or {"side", "price", "amount"} <= cols:
        layout, need = TRADES, _TRADE_COLUMNS
    else:
        raise ConfigError(
            f"{path}: not a tardis.dev CSV (incremental_book_L2, trades or book_snapshot_N): "
            f"header {','.join(header)[:200]!r}"
        )
    missing = [c for c in need if c not in cols]
    if missing:
        raise ConfigError(f"{path}: {layout} header lacks column(s) {', '.join(missing)}")
    return layout


def _micros(text: str, name: str) -> int:
    if not text.isdigit() or len(text) > 19:
        raise ValueError(f"{name} is not microseconds since the epoch: {text[:40]!r}")
    return int(text) * 1000


def _positive(text: str, name: str) -> str:
    value = exact_decimal(text)
    if value.startswith("-") or value == "0":
        raise ValueError(f"{name} must be positive: {text[:40]!r}")
    return value


def read_events(
    path: str,
    rows: Iterable[Sequence[str]],
    symbol_map: Mapping[str, str] | None = None,
) -> tuple[str, Iterator[Event | Problem]]:
    """Read one file's rows (``csv.reader`` output, header first).

    Returns the layout and an iterator of events and problems in file order. A row
    that cannot be read becomes a ``bad_row`` :class:`Problem` naming the file and the
    line; reading goes on.

    Raises:
        ConfigError: the file is empty or its header is not a known layout.
    """
    it = iter(rows)
    header = next(it, None)
    if header is None:
        raise ConfigError(f"{path}: empty file (a tardis.dev CSV starts with its header)")
    header = [c.strip() for c in header]
    layout = detect_layout(path, header)
    names = symbol_map or {}
    if layout == BOOK:
        return layout, _book_events(path, header, it, names)
    if layout == TRADES:
        return layout, _trade_events(path, header, it, names)
    return layout, _top_events(path, header, it, names)


def _symbol(row: Sequence[str], index: int, names: Mapping[str, str]) -> str:
    raw = row[index].strip() if index < len(row) else ""
    if not raw:
        raise ValueError("no symbol")
    return names.get(raw, raw)


def _times(row: Sequence[str], width: int, i_local: int, i_ts: int) -> tuple[int, int]:
    """A row's ``(local_timestamp, timestamp)``, once it has the header's width.

    Raises:
        ValueError: a column missing or extra, or a timestamp that is not one.
    """
    if len(row) != width:
        raise ValueError(f"{len(row)} columns, the header has {width}")
    return _micros(row[i_local], "local_timestamp"), _micros(row[i_ts], "timestamp")


def _book_events(
    path: str, header: list[str], rows: Iterator[Sequence[str]], names: Mapping[str, str]
) -> Iterator[BookEvent | Problem]:
    col = {name: i for i, name in enumerate(header)}
    i_sym, i_ts, i_local = col["symbol"], col["timestamp"], col["local_timestamp"]
    i_snap, i_side, i_px, i_amt = col["is_snapshot"], col["side"], col["price"], col["amount"]
    width = len(header)
    pending: BookEvent | None = None
    last_local = 0
    for line, row in enumerate(rows, 2):
        if not row:
            continue  # a blank line
        symbol: str | None = None
        try:
            symbol = _symbol(row, i_sym, names)
            local, ts = _times(row, width, i_local, i_ts)
            snap = row[i_snap]
            if snap not in ("true", "false"):
                raise ValueError(f"is_snapshot must be true or false, not {snap[:20]!r}")
            side = row[i_side]
            if side not in ("bid", "ask"):
                raise ValueError(f"side must be bid or ask, not {side[:20]!r}")
            price = _positive(row[i_px], "price")
            amount = exact_decimal(row[i_amt])
        except ValueError as exc:
            if pending is not None:
                yield pending
                pending = None
            err = DataError(path, line, str(exc))
            yield Problem("bad_row", symbol, path, line, str(err), last_local)
            continue
        if local < last_local:
            if pending is not None:
                yield pending
                pending = None
            detail = f"{path}:{line}: local_timestamp goes back {(last_local - local) // 1000} us"
            yield Problem("time_backwards", symbol, path, line, detail, local)
        last_local = max(last_local, local)
        is_snap = snap == "true"
        if (
            pending is not None
            and pending.symbol == symbol
            and pending.local_ns == local
            and pending.snapshot == is_snap
        ):
            pending.levels.append((side, price, amount))
            if ts > pending.ts_ns:
                pending = pending._replace(ts_ns=ts)
            continue
        if pending is not None:
            yield pending
        pending = BookEvent(local, ts, symbol, is_snap, [(side, price, amount)], path, line)
    if pending is not None:
        yield pending


def _trade_events(
    path: str, header: list[str], rows: Iterator[Sequence[str]], names: Mapping[str, str]
) -> Iterator[TradeEvent | Problem]:
    col = {name: i for i, name in enumerate(header)}
    i_sym, i_ts, i_local = col["symbol"], col["timestamp"], col["local_timestamp"]
    i_side, i_px, i_amt = col["side"], col["price"], col["amount"]
    width = len(header)
    pending: TradeEvent | None = None
    last_local = 0
    for line, row in enumerate(rows, 2):
        if not row:
            continue  # a blank line
        symbol: str | None = None
        try:
            symbol = _symbol(row, i_sym, names)
            local, ts = _times(row, width, i_local, i_ts)
            side = row[i_side]
            if side not in ("buy", "sell", "unknown"):
                raise ValueError(f"side must be buy, sell or unknown, not {side[:20]!r}")
            price = _positive(row[i_px], "price")
            amount = _positive(row[i_amt], "amount")
        except ValueError as exc:
            if pending is not None:
                yield pending
                pending = None
            err = DataError(path, line, str(exc))
            yield Problem("bad_row", symbol, path, line, str(err), last_local)
            continue
        if local < last_local:
            detail = f"{path}:{line}: local_timestamp goes back {(last_local - local) // 1000} us"
            yield Problem("time_backwards", symbol, path, line, detail, local)
            local = last_local  # a trade is still a trade: served in file order
        last_local = local
        trade = (price, amount, side, ts)
        if pending is not None and pending.symbol == symbol and pending.local_ns == local:
            pending.trades.append(trade)
            continue
        if pending is not None:
            yield pending
        pending = TradeEvent(local, symbol, [trade], path, line)
    if pending is not None:
        yield pending


def _top_events(
    path: str, header: list[str], rows: Iterator[Sequence[str]], names: Mapping[str, str]
) -> Iterator[TopEvent | Problem]:
    col = {name: i for i, name in enumerate(header)}
    i_sym, i_ts, i_local = col["symbol"], col["timestamp"], col["local_timestamp"]
    sides: dict[str, list[tuple[int, int]]] = {}
    for side in ("bids", "asks"):
        pairs = []
        n = 0
        while f"{side}[{n}].price" in col and f"{side}[{n}].amount" in col:
            pairs.append((col[f"{side}[{n}].price"], col[f"{side}[{n}].amount"]))
            n += 1
        sides[side] = pairs
    width = len(header)
    depth = min(len(sides["bids"]), len(sides["asks"]))
    last_local = 0
    for line, row in enumerate(rows, 2):
        if not row:
            continue  # a blank line
        symbol: str | None = None
        try:
            symbol = _symbol(row, i_sym, names)
            local, ts = _times(row, width, i_local, i_ts)
            levels: dict[str, list[tuple[str, str]]] = {}
            for side, pairs in sides.items():
                out = levels[side] = []
                for i_px, i_amt in pairs:
                    px, amt = row[i_px], row[i_amt]
                    if not px and not amt:
                        break  # fewer levels than the layout's N
                    out.append((_positive(px, f"{side} price"), _positive(amt, f"{side} amount")))
        except ValueError as exc:
            err = DataError(path, line, str(exc))
            yield Problem("bad_row", symbol, path, line, str(err), last_local)
            continue
        if local < last_local:
            detail = f"{path}:{line}: local_timestamp goes back {(last_local - local) // 1000} us"
            yield Problem("time_backwards", symbol, path, line, detail, local)
        last_local = max(last_local, local)
        yield TopEvent(local, ts, symbol, levels["bids"], levels["asks"], path, line, depth)


_RANK = {BookEvent: 0, TopEvent: 1, TradeEvent: 2, Problem: 0}


def _when(item: Event | Problem) -> int:
    return item.local_ns


def merge(streams: Sequence[Iterable[Event | Problem]]) -> Iterator[Event | Problem]:
    """Interleave files by ``local_timestamp``: at one time, book rows first, then
    ``book_snapshot_N`` rows (which show the book after them), then trades; otherwise
    in the order the files were given. Each file keeps its own order."""

    def keyed(
        index: int, stream: Iterable[Event | Problem]
    ) -> Iterator[tuple[int, int, int, int, Event | Problem]]:
        for n, item in enumerate(stream):
            yield item.local_ns, _RANK[type(item)], index, n, item

    for *_, item in heapq.merge(*(keyed(i, s) for i, s in enumerate(streams))):
        yield item


# -- the model: what the data says, and what may be served ---------------------------------


@dataclass
class _Symbol:
    #: Its book holds a complete state and nothing went wrong since the last snapshot.
    serving: bool = False
    #: The last book row was part of a snapshot (the next snapshot row continues it).
    in_snapshot: bool = False
    #: A snapshot has loaded a book (before: updates are "before_snapshot").
    has_book: bool = False
    #: Book updates dropped while not serving.
    dropped: int = 0


class Publish(NamedTuple):
    """Send these updates and trades of ``symbol`` (the model applied them already)."""

    symbol: str
    updates: list[BookUpdate]
    trades: list[RawTrade]


class Restore(NamedTuple):
    """Load this complete state (a snapshot: subscribers get it as a new snapshot)."""

    snap: StateSnapshot


class Invalidate(NamedTuple):
    """Stop serving ``symbol`` until a :class:`Restore`: its book is known wrong."""

    symbol: str


Action = Publish | Restore | Invalidate


@dataclass
class TardisModel:
    """Applies tardis events to its own engine and says what may be served.

    Args:
        incremental: an ``incremental_book_L2`` file is among the inputs: books come
            from it and ``book_snapshot_N`` rows only check them; otherwise each
            ``book_snapshot_N`` row *is* the book (its top N), served as the changes
            from the previous row.
        symbols: serve only these (after the symbol map); empty: every symbol met.
    """

    incremental: bool
    symbols: frozenset[str] = frozenset()
    engine: Engine = field(default_factory=lambda: Engine([]))
    states: dict[str, _Symbol] = field(default_factory=dict)
    #: Problems per kind, and per (kind, symbol) the first one (for a log line once).
    problems: dict[str, int] = field(default_factory=dict)
    seen: set[tuple[str, str | None]] = field(default_factory=set)
    #: Problems at or before this time were counted already (a seek re-reads the data).
    counted_until: int = -1
    #: Updates and trades that went to :class:`Publish` actions.
    updates: int = 0
    trades: int = 0
    skipped_symbols: set[str] = field(default_factory=set)
    #: Files whose rows build books (see :meth:`note_book_file`).
    book_paths: set[str] = field(default_factory=set)

    def known(self, symbol: str) -> bool:
        """Whether ``symbol`` is served: the ``symbols`` filter, and a name the native
        protocol can carry (else it is skipped: map it with ``--replay-symbol-map``)."""
        if symbol in self.skipped_symbols:
            return False
        if self.symbols and symbol not in self.symbols:
            return False
        if symbol not in self.states:
            try:
                parse_channel(f"book.{symbol}")
            except RequestError:
                return False
        return True

    def apply(self, item: Event | Problem) -> tuple[list[Action], list[Problem]]:
        """Apply one event (or a reader's problem): the actions to take, in order, and
        the problems to log (each (kind, symbol) is returned the first time only)."""
        actions: list[Action] = []
        fresh: list[Problem] = []
        if isinstance(item, Problem):
            self._problem(item, fresh)
            if item.symbol is not None and item.path in self.book_paths:
                # A lost or misplaced book row leaves a hole: that book cannot be trusted.
                if self.known(item.symbol):
                    self._stale(item.symbol, actions)
            return actions, fresh
        symbol = item.symbol
        if not self.known(symbol):
            self.skipped_symbols.add(symbol)
            return actions, fresh
        if isinstance(item, BookEvent):
            self._book(item, actions, fresh)
        elif isinstance(item, TopEvent):
            self._top(item, actions, fresh)
        else:
            self._trades(item, actions, fresh)
        return actions, fresh

    def note_book_file(self, path: str) -> None:
        """Tell the model ``path`` holds the rows its books are built from: a row of it
        that cannot be read leaves a hole, so its symbol goes stale."""
        self.book_paths.add(path)

    def _state(self, symbol: str) -> _Symbol:
        st = self.states.get(symbol)
        if st is None:
            st = self.states[symbol] = _Symbol()
            self.engine.add_symbol(symbol)
        return st

    def _problem(self, problem: Problem, fresh: list[Problem]) -> None:
        if problem.local_ns <= self.counted_until:
            return
        self.problems[problem.kind] = self.problems.get(problem.kind, 0) + 1
        key = (problem.kind, problem.symbol)
        if key not in self.seen:
            self.seen.add(key)
            fresh.append(problem)

    def _report(self, kind: str, event: Event, detail: str, fresh: list[Problem]) -> None:
        where = f"{event.path}:{event.line}"
        self._problem(
            Problem(
                kind, event.symbol, event.path, event.line, f"{where}: {detail}", event.local_ns
            ),
            fresh,
        )

    def _stale(self, symbol: str, actions: list[Action]) -> None:
        st = self._state(symbol)
        if st.serving:
            st.serving = False
            actions.append(Invalidate(symbol))

    def _crossed(self, symbol: str) -> tuple[str, str] | None:
        book = self.engine.symbols[symbol].book
        bid, ask = book.best_bid(), book.best_ask()
        if bid is not None and ask is not None and Decimal(bid[0]) >= Decimal(ask[0]):
            return bid[0], ask[0]
        return None

    def _restore(self, symbol: str, actions: list[Action]) -> None:
        state = self.engine.symbols[symbol]
        # A new snapshot is a new seq: a client resuming from before it must not
        # find itself "up to date" with a book that was replaced.
        state.book_seq += 1
        actions.append(Restore(self.engine.export(symbol)))

    def _book(self, ev: BookEvent, actions: list[Action], fresh: list[Problem]) -> None:
        symbol = ev.symbol
        st = self._state(symbol)
        state = self.engine.symbols[symbol]
        if ev.snapshot:
            book = state.book
            if not st.in_snapshot:
                book.clear()
            for side, price, amount in ev.levels:
                if amount.startswith("-"):
                    self._report(
                        "invalid_amount", ev, f"negative amount {amount} at {price}", fresh
                    )
                    continue
                book.apply(side, price, amount)
            st.in_snapshot = True
            st.has_book = True
            crossed = self._crossed(symbol)
            if crossed is not None:
                self._report(
                    "crossed", ev, f"snapshot crossed: bid {crossed[0]} >= ask {crossed[1]}", fresh
                )
                self._stale(symbol, actions)
                return
            st.serving = True
            self._restore(symbol, actions)
            return
        st.in_snapshot = False
        if not st.has_book:
            self._report("before_snapshot", ev, "book update before any snapshot (skipped)", fresh)
            return
        if not st.serving:
            st.dropped += len(ev.levels)
            return
        ts = ev.ts_ns
        updates = []
        for side, price, amount in ev.levels:
            if amount.startswith("-"):
                self._report("invalid_amount", ev, f"negative amount {amount} at {price}", fresh)
                st.dropped += len(ev.levels)
                self._stale(symbol, actions)
                return
            updates.append(BookUpdate(side, price, amount, ts))  # type: ignore[arg-type]
        self.engine.apply_book(symbol, updates)
        crossed = self._crossed(symbol)
        if crossed is not None:
            self._report(
                "crossed",
                ev,
                f"book crossed after an update: bid {crossed[0]} >= ask {crossed[1]}",
                fresh,
            )
            self._stale(symbol, actions)
            return
        self.updates += len(updates)
        actions.append(Publish(symbol, updates, []))

    def _top(self, ev: TopEvent, actions: list[Action], fresh: list[Problem]) -> None:
        symbol = ev.symbol
        st = self._state(symbol)
        state = self.engine.symbols[symbol]
        if self.incremental:
            if not st.serving:
                return
            book = state.book
            if book.bids(ev.depth) != ev.bids or book.asks(ev.depth) != ev.asks:
                self._report(
                    "snapshot_mismatch",
                    ev,
                    "book_snapshot differs from the incremental book",
                    fresh,
                )
                self._stale(symbol, actions)
            return
        # No incremental book: the top N is the book, served as changes.
        book = state.book
        if not st.serving:
            book.clear()
            book.load(ev.bids, ev.asks)
            st.has_book = True
            if self._crossed(symbol) is not None:
                self._report("crossed", ev, "book_snapshot crossed", fresh)
                return
            st.serving = True
            self._restore(symbol, actions)
            return
        updates: list[BookUpdate] = []
        ts = ev.ts_ns
        for side, levels, now in (("bid", ev.bids, book.bids()), ("ask", ev.asks, book.asks())):
            new = dict(levels)
            for price, _ in now:
                if price not in new:
                    updates.append(BookUpdate(side, price, "0", ts))  # type: ignore[arg-type]
            old = dict(now)
            for price, amount in levels:
                if old.get(price) != amount:
                    updates.append(BookUpdate(side, price, amount, ts))  # type: ignore[arg-type]
        if not updates:
            return
        self.engine.apply_book(symbol, updates)
        crossed = self._crossed(symbol)
        if crossed is not None:
            self._report(
                "crossed", ev, f"book_snapshot crossed: bid {crossed[0]} >= ask {crossed[1]}", fresh
            )
            self._stale(symbol, actions)
            return
        self.updates += len(updates)
        actions.append(Publish(symbol, updates, []))

    def _trades(self, ev: TradeEvent, actions: list[Action], fresh: list[Problem]) -> None:
        symbol = ev.symbol
        st = self._state(symbol)
        raw: list[RawTrade] = []
        for price, amount, side, ts in ev.trades:
            if side == "unknown":
                self._report("unknown_side", ev, "trade without a taker side (not served)", fresh)
                continue
            raw.append((price, amount, side, ts))
        if not raw:
            return
        self.engine.apply_trades(symbol, raw)
        if st.serving:
            self.trades += len(raw)
            actions.append(Publish(symbol, [], raw))
        # Not serving: the trades are in the engine's recent trades, which the next
        # snapshot restores (clients see them in the trades snapshot).

    def serving(self) -> list[str]:
        """The symbols whose book may be served now."""
        return [s for s, st in self.states.items() if st.serving]
