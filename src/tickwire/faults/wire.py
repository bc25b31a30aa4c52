"""What a targeted connection's frames go through (Sans-I/O).

A connection no fault targets keeps its direct ``transport.write``: the hub's shared
frame bytes go to it untouched and nothing here runs. A targeted connection's ``write``
is replaced by the I/O layer with one that passes its bytes (one frame or several
joined) through a :class:`FrameFilter` -- split into frames, book messages classified
by the protocol's hook (:class:`ProtocolHooks`: the native one here, the venues' in
their dialect modules; binary frames too, and deflated ones inflated message by message:
the native protocol's msgpack and permessage-deflate wires), then dropped, duplicated,
held back, corrupted (re-framed in the frame's own form) or replaced --
and then, while a ``latency`` or ``bandwidth`` fault is open, through a
:class:`Pacer` that says when each chunk may be written. The time is passed in.
"""

from __future__ import annotations

import random
import re
import zlib
from collections import deque
from collections.abc import Callable, Mapping
from typing import Protocol

import msgspec

from ..book import Book
from ..codec import Deflater, decode_msgpack, encode_msgpack
from ..dialects.markets import Markets
from ..dialects.rest import RestResponse
from ..framing import binary_frame, compressed_frame, split_frames, text_frame
from ..protocol import Delta, Heartbeat, Message, Snapshot, decode_message, encode
from .schedule import ActiveFault

__all__ = [
    "NATIVE",
    "BookMessage",
    "FrameFilter",
    "NativeHooks",
    "Pacer",
    "ProtocolHooks",
    "corrupt_number",
    "split_frames",
]

#: ``(tickwire symbol, kind, seq or None)``: a book message. ``kind`` is ``"update"``
#: (a diff: every message fault applies), ``"snapshot"`` (an in-band snapshot:
#: ``stale_snapshot`` only), or the name of a stream whose every push is a whole state
#: (OKX ``books5``, Binance ``depth5`` ...): ``gap``, ``duplicate`` and ``reorder`` apply,
#: never ``checksum`` (none of them carries one), and a reordered push is held behind
#: the next push of the same stream.
BookMessage = tuple[str, str, int | None]

#: Called with (fault, what was done) at each application: the listener's detail.
Applied = Callable[[ActiveFault, Mapping[str, object]], None]


class ProtocolHooks(Protocol):
    """What the fault engine must know of one protocol (native, or a venue's).

    Each dialect module has one (``binance.FAULT_HOOKS`` ...); the engine never looks
    inside a venue's messages by itself.
    """

    venue: str
    #: True when its book messages carry a checksum.
    has_checksum: bool

    def classify(self, payload: bytes, markets: Markets) -> BookMessage | None:
        """The book message ``payload`` is, or None (anything else)."""

    def corrupt_checksum(self, payload: bytes) -> bytes | None:
        """``payload`` with a wrong checksum (None: it carries none)."""

    def is_heartbeat(self, payload: bytes) -> bool:
        """True for the protocol's own heartbeat messages."""

    def notice(self, session: object, now_ms: int) -> bytes | None:
        """The venue's shutdown / maintenance notice (a payload), or None if it has none."""

    def rest_limited(self, status: int, retry_after: float, until_ms: int) -> RestResponse:
        """The venue's REST answer over its limit: 429, or 418 (banned until ``until_ms``)."""

    def stale_snapshot(self, payload: bytes, seq: int, book: Book) -> bytes | None:
        """The in-band book snapshot ``payload`` rendered from ``book`` at ``seq``
        instead (None: the protocol has no in-band snapshot)."""


_CHECKSUM = re.compile(rb'"checksum":(-?\d+)')


def corrupt_number(payload: bytes, pattern: re.Pattern[bytes]) -> bytes | None:
    """Flip the lowest bit of the first number ``pattern`` (one group) matches.

    Everything else keeps its bytes: prices and quantities are never re-formatted.
    """
    m = pattern.search(payload)
    if m is None:
        return None
    value = int(m.group(1)) ^ 1
    return payload[: m.start(1)] + str(value).encode() + payload[m.end(1) :]


_SEQ = re.compile(rb'"seq":(\d+)')


def _msgpack(payload: bytes) -> Message | None:
    """A native msgpack message, or None (not one)."""
    try:
        return decode_msgpack(payload)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


class NativeHooks:
    """The native protocol's book messages: ``delta`` and ``snapshot`` of ``book.*``,
    in JSON or msgpack (a payload not starting with ``{`` is msgpack: the filter hands
    over deflated messages inflated)."""

    venue = "native"
    has_checksum = True

    def classify(self, payload: bytes, markets: Markets) -> BookMessage | None:
        if not payload.startswith(b"{"):
            msg = _msgpack(payload)
            if isinstance(msg, Delta | Snapshot) and msg.ch.startswith("book."):
                return msg.ch[5:], "update" if isinstance(msg, Delta) else "snapshot", msg.seq
            return None
        if payload.startswith(b'{"type":"delta","ch":"book.'):
            kind = "update"
        elif payload.startswith(b'{"type":"snapshot","ch":"book.'):
            kind = "snapshot"
        else:
            return None
        start = payload.index(b'"ch":"book.') + 11
        symbol = payload[start : payload.index(b'"', start)].decode()
        m = _SEQ.search(payload)
        return symbol, kind, int(m.group(1)) if m else None

    def corrupt_checksum(self, payload: bytes) -> bytes | None:
        if not payload.startswith(b"{"):
            msg = _msgpack(payload)
            if not isinstance(msg, Delta | Snapshot) or msg.checksum is None:
                return None
            msg.checksum ^= 1
            return encode_msgpack(msg)
        return corrupt_number(payload, _CHECKSUM)

    def is_heartbeat(self, payload: bytes) -> bool:
        if not payload.startswith(b"{"):
            return isinstance(_msgpack(payload), Heartbeat)
        return payload.startswith(b'{"type":"heartbeat"')

    def position(self, payload: bytes) -> tuple[str, int] | None:
        """``(channel, seq the client is at before it)`` of a channel message: a
        message's ``prev_seq``, a heartbeat's ``seq``; None for anything else
        (snapshots included: they set a position rather than follow one)."""
        if payload.startswith(b"{"):
            try:
                msg = decode_message(payload)
            except (msgspec.DecodeError, msgspec.ValidationError):
                return None
        else:
            found = _msgpack(payload)
            if found is None:
                return None
            msg = found
        if isinstance(msg, Heartbeat):
            return msg.ch, msg.seq
        prev = getattr(msg, "prev_seq", None)
        ch = getattr(msg, "ch", None)
        if isinstance(prev, int) and isinstance(ch, str):
            return ch, prev
        return None

    def notice(self, session: object, now_ms: int) -> bytes | None:
        return None  # the native protocol closes with 1001 and a reason

    def rest_limited(self, status: int, retry_after: float, until_ms: int) -> RestResponse:
        if status == 418:
            body = {"error": "rate_limited", "message": f"banned until {until_ms} (ms)"}
        else:
            body = {"error": "rate_limited", "message": "too many requests"}
        return RestResponse(
            msgspec.json.encode(body), status, {"Retry-After": str(max(1, round(retry_after)))}
        )

    def stale_snapshot(self, payload: bytes, seq: int, book: Book) -> bytes | None:
        packed = not payload.startswith(b"{")
        snap = _msgpack(payload) if packed else decode_message(payload)
        if not isinstance(snap, Snapshot):
            return None
        snap.seq = seq
        snap.bids, snap.asks, snap.checksum = book.bids(), book.asks(), book.checksum()
        return encode_msgpack(snap) if packed else encode(snap)


NATIVE = NativeHooks()


#: First bytes of the frames the filter reads: text, binary, and both deflated.
_FORMS = (0x81, 0x82, 0xC1, 0xC2)
#: Compresses a corrupted or replaced deflated message again (each message on its own,
#: as the hub's: no context takeover).
_DEFLATER = Deflater()


def _payload(frame: bytes) -> bytes | None:
    """The message of a text or binary frame, inflated if it is deflated (RFC 7692,
    no context takeover: each message inflates on its own), else None."""
    first = frame[0]
    if first not in _FORMS:
        return None
    n = frame[1] & 0x7F
    payload = frame[2 if n < 126 else 4 if n == 126 else 10 :]
    if first & 0x40:
        try:
            return zlib.decompressobj(-zlib.MAX_WBITS).decompress(payload + b"\x00\x00\xff\xff")
        except zlib.error:
            return None
    return payload


def _reframe(frame: bytes, payload: bytes) -> bytes:
    """``payload`` framed as ``frame`` was (text or binary, deflated or not)."""
    first = frame[0]
    if first & 0x40:
        return compressed_frame(_DEFLATER.compress(payload), first & 0x0F == 0x2)
    return binary_frame(payload) if first == 0x82 else text_frame(payload)


#: Builds a stale replacement of a snapshot payload of (symbol, its seq or None),
#: ``updates`` back: (payload, stale seq), or None.
StaleBuilder = Callable[[bytes, str, "int | None", int], tuple[bytes, int] | None]


class FrameFilter:
    """The message-level faults of one connection.

    ``arm`` a timed fault to apply it to the next eligible book message; ``watch`` a
    random-mode fault to draw for every book message while its window is open;
    ``stall`` to drop everything (heartbeats optional) until a time; ``stale`` to
    replace the next in-band snapshots with stale ones (native).
    """

    def __init__(
        self,
        hooks: ProtocolHooks,
        markets: Callable[[], Markets],
        applied: Applied,
        stale: StaleBuilder | None = None,
        conn_id: int = 0,
    ) -> None:
        self.hooks = hooks
        self.conn_id = conn_id
        self._rngs: dict[int, random.Random] = {}
        self.markets = markets
        self.applied = applied
        self.stale_builder = stale
        #: Timed faults waiting for their book message: [fault, messages left].
        self.armed: list[list[object]] = []
        #: Random-mode faults targeting this connection.
        self.random: list[ActiveFault] = []
        #: In-band stale snapshot faults targeting this connection.
        self.stale: list[ActiveFault] = []
        self.stall_until = 0.0
        self.stall_start = 0.0
        self.stall_heartbeats = False
        #: A native stall with heartbeats: each channel's frozen seq (the last one the
        #: connection was sent) and when its next made-up heartbeat is due.
        self.frozen: dict[str, list[float]] = {}
        self.beat_interval = 1.0
        #: A reordered book message held back: ((symbol, kind), frame, since).
        self.held: tuple[tuple[str, str], bytes, float] | None = None
        self.dropped = 0

    def busy(self, now: float) -> bool:
        """True when :meth:`process` may change something."""
        return bool(self.armed or self.random or self.stale or self.held or now < self.stall_until)

    def arm(self, fault: ActiveFault) -> None:
        """Apply ``fault`` to the next eligible book message."""
        left = int(fault.spec.params.get("messages", 1))
        for entry in self.armed:
            if entry[0] is fault:  # fired again before a book message came: once
                entry[1] = left
                return
        self.armed.append([fault, left])

    def stall(
        self, until: float, heartbeats: bool, now: float = 0.0, interval: float = 1.0
    ) -> None:
        """Send nothing (but heartbeats, if asked) until ``until``.

        On the native protocol (its hooks have ``position``) the heartbeats are made
        up: :meth:`beats` gives, every ``interval``, one per channel carrying the seq
        the connection was last sent on it, as from a server whose channels went quiet.
        """
        if now >= self.stall_until:
            self.frozen = {}
        self.stall_until = max(self.stall_until, until)
        self.stall_heartbeats = heartbeats
        self.stall_start = now
        self.beat_interval = interval

    def beats(self, now: float) -> list[tuple[str, int]]:
        """The ``(channel, seq)`` heartbeats due at ``now`` on a stalled native connection."""
        if not self.frozen:
            return []
        if now >= self.stall_until:
            self.frozen = {}
            return []
        due = []
        for ch, entry in self.frozen.items():
            if entry[1] <= now:
                entry[1] = now + self.beat_interval
                due.append((ch, int(entry[0])))
        return due

    def _freeze(self, payload: bytes, now: float) -> None:
        """Learn a channel's frozen seq from the first message of it a stall drops."""
        position = getattr(self.hooks, "position", None)
        if position is None:
            return
        found = position(payload)
        if found is None or found[0] in self.frozen:
            return
        ch, seq = found
        if self.hooks.is_heartbeat(payload):
            # An idle channel: the hub's heartbeat would have gone now; ours goes at once.
            self.frozen[ch] = [seq, now]
        else:
            self.frozen[ch] = [seq, max(now, self.stall_start + self.beat_interval)]

    def release(self, now: float, after: float = 0.5) -> bytes:
        """A held (reordered) frame older than ``after`` seconds, to write now."""
        held = self.held
        if held is not None and now - held[2] >= after:
            self.held = None
            return held[1]
        return b""

    def process(self, data: bytes, now: float) -> bytes:
        """The bytes to write instead of ``data`` (possibly none)."""
        out: list[bytes] = []
        stalled = now < self.stall_until
        hooks = self.hooks
        for frame in split_frames(data):
            payload = _payload(frame)
            if stalled:
                if payload is not None and self.stall_heartbeats:
                    if hasattr(hooks, "position"):
                        self._freeze(payload, now)  # native: heartbeats are made up
                    elif hooks.is_heartbeat(payload):
                        out.append(frame)
                        continue
                self.dropped += 1
                continue
            book = hooks.classify(payload, self.markets()) if payload is not None else None
            if book is None or payload is None:
                out.append(frame)
                continue
            symbol, kind, seq = book
            if kind == "snapshot":
                out.append(self._snapshot(frame, payload, symbol, seq, now))
                continue
            self._update(out, frame, payload, symbol, kind, seq, now)
        return b"".join(out)

    def _snapshot(
        self, frame: bytes, payload: bytes, symbol: str, seq: int | None, now: float
    ) -> bytes:
        builder = self.stale_builder
        for fault in self.stale:
            if builder is None or not fault.symbol(symbol) or not fault.window_open(now):
                continue
            if not fault.draw():
                continue
            updates = int(fault.spec.params["updates"])
            stale = builder(payload, symbol, seq, updates)
            if stale is None:
                continue
            body, stale_seq = stale
            fault.applied += 1
            self.applied(
                fault,
                {
                    "symbol": symbol,
                    "seq": stale_seq,
                    "stream_seq": seq,
                    "where": "stream",
                    "venue": self.hooks.venue,
                },
            )
            return _reframe(frame, body)
        return frame

    def _pick(self, symbol: str, kind: str) -> ActiveFault | None:
        """The fault to apply to a book message of ``symbol``, if any."""
        for entry in self.armed:
            fault = entry[0]
            assert isinstance(fault, ActiveFault)
            if self._applies(fault, symbol, kind):
                left = entry[1]
                assert isinstance(left, int)
                if left <= 1:
                    self.armed.remove(entry)
                else:
                    entry[1] = left - 1
                return fault
        for fault in self.random:
            if self._applies(fault, symbol, kind) and self._draw(fault):
                return fault
        return None

    def _applies(self, fault: ActiveFault, symbol: str, kind: str) -> bool:
        """Whether ``fault`` can hit a book message of ``symbol`` on this protocol (a
        ``checksum`` fault needs a diff of a protocol with checksums: never Binance's,
        never a whole-state push)."""
        if not fault.symbol(symbol):
            return False
        return fault.spec.kind != "checksum" or (self.hooks.has_checksum and kind == "update")

    def _draw(self, fault: ActiveFault) -> bool:
        """A random-mode draw from this connection's own generator for ``fault``: the
        pattern a connection sees does not depend on the other connections."""
        rng = self._rngs.get(fault.id)
        if rng is None:
            rng = self._rngs[fault.id] = random.Random(
                f"{fault.spec.seed}:{fault.id}:{self.conn_id}:messages"
            )
        return rng.random() < fault.spec.probability

    def _update(
        self,
        out: list[bytes],
        frame: bytes,
        payload: bytes,
        symbol: str,
        kind: str,
        seq: int | None,
        now: float,
    ) -> None:
        held = self.held
        if held is not None and held[0] == (symbol, kind):
            # The message held back goes right after this one: their order is swapped.
            self.held = None
            out.append(frame)
            out.append(held[1])
            return
        fault = self._pick(symbol, kind)
        if fault is None:
            out.append(frame)
            return
        detail: dict[str, object] = {"symbol": symbol, "seq": seq, "venue": self.hooks.venue}
        if kind != "update":
            detail["stream"] = kind
        applies = fault.spec.kind
        if applies == "gap":
            detail["action"] = "dropped"
        elif applies == "duplicate":
            out.append(frame)
            out.append(frame)
            detail["action"] = "sent twice"
        elif applies == "reorder":
            if held is not None:
                out.append(frame)  # one held message at a time
                return
            self.held = ((symbol, kind), frame, now)
            detail["action"] = "held behind the next message"
        else:
            bad = self.hooks.corrupt_checksum(payload)
            if bad is None:
                out.append(frame)
                return
            out.append(_reframe(frame, bad))
            detail["action"] = "checksum corrupted"
        fault.applied += 1
        self.applied(fault, detail)


class Pacer:
    """When each chunk written to a connection may leave: added latency with jitter,
    and a bandwidth cap (bytes/s). Order is always kept.

    ``push`` a chunk with the time it was written; ``due(now)`` returns the bytes whose
    time has come and the time of the next one (None: nothing queued).
    """

    def __init__(self, draw: Callable[[], float]) -> None:
        self.draw = draw  # uniform in [-1, 1), seeded by the fault
        self.delay = 0.0
        self.jitter = 0.0
        self.rate = 0.0  # bytes/s, 0: no cap
        self.queue: deque[tuple[float, bytes]] = deque()
        self.size = 0
        self._last = 0.0

    @property
    def active(self) -> bool:
        """True while a latency or bandwidth fault is set, or chunks wait."""
        return bool(self.delay or self.jitter or self.rate or self.queue)

    def push(self, data: bytes, now: float) -> None:
        """Queue ``data`` written at ``now``."""
        at = now + self.delay
        if self.jitter:
            at += self.jitter * self.draw()
        start = max(at, self._last, now)
        if self.rate:
            start = max(start, self._last) + len(data) / self.rate
        self._last = start
        self.queue.append((start, data))
        self.size += len(data)

    def set(self, now: float, delay: float, jitter: float, rate: float) -> bool:
        """Take new settings; what waits is rescheduled with them from ``now``
        (a lifted cap lets the backlog go at once). False: nothing changed."""
        if (delay, jitter, rate) == (self.delay, self.jitter, self.rate):
            return False
        self.delay, self.jitter, self.rate = delay, jitter, rate
        queued = list(self.queue)
        self.queue.clear()
        self.size = 0
        self._last = 0.0
        for written, data in queued:
            self.push(data, min(written, now))
        return True

    def due(self, now: float) -> tuple[bytes, float | None]:
        """The bytes to write at ``now``, and when the next chunk is due."""
        queue = self.queue
        out = []
        while queue and queue[0][0] <= now:
            out.append(queue.popleft()[1])
        data = b"".join(out)
        self.size -= len(data)
        return data, queue[0][0] if queue else None
