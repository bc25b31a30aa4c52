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
from collections.abc import Callable, Iterator, Sequence
from typing import IO, Any

import msgspec

from ..exceptions import ConfigError
from ..protocol import Delta, Message, Snapshot, Trades, decode_message
from . import Batch, RawTrade, Sink

__all__ = ["MAX_UPDATES_PER_POLL", "ReplaySource", "parse_speed", "read_recording"]

log = logging.getLogger("tickwire.replay")

#: Updates one poll may emit at ``max`` speed (one tick's work).
MAX_UPDATES_PER_POLL = 20_000


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


def read_recording(path: str) -> tuple[dict[str, Any], Iterator[Message]]:
    """Open a recording: return its header and an iterator over its messages.

    Lines that are not tickwire messages are skipped (counted nowhere: a recording is
    written by ``tickwire record`` and only ends early, if at all).

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
            for line in f:
                try:
                    yield decode_message(line)
                except msgspec.DecodeError:
                    continue

    return header, messages()


def _symbol(ch: str) -> str:
    return ch.partition(".")[2]


class ReplaySource:
    """Plays a recording into a sink at ``speed`` (0: as fast as possible).

    Args:
        path: the NDJSON file ``tickwire record`` wrote.
        speed: 1 = recorded speed, 10 = ten times faster, 0 = max.

    Raises:
        ConfigError: the file is not a recording.
    """

    def __init__(self, path: str, speed: float = 1.0) -> None:
        self.path = path
        self.speed = speed
        self.header, self._messages = read_recording(path)
        self._next: Message | None = None
        self._sink: Sink | None = None
        self._t0 = 0.0
        self._rec0: int | None = None
        self._rec_now = 0
        self.generated = 0
        self.skipped = 0
        self.messages = 0
        self.restores = 0
        self.conflated = 0
        self.done = False

    @property
    def symbols(self) -> list[str]:
        """The symbols the recording's header lists."""
        return list(self.header.get("symbols", []))

    async def start(self, sink: Sink) -> None:
        """Load the recording's first snapshots: the books are complete from there."""
        self._sink = sink
        while True:
            msg = self._peek()
            if not isinstance(msg, Snapshot):
                break
            self._take()
            self._restore(msg)
        self._t0 = time.monotonic()

    def poll(self, now: float) -> Sequence[Batch]:
        """Return the recorded events due at ``now`` (stops before a snapshot, which
        is restored at the start of the next poll so that it follows what came before)."""
        if self.done:
            return ()
        out: list[Batch] = []
        budget = MAX_UPDATES_PER_POLL
        speed = self.speed
        horizon = (now - self._t0) * speed * 1e9
        while budget > 0:
            msg = self._peek()
            if msg is None:
                self.done = True
                log.info("replay of %s done: %d messages", self.path, self.messages)
                break
            if isinstance(msg, Snapshot):
                if out:
                    break
                self._take()
                self._restore(msg)
                continue
            if isinstance(msg, Delta):
                if not msg.updates:
                    self._take()
                    continue
                ts = msg.updates[0].ts
            elif isinstance(msg, Trades):
                if not msg.trades:
                    self._take()
                    continue
                ts = msg.trades[0].ts
            else:
                self._take()
                continue
            if self._rec0 is None:
                self._rec0 = ts
            self._rec_now = max(self._rec_now, ts - self._rec0)
            if speed and self._rec_now > horizon:
                break
            self._take()
            symbol = _symbol(msg.ch)
            assert self._sink is not None
            if symbol not in self._sink.engine.symbols:
                continue
            if isinstance(msg, Delta):
                if msg.seq - msg.prev_seq != len(msg.updates):
                    # A conflated delta (the recorder lagged): the book stays exact, the
                    # seq numbers drift from the recording's from here on.
                    self.conflated += 1
                out.append((symbol, msg.updates, []))
                budget -= len(msg.updates)
                self.generated += len(msg.updates)
            else:
                raw: list[RawTrade] = [(t.price, t.qty, t.side, t.ts) for t in msg.trades]
                out.append((symbol, [], raw))
                budget -= len(raw)
        return out

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
            "done": self.done,
        }

    # -- internals -----------------------------------------------------------------------

    def _peek(self) -> Message | None:
        if self._next is None:
            self._next = next(self._messages, None)
        return self._next

    def _take(self) -> None:
        self._next = None
        self.messages += 1

    def _restore(self, snap: Snapshot) -> None:
        sink = self._sink
        assert sink is not None
        symbol = _symbol(snap.ch)
        if symbol not in sink.engine.symbols:
            return
        state = sink.engine.export(symbol)
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
        self.restores += 1
        sink.restore(state)
