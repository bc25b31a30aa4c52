"""Per-channel integrity of the SDK: the SYNCING / LIVE / STALE state machine (Sans-I/O).

Theory of operation
-------------------
Rule 1: every state transition of a channel lives in :data:`TRANSITIONS`. The rest of
this module only *classifies* what arrived into a :class:`Signal` and carries out the
:class:`Action` the table names. No socket, no event loop, no clock: the I/O layer
(:mod:`tickwire.client.connection`) feeds bytes and the current time in, and takes
events and requests out -- the same shape as the websockets and h11 cores::

    proto.receive_data(payload, now_ns)   # one server message
    proto.events_received()               # -> verified data and status changes
    proto.data_to_send()                  # -> resync requests to write

Each channel holds a *position*: the ``seq`` up to which its local state (book, trade
stream, ticker) is known to be exact, or None when only a snapshot can help. A message
*chains* when its ``prev_seq`` equals the position. A book message is applied only if it
chains, and is accepted only if the book's CRC32 equals the message's ``checksum`` after
applying it -- computed by :class:`tickwire.book.Book`, the very code the server uses.

At most one subscribe request per channel is ever in flight (``awaiting`` holds its id).
The server answers a subscribe with its ``ack``, then the snapshot or the replayed
history, then live data, all in order on one connection. Hence:

* a channel message that arrives while ``awaiting`` is set was sent before the server
  saw the request: it is a *leftover*, discarded and counted, never a second gap;
* when the ack comes and the channel holds a position in the ack's epoch, the server
  has queued the replay from exactly that position (possibly empty): the channel is
  LIVE again and its next message must chain; otherwise a snapshot must come next.

That is why a resync happens once and cannot turn into a resubscribe storm: a gap sends
one resubscribe with ``epoch`` and ``since`` (the server replays its history, or sends a
fresh snapshot marked ``resumed: false`` when the history is gone); a bad checksum sends
one resubscribe without ``since`` (the local book is wrong, only a snapshot heals it);
everything already in flight is dropped until the ack.

The table, reachable pairs only (any other pair is a bug and raises AssertionError)::

    state     signal          next      action
    SYNCING   LEFTOVER        SYNCING   DISCARD
    STALE     LEFTOVER        STALE     DISCARD
    SYNCING   ACK_RESUME      LIVE      -           the replay from the position follows
    STALE     ACK_RESUME      LIVE      -
    SYNCING   ACK_SNAPSHOT    SYNCING   -           a snapshot follows
    STALE     ACK_SNAPSHOT    STALE     -
    any       SNAPSHOT        LIVE      LOAD
    LIVE      CHAINED         LIVE      APPLY
    any       GAP             STALE     RESYNC      resume from the position
    LIVE      BAD_CHECKSUM    STALE     RESNAPSHOT  forget the position, ask a snapshot
    any       DISCONNECTED    SYNCING   -           the reconnect resubscribes
    any       FAILED          SYNCING   -           the server refused the subscribe

Epochs: a snapshot in a different epoch than the channel's resets the channel (its
trade history is cleared and ``epoch_changes`` counts it); sequence numbers of two
epochs are never compared.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Any, Final, TypeVar

import msgspec

from ..book import Book
from ..protocol import (
    Ack,
    Delta,
    Error,
    Heartbeat,
    Message,
    Orders,
    OrderUpdate,
    Pong,
    Snapshot,
    Ticker,
    Trade,
    Trades,
    parse_channel,
)
from .events import (
    BookChanged,
    ChannelStatus,
    Event,
    OrdersReceived,
    SyncState,
    TickerChanged,
    TradesReceived,
)

__all__ = [
    "TRANSITIONS",
    "Action",
    "ChannelCounters",
    "ChannelSync",
    "ClientProtocol",
    "LagWindow",
    "Signal",
    "SyncState",
]

#: Verified trades (order events) kept per trades (orders) channel.
RECENT_TRADES = 100

#: Lag samples kept per channel (the p50 / p99 window).
LAG_WINDOW = 4096


class Signal(enum.Enum):
    """What a received message (or a connection event) means for one channel."""

    LEFTOVER = "leftover"  #: sent before the server saw our pending subscribe
    ACK_RESUME = "ack_resume"  #: our subscribe is acked; the replay from our position follows
    ACK_SNAPSHOT = "ack_snapshot"  #: our subscribe is acked; a snapshot follows
    SNAPSHOT = "snapshot"  #: the full state of the channel
    CHAINED = "chained"  #: ``prev_seq`` equals our position
    GAP = "gap"  #: a message or heartbeat that does not chain
    BAD_CHECKSUM = "bad_checksum"  #: the book's CRC32 differs after applying
    DISCONNECTED = "disconnected"  #: the connection is gone
    FAILED = "failed"  #: the server answered our subscribe with an error


class Action(enum.Enum):
    """What the state machine does with the message that caused a transition."""

    NONE = "none"
    DISCARD = "discard"  #: drop the message (counted in ``discarded``)
    LOAD = "load"  #: replace the local state with the snapshot
    APPLY = "apply"  #: apply the message on top of the local state
    RESYNC = "resync"  #: ask once to resume from the position (or a snapshot if none)
    RESNAPSHOT = "resnapshot"  #: forget the position and ask once for a snapshot


_S = SyncState
_G = Signal
_A = Action

#: ``(state, signal) -> (next state, action)``: every transition a channel can make.
TRANSITIONS: Final[dict[tuple[SyncState, Signal], tuple[SyncState, Action]]] = {
    (_S.SYNCING, _G.LEFTOVER): (_S.SYNCING, _A.DISCARD),
    (_S.STALE, _G.LEFTOVER): (_S.STALE, _A.DISCARD),
    (_S.SYNCING, _G.ACK_RESUME): (_S.LIVE, _A.NONE),
    (_S.STALE, _G.ACK_RESUME): (_S.LIVE, _A.NONE),
    (_S.SYNCING, _G.ACK_SNAPSHOT): (_S.SYNCING, _A.NONE),
    (_S.STALE, _G.ACK_SNAPSHOT): (_S.STALE, _A.NONE),
    (_S.SYNCING, _G.SNAPSHOT): (_S.LIVE, _A.LOAD),
    (_S.STALE, _G.SNAPSHOT): (_S.LIVE, _A.LOAD),
    (_S.LIVE, _G.SNAPSHOT): (_S.LIVE, _A.LOAD),
    (_S.LIVE, _G.CHAINED): (_S.LIVE, _A.APPLY),
    (_S.SYNCING, _G.GAP): (_S.STALE, _A.RESYNC),
    (_S.STALE, _G.GAP): (_S.STALE, _A.RESYNC),
    (_S.LIVE, _G.GAP): (_S.STALE, _A.RESYNC),
    (_S.LIVE, _G.BAD_CHECKSUM): (_S.STALE, _A.RESNAPSHOT),
    (_S.SYNCING, _G.DISCONNECTED): (_S.SYNCING, _A.NONE),
    (_S.STALE, _G.DISCONNECTED): (_S.SYNCING, _A.NONE),
    (_S.LIVE, _G.DISCONNECTED): (_S.SYNCING, _A.NONE),
    (_S.SYNCING, _G.FAILED): (_S.SYNCING, _A.NONE),
    (_S.STALE, _G.FAILED): (_S.SYNCING, _A.NONE),
}


@dataclass(slots=True)
class ChannelCounters:
    """Integrity and traffic counters of one channel (all monotonic).

    Attributes:
        messages: data messages applied (snapshots, deltas, trades, tickers).
        updates: book level updates or trades applied.
        snapshots: snapshots loaded (first subscribe, resnapshot, epoch change,
            history gone).
        gaps: messages or heartbeats whose sequence did not chain to the local one.
        checksum_failures: book messages whose CRC32 differed after applying.
        resyncs: resubscribe requests sent because of a gap or checksum failure
            (at most one in flight per channel).
        discarded: messages dropped while a resync was in flight (leftovers of the
            broken stream; their content comes back through the replay or snapshot).
        epoch_changes: snapshots that came from a different server epoch (a restart).
        trades_missed: trades (on ``orders``: order events) the server could no longer
            replay after a disconnect or gap: an explicit, counted hole (zero when
            resume worked).
        failures: subscribe requests the server refused with an error.
    """

    messages: int = 0
    updates: int = 0
    snapshots: int = 0
    gaps: int = 0
    checksum_failures: int = 0
    resyncs: int = 0
    discarded: int = 0
    epoch_changes: int = 0
    trades_missed: int = 0
    failures: int = 0

    def as_dict(self) -> dict[str, int]:
        """Return the counters as a plain dict (for logs, JSON, tests)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


class LagWindow:
    """The last :data:`LAG_WINDOW` lags of a channel, in nanoseconds.

    Lag is the receive time minus the engine's event time ``ts``: it includes the
    server's batching tick and, across machines, any clock offset between them.
    """

    __slots__ = ("samples",)

    def __init__(self, size: int = LAG_WINDOW) -> None:
        self.samples: deque[int] = deque(maxlen=size)

    def add(self, lag_ns: int) -> None:
        """Record one lag sample."""
        self.samples.append(lag_ns)

    def percentile(self, q: float) -> float | None:
        """Return the ``q`` quantile (0..1) in milliseconds, or None without samples."""
        if not self.samples:
            return None
        ordered = sorted(self.samples)
        index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
        return ordered[index] / 1e6


class ChannelSync:
    """The local state and integrity bookkeeping of one subscribed channel.

    Read :attr:`state` before trusting the data: only LIVE means verified and current.
    """

    __slots__ = (
        "name",
        "kind",
        "symbol",
        "state",
        "position",
        "epoch",
        "awaiting",
        "book",
        "trades",
        "orders",
        "ticker",
        "counters",
        "lag",
    )

    def __init__(self, name: str) -> None:
        kind, symbol = parse_channel(name)
        self.name = name
        self.kind = kind
        self.symbol = symbol
        self.state = SyncState.SYNCING
        #: The seq up to which the local state is exact; None: a snapshot is needed.
        self.position: int | None = None
        #: The server epoch ``position`` belongs to.
        self.epoch: str | None = None
        #: Id of the subscribe request in flight for this channel, if any.
        self.awaiting: int | None = None
        #: The local book (book channels); the same class as the server's engine uses.
        self.book = Book()
        self.trades: deque[Trade] = deque(maxlen=RECENT_TRADES)
        #: The user's recent order events (``orders.<USER>`` channels).
        self.orders: deque[OrderUpdate] = deque(maxlen=RECENT_TRADES)
        self.ticker: Ticker | None = None
        self.counters = ChannelCounters()
        self.lag = LagWindow()

    @property
    def live(self) -> bool:
        """True when every message so far chained and verified."""
        return self.state is SyncState.LIVE

    def __repr__(self) -> str:
        return f"<ChannelSync {self.name} {self.state.value} seq={self.position}>"


_ChannelMessage = Snapshot | Delta | Trades | Orders | Ticker | Heartbeat

# The protocol's decoders, taking any buffer: picows hands frames over as memoryviews.
# Binary frames carry the same messages as msgpack maps (tickwire.codec).
_decoder = msgspec.json.Decoder(Message)
_msgpack_decoder = msgspec.msgpack.Decoder(Message)


class ClientProtocol:
    """The SDK's Sans-I/O core: every channel's state machine and the request ids.

    The I/O layer calls :meth:`connect_request` on each new connection, feeds every text
    message to :meth:`receive_data`, then writes :meth:`data_to_send`, delivers
    :meth:`events_received` and resolves :meth:`replies_received`; it calls
    :meth:`connection_lost` when the link ends.
    """

    def __init__(self) -> None:
        self.channels: dict[str, ChannelSync] = {}
        #: The epoch of the server, as last acknowledged.
        self.epoch: str | None = None
        #: Messages that could not be decoded (ignored; the next one exposes any gap).
        self.malformed = 0
        self._next_id = 1
        self._events: list[Event] = []
        self._replies: list[Ack | Error] = []
        self._resync: dict[str, None] = {}
        self._requests: dict[int, list[str]] = {}
        #: Ids of the login requests not answered yet (the I/O layer acts on the replies).
        self.logins: set[int] = set()

    # -- channels and requests ---------------------------------------------------------

    def add_channels(self, names: Iterable[str]) -> list[str]:
        """Start tracking ``names`` (in SYNCING); return the ones that were new.

        Raises:
            RequestError: a name is not ``kind.SYMBOL`` (``bad_channel``).
        """
        new = []
        for name in names:
            if name not in self.channels:
                self.channels[name] = ChannelSync(name)
                new.append(name)
        return new

    def remove_channels(self, names: Iterable[str]) -> tuple[int, bytes]:
        """Stop tracking ``names``; return the unsubscribe request ``(id, payload)``."""
        names = [n for n in names if n in self.channels]
        for name in names:
            del self.channels[name]
            self._resync.pop(name, None)
        rid = self._new_id()
        return rid, msgspec.json.encode({"op": "unsubscribe", "channels": names, "id": rid})

    def subscribe_request(self, names: Iterable[str] | None = None) -> tuple[int, bytes] | None:
        """Build one subscribe request for ``names`` (default: every channel).

        Each channel that holds a position asks to resume from it (``epoch`` + ``since``);
        the others ask for a snapshot. Returns None when there is nothing to subscribe.
        """
        chosen = list(self.channels) if names is None else [n for n in names if n in self.channels]
        if not chosen:
            return None
        rid = self._new_id()
        since: dict[str, int] = {}
        for name in chosen:
            ch = self.channels[name]
            ch.awaiting = rid
            self._resync.pop(name, None)
            if ch.position is not None and ch.epoch is not None and ch.epoch == self.epoch:
                since[name] = ch.position
        self._requests[rid] = chosen
        request: dict[str, Any] = {"op": "subscribe", "channels": chosen, "id": rid}
        if since:
            request["epoch"] = self.epoch
            request["since"] = since
        return rid, msgspec.json.encode(request)

    def login_request(self, token: str) -> tuple[int, bytes]:
        """Build a ``login`` request for ``token`` (its id is kept in :attr:`logins`)."""
        rid = self._new_id()
        self.logins.add(rid)
        return rid, msgspec.json.encode({"op": "login", "token": token, "id": rid})

    def connect_request(self) -> tuple[int, bytes] | None:
        """The request that (re)subscribes every channel on a new connection."""
        return self.subscribe_request()

    def connection_lost(self) -> None:
        """Mark every channel SYNCING; in-flight requests are void on a new connection."""
        self._requests.clear()
        self._resync.clear()
        self.logins.clear()
        for ch in self.channels.values():
            ch.awaiting = None
            self._signal(ch, Signal.DISCONNECTED, "connection lost")

    def _new_id(self) -> int:
        rid = self._next_id
        self._next_id += 1
        return rid

    # -- input -------------------------------------------------------------------------

    def receive_data(self, data: bytes | memoryview, now_ns: int, binary: bool = False) -> None:
        """Process one server message (the payload of one text or binary frame).

        Args:
            data: the JSON payload (text frame), or the msgpack payload (binary frame,
                on a connection that negotiated ``tickwire.v1.msgpack``); already
                inflated when the frame was compressed.
            now_ns: the current wall-clock time in ns (``time.time_ns()``), for lag.
            binary: ``data`` came in a binary frame (msgpack).
        """
        try:
            msg: Message = (_msgpack_decoder if binary else _decoder).decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            self.malformed += 1
            return
        if isinstance(msg, Ack | Error):
            self._reply(msg)
        elif not isinstance(msg, Pong):
            ch = self.channels.get(msg.ch)
            if ch is not None:  # else: a leftover of an unsubscribed channel
                self._receive(ch, msg, now_ns)

    def events_received(self) -> list[Event]:
        """Return (and forget) the events produced since the last call."""
        events, self._events = self._events, []
        return events

    def replies_received(self) -> list[Ack | Error]:
        """Return (and forget) the acks and errors received since the last call."""
        replies, self._replies = self._replies, []
        return replies

    def data_to_send(self) -> list[bytes]:
        """Return the requests to write now: at most one resubscribe for all resyncs."""
        if not self._resync:
            return []
        names = list(self._resync)
        self._resync.clear()
        out = self.subscribe_request(names)
        return [] if out is None else [out[1]]

    # -- replies -----------------------------------------------------------------------

    def _reply(self, msg: Ack | Error) -> None:
        self._replies.append(msg)
        if isinstance(msg, Ack):
            if msg.op == "subscribe":
                self.epoch = msg.epoch
            if not isinstance(msg.id, int):
                return
            for name in self._requests.pop(msg.id, ()):
                ch = self.channels.get(name)
                if ch is None or ch.awaiting != msg.id:
                    continue
                ch.awaiting = None
                if ch.position is not None and ch.epoch == msg.epoch:
                    self._signal(ch, Signal.ACK_RESUME, f"resuming after seq {ch.position}")
                else:
                    self._signal(ch, Signal.ACK_SNAPSHOT, "waiting for a snapshot")
        elif isinstance(msg.id, int):
            for name in self._requests.pop(msg.id, ()):
                ch = self.channels.get(name)
                if ch is not None and ch.awaiting == msg.id:
                    ch.awaiting = None
                    ch.counters.failures += 1
                    self._signal(ch, Signal.FAILED, f"subscribe refused: {msg.code}")

    # -- channel messages --------------------------------------------------------------

    def _receive(self, ch: ChannelSync, msg: _ChannelMessage, now_ns: int) -> None:
        if ch.awaiting is not None or ch.name in self._resync:
            # Sent before the server sees our (pending or queued) resubscribe.
            self._signal(ch, Signal.LEFTOVER, "")
            return
        if isinstance(msg, Snapshot):
            self._snapshot(ch, msg, now_ns)
            return
        if isinstance(msg, Heartbeat):
            if msg.seq != ch.position or ch.state is not SyncState.LIVE:
                ch.counters.gaps += 1
                self._signal(ch, Signal.GAP, f"heartbeat seq {msg.seq} != local {ch.position}")
            return
        if msg.prev_seq != ch.position or ch.state is not SyncState.LIVE:
            ch.counters.gaps += 1
            self._signal(ch, Signal.GAP, f"prev_seq {msg.prev_seq} != local {ch.position}")
            return
        if isinstance(msg, Trades | Orders) and not _ids_consistent(msg):
            ch.counters.gaps += 1
            self._signal(ch, Signal.GAP, f"event ids do not cover ({msg.prev_seq}, {msg.seq}]")
            return
        self._signal(ch, Signal.CHAINED, "")
        counters = ch.counters
        counters.messages += 1
        ch.position = msg.seq
        lag = ch.lag
        if isinstance(msg, Delta):
            ch.book.apply_updates(msg.updates)
            counters.updates += len(msg.updates)
            for u in msg.updates:
                lag.add(now_ns - u.ts)
            if ch.book.checksum() != msg.checksum:
                counters.checksum_failures += 1
                self._signal(ch, Signal.BAD_CHECKSUM, f"checksum mismatch at seq {msg.seq}")
                return
            self._events.append(BookChanged(ch.name, ch.symbol, msg.seq, msg.updates))
        elif isinstance(msg, Trades):
            trades = _take(ch, msg.trades, ch.trades, now_ns)
            self._events.append(TradesReceived(ch.name, ch.symbol, msg.seq, trades))
        elif isinstance(msg, Orders):
            orders = _take(ch, msg.orders, ch.orders, now_ns)
            self._events.append(OrdersReceived(ch.name, ch.symbol, msg.seq, orders))
        else:
            ch.ticker = msg
            counters.updates += 1
            if msg.ts:
                lag.add(now_ns - msg.ts)
            self._events.append(TickerChanged(ch.name, ch.symbol, msg))

    def _snapshot(self, ch: ChannelSync, msg: Snapshot, now_ns: int) -> None:
        # What the channel held before: a same-epoch position lets trades fill the hole.
        before = ch.position if ch.epoch == msg.epoch else None
        if ch.epoch is not None and ch.epoch != msg.epoch:
            ch.counters.epoch_changes += 1
            ch.trades.clear()
            ch.orders.clear()
            reason = f"new server epoch {msg.epoch}: reset from snapshot at seq {msg.seq}"
        else:
            reason = f"snapshot at seq {msg.seq}"
        self._signal(ch, Signal.SNAPSHOT, reason)
        ch.epoch = msg.epoch
        ch.position = msg.seq
        counters = ch.counters
        counters.snapshots += 1
        counters.messages += 1
        if ch.kind == "book":
            ch.book.load(msg.bids or (), msg.asks or ())
            if msg.checksum is not None and ch.book.checksum() != msg.checksum:
                counters.checksum_failures += 1
                self._signal(ch, Signal.BAD_CHECKSUM, f"snapshot checksum mismatch at {msg.seq}")
                return
            self._events.append(BookChanged(ch.name, ch.symbol, msg.seq, [], snapshot=True))
        elif ch.kind in ("trades", "orders"):
            self._history_snapshot(ch, msg, before)
        elif msg.ticker is not None:
            ch.ticker = msg.ticker
            self._events.append(TickerChanged(ch.name, ch.symbol, msg.ticker))

    def _history_snapshot(self, ch: ChannelSync, msg: Snapshot, before: int | None) -> None:
        """Trades or order events in a snapshot (see :func:`_unseen`)."""
        first = before is None
        if ch.kind == "trades":
            trades = _unseen(ch, msg.trades or [], before, msg.seq)
            ch.trades.extend(trades)
            if trades:
                self._events.append(TradesReceived(ch.name, ch.symbol, msg.seq, trades, first))
        else:
            orders = _unseen(ch, msg.orders or [], before, msg.seq)
            ch.orders.extend(orders)
            if orders:
                self._events.append(OrdersReceived(ch.name, ch.symbol, msg.seq, orders, first))

    # -- the table ---------------------------------------------------------------------

    def _signal(self, ch: ChannelSync, signal: Signal, reason: str) -> None:
        """Run one transition of :data:`TRANSITIONS` and its request-side action."""
        try:
            state, action = TRANSITIONS[(ch.state, signal)]
        except KeyError:
            raise AssertionError(f"{ch.name}: no transition for {ch.state} on {signal}") from None
        if action is Action.DISCARD:
            ch.counters.discarded += 1
        elif action is Action.RESNAPSHOT:
            ch.position = None
            self._request_resync(ch)
        elif action is Action.RESYNC:
            self._request_resync(ch)
        if state is not ch.state:
            ch.state = state
            self._events.append(ChannelStatus(ch.name, ch.symbol, state, reason or signal.value))

    def _request_resync(self, ch: ChannelSync) -> None:
        # One request per channel in flight: the caller only gets here with awaiting
        # None (a message after the ack), so this never stacks requests.
        if ch.name not in self._resync:
            ch.counters.resyncs += 1
            self._resync[ch.name] = None


_E = TypeVar("_E", Trade, OrderUpdate)


def _take(ch: ChannelSync, events: list[_E], kept: deque[_E], now_ns: int) -> list[_E]:
    """Keep verified trades or order events, count them and their lag; return them."""
    kept.extend(events)
    ch.counters.updates += len(events)
    lag = ch.lag
    for e in events:
        lag.add(now_ns - e.ts)
    return events


def _unseen(ch: ChannelSync, recent: list[_E], before: int | None, seq: int) -> list[_E]:
    """The events of a snapshot the application has not seen (``id == seq`` streams).

    On a first subscription (or a new epoch, ``before`` None) all of them: history.
    After a failed resume (the server's history is gone) those after ``before``; the
    ones the snapshot no longer holds are counted as an explicit hole.
    """
    if before is None:
        return recent
    missed = [e for e in recent if e.id > before]
    first = missed[0].id if missed else seq + 1
    ch.counters.trades_missed += max(0, first - before - 1)
    ch.counters.updates += len(missed)
    return missed


def _ids_consistent(msg: Trades | Orders) -> bool:
    """Trades and order events carry ``id == seq``: the ids must be the whole range."""
    events = msg.trades if isinstance(msg, Trades) else msg.orders
    return (
        len(events) == msg.seq - msg.prev_seq
        and bool(events)
        and events[0].id == msg.prev_seq + 1
        and events[-1].id == msg.seq
    )
