"""Replay an NDJSON recording (``tickwire record``) as a market source.

A recording is what a gateway streamed to one client: a header line, then every server
message verbatim, one JSON object per line (``docs/scaling.md``). Replaying it feeds the
engine the same events in the same order with their recorded event times (``ts``), so
the books -- and, as long as the recording has no conflated delta, the ``seq`` numbers --
end exactly as the recorded client saw them:

* a ``snapshot`` restores that channel's part of the symbol's state
  (:meth:`~tickwire.hub.Hub.restore`: book and seq, or recent trades and trade seq, or
  ticker statistics) -- the first ones seed the books, a later one is replayed as the
  explicit resnapshot it was;
* a ``delta`` is a batch of book updates, ``trades`` a batch of trades (the engine
  numbers them again from the restored seq: the same ids);
* ``ack``, ``ticker``, ``heartbeat`` lines and unknown symbols are skipped.

Pacing: an event is due when the recording's clock (its ``ts``, kept monotonic) minus
the first event's reaches the elapsed time times ``speed``; ``max`` (speed 0) plays as
fast as the tick loop allows, :data:`MAX_UPDATES_PER_POLL` updates per tick so clients
are still served meanwhile. The replayed updates keep their recorded ``ts``: latency
measured against them is meaningless, which is the point when reproducing an incident.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import IO, Any

import msgspec

from ..engine import Engine, StateSnapshot, new_epoch
from ..exceptions import ConfigError, ReplayControlError
from ..protocol import BookUpdate, Delta, Message, Snapshot, Trades, decode_message
from ..replayclock import ReplayClock, format_time
from . import Batch, RawTrade, Sink

__all__ = ["MAX_UPDATES_PER_POLL", "ReplaySource", "parse_speed", "read_recording"]

log = logging.getLogger("tickwire.replay")

#: Updates one poll may emit at ``max`` speed (one tick's work).
MAX_UPDATES_PER_POLL = 20_000

#: Updates a seek applies per tick (to a private engine: no encode, no fan-out).
SEEK_UPDATES_PER_POLL = 200_000


def parse_speed(spec: str) -> float:
    """Turn ``"1"``, ``"x10"``, ``"0.5"`` or ``"max"`` into a speed factor (0 = max).

    Raises:
        ConfigError: not a positive number, ``xN`` or ``max``.
    """
    text = spec.strip().lower()
    if text == "max":
        return 0.0
    try:
        speed = float(text.removeprefix("x"))
    except ValueError:
        raise ConfigError(f"--replay-speed must be a number, xN or max, not {spec!r}") from None
    if not speed > 0:
        raise ConfigError("--replay-speed must be positive")
    return speed


def read_recording(
    path: str, on_bad: Callable[[int], None] | None = None
) -> tuple[dict[str, Any], Iterator[Message]]:
    """Open a recording: return its header and an iterator over its messages.

    Lines that are not tickwire messages are skipped, each reported to ``on_bad`` with
    its line number (a lost delta also shows as a seq gap, which the replay checks).

    Raises:
        ConfigError: the file cannot be opened or has no recording header.
    """
    try:
        f: IO[bytes] = open(path, "rb")  # noqa: SIM115 -- closed by the iterator
    except OSError as exc:
        raise ConfigError(f"cannot read recording {path!r}: {exc.strerror}") from None
    first = f.readline()
    try:
        header = msgspec.json.decode(first)
    except msgspec.DecodeError:
        header = None
    if not isinstance(header, dict) or header.get("type") != "recording":
        f.close()
        raise ConfigError(f"{path!r} is not a tickwire recording (no header line)")

    def messages() -> Iterator[Message]:
        with f:
            for number, line in enumerate(f, 2):
                try:
                    yield decode_message(line)
                except msgspec.DecodeError:
                    if on_bad is not None and line.strip():
                        on_bad(number)

    return header, messages()


def _symbol(ch: str) -> str:
    return ch.partition(".")[2]


class _Shadow:
    """A sink onto a private engine: a seek applies the recording to it, unseen."""

    batch = True

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.incomplete: set[str] = set()

    def publish(self, symbol: str, updates: list[BookUpdate], trades: Iterable[RawTrade]) -> None:
        if updates:
            self.engine.apply_book(symbol, updates)
        self.engine.apply_trades(symbol, trades)

    def restore(self, snap: StateSnapshot) -> None:
        self.engine.restore(snap)

    def invalidate(self, symbol: str) -> None:
        """A hole found while seeking: the symbol stays stale after the seek."""


class ReplaySource:
    """Plays a recording into a sink at ``speed`` (0: as fast as possible).

    Pause, resume, speed and seek (the admin API, :mod:`tickwire.server.replay_admin`)
    move one :class:`~tickwire.replayclock.ReplayClock` that every client shares. A
    seek applies the recording up to the target to a private engine (forward: from the
    current books; backward: from the start of the file), then starts a new epoch with
    those books: clients get a snapshot, never the intermediate states.

    Args:
        path: the NDJSON file ``tickwire record`` wrote.
        speed: 1 = recorded speed, 10 = ten times faster, 0 = max.

    Raises:
        ConfigError: the file is not a recording.
    """

    def __init__(self, path: str, speed: float = 1.0) -> None:
        self.path = path
        self.clock = ReplayClock(speed)
        self.header, self._messages = read_recording(path, self._bad_line)
        self._next: Message | None = None
        # Integrity of the recording itself: each channel's recorded seq, the symbols
        # with a hole (the channel kinds that broke), and their state meanwhile.
        self._rec_seq: dict[str, int] = {}
        self._broken: dict[str, set[str]] = {}
        self._held = Engine([])
        self.problems: dict[str, int] = {}
        self._seen: set[tuple[str, str | None]] = set()
        self._counted_until = -1
        self._sink: Sink | None = None
        self._last_ts = 0
        self._seek_to: int | None = None
        self._shadow: _Shadow | None = None
        self.seeks = 0
        self.generated = 0
        self.skipped = 0
        self.messages = 0
        self.restores = 0
        self.conflated = 0
        self.done = False

    @property
    def speed(self) -> float:
        """The current speed factor (0: max)."""
        return self.clock.speed

    @property
    def symbols(self) -> list[str]:
        """The symbols the recording's header lists."""
        return list(self.header.get("symbols", []))

    async def start(self, sink: Sink) -> None:
        """Load the recording's first snapshots: the books are complete from there."""
        self._sink = sink
        first = self._first_ts(sink)
        if first is None:
            self.done = True
            return
        self.clock.start(first, time.monotonic())

    def poll(self, now: float) -> Sequence[Batch]:
        """Return the recorded events due at ``now`` (stops before a snapshot, which
        is restored at the start of the next poll so that it follows what came before)."""
        if self._seek_to is not None:
            self._seek_step(now)
            return ()
        if self.done:
            return ()
        assert self._sink is not None
        return self._run(self.clock.due(now), self._sink, MAX_UPDATES_PER_POLL, direct=False)

    def on_arrival(self, callback: Callable[[], None]) -> None:
        """Polled on the clock: nothing arrives by itself."""

    def burst(self, now: float) -> None:
        """A recording's flow is what it is."""
        log.info("burst ignored: replaying %s", self.path)

    async def stop(self) -> None:
        """Nothing to release (the file closes when it is read to the end)."""

    def stats(self) -> dict[str, Any]:
        """Progress of the replay."""
        return {
            "kind": "replay",
            "path": self.path,
            "speed": self.speed or "max",
            "messages": self.messages,
            "updates": self.generated,
            "restores": self.restores,
            "conflated": self.conflated,
            "problems": dict(self.problems),
            "stale": sorted(self._broken),
            "seeks": self.seeks,
            "done": self.done,
        }

    # -- replay control (the admin API) ----------------------------------------------------

    @property
    def seeking(self) -> bool:
        return self._seek_to is not None

    def replay_state(self, now: float) -> dict[str, Any]:
        """Where the replay stands: the shared clock, speed, pause, seek, progress."""
        return {
            "kind": "replay",
            **self.clock.state(now),
            "seeking": self._seek_to is not None,
            "done": self.done,
            "files": [{"path": self.path, "layout": "tickwire", "messages": self.messages}],
            "problems": dict(self.problems),
        }

    def pause(self, now: float) -> None:
        self.clock.pause(now)

    def resume(self, now: float) -> None:
        self.clock.resume(now)

    def set_speed(self, speed: float, now: float) -> None:
        self.clock.set_speed(speed, now)

    def seek(self, target_ns: int, now: float) -> None:
        """Go to data time ``target_ns``, over the next ticks (:attr:`seeking`)."""
        sink = self._sink
        assert sink is not None
        if target_ns < self._last_ts or self.clock.position is None:
            # Backward (from what was applied, seek in progress included): re-read.
            try:
                self.header, self._messages = read_recording(self.path, self._bad_line)
            except ConfigError as exc:
                raise ReplayControlError(f"cannot re-read the recording: {exc}", 409) from None
            self._counted_until = max(self._counted_until, self._last_ts)
            self._next = None
            self._last_ts = 0
            self._rec_seq.clear()
            self._broken.clear()
            self._held = Engine([])
            self.done = False
            self._shadow = _Shadow(Engine(sink.engine.symbols))
        elif self._shadow is None:
            engine = Engine(sink.engine.symbols)
            for symbol in sink.engine.symbols:
                engine.restore(sink.engine.export(symbol))
            self._shadow = _Shadow(engine)
        # else: a seek in progress goes on, further.
        self._seek_to = target_ns
        self.seeks += 1
        for symbol in sink.engine.symbols:
            sink.invalidate(symbol)
        log.info("replay: seeking to %s", format_time(target_ns))

    # -- internals -----------------------------------------------------------------------

    def _run(self, due: float, sink: Sink | _Shadow, budget: int, *, direct: bool) -> list[Batch]:
        """Play the messages due by data time ``due`` into ``sink`` (``direct``: publish
        each batch at once, a seek's catch-up) or return them (a tick's)."""
        out: list[Batch] = []
        while budget > 0:
            msg = self._peek()
            if msg is None:
                if not self.done:
                    self.done = True
                    log.info("replay of %s done: %d messages", self.path, self.messages)
                break
            if isinstance(msg, Snapshot):
                if out:
                    break
                self._take()
                self._restore(msg, sink)
                continue
            ts = self._ts(msg)
            if ts is None:
                self._take()
                continue
            ts = max(ts, self._last_ts)
            if ts > due:
                break
            self._take()
            self._last_ts = ts
            self.clock.played(ts)
            assert isinstance(msg, Delta | Trades)
            symbol = _symbol(msg.ch)
            if symbol not in sink.engine.symbols:
                continue
            kind = msg.ch.partition(".")[0]
            prev = self._rec_seq.get(msg.ch)
            self._rec_seq[msg.ch] = msg.seq
            if prev is not None and msg.prev_seq != prev:
                detail = f"{msg.ch} jumps from seq {prev} to a message after {msg.prev_seq}"
                self._problem("gap", symbol, detail, ts)
                self._break(symbol, kind, sink)
            broken = self._broken.get(symbol)
            if broken is not None:
                # Not served; the channels that are whole still keep their state.
                if kind not in broken:
                    if isinstance(msg, Delta):
                        self._held.apply_book(symbol, msg.updates)
                    else:
                        trades = [(t.price, t.qty, t.side, t.ts) for t in msg.trades]
                        self._held.apply_trades(symbol, trades)
                continue
            if isinstance(msg, Delta):
                if msg.seq - msg.prev_seq != len(msg.updates):
                    # A conflated delta (the recorder lagged): the book stays exact, the
                    # seq numbers drift from the recording's from here on.
                    self.conflated += 1
                batch: Batch = (symbol, msg.updates, [])
                budget -= len(msg.updates)
                if not direct:
                    self.generated += len(msg.updates)
            else:
                raw: list[RawTrade] = [(t.price, t.qty, t.side, t.ts) for t in msg.trades]
                batch = (symbol, [], raw)
                budget -= len(raw)
            if direct:
                sink.publish(*batch)
            else:
                out.append(batch)
        return out

    def _seek_step(self, now: float) -> None:
        target, shadow, sink = self._seek_to, self._shadow, self._sink
        assert target is not None and shadow is not None and sink is not None
        before = self.messages
        self._run(target, shadow, SEEK_UPDATES_PER_POLL, direct=True)
        nxt = self._peek()
        if nxt is not None and self.messages - before and self._due_within(nxt, target):
            return  # more next tick
        self._seek_to = self._shadow = None
        sink.reset(new_epoch())
        for symbol in sink.engine.symbols:
            if symbol in self._broken:
                continue  # a hole in the recording: stale until its snapshots
            snap = shadow.engine.export(symbol)
            sink.restore(msgspec.structs.replace(snap, epoch=sink.engine.epoch))
        self.clock.seek(target, now)
        log.info("replay: at %s (epoch %s)", format_time(target), sink.engine.epoch)

    def _due_within(self, msg: Message, target: int) -> bool:
        if isinstance(msg, Snapshot):
            return True
        ts = self._ts(msg)
        return ts is None or max(ts, self._last_ts) <= target

    def _first_ts(self, sink: Sink) -> int | None:
        """Restore the snapshots before the first delta or trade; return its time."""
        while True:
            msg = self._peek()
            if msg is None:
                return None
            if isinstance(msg, Snapshot):
                self._take()
                self._restore(msg, sink)
                continue
            ts = self._ts(msg)
            if ts is not None:
                return ts
            self._take()

    @staticmethod
    def _ts(msg: Message) -> int | None:
        if isinstance(msg, Delta):
            return msg.updates[0].ts if msg.updates else None
        if isinstance(msg, Trades):
            return msg.trades[0].ts if msg.trades else None
        return None

    def _peek(self) -> Message | None:
        if self._next is None:
            self._next = next(self._messages, None)
        return self._next

    def _take(self) -> None:
        self._next = None
        self.messages += 1

    def _bad_line(self, number: int) -> None:
        detail = f"{self.path}:{number}: not a tickwire message"
        self._problem("bad_line", None, detail, self._last_ts)

    def _problem(self, kind: str, symbol: str | None, detail: str, ts: int) -> None:
        if ts <= self._counted_until:
            return  # a seek re-reads what was played: counted and logged already
        self.problems[kind] = self.problems.get(kind, 0) + 1
        if (kind, symbol) not in self._seen:
            self._seen.add((kind, symbol))
            log.warning(
                "replay data problem %s%s: %s (further ones of this kind and symbol are "
                "only counted)",
                kind,
                f" on {symbol}" if symbol else "",
                detail,
            )

    def _break(self, symbol: str, kind: str, sink: Sink | _Shadow) -> None:
        """A hole in ``symbol``'s ``kind`` channel: stale until that channel's next
        snapshot in the recording (the others go on in :attr:`_held`)."""
        broken = self._broken.get(symbol)
        if broken is None:
            broken = self._broken[symbol] = set()
            self._held.add_symbol(symbol)
            self._held.restore(sink.engine.export(symbol))
            sink.invalidate(symbol)
        broken.add(kind)

    def _restore(self, snap: Snapshot, sink: Sink | _Shadow) -> None:
        symbol = _symbol(snap.ch)
        if symbol not in sink.engine.symbols:
            return
        self._rec_seq[snap.ch] = snap.seq
        broken = self._broken.get(symbol)
        base = self._held if broken is not None else sink.engine
        state = base.export(symbol)
        kind = snap.ch.partition(".")[0]
        if kind == "book":
            state = msgspec.structs.replace(
                state, book_seq=snap.seq, bids=snap.bids or [], asks=snap.asks or []
            )
        elif kind == "trades":
            state = msgspec.structs.replace(state, trade_seq=snap.seq, trades=snap.trades or [])
        elif snap.ticker is not None:
            t = snap.ticker
            state = msgspec.structs.replace(
                state,
                last=t.last,
                open=t.open,
                high=t.high,
                low=t.low,
                volume=t.volume,
                trade_count=t.trades,
                last_ts=t.ts,
            )
        if broken is not None:
            broken.discard(kind)
            if broken:
                self._held.restore(state)  # still waiting for another channel's
                return
            del self._broken[symbol]
            del self._held.symbols[symbol]
        self.restores += 1
        sink.restore(state)
