"""The NATS bus: subjects, message schemas, and the follower state machine (Sans-I/O).

Subjects (``PREFIX`` is ``tickwire`` unless ``--bus-prefix`` says otherwise)::

    PREFIX.md._tick         one BusBundle per publisher tick: the tick's BusBatch of each
                            symbol, a BusState of one symbol now and then, and a
                            BusHeartbeat every 250 ms, in the order they were made
    PREFIX.snapshot.<SYM>   request/reply: the publisher answers with its StateSnapshot

One message per tick rather than one per symbol: a follower's cost is mostly per bus
message (nats-py's parser, one decode), so bundling a tick's ten symbols cut a relaying
gateway's ingest by about half (``docs/benchmarks.md``). A symbol can not start with
"_", so ``_tick`` never collides with a symbol's name.

Payloads are msgpack (msgspec): a batch is an array ``["b", epoch, symbol, prev_book,
book, prev_trade, trade, delta_json, trades_json, ticker]``. It carries the publisher
engine's own sequence numbers, and its updates and trades (with their event times) as
the ``delta`` and ``trades`` messages the publisher encoded for clients -- byte for byte
what a follower applying the batch would build, so a gateway *relays* them
(:meth:`~tickwire.hub.Hub.relay`) instead of decoding, applying and re-encoding every
update, and decodes them only when its book is read. One copy of each update travels:
the client's JSON (an earlier format also sent them as msgpack: 159 bus bytes per
update instead of 107).
A ``BusState`` (``["s", StateSnapshot]``) is the publisher's complete state of one
symbol between two batches: a follower whose chain is intact adopts it in place of the
batches it deferred (so relayed updates are never applied at all unless a snapshot is
read), and one with a hole restores from it without asking.

The follower (:class:`BusFollower`) keeps, per symbol, one of three states::

    state       on a batch that chains     on a hole (gap, heartbeat or state ahead)
    LIVE        apply                      -> RECOVERING (invalidate, ask a snapshot)
    SUSPECT     revalidate, apply, LIVE    -> RECOVERING
    RECOVERING  buffer                     buffer; a snapshot (reply or BusState)
                                           restores, then the buffer is applied from
                                           the snapshot's seqs on

SUSPECT is entered on a lost bus connection: the book may be missing updates, so it
is not served (no heartbeats either), but if the first batch or heartbeat after the
reconnect chains, nothing was lost and clients simply continue. Duplicates (batches at
or below the local seqs, e.g. in flight while a snapshot was taken) are dropped. A batch
or heartbeat in another epoch means the publisher restarted: every symbol recovers from
a new snapshot in that epoch. Snapshot replies in another epoch are ignored (asked again):
only the stream itself may change the epoch.
"""

from __future__ import annotations

import enum
import logging
from collections import deque

import msgspec

from ..engine import Engine, LeaderBatch, StateSnapshot
from ..protocol import BookUpdate, Delta, Ticker, Trades, delta_updates, encode, trade_tuples
from . import Batch, RawTrade, Sink

__all__ = [
    "MAX_BUNDLE_BYTES",
    "TICK_SUBJECT",
    "BusBatch",
    "BusBundle",
    "BusFollower",
    "BusHeartbeat",
    "BusState",
    "bundles",
    "FollowState",
    "decode_bus",
    "decode_snapshot",
    "encode_bus",
    "leader_batch",
    "md_subject",
    "relayed_batch",
    "snapshot_subject",
]

log = logging.getLogger("tickwire.bus")

#: The pseudo-symbol of the per-tick bundles on ``PREFIX.md.*``.
TICK_SUBJECT = "_tick"

#: Batches buffered per recovering symbol; older ones are dropped (the snapshot that
#: ends the recovery is newer than any of them anyway).
MAX_BUFFERED = 10_000


#: msgpack nil: the ``ticker`` of a batch from a publisher that sends none.
_NIL = msgspec.Raw(b"\xc0")


class BusBatch(msgspec.Struct, array_like=True, tag="b", frozen=True, gc=False):
    """One engine batch of one symbol: updates ``(prev_book, book]``, trades
    ``(prev_trade, trade]`` (trade ``i`` has id ``prev_trade + 1 + i``).

    ``book_json`` and ``trades_json`` are the ``delta`` and ``trades`` messages of the
    batch as the publisher encoded them for clients (empty: no updates, no trades); they
    are also the only copy of the updates and trades on the bus, decoded only when asked
    for (:meth:`book_updates`, :meth:`raw_trades`). The publisher's ticker after the
    batch (its ``seq`` fields 0: a gateway numbers its own tickers) stays msgpack until
    :meth:`leader_ticker`. A relaying gateway never decodes most of them. Build one with
    :func:`leader_batch`.
    """

    epoch: str
    symbol: str
    prev_book: int
    book: int
    prev_trade: int
    trade: int
    book_json: bytes = b""
    trades_json: bytes = b""
    ticker: msgspec.Raw = _NIL

    def book_updates(self) -> list[BookUpdate]:
        """Decode the book updates (from the ``delta`` message)."""
        return delta_updates(self.book_json)

    def raw_trades(self) -> list[RawTrade]:
        """Decode the trades, without their ids (from the ``trades`` message)."""
        return trade_tuples(self.trades_json)

    def event_time(self) -> int:
        """The first book update's ``ts`` (0: none); decodes the updates."""
        updates = self.book_updates()
        return updates[0].ts if updates else 0

    def size(self) -> int:
        """Book updates in the batch."""
        return self.book - self.prev_book

    def leader_ticker(self) -> Ticker | None:
        """Decode the publisher's ticker after this batch (None: it sent none)."""
        ticker: Ticker | None = _ticker_decoder.decode(self.ticker)
        return ticker


class BusHeartbeat(msgspec.Struct, array_like=True, tag="h", frozen=True):
    """The publisher's epoch, ``(book_seq, trade_seq)`` of every symbol, and the
    symbols it does not serve now (``stale``: its source sent something it rejected;
    followers stop serving them until the state that heals them comes in stream).

    Its symbols are the leader's: a follower of all of them (a gateway without
    ``--symbols``) adds the ones it does not know.
    """

    epoch: str
    seqs: dict[str, tuple[int, int]]
    stale: list[str] = []


class BusState(msgspec.Struct, array_like=True, tag="s", frozen=True):
    """The publisher's complete state of one symbol, sent in stream between batches."""

    state: StateSnapshot


class BusBundle(msgspec.Struct, array_like=True, tag="t", frozen=True):
    """Bus messages of one publisher tick, in order, each one encoded (:func:`bundles`)."""

    messages: list[msgspec.Raw]


#: Bundle payloads are cut at about this size (NATS refuses payloads over its
#: ``max_payload``, 1 MiB by default); a message is never split.
MAX_BUNDLE_BYTES = 256 << 10


def bundles(messages: list[bytes]) -> list[bytes]:
    """Pack encoded bus messages into as few ``BusBundle`` payloads as the size allows."""
    out: list[bytes] = []
    group: list[msgspec.Raw] = []
    size = 0
    for data in messages:
        if group and size + len(data) > MAX_BUNDLE_BYTES:
            out.append(_encoder.encode(BusBundle(group)))
            group, size = [], 0
        group.append(msgspec.Raw(data))
        size += len(data)
    if group:
        out.append(_encoder.encode(BusBundle(group)))
    return out


_encoder = msgspec.msgpack.Encoder()
_ticker_decoder = msgspec.msgpack.Decoder(Ticker | None)
_bus_decoder = msgspec.msgpack.Decoder(BusBatch | BusHeartbeat | BusState | BusBundle)
_snapshot_decoder = msgspec.msgpack.Decoder(StateSnapshot)


def encode_bus(message: BusBatch | BusHeartbeat | BusState | BusBundle | StateSnapshot) -> bytes:
    """Encode one bus payload (msgpack)."""
    return _encoder.encode(message)


def decode_bus(data: bytes | msgspec.Raw) -> BusBatch | BusHeartbeat | BusState | BusBundle:
    """Decode one ``PREFIX.md.*`` payload (or one message of a bundle).

    Raises:
        msgspec.DecodeError: not a tickwire bus message.
    """
    message: BusBatch | BusHeartbeat | BusState | BusBundle = _bus_decoder.decode(data)
    return message


def leader_batch(
    engine: Engine, symbol: str, updates: list[BookUpdate], trades: list[RawTrade]
) -> BusBatch:
    """Apply one batch to the leading ``engine`` and return it as a bus batch.

    The ``delta`` and ``trades`` messages are built exactly as a gateway's hub builds
    them for one batch (``Hub._flush_book`` / ``_flush_trades``), so followers can
    relay them unchanged; tests hold the two to byte equality.
    """
    st = engine.symbols[symbol]
    prev_book, prev_trade = st.book_seq, st.trade_seq
    book = engine.apply_book(symbol, updates)
    numbered = engine.apply_trades(symbol, trades)
    book_json = (
        encode(Delta(f"book.{symbol}", book, prev_book, st.book.checksum(), updates))
        if updates
        else b""
    )
    trades_json = (
        encode(Trades(f"trades.{symbol}", st.trade_seq, prev_trade, numbered)) if numbered else b""
    )
    return BusBatch(
        engine.epoch,
        symbol,
        prev_book,
        book,
        prev_trade,
        st.trade_seq,
        book_json,
        trades_json,
        msgspec.Raw(_encoder.encode(st.ticker(f"ticker.{symbol}", 0, 0))),
    )


def relayed_batch(epoch: str, batch: LeaderBatch) -> BusBatch:
    """Return an already encoded leader batch (the compiled market's) as a bus batch."""
    ticker = batch.leader_ticker()
    if ticker is not None:
        ticker = msgspec.structs.replace(ticker, ch=f"ticker.{batch.symbol}")
    return BusBatch(
        epoch,
        batch.symbol,
        batch.prev_book,
        batch.book,
        batch.prev_trade,
        batch.trade,
        batch.book_json,
        batch.trades_json,
        msgspec.Raw(_encoder.encode(ticker)),
    )


def decode_snapshot(data: bytes) -> StateSnapshot:
    """Decode a snapshot reply.

    Raises:
        msgspec.DecodeError: not a snapshot (an empty reply: unknown symbol).
    """
    snap: StateSnapshot = _snapshot_decoder.decode(data)
    return snap


def md_subject(prefix: str, symbol: str) -> str:
    """Return the market-data subject of ``symbol``."""
    return f"{prefix}.md.{symbol}"


def snapshot_subject(prefix: str, symbol: str) -> str:
    """Return the snapshot-service subject of ``symbol``."""
    return f"{prefix}.snapshot.{symbol}"


class FollowState(enum.Enum):
    """Where a followed symbol stands (see the module docstring)."""

    LIVE = "live"
    SUSPECT = "suspect"
    RECOVERING = "recovering"


class BusFollower:
    """Follows a publisher's engine over the bus, feeding a :class:`~tickwire.sources.Sink`.

    Sans-I/O: the I/O layer hands it decoded bus messages and snapshot replies in
    arrival order, collects :attr:`out` (batches to publish this tick) and sends a
    snapshot request for every symbol in :attr:`requests`.

    Args:
        sink: the hub (or any sink); its engine's symbols are the ones followed.
    """

    def __init__(self, sink: Sink, follow_all: bool = False) -> None:
        self.sink = sink
        #: Follow every symbol of the leader, adding the new ones (no ``--symbols``).
        self.follow_all = follow_all
        #: The symbols the leader said it does not serve now (its last heartbeat).
        self.leader_stale: set[str] = set()
        self.heartbeats = 0
        self.added = 0
        self.epoch: str | None = None
        symbols = list(sink.engine.symbols)
        self.state = dict.fromkeys(symbols, FollowState.RECOVERING)
        # Next expected (book, trade) seqs per symbol, once it is loaded.
        self.expected: dict[str, tuple[int, int]] = {}
        self.buffers: dict[str, deque[BusBatch]] = {s: deque() for s in symbols}
        #: Symbols whose snapshot the I/O layer should request (and then discard here).
        self.requests: set[str] = set(symbols)
        #: Batches to relay or publish and states to rebase on, in order; the I/O
        #: layer takes and clears it.
        self.out: list[BusBatch | StateSnapshot] = []
        #: Book updates handed over (relayed or returned).
        self.updates = 0
        self.gaps = 0
        self.duplicates = 0
        self.restores = 0
        self.revalidated = 0
        self.epoch_changes = 0
        self.ignored_snapshots = 0
        self.bad_messages = 0

    # -- input ---------------------------------------------------------------------------

    def message(self, msg: BusBatch | BusHeartbeat | BusState | BusBundle) -> None:
        """Take one ``PREFIX.md.*`` message, in bus order.

        A message of a bundle that does not decode is counted (:attr:`bad_messages`)
        and skipped; if it was a batch, the next one shows the hole.
        """
        if isinstance(msg, BusBundle):
            for data in msg.messages:
                try:
                    inner = decode_bus(data)
                except msgspec.DecodeError as exc:
                    self.bad_message(exc)
                    continue
                self.message(inner)
            return
        if isinstance(msg, BusState):
            self._state(msg.state)
            return
        if msg.epoch != self.epoch:
            self._new_epoch(msg.epoch)
        if isinstance(msg, BusHeartbeat):
            self.heartbeats += 1
            stale = self.leader_stale = set(msg.stale)
            for symbol, seqs in msg.seqs.items():
                if symbol not in self.state:
                    if not self.follow_all:
                        continue
                    self._add(symbol)
                if symbol in stale:
                    self._leader_stale(symbol)
                else:
                    self._heartbeat(symbol, seqs)
            return
        symbol = msg.symbol
        state = self.state.get(symbol)
        if state is None:
            if not self.follow_all:
                return
            state = self._add(symbol)
        if state is FollowState.RECOVERING:
            self._buffer(msg)
            return
        book, trade = self.expected[symbol]
        if msg.prev_book == book and msg.prev_trade == trade:
            if state is FollowState.SUSPECT:
                self._revalidate(symbol)
            self._emit(msg)
        elif msg.book <= book and msg.trade <= trade:
            self.duplicates += 1
        else:
            log.warning(
                "bus gap on %s: have (%d, %d), got (%d, %d]",
                symbol,
                book,
                trade,
                msg.prev_book,
                msg.book,
            )
            self._recover(symbol)
            self._buffer(msg)

    def bad_message(self, exc: Exception) -> None:
        """Count a bus message that does not decode; say so loudly, now and then."""
        self.bad_messages += 1
        if self.bad_messages == 1 or self.bad_messages % 1000 == 0:
            log.error(
                "undecodable bus message (%d so far): %s; do the publisher and this "
                "gateway run the same tickwire version?",
                self.bad_messages,
                exc,
            )

    def snapshot(self, snap: StateSnapshot) -> None:
        """Take a snapshot reply (restores a recovering symbol)."""
        symbol = snap.symbol
        if self.epoch is None:
            self._new_epoch(snap.epoch)
        if snap.epoch != self.epoch or self.state.get(symbol) is not FollowState.RECOVERING:
            # Another epoch (the stream decides epochs) or no longer needed.
            if snap.epoch != self.epoch and symbol in self.state:
                self.ignored_snapshots += 1
                if self.state[symbol] is FollowState.RECOVERING:
                    self.requests.add(symbol)
            return
        # Batches of the symbol not yet handed over predate the state: drop them.
        self.out = [m for m in self.out if m.symbol != symbol]
        self.sink.restore(snap)
        self.restores += 1
        self.requests.discard(symbol)
        self.state[symbol] = FollowState.LIVE
        self.expected[symbol] = (snap.book_seq, snap.trade_seq)
        buffered = self.buffers[symbol]
        self.buffers[symbol] = deque()
        for msg in buffered:
            if self.state[symbol] is FollowState.RECOVERING:
                self._buffer(msg)
            else:
                self.message(msg)

    def snapshot_failed(self, symbol: str) -> None:
        """A request timed out or the publisher does not know ``symbol``: ask again."""
        if self.state.get(symbol) is FollowState.RECOVERING:
            self.requests.add(symbol)

    def disconnected(self) -> None:
        """The bus connection is lost: stop serving every live symbol until proven."""
        for symbol, state in self.state.items():
            if state is FollowState.LIVE:
                self.state[symbol] = FollowState.SUSPECT
                self.sink.invalidate(symbol)

    def hand_over(self, now: float) -> list[Batch]:
        """Relay :attr:`out` to the sink (or rebase it); return what must be published.

        Consecutive batches of a symbol are relayed together (one write per
        subscriber); a state is taken after the batches before it. Batches the sink
        cannot relay (:meth:`Sink.relay` False) are returned for the tick loop to
        publish, and so is every later batch of their symbol, in order: a relay must
        not overtake them.
        """
        out, self.out = self.out, []
        sink = self.sink
        batches: list[Batch] = []
        held: set[str] = set()
        runs: dict[str, list[BusBatch]] = {}

        def flush(symbol: str) -> None:
            run = runs.pop(symbol, None)
            if run is None:
                return
            if symbol in held or not sink.relay(run, now):
                held.add(symbol)
                batches.extend((symbol, b.book_updates(), b.raw_trades()) for b in run)

        for item in out:
            symbol = item.symbol
            if isinstance(item, BusBatch):
                self.updates += item.book - item.prev_book
                runs.setdefault(symbol, []).append(item)
            else:
                flush(symbol)
                if symbol not in held:
                    sink.rebase(item)
        for symbol in list(runs):
            flush(symbol)
        return batches

    # -- transitions -----------------------------------------------------------------------

    def _heartbeat(self, symbol: str, seqs: tuple[int, int]) -> None:
        state = self.state[symbol]
        if state is FollowState.RECOVERING:
            return
        book, trade = self.expected[symbol]
        if seqs[0] == book and seqs[1] == trade:
            if state is FollowState.SUSPECT:
                self._revalidate(symbol)
        elif seqs[0] > book or seqs[1] > trade:
            # Everything up to the heartbeat was sent before it: a batch was lost.
            log.warning("bus gap on %s: heartbeat at %s, have (%d, %d)", symbol, seqs, book, trade)
            self._recover(symbol)

    def _state(self, snap: StateSnapshot) -> None:
        """An in-stream state: rebase on it, or heal a hole with it."""
        symbol = snap.symbol
        if snap.epoch != self.epoch:
            self._new_epoch(snap.epoch)
        state = self.state.get(symbol)
        if state is None:
            if not self.follow_all:
                return
            state = self._add(symbol)
        self.leader_stale.discard(symbol)
        if state is not FollowState.RECOVERING:
            book, trade = self.expected[symbol]
            seqs = (snap.book_seq, snap.trade_seq)
            if seqs == (book, trade):
                if state is FollowState.SUSPECT:
                    self._revalidate(symbol)
                self.out.append(snap)
                return
            if snap.book_seq <= book and snap.trade_seq <= trade:
                return  # older than what we have
            log.warning("bus gap on %s: state at %s, have (%d, %d)", symbol, seqs, book, trade)
            self._recover(symbol)
        self.snapshot(snap)

    def _add(self, symbol: str) -> FollowState:
        """Follow a symbol the leader has and this gateway did not know yet."""
        log.info("following %s, new on the bus", symbol)
        self.added += 1
        self.sink.add_symbol(symbol)
        self.state[symbol] = FollowState.RECOVERING
        self.buffers[symbol] = deque()
        if symbol not in self.leader_stale:
            self.requests.add(symbol)
        return FollowState.RECOVERING

    def _leader_stale(self, symbol: str) -> None:
        """The leader does not serve ``symbol`` now: neither do we, until its state."""
        if self.state[symbol] is FollowState.RECOVERING:
            self.requests.discard(symbol)  # the leader would not answer
            return
        log.warning("the leader stopped serving %s (its source is being recovered)", symbol)
        self.state[symbol] = FollowState.RECOVERING
        self.sink.invalidate(symbol)

    def _emit(self, msg: BusBatch) -> None:
        self.expected[msg.symbol] = (msg.book, msg.trade)
        self.out.append(msg)

    def _buffer(self, msg: BusBatch) -> None:
        buf = self.buffers[msg.symbol]
        buf.append(msg)
        if len(buf) > MAX_BUFFERED:
            buf.popleft()

    def _recover(self, symbol: str) -> None:
        self.gaps += 1
        self.state[symbol] = FollowState.RECOVERING
        self.requests.add(symbol)
        self.sink.invalidate(symbol)

    def _revalidate(self, symbol: str) -> None:
        self.state[symbol] = FollowState.LIVE
        self.revalidated += 1
        self.sink.revalidate(symbol)

    def _new_epoch(self, epoch: str) -> None:
        if self.epoch is not None:
            log.warning("publisher epoch changed: %s -> %s", self.epoch, epoch)
            self.epoch_changes += 1
        self.epoch = epoch
        # Batches of the old epoch not yet published must not reach the new engine.
        self.out.clear()
        self.expected.clear()
        for symbol in self.state:
            self.state[symbol] = FollowState.RECOVERING
            self.buffers[symbol].clear()
        self.requests.update(self.state)
        self.sink.reset(epoch)
