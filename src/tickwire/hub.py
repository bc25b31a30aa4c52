"""The hub: channels, sequencing, history, encode-once batching and fan-out (Sans-I/O).

Theory of operation
-------------------
Sources call :meth:`Hub.publish` with a symbol's new book updates and trades. The hub
applies them to the :class:`~tickwire.engine.Engine` at once (so snapshots are always
current) and appends them to the channel's *pending* batch. Once per tick the I/O layer
calls :meth:`Hub.flush`: each channel with pending data becomes **one** message, encoded
**once** and framed **once**; the frame goes into the history ring and its very same
``bytes`` object is appended to every subscriber's ``outbox``. Subscribers whose outbox
became non-empty are listed in :attr:`Hub.dirty`; the I/O layer writes each outbox with a
single ``write`` (all channels of a connection joined) and clears it.

Channel state::

    seq        last seq delivered to subscribers (book: updates, trades: trades,
               ticker: ticker messages)
    pending    updates applied to the engine but not yet sent
    history    ring of (prev_seq, seq, frame), bounded in bytes, for resume

A subscription flushes its channel first, so the snapshot's ``seq`` is exactly the
``prev_seq`` of the next delta: there is no window in which an update can fall between
the snapshot and the stream. A resume (epoch, since) replays the history frames that
chain from ``since`` when they are all still there; otherwise the client gets a fresh
snapshot marked ``resumed: false`` -- never a silent hole.

The hub never reads a clock: ``now`` (monotonic seconds) is passed in.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Protocol

from .engine import Engine, SymbolState
from .exceptions import RequestError
from .framing import text_frame
from .protocol import (
    BookUpdate,
    Delta,
    ErrorCode,
    Heartbeat,
    Snapshot,
    Ticker,
    Trade,
    Trades,
    decode_message,
    encode,
    parse_channel,
)

__all__ = ["Channel", "Hub", "Subscriber"]

RawTrade = tuple[str, str, str, int]


class Subscriber(Protocol):
    """What the hub needs from a connection.

    ``outbox`` collects the frames to write at the end of the tick; ``channels`` is
    owned by the hub (the channels this subscriber is in).
    """

    outbox: list[bytes]
    channels: dict[str, Channel]


class Channel:
    """One channel: its sequence, pending batch, history ring and subscribers."""

    __slots__ = (
        "name",
        "kind",
        "state",
        "seq",
        "pending",
        "subscribers",
        "history",
        "history_bytes",
        "last_sent",
        "ticker_due",
        "fault",
    )

    def __init__(self, name: str, kind: str, state: SymbolState) -> None:
        self.name = name
        self.kind = kind
        self.state = state
        self.seq = 0
        self.pending: list[BookUpdate] | list[Trade] = []
        self.subscribers: dict[Subscriber, None] = {}
        self.history: deque[tuple[int, int, bytes]] = deque()
        self.history_bytes = 0
        self.last_sent = 0.0
        self.ticker_due = False
        # Test-only fault for the next message (see Hub.inject_fault); None in production.
        self.fault: str | None = None


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
    ) -> None:
        self.engine = engine
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
                ch = Channel(f"{kind}.{symbol}", kind, state)
                self.channels[ch.name] = ch
                group.append(ch)
        self._book_of = {ch.state.symbol: ch for ch in self.books}
        self._trades_of = {ch.state.symbol: ch for ch in self.trades}
        self._ticker_of = {ch.state.symbol: ch for ch in self.tickers}
        self.dirty: list[Subscriber] = []
        # Counters: frames and bytes queued to subscribers, updates they carried.
        self.frames_out = 0
        self.bytes_out = 0
        self.updates_out = 0
        self.messages_built = 0

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

    # -- per tick ----------------------------------------------------------------------

    def flush(self, now: float) -> None:
        """Turn every pending batch into one message and queue it to subscribers."""
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
                self._send(ch, ch.seq, ch.seq + 1, self._ticker(ch, ch.seq + 1), 0)

    def heartbeats(self, now: float) -> None:
        """Queue a heartbeat on every subscribed channel silent for the interval."""
        limit = now - self.heartbeat_interval
        for ch in self.channels.values():
            if ch.subscribers and ch.last_sent <= limit:
                ch.last_sent = now
                frame = text_frame(encode(Heartbeat(ch.name, ch.seq)))
                self._deliver(ch, frame)

    def _flush_book(self, ch: Channel) -> None:
        updates: list[BookUpdate] = ch.pending  # type: ignore[assignment]
        ch.pending = []
        state = ch.state
        seq = ch.seq + len(updates)
        msg = Delta(ch.name, seq, ch.seq, state.book.checksum(), updates)
        self._send(ch, ch.seq, seq, encode(msg), len(updates))

    def _flush_trades(self, ch: Channel) -> None:
        trades: list[Trade] = ch.pending  # type: ignore[assignment]
        ch.pending = []
        seq = trades[-1].id
        self._send(ch, ch.seq, seq, encode(Trades(ch.name, seq, ch.seq, trades)), len(trades))

    def _ticker(self, ch: Channel, seq: int) -> bytes:
        return encode(self.ticker_message(ch.state, seq, ch.seq, ch.name))

    @staticmethod
    def ticker_message(state: SymbolState, seq: int, prev_seq: int, name: str) -> Ticker:
        """Build the ticker of ``state`` as message ``seq``."""
        bid = state.book.best_bid()
        ask = state.book.best_ask()
        return Ticker(
            name,
            seq,
            prev_seq,
            state.last_ts,
            bid=bid[0] if bid else None,
            bid_qty=bid[1] if bid else None,
            ask=ask[0] if ask else None,
            ask_qty=ask[1] if ask else None,
            last=state.last,
            open=state.open,
            high=str(state.high) if state.high is not None else None,
            low=str(state.low) if state.low is not None else None,
            volume=str(state.volume),
            trades=state.trade_count,
        )

    def _send(self, ch: Channel, prev_seq: int, seq: int, payload: bytes, updates: int) -> None:
        frame = text_frame(payload)
        ch.seq = seq
        self.messages_built += 1
        history = ch.history
        history.append((prev_seq, seq, frame))
        ch.history_bytes += len(frame)
        while ch.history_bytes > self.history_limit and len(history) > 1:
            ch.history_bytes -= len(history.popleft()[2])
        if ch.fault is not None:
            faulty = self._faulty(ch, frame)
            if faulty is None:
                return
            frame = faulty
        n = self._deliver(ch, frame)
        self.updates_out += updates * n

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
        # Skip the header by its length field: a length byte may itself be b"{" (0x7B).
        n = frame[1] & 0x7F
        msg = decode_message(frame[2 if n < 126 else 4 if n == 126 else 10 :])
        if isinstance(msg, Delta):
            msg.checksum ^= 0x5A5A5A5A
        return text_frame(encode(msg))

    def _deliver(self, ch: Channel, frame: bytes) -> int:
        subs = ch.subscribers
        if not subs:
            return 0
        dirty = self.dirty
        for sub in subs:
            outbox = sub.outbox
            if not outbox:
                dirty.append(sub)
            outbox.append(frame)
        n = len(subs)
        self.frames_out += n
        self.bytes_out += n * len(frame)
        return n

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
            del ch.subscribers[sub]
            del sub.channels[ch.name]
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
        resumed = False
        frames: list[bytes] | None = None
        if since is not None and epoch == self.engine.epoch:
            frames = self.replay(ch, since)
        if frames is not None:
            resumed = True
        else:
            frames = [text_frame(encode(self.snapshot(ch, None if since is None else False)))]
        if not sub.outbox and frames:
            self.dirty.append(sub)
        sub.outbox.extend(frames)
        ch.subscribers[sub] = None
        sub.channels[ch.name] = ch
        return resumed

    def unsubscribe(self, sub: Subscriber, name: str) -> bool:
        """Remove ``sub`` from channel ``name``; return False if it was not subscribed."""
        ch = sub.channels.pop(name, None)
        if ch is None:
            return False
        ch.subscribers.pop(sub, None)
        return True

    def drop(self, sub: Subscriber) -> None:
        """Forget a subscriber entirely (its connection closed)."""
        for ch in sub.channels.values():
            ch.subscribers.pop(sub, None)
        sub.channels.clear()

    def replay(self, ch: Channel, since: int) -> list[bytes] | None:
        """Return the history frames after ``since``, or None if any of them is gone."""
        if since == ch.seq:
            return []
        if since > ch.seq:
            return None
        history = ch.history
        for i in range(len(history) - 1, -1, -1):
            prev_seq = history[i][0]
            if prev_seq == since:
                return [history[j][2] for j in range(i, len(history))]
            if prev_seq < since:
                return None
        return None

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
            return Snapshot(
                ch.name, ch.seq, epoch, trades=list(state.recent_trades), resumed=resumed
            )
        ticker = self.ticker_message(state, ch.seq, ch.seq, ch.name)
        return Snapshot(ch.name, ch.seq, epoch, ticker=ticker, resumed=resumed)
