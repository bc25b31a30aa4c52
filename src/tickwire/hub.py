"""The hub: channels, sequencing, history, encode-once batching and fan-out (Sans-I/O).

Theory of operation
-------------------
Sources call :meth:`Hub.publish` with a symbol's new book updates and trades. The hub
applies them to the :class:`~tickwire.engine.Engine` at once (so snapshots are always
current) and appends them to the channel's *pending* batch. The I/O layer then calls
:meth:`Hub.flush_symbol` for that symbol (and :meth:`Hub.flush` once per tick for the
rest): each channel with pending data becomes **one** message, encoded **once** and
framed **once**; the frame goes into the history ring and its very same ``bytes``
object goes to every subscriber (:meth:`Hub._fan_out`). A subscriber whose ``deliver``
is set (a connection on one channel) gets it by a direct transport write; the others
get it appended to their ``outbox``, are listed in :attr:`Hub.dirty`, and the I/O layer
writes each outbox with a single ``write`` (all channels of a connection joined).

Channel state (:class:`~tickwire.channels.Channel`)::

    seq        last seq delivered to subscribers (book: updates, trades: trades,
               ticker: ticker messages)
    pending    updates applied to the engine but not yet sent
    history    ring of (prev_seq, seq, frame), bounded in bytes, for resume
               (:class:`~tickwire.history.History`)

The hub owns the hot path -- publish, relay, flush, fan-out -- and the subscription
lifecycle; the pieces that are not per delivery live in their own Sans-I/O modules:
:mod:`tickwire.channels` (the channel records and the ``Subscriber`` protocol),
:mod:`tickwire.history` (the resume ring and the re-encoding of a message's tail) and
:mod:`tickwire.lag` (the slow-consumer records and the level tracker that conflates).

Slow consumers (see ``docs/slow-consumers.md``)
-----------------------------------------------
The I/O layer calls :meth:`Hub.pause` when a connection's write buffer crosses its high
watermark and :meth:`Hub.resume` when it drains below the low one. A paused
subscriber's book and ticker subscriptions leave the channel's shared ``subscribers``
set for its ``lagging`` map (subscriber -> :class:`~tickwire.lag.Lag`, the last ``seq``
it was sent): the shared frames are no longer sent to it, so healthy subscribers still
cost one write (or list append) per frame and share the same ``bytes``. While a book
channel has lagging subscribers it records, per price level, the latest update and its
seq (``touched``, a :class:`~tickwire.lag.LevelTracker`: one dict store per update,
shared by all of its lagging subscribers; bounded by the book's size, past which the
laggards get a snapshot). At the first flush after a
resume each lagging subscription gets **one** catch-up message -- a merged delta
``(lag.seq, ch.seq]`` holding the current quantity of every level touched since, with
the current checksum, or a snapshot when that is smaller; a ticker gets the latest
ticker -- and rejoins the shared set. Trades never lag: they keep flowing into the
transport buffer, and the I/O layer closes the connection (close code 4001) past its
hard byte budget; the client resumes from the history ring.

A subscription flushes its channel first, so the snapshot's ``seq`` is exactly the
``prev_seq`` of the next delta: there is no window in which an update can fall between
the snapshot and the stream. A resume (epoch, since) replays the history frames that
chain from ``since`` when they are all still there; otherwise the client gets a fresh
snapshot marked ``resumed: false`` -- never a silent hole.

Following another engine (NATS, replay; see ``docs/scaling.md``)
------------------------------------------------------------------
A source that follows a leading engine calls :meth:`Hub.invalidate` when it knows a
symbol's book has a hole (a missed bus message): its three channels go *stale* -- they
send nothing, not even heartbeats, and new subscriptions wait -- until
:meth:`Hub.restore` loads the leader's :class:`~tickwire.engine.StateSnapshot`. Restore
clears the channels' history (no resume may chain across the hole) and sends every
current subscriber an explicit snapshot (``resumed: false``). :meth:`Hub.reset` does the
same for all symbols when the leader's epoch changes. Because the leader's numbering is
adopted, two gateways emit the same ``seq`` for the same update but batch them
differently; :meth:`Hub.replay` therefore resumes a client whose ``since`` falls inside
one of this hub's batched messages by re-encoding the tail of that message, and with
``resume_wait`` a client ahead of this hub (it came from a faster gateway) waits for the
bus to catch up instead of getting a snapshot.

Encodings (see :mod:`tickwire.codec` and ``docs/protocol.md``)
--------------------------------------------------------------
A connection's *wire* is JSON (the default), msgpack, or either one deflated. A channel
keeps its JSON subscribers in ``subscribers`` and the others in ``groups``, one dict per
wire, created only when a subscriber of that wire joins. The JSON frame of a batch is
built as before; other frames are built only for non-empty groups, once per batch per
wire, and shared by the group. A JSON-only channel pays one truthiness test of
``groups`` per batch. History keeps the JSON frames only: a resume on another wire
re-encodes the replayed frames (rare, and it keeps history memory what it was).
Subscribers default to JSON; :meth:`Hub.set_wire` registers another wire.

Private channels (see ``docs/security.md``)
-------------------------------------------
``orders.<USER>`` carries one user's order events. Such channels live in
:attr:`Hub.private`, apart from the market channels (they are not per symbol, are not
reset with the market's epoch, and stay out of per-channel metrics, which would name
users). A source calls :meth:`Hub.publish_orders` with a user's events of one tick; they
are numbered (``id == seq``, like trades), kept in the history ring and a short recent
list for snapshots, and sent at once as one ``orders`` message. The hub does not check
who subscribes: the gateway authorizes the subscription before it calls
:meth:`Hub.private_channel`.

The hub never reads a clock: ``now`` (monotonic seconds) is passed in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from .channels import RECENT_ORDERS, Channel, PrivateChannel, Subscriber
from .codec import (
    JSON_WIRE,
    Deflater,
    Encoding,
    Wire,
    encode_msgpack,
    frame_as,
    frame_message,
    transcode_frame,
)
from .engine import Engine, LeaderBatch, RawTrade, StateSnapshot
from .exceptions import RequestError
from .framing import frame_payload, text_frame
from .lag import CONFLATED_KINDS, Lag, LevelTracker, SubscriptionStats, lagging_subscriptions
from .protocol import (
    BookUpdate,
    Delta,
    ErrorCode,
    Heartbeat,
    Message,
    Orders,
    OrderUpdate,
    Snapshot,
    Trade,
    Trades,
    decode_message,
    encode,
    parse_channel,
)

__all__ = [
    "CONFLATED_KINDS",
    "RECENT_ORDERS",
    "Channel",
    "Hub",
    "Lag",
    "PrivateChannel",
    "RawOrder",
    "Subscriber",
    "SubscriptionStats",
]

#: An order event before the hub numbers it:
#: ``(order id, symbol, event, side, price, qty, left, ts)`` (see ``OrderUpdate``).
RawOrder = tuple[str, str, str, str, str, str, str, int]


class Hub:
    """Channels and fan-out for one engine.

    Args:
        engine: the authoritative state; its symbols define the channels.
        history_bytes: frame bytes kept per channel for resume.
        batch: True joins a channel's updates of one tick into one message; False sends
            every update as its own message (``--batch-ms 0``).
        max_subscriptions: channels one connection may hold.
        heartbeat_interval: seconds of silence after which a channel sends a heartbeat.
        ticker_interval: minimum seconds between two ticker messages of a symbol.
        resume_wait: seconds a resume whose ``since`` is ahead of this hub waits for the
            source to catch up before it gets a snapshot (0: at once). Only a follower
            of a shared feed (NATS) can be behind the client's previous gateway.
        deflate_level: zlib level of permessage-deflate frames (1 fastest .. 9).
    """

    def __init__(
        self,
        engine: Engine,
        *,
        history_bytes: int = 4 << 20,
        batch: bool = True,
        max_subscriptions: int = 1024,
        heartbeat_interval: float = 1.0,
        ticker_interval: float = 0.1,
        resume_wait: float = 0.0,
        deflate_level: int = 1,
    ) -> None:
        self.engine = engine
        self.deflater = Deflater(deflate_level)
        # Subscribers on a wire other than JSON (Hub.set_wire); absent means JSON.
        self.wire_of: dict[Subscriber, Wire] = {}
        self.resume_wait = resume_wait
        self.history_limit = history_bytes
        self.batch = batch
        self.max_subscriptions = max_subscriptions
        self.heartbeat_interval = heartbeat_interval
        self.ticker_interval = ticker_interval
        self.channels: dict[str, Channel] = {}
        self.books: list[Channel] = []
        self.trades: list[Channel] = []
        self.tickers: list[Channel] = []
        for symbol, state in engine.symbols.items():
            for kind, group in (
                ("book", self.books),
                ("trades", self.trades),
                ("ticker", self.tickers),
            ):
                ch = Channel(f"{kind}.{symbol}", kind, state, history_bytes)
                self.channels[ch.name] = ch
                group.append(ch)
        self._book_of = {ch.state.symbol: ch for ch in self.books}
        self._trades_of = {ch.state.symbol: ch for ch in self.trades}
        self._ticker_of = {ch.state.symbol: ch for ch in self.tickers}
        self.dirty: list[Subscriber] = []
        # Monotonic time of the last flush: unbatched sends (``batch=False``) happen in
        # publish(), between flushes, and use it as their channel's last-sent time.
        self.last_flush = 0.0
        # Private channels by user (created on first publish or authorized subscribe).
        self.private: dict[str, PrivateChannel] = {}
        # Symbols whose state is not known complete (never loaded, or a hole): a new
        # engine has no books yet; the source empties this (Gateway.books_complete).
        self.incomplete: set[str] = set(engine.symbols)
        # Channels with subscriptions waiting to be served (stale, or resume ahead).
        self.waiting: dict[Channel, None] = {}
        self.restores = 0
        # Counters: frames and bytes queued to subscribers, updates they carried.
        self.frames_out = 0
        self.bytes_out = 0
        self.updates_out = 0
        self.messages_built = 0
        # The first batch relayed since the tick loop last looked (its event-age
        # telemetry), None if none.
        self.first_relayed: LeaderBatch | None = None
        # Slow consumers: paused subscribers (-> monotonic time of the pause), those due
        # a catch-up at the next flush, and counters.
        self.paused: dict[Subscriber, float] = {}
        self.catching_up: list[Subscriber] = []
        self.pauses = 0
        self.conflated = 0
        self.conflated_snapshots = 0
        self.updates_skipped = 0

    # -- sources -----------------------------------------------------------------------

    def publish(self, symbol: str, updates: list[BookUpdate], trades: Iterable[RawTrade]) -> None:
        """Apply a source batch for ``symbol`` and queue it for the next flush."""
        engine = self.engine
        book_ch = self._book_of[symbol]
        if updates:
            if self.batch:
                engine.apply_book(symbol, updates)
                book_ch.pending.extend(updates)  # type: ignore[arg-type]
            else:
                for u in updates:
                    engine.apply_book(symbol, [u])
                    book_ch.pending.append(u)  # type: ignore[arg-type]
                    self._flush_book(book_ch)
                book_ch.last_sent = self.last_flush  # busy: no heartbeat due
            self._ticker_of[symbol].ticker_due = True
        numbered = engine.apply_trades(symbol, trades)
        if numbered:
            trades_ch = self._trades_of[symbol]
            if self.batch:
                trades_ch.pending.extend(numbered)  # type: ignore[arg-type]
            else:
                for t in numbered:
                    trades_ch.pending.append(t)  # type: ignore[arg-type]
                    self._flush_trades(trades_ch)
                trades_ch.last_sent = self.last_flush

    def relay(self, batches: Sequence[LeaderBatch], now: float) -> bool:
        """Send a leader's batches of one symbol as the leader encoded them.

        The follower's messages are byte for byte the ones it would build itself (same
        seqs, updates, checksum), so it forwards the leader's JSON and leaves the book
        to settle when read (:meth:`Engine.defer`): no decode-apply-encode per update.
        Consecutive batches (the bus delivered several since the last tick) stay one
        message each, but reach a JSON subscriber in one write, as a tick's batch
        does: a follower that fell behind writes less per update, not more.

        Returns False, doing nothing, when the batches must go through :meth:`publish`
        instead: unbatched sends, something pending on the symbol, a batch without
        encoded messages, or batches that do not chain from the channels' seqs.
        """
        symbol = batches[0].symbol
        book_ch = self._book_of[symbol]
        trades_ch = self._trades_of[symbol]
        if not self.batch or book_ch.pending or trades_ch.pending:
            return False
        book_seq, trade_seq = book_ch.seq, trades_ch.seq
        for batch in batches:
            if (
                batch.prev_book != book_seq
                or batch.prev_trade != trade_seq
                or (batch.book > book_seq and not batch.book_json)
                or (batch.trade > trade_seq and not batch.trades_json)
            ):
                return False
            book_seq, trade_seq = batch.book, batch.trade
        defer = self.engine.defer
        for batch in batches:
            defer(symbol, batch)
            if book_ch.touched is not None and batch.book > batch.prev_book:
                self._track(book_ch, book_ch.touched, batch.book_updates(), batch.book)
        if book_seq > book_ch.seq:
            book_ch.last_sent = now
            self._ticker_of[symbol].ticker_due = True
            if self.first_relayed is None:
                self.first_relayed = batches[0]
            self._send_encoded(
                book_ch, [(b.prev_book, b.book, b.book_json) for b in batches if b.book_json]
            )
        if trade_seq > trades_ch.seq:
            trades_ch.last_sent = now
            self._send_encoded(
                trades_ch,
                [(b.prev_trade, b.trade, b.trades_json) for b in batches if b.trades_json],
            )
        return True

    def _send_encoded(self, ch: Channel, messages: list[tuple[int, int, bytes]]) -> None:
        """Record and deliver consecutive ``(prev_seq, seq, json)`` messages of ``ch``."""
        if len(messages) == 1 or ch.groups or ch.fault is not None:
            for prev_seq, seq, payload in messages:
                self._send(ch, prev_seq, seq, payload, seq - prev_seq)
            return
        frames = []
        for prev_seq, seq, payload in messages:
            frame = text_frame(payload)
            self._record(ch, prev_seq, seq, frame)
            frames.append(frame)
        n = self._fan_out(ch.subscribers, b"".join(frames))
        self.updates_out += (messages[-1][1] - messages[0][0]) * n

    def rebase(self, snap: StateSnapshot) -> None:
        """Take the leader's state at this hub's seqs in place of what was deferred
        (a trading status it reports goes out with the next ticker)."""
        status = self.engine.symbols[snap.symbol].status
        if self.engine.rebase(snap) and snap.status != status:
            self._ticker_of[snap.symbol].ticker_due = True

    def status(self, symbol: str, status: str) -> None:
        """The source reported ``symbol``'s trading status: every ticker carries it,
        the next one within the ticker interval (``docs/protocol.md``)."""
        state = self.engine.symbols[symbol]
        if state.status != status:
            state.status = status
            self._ticker_of[symbol].ticker_due = True

    def follow(self, symbol: str, live: Callable[[], StateSnapshot]) -> None:
        """Relay a leader in this process that holds ``symbol``'s state (``live()``)."""
        self.engine.follow(symbol, live)

    # -- per tick ----------------------------------------------------------------------

    def flush_symbol(self, symbol: str, now: float) -> None:
        """Send ``symbol``'s pending book and trades batches now.

        The tick loop calls it right after publishing a symbol's batch, so its
        subscribers are written before the next symbol is generated; :meth:`flush` then
        sends the rest (tickers, catch-ups, anything a push source queued).
        """
        ch = self._book_of[symbol]
        if ch.pending:
            ch.last_sent = now
            self._flush_book(ch)
        ch = self._trades_of[symbol]
        if ch.pending:
            ch.last_sent = now
            self._flush_trades(ch)

    def flush(self, now: float) -> None:
        """Turn every pending batch into one message and queue it to subscribers."""
        self.last_flush = now
        for ch in self.books:
            if ch.pending:
                ch.last_sent = now
                self._flush_book(ch)
        for ch in self.trades:
            if ch.pending:
                ch.last_sent = now
                self._flush_trades(ch)
        for ch in self.tickers:
            if ch.ticker_due and now - ch.last_sent >= self.ticker_interval:
                ch.last_sent = now
                ch.ticker_due = False
                msg = ch.state.ticker(ch.name, ch.seq + 1, ch.seq)
                self._send(ch, ch.seq, ch.seq + 1, encode(msg), 0, msg)
        if self.catching_up:
            self._catch_up_all(now)
        if self.waiting:
            self._serve_waiting(now)

    def heartbeats(self, now: float) -> None:
        """Queue a heartbeat on every subscribed channel silent for the interval."""
        limit = now - self.heartbeat_interval
        for ch in (*self.channels.values(), *self.private.values()):
            # A stale channel stays silent: a heartbeat would vouch for a seq it knows
            # is behind.
            if (ch.subscribers or ch.groups) and ch.last_sent <= limit and not ch.stale:
                ch.last_sent = now
                beat = Heartbeat(ch.name, ch.seq)
                self._deliver(ch, text_frame(encode(beat)), beat)

    def _flush_book(self, ch: Channel) -> None:
        updates: list[BookUpdate] = ch.pending  # type: ignore[assignment]
        ch.pending = []
        state = ch.state
        seq = ch.seq + len(updates)
        if ch.touched is not None:
            self._track(ch, ch.touched, updates, seq)
        msg = Delta(ch.name, seq, ch.seq, state.book.checksum(), updates)
        self._send(ch, ch.seq, seq, encode(msg), len(updates), msg)

    def _flush_trades(self, ch: Channel) -> None:
        trades: list[Trade] = ch.pending  # type: ignore[assignment]
        ch.pending = []
        seq = trades[-1].id
        msg = Trades(ch.name, seq, ch.seq, trades)
        self._send(ch, ch.seq, seq, encode(msg), len(trades), msg)

    def _send(
        self,
        ch: Channel,
        prev_seq: int,
        seq: int,
        payload: bytes,
        updates: int,
        msg: Message | None = None,
    ) -> None:
        """Record and deliver one message; ``payload`` is its JSON, ``msg`` the object
        (for the other encodings; decoded from ``payload`` when not given)."""
        frame = text_frame(payload)
        self._record(ch, prev_seq, seq, frame)
        if ch.fault is not None:
            faulty = self._faulty(ch, frame)
            if faulty is None:
                return
            frame, msg = faulty, None
        n = self._deliver(ch, frame, msg)
        self.updates_out += updates * n

    def _record(self, ch: Channel, prev_seq: int, seq: int, frame: bytes) -> None:
        """Make ``frame`` message ``(prev_seq, seq]`` of ``ch``, kept for resume."""
        ch.seq = seq
        self.messages_built += 1
        ch.history.append(prev_seq, seq, frame)

    def inject_fault(self, ch: Channel, kind: str) -> None:
        """Corrupt the next message of ``ch`` for its current subscribers (tests only).

        ``"drop"``: the message goes into history but is not delivered (a lost frame: the
        next one exposes a gap). ``"checksum"``: subscribers get it with a wrong checksum
        (history keeps the right one). Enabled by ``tickwire serve --test-faults``.
        """
        if kind not in ("drop", "checksum"):
            raise ValueError(f"unknown fault {kind!r}")
        ch.fault = kind

    def _faulty(self, ch: Channel, frame: bytes) -> bytes | None:
        kind, ch.fault = ch.fault, None
        if kind == "drop":
            return None
        msg = decode_message(frame_payload(frame))
        if isinstance(msg, Delta):
            msg.checksum ^= 0x5A5A5A5A
        return text_frame(encode(msg))

    def _deliver(self, ch: Channel, frame: bytes, msg: Message | None = None) -> int:
        """Queue or write ``frame`` (JSON) to every subscriber; return how many got it.

        Subscribers on other wires get ``msg`` (decoded from ``frame`` if None) in
        their encoding, built once per wire (:meth:`_deliver_groups`).
        """
        n = self._fan_out(ch.subscribers, frame) if ch.subscribers else 0
        if ch.groups:
            n += self._deliver_groups(ch, frame, msg)
        return n

    def _deliver_groups(self, ch: Channel, frame: bytes, msg: Message | None) -> int:
        """Deliver one message to the non-JSON groups: one frame per wire, shared.

        The msgpack body is encoded once for both msgpack wires; each deflated wire
        compresses once for its whole group (no context takeover: the compressed bytes
        do not depend on the connection).
        """
        n = 0
        packed: bytes | None = None
        payload: bytes | None = None
        for wire, subs in tuple(ch.groups.items()):
            if wire.encoding is Encoding.MSGPACK:
                if packed is None:
                    if msg is None:
                        msg = decode_message(frame_payload(frame))
                    packed = encode_msgpack(msg)
                body = packed
            else:
                if payload is None:
                    payload = frame_payload(frame)
                body = payload
            n += self._fan_out(subs, frame_as(wire, body, self.deflater))
        return n

    def _fan_out(self, subs: dict[Subscriber, None], frame: bytes) -> int:
        """Write or queue ``frame`` to each of ``subs``: the per-delivery loop.

        A direct ``deliver`` is one C call (the transport's write); otherwise the frame is
        queued for the end of the tick. The loop runs over a tuple: a direct write may
        cross the high watermark, and :meth:`pause` then takes the subscriber out of
        ``subs`` while we iterate.
        """
        n = len(subs)
        dirty = self.dirty
        for sub in tuple(subs):
            deliver = sub.deliver
            if deliver is not None:
                deliver(frame)
                continue
            outbox = sub.outbox
            if not outbox:
                dirty.append(sub)
            outbox.append(frame)
        self.frames_out += n
        self.bytes_out += n * len(frame)
        return n

    # -- wires -------------------------------------------------------------------------

    def set_wire(self, sub: Subscriber, wire: Wire) -> None:
        """Send ``sub`` its frames in ``wire`` (call before it subscribes).

        The gateway calls it for each connection that negotiated msgpack or
        permessage-deflate; every other subscriber gets JSON text frames.
        """
        if wire == JSON_WIRE:
            self.wire_of.pop(sub, None)
        else:
            self.wire_of[sub] = wire

    def _join(self, ch: Channel, sub: Subscriber) -> None:
        """Add ``sub`` to the subscriber set of its wire on ``ch``."""
        wire = self.wire_of.get(sub) if self.wire_of else None
        if wire is None:
            ch.subscribers[sub] = None
            return
        group = ch.groups.get(wire)
        if group is None:
            group = ch.groups[wire] = {}
        group[sub] = None

    def _leave(self, ch: Channel, sub: Subscriber) -> bool:
        """Take ``sub`` out of the subscribers of ``ch``; False if it was not in."""
        if sub in ch.subscribers:
            del ch.subscribers[sub]
            return True
        wire = self.wire_of.get(sub) if self.wire_of else None
        group = ch.groups.get(wire) if wire is not None else None
        if group is None or sub not in group:
            return False
        del group[sub]
        if not group:
            del ch.groups[wire]  # type: ignore[arg-type]
        return True

    def _frame(self, sub: Subscriber, msg: Message) -> bytes:
        """Frame one message for ``sub`` alone (snapshots, catch-ups)."""
        wire = self.wire_of.get(sub) if self.wire_of else None
        if wire is None:
            return text_frame(encode(msg))
        return frame_message(wire, msg, self.deflater)

    # -- private channels --------------------------------------------------------------

    def private_channel(self, user: str) -> PrivateChannel:
        """Return ``orders.<user>``, created empty at seq 0 if it does not exist.

        The caller has authorized the user (the hub has no notion of identity).
        """
        ch = self.private.get(user)
        if ch is None:
            ch = self.private[user] = PrivateChannel(user, self.history_limit)
        return ch

    def publish_orders(self, user: str, orders: Iterable[RawOrder]) -> None:
        """Number ``user``'s order events and send them as one ``orders`` message.

        Called by a source once per tick per user with events (the simulator's
        synthetic accounts; an ingest source). Private traffic is light and per user,
        so it is not held for the tick's flush.
        """
        ch = self.private_channel(user)
        seq = ch.seq
        out: list[OrderUpdate] = []
        for order, symbol, event, side, price, qty, left, ts in orders:
            seq += 1
            out.append(
                OrderUpdate(seq, order, symbol, event, side, price, qty, left, ts)  # type: ignore[arg-type]
            )
        if not out:
            return
        ch.recent.extend(out)
        self._send(ch, ch.seq, seq, encode(Orders(ch.name, seq, ch.seq, out)), len(out))

    # -- subscriptions -----------------------------------------------------------------

    def channel(self, name: str, request_id: int | str | None = None) -> Channel:
        """Return the channel called ``name``.

        Raises:
            RequestError: ``bad_channel`` for a malformed name, ``unknown_channel`` when
                the symbol is not served.
        """
        ch = self.channels.get(name)
        if ch is None:
            parse_channel(name, request_id)
            raise RequestError(
                ErrorCode.UNKNOWN_CHANNEL, f"no such channel {name[:48]!r}", request_id
            )
        return ch

    def subscribe(
        self,
        sub: Subscriber,
        ch: Channel,
        epoch: str | None = None,
        since: int | None = None,
        request_id: int | str | None = None,
    ) -> bool:
        """Add ``sub`` to ``ch``, queueing a snapshot or the replay that resumes it.

        Args:
            epoch, since: resume position the client holds, if any.

        Returns:
            True when the subscription resumed from history (no snapshot sent).

        Raises:
            RequestError: ``too_many_channels`` past :attr:`max_subscriptions`.
        """
        if ch.name in sub.channels:
            # Already subscribed: a repeated subscribe is a request for a fresh start.
            self.unsubscribe(sub, ch.name)
        elif len(sub.channels) >= self.max_subscriptions:
            raise RequestError(
                ErrorCode.TOO_MANY_CHANNELS,
                f"at most {self.max_subscriptions} subscriptions per connection",
                request_id,
            )
        # Send what is pending first so the snapshot seq chains to the next message.
        if ch.pending:
            if ch.kind == "book":
                self._flush_book(ch)
            else:
                self._flush_trades(ch)
        sub.channels[ch.name] = ch
        if ch.stale or (
            self.resume_wait > 0
            and since is not None
            and since > ch.seq
            and epoch == self.engine.epoch
        ):
            # Not servable now: the book has a known hole, or the client comes from a
            # gateway ahead of this one on the same feed. Served by flush().
            ch.waiting[sub] = (epoch, since, None)
            self.waiting[ch] = None
            return False
        return self._attach(sub, ch, epoch, since)

    def _attach(self, sub: Subscriber, ch: Channel, epoch: str | None, since: int | None) -> bool:
        """Queue the replay or snapshot that starts ``sub`` on ``ch`` and add it."""
        resumed = False
        frames: list[bytes] | None = None
        if since is not None and epoch == self.engine.epoch:
            frames = self.replay(ch, since)
        if frames is not None:
            resumed = True
            wire = self.wire_of.get(sub) if self.wire_of else None
            if wire is not None:
                # History holds JSON frames: re-encode the replay for this wire.
                frames = [transcode_frame(f, wire, self.deflater) for f in frames]
        else:
            frames = [self._frame(sub, self.snapshot(ch, None if since is None else False))]
        if not sub.outbox and frames:
            self.dirty.append(sub)
        sub.outbox.extend(frames)
        since_paused = self.paused.get(sub)
        if since_paused is not None and ch.kind in CONFLATED_KINDS:
            self._lag(sub, ch, since_paused)
        else:
            self._join(ch, sub)
        return resumed

    def unsubscribe(self, sub: Subscriber, name: str) -> bool:
        """Remove ``sub`` from channel ``name``; return False if it was not subscribed."""
        ch = sub.channels.pop(name, None)
        if ch is None:
            return False
        self._leave(ch, sub)
        ch.waiting.pop(sub, None)
        self._unlag(sub, ch)
        return True

    def drop(self, sub: Subscriber) -> None:
        """Forget a subscriber entirely (its connection closed)."""
        for ch in sub.channels.values():
            self._leave(ch, sub)
            ch.waiting.pop(sub, None)
            self._unlag(sub, ch)
        sub.channels.clear()
        self.paused.pop(sub, None)
        self.wire_of.pop(sub, None)

    def replay(self, ch: Channel, since: int) -> list[bytes] | None:
        """Return the history frames after ``since``, or None if any of them is gone.

        ``since`` may fall inside one of this hub's messages: another gateway on the
        same feed batched the updates differently. That message's tail is re-encoded
        (:func:`tickwire.history.split`); the rest of the history follows as stored.
        """
        return ch.history.replay(since, ch.seq)

    # -- following a leading engine ----------------------------------------------------

    def invalidate(self, symbol: str) -> None:
        """Stop serving ``symbol``: the source knows its state has a hole.

        Its channels go silent (no deltas, no heartbeats) and new subscriptions wait,
        until :meth:`restore` loads a complete state.
        """
        for ch in self._channels_of(symbol):
            ch.stale = True
        self.incomplete.add(symbol)

    def revalidate(self, symbol: str) -> None:
        """Serve ``symbol`` again as it was: its chain proved intact (no snapshot sent).

        Subscriptions that waited meanwhile are served at the next flush.
        """
        for ch in self._channels_of(symbol):
            ch.stale = False
        self.incomplete.discard(symbol)

    def restore(self, snap: StateSnapshot) -> None:
        """Load the leader's complete state of one symbol and resnapshot its subscribers.

        The engine adopts ``snap`` (book, both seqs, recent trades, ticker statistics);
        the book and trades channels jump to the snapshot's seqs with their history
        cleared, so no resume can chain across the hole; every current subscriber of
        the three channels gets an explicit snapshot marked ``resumed: false``.
        """
        symbol = snap.symbol
        self.engine.restore(snap)
        self.incomplete.discard(symbol)
        self.restores += 1
        for ch in self._channels_of(symbol):
            ch.stale = False
            ch.pending = []
            if ch.kind == "book":
                ch.seq = snap.book_seq
            elif ch.kind == "trades":
                ch.seq = snap.trade_seq
            else:
                ch.ticker_due = True
            if ch.kind != "ticker":
                ch.history.clear()
            # Laggards must catch up with a snapshot: their seq is from before the hole.
            for sub, lag in ch.lagging.items():
                lag.seq = -1
                if sub not in self.paused and sub not in self.catching_up:
                    self.catching_up.append(sub)
            if ch.touched is not None:
                ch.touched.clear(ch.seq)
            if ch.subscribers or ch.groups:
                fresh = self.snapshot(ch, False)
                self._deliver(ch, text_frame(encode(fresh)), fresh)

    def reset(self, epoch: str) -> None:
        """Start the leader's new epoch ``epoch``: every symbol is empty and stale.

        Each symbol is served again after its :meth:`restore`; subscribers then get a
        snapshot in the new epoch (the SDK resets a channel on an epoch change).
        """
        self.engine.reset(epoch)
        for ch in self.channels.values():
            ch.stale = True
            ch.seq = 0
            ch.pending = []
            ch.history.clear()
        self.incomplete.update(self.engine.symbols)

    def add_symbol(self, symbol: str) -> None:
        """Serve a symbol a source found at run time (a leader's new symbol, an ingest).

        Its engine state and three channels are created empty and *stale*: like a
        symbol with a hole, it is served (subscriptions waiting meanwhile) once
        :meth:`restore` loads its first complete state. A known symbol is left alone.
        """
        if symbol in self._book_of:
            return
        state = self.engine.add_symbol(symbol)
        for kind, group, index in (
            ("book", self.books, self._book_of),
            ("trades", self.trades, self._trades_of),
            ("ticker", self.tickers, self._ticker_of),
        ):
            ch = Channel(f"{kind}.{symbol}", kind, state, self.history_limit)
            ch.stale = True
            self.channels[ch.name] = ch
            group.append(ch)
            index[symbol] = ch
        self.incomplete.add(symbol)

    def _channels_of(self, symbol: str) -> tuple[Channel, Channel, Channel]:
        return self._book_of[symbol], self._trades_of[symbol], self._ticker_of[symbol]

    def _serve_waiting(self, now: float) -> None:
        """Serve the waiting subscriptions whose channel can serve them now."""
        epoch_now = self.engine.epoch
        for ch in list(self.waiting):
            if ch.stale:
                continue
            waiting = ch.waiting
            for sub, (epoch, since, deadline) in list(waiting.items()):
                if since is not None and since > ch.seq and epoch == epoch_now:
                    if deadline is None:
                        waiting[sub] = (epoch, since, now + self.resume_wait)
                        continue
                    if now < deadline:
                        continue
                del waiting[sub]
                self._attach(sub, ch, epoch, since)
            if not waiting:
                del self.waiting[ch]

    def snapshot(self, ch: Channel, resumed: bool | None = None) -> Snapshot:
        """Build the snapshot of ``ch`` at its current ``seq`` (nothing may be pending)."""
        state = ch.state
        epoch = self.engine.epoch
        if ch.kind == "book":
            book = state.book
            return Snapshot(
                ch.name,
                ch.seq,
                epoch,
                bids=book.bids(),
                asks=book.asks(),
                checksum=book.checksum(),
                resumed=resumed,
            )
        if ch.kind == "trades":
            state.settle()
            return Snapshot(
                ch.name, ch.seq, epoch, trades=list(state.recent_trades), resumed=resumed
            )
        if isinstance(ch, PrivateChannel):
            return Snapshot(ch.name, ch.seq, epoch, orders=list(ch.recent), resumed=resumed)
        ticker = state.ticker(ch.name, ch.seq, ch.seq)
        return Snapshot(ch.name, ch.seq, epoch, ticker=ticker, resumed=resumed)

    # -- slow consumers ----------------------------------------------------------------

    def pause(self, sub: Subscriber, now: float) -> None:
        """Stop queueing book and ticker frames to ``sub``: its connection is backed up.

        Called when the connection's write buffer crosses the high watermark. Its book
        and ticker subscriptions start lagging (they will get one catch-up message after
        :meth:`resume`); its trades keep flowing, since trades are never merged.

        Args:
            sub: the subscriber whose transport paused writing.
            now: monotonic seconds, for the lag telemetry.
        """
        if sub in self.paused:
            return
        self.paused[sub] = now
        self.pauses += 1
        for ch in sub.channels.values():
            if ch.kind in CONFLATED_KINDS and self._leave(ch, sub):
                self._lag(sub, ch, now)

    def resume(self, sub: Subscriber) -> None:
        """Let ``sub`` catch up at the next :meth:`flush`: its buffer drained.

        Called when the connection's write buffer falls below the low watermark. The
        catch-up waits for the flush so that it is built with no update pending.
        """
        if self.paused.pop(sub, None) is not None:
            self.catching_up.append(sub)

    def _lag(self, sub: Subscriber, ch: Channel, now: float) -> None:
        ch.lagging[sub] = Lag(ch.seq, now)
        if ch.kind == "book" and ch.touched is None:
            ch.touched = LevelTracker(ch.seq)
        stats = sub.slow.get(ch.name)
        if stats is None:
            stats = sub.slow[ch.name] = SubscriptionStats()
        stats.lags += 1

    def _unlag(self, sub: Subscriber, ch: Channel) -> Lag | None:
        lag = ch.lagging.pop(sub, None)
        if lag is not None and not ch.lagging:
            ch.touched = None
        return lag

    @staticmethod
    def _track(ch: Channel, touched: LevelTracker, updates: list[BookUpdate], seq: int) -> None:
        """Record the levels of one batch ``(seq - len(updates), seq]`` for the laggards."""
        # The depth as last settled: settling here, per batch, would apply (or load)
        # what a relaying hub defers, for a threshold that needs no precision.
        bids, asks = ch.state.settled_depth()
        touched.track(updates, seq, bids + asks)

    def _catch_up_all(self, now: float) -> None:
        subs, self.catching_up = self.catching_up, []
        for sub in subs:
            if sub not in self.paused:  # paused again before its catch-up: keep lagging
                self._catch_up(sub, now)

    def _catch_up(self, sub: Subscriber, now: float) -> None:
        """Send each lagging subscription of ``sub`` one message and rejoin it."""
        frames: list[bytes] = []
        for ch in sub.channels.values():
            if ch.stale:
                continue  # keeps lagging: restore() queues its catch-up (a snapshot)
            # Read the level map before _unlag, which drops it with the last laggard.
            touched = ch.touched
            lag = self._unlag(sub, ch)
            if lag is None:
                continue
            stats = sub.slow[ch.name]
            stats.max_lag_s = max(stats.max_lag_s, now - lag.since)
            msg = self._catch_up_message(sub, ch, lag, touched)
            if msg is not None:
                frames.append(self._frame(sub, msg))
            self._join(ch, sub)
        if frames:
            if sub.deliver is not None:
                sub.deliver(b"".join(frames))
            else:
                if not sub.outbox:
                    self.dirty.append(sub)
                sub.outbox.extend(frames)
            self.frames_out += len(frames)
            self.bytes_out += sum(map(len, frames))

    def _catch_up_message(
        self,
        sub: Subscriber,
        ch: Channel,
        lag: Lag,
        touched: LevelTracker | None,
    ) -> Message | None:
        """Build the one message taking ``sub`` from ``lag.seq`` to ``ch.seq`` on ``ch``.

        ``touched`` is the channel's level tracker as it was while ``sub`` lagged (None
        for tickers).
        """
        if lag.seq == ch.seq:
            return None
        stats = sub.slow[ch.name]
        stats.max_lag_seq = max(stats.max_lag_seq, ch.seq - lag.seq)
        if ch.kind == "ticker":
            stats.conflated += 1
            stats.skipped += ch.seq - lag.seq - 1
            self.conflated += 1
            self.updates_skipped += ch.seq - lag.seq - 1
            return ch.state.ticker(ch.name, ch.seq, lag.seq)
        book = ch.state.book
        merged: list[BookUpdate] | None = None
        if touched is not None:
            bids, asks = book.depth()
            merged = touched.merged_since(lag.seq, bids + asks)
        skipped = ch.seq - lag.seq - (len(merged) if merged is not None else 0)
        stats.skipped += skipped
        self.updates_skipped += skipped
        if merged is None:
            stats.snapshots += 1
            self.conflated_snapshots += 1
            return self.snapshot(ch)
        stats.conflated += 1
        self.conflated += 1
        self.updates_out += len(merged)
        return Delta(ch.name, ch.seq, lag.seq, book.checksum(), merged)

    def lagging_subscriptions(self, now: float, limit: int = 20) -> list[dict[str, object]]:
        """Return the ``limit`` subscriptions lagging the most, for telemetry.

        See :func:`tickwire.lag.lagging_subscriptions` for the entries.
        """
        # The CONFLATED_KINDS: only they lag.
        return lagging_subscriptions((*self.books, *self.tickers), now, limit)
