"""Counting what a feed delivers, one message at a time (Sans-I/O).

:class:`Tally` is the whole per-message work of ``tickwire bench``: given a message's
payload and the time it was received, it counts the message, its bytes and its updates,
checks the sequence chain of its channel and records the latency of each update. It has
no socket and reads no clock, so the counting rules are tested by feeding it bytes, and
the I/O workers (:mod:`tickwire.loadtest.worker`) stay a thin shell around it.

Counting rules (they are what ``docs/bench-tool.md`` documents):

- a *delivery* is one update reaching one connection: each element of a ``delta``'s
  ``updates`` and of a ``trades``' ``trades`` counts, and so does each ``ticker``;
  snapshots, acks, heartbeats and errors do not;
- a *gap* is a ``delta``/``trades``/``ticker`` whose ``prev_seq`` is not the last
  ``seq`` this connection saw on that channel, or a ``heartbeat`` whose ``seq`` is not;
  after a gap the chain continues from the new ``seq``;
- *latency* is receive time minus the update's ``ts`` (nanoseconds since the epoch, wall
  clock), one value per delivery;
- *bytes* are WebSocket bytes: payload plus the 2/4/10-byte server frame header; for a
  compressed (permessage-deflate) frame, the compressed payload as it came off the wire.

Every encoding is counted the same way: a binary frame (``tickwire.v1.msgpack``) is
decoded with msgpack into the same fields, an inflated payload is passed in with the
size its frame had on the wire.

Speed matters here more than anywhere else in tickwire: a load generator that is
slower than the server measures itself. Decoding goes through a msgspec Struct that
names only the fields used (``type``, ``ch``, ``seq``, ``prev_seq``, the entries'
``ts``), so msgspec skips everything else (prices, book levels) without building
objects for it, and the histogram update is inlined.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import TYPE_CHECKING

import msgspec

from .histogram import MAX_VALUE, SUB_BITS, Histogram

if TYPE_CHECKING:
    from ..dialects.decode import Event, VenueDecoder

__all__ = ["COUNTER_FIELDS", "Counters", "Tally"]

#: Names of the counters a :class:`Tally` keeps, in the order of :meth:`Tally.counters`.
COUNTER_FIELDS = (
    "messages",
    "bytes",
    "deliveries",
    "gaps",
    "snapshots",
    "heartbeats",
    "errors",
    "checksum_failures",
)


class Counters(msgspec.Struct, gc=False):
    """Counters of one tally, or of a window of it, or of many merged (plain sums)."""

    messages: int = 0
    bytes: int = 0
    deliveries: int = 0
    gaps: int = 0
    snapshots: int = 0
    heartbeats: int = 0
    errors: int = 0
    checksum_failures: int = 0

    def __add__(self, other: Counters) -> Counters:
        return Counters(*(getattr(self, f) + getattr(other, f) for f in COUNTER_FIELDS))

    def __sub__(self, other: Counters) -> Counters:
        return Counters(*(getattr(self, f) - getattr(other, f) for f in COUNTER_FIELDS))


class _Entry(msgspec.Struct, gc=False):
    ts: int = 0


class _Wire(msgspec.Struct, gc=False):
    """The fields of any server message that the bench reads; the rest is skipped."""

    type: str = ""
    ch: str = ""
    seq: int = -1
    prev_seq: int = -1
    ts: int = 0
    updates: list[_Entry] | None = None
    # A ``trades`` message lists trades; a ``ticker`` counts them (an integer).
    trades: list[_Entry] | int | None = None
    code: str = ""
    message: str = ""


_decode = msgspec.json.Decoder(_Wire).decode
_decode_msgpack = msgspec.msgpack.Decoder(_Wire).decode
_SHIFT_BASE = SUB_BITS + 1
_get_ts = operator.attrgetter("ts")
# Up to this many distinct ``ts`` in a batch, count each with list.count (C) rather
# than looping over the updates in Python.
_FEW = 8


class Tally:
    """Counters, sequence chains and the latency histogram of one or more connections.

    One tally per worker process is enough (its counters are per process); the
    sequence state is per connection and passed in as ``chain`` so that gaps are
    judged per connection and channel.

    Attributes:
        hist: latencies in nanoseconds of the updates since the last :meth:`clear_latency`.
        error_samples: the first few ``error`` messages the server sent (code: message).
    """

    __slots__ = (
        "bytes",
        "checksum_failures",
        "deliveries",
        "error_samples",
        "errors",
        "gaps",
        "heartbeats",
        "hist",
        "messages",
        "snapshots",
    )

    #: Most error messages kept verbatim.
    MAX_ERROR_SAMPLES = 5

    def __init__(self) -> None:
        self.messages = 0
        self.bytes = 0
        self.deliveries = 0
        self.gaps = 0
        self.snapshots = 0
        self.heartbeats = 0
        self.errors = 0
        self.checksum_failures = 0
        self.hist = Histogram()
        self.error_samples: list[str] = []

    def counters(self) -> Counters:
        """Return a copy of the counters (subtract two copies to get a window)."""
        return Counters(
            self.messages,
            self.bytes,
            self.deliveries,
            self.gaps,
            self.snapshots,
            self.heartbeats,
            self.errors,
            self.checksum_failures,
        )

    def clear_latency(self) -> None:
        """Forget recorded latencies: called when the warm-up ends."""
        self.hist.clear()

    def feed_venue(
        self,
        decoder: VenueDecoder,
        data: bytes | memoryview,
        now_ns: int,
        offset_ns: int = 0,
        size: int = -1,
    ) -> list[Event]:
        """Account for one frame of a venue's feed (``tickwire bench --dialect``).

        The venue's decoder keeps the connection's verified books; its events are
        counted by :meth:`count_events`. Returns them, for the caller to act on
        (a REST snapshot to fetch, a book to resubscribe).

        Args:
            decoder: the receiving connection's decoder.
            data: the frame's payload (inflated if it was compressed).
            now_ns: when it was received, in nanoseconds since the epoch (host clock).
            offset_ns: the venue's clock minus the host's, added to ``now_ns`` before
                the latency is taken.
            size: the payload's size on the wire when it differs from ``len(data)``.
        """
        n = len(data) if size < 0 else size
        self.messages += 1
        self.bytes += n + (2 if n < 126 else 4 if n < 65536 else 10)
        events = decoder.feed(data, now_ns)
        self.count_events(events, now_ns + offset_ns)
        return events

    def count_events(self, events: Sequence[Event], now_ns: int) -> None:
        """Count decoded venue events: a *delivery* is one level change of a book
        delta, one trade or one quote (snapshots are not); a ``gap`` or
        ``stale_snapshot`` hole is a gap, a ``checksum`` hole a checksum failure;
        latency is ``now_ns`` (venue clock) minus the event's venue time, for events
        that carry one."""
        from ..dialects.decode import Delta, Hole, Notice, Quote, Snapshot, Trades

        hist = self.hist
        for e in events:
            if isinstance(e, Delta):
                count = len(e.updates)
                self.deliveries += count
                if e.ts and count:
                    hist.record(now_ns - e.ts, count)
            elif isinstance(e, Trades):
                self.deliveries += len(e.trades)
                for t in e.trades:
                    if t.ts:
                        hist.record(now_ns - t.ts)
            elif isinstance(e, Quote):
                self.deliveries += 1
                if e.ts:
                    hist.record(now_ns - e.ts)
            elif isinstance(e, Snapshot):
                self.snapshots += 1
            elif isinstance(e, Hole):
                if e.reason == "checksum":
                    self.checksum_failures += 1
                elif e.reason in ("gap", "stale_snapshot"):
                    self.gaps += 1
            elif isinstance(e, Notice) and e.kind in ("error", "bad"):
                self.errors += 1
                if len(self.error_samples) < self.MAX_ERROR_SAMPLES:
                    self.error_samples.append(e.detail)

    def feed(
        self,
        chain: dict[str, int],
        data: bytes | memoryview,
        now_ns: int,
        binary: bool = False,
        size: int = -1,
    ) -> None:
        """Account for one server message.

        Args:
            chain: the receiving connection's last ``seq`` per channel; updated here.
            data: the message payload (a text frame's bytes; a view is fine, it is not
                kept), inflated if it was compressed.
            now_ns: when it was received, in nanoseconds since the epoch.
            binary: ``data`` is msgpack (a binary frame), not JSON.
            size: the payload's size on the wire when it differs from ``len(data)``
                (a compressed frame); -1 means ``len(data)``.

        Raises:
            msgspec.DecodeError: the payload is not a JSON object (msgpack map); the
                caller counts it as a protocol failure of the feed.
        """
        n = len(data) if size < 0 else size
        self.messages += 1
        self.bytes += n + (2 if n < 126 else 4 if n < 65536 else 10)
        msg = _decode_msgpack(data) if binary else _decode(data)
        kind = msg.type
        if kind == "delta":
            entries = msg.updates
        elif kind == "trades":
            entries = msg.trades if isinstance(msg.trades, list) else []
        elif kind == "ticker":
            entries = None
        elif kind == "heartbeat":
            self.heartbeats += 1
            last = chain.get(msg.ch)
            if last is not None and last != msg.seq:
                self.gaps += 1
            chain[msg.ch] = msg.seq
            return
        elif kind == "snapshot":
            self.snapshots += 1
            chain[msg.ch] = msg.seq
            return
        else:
            if kind == "error":
                self.errors += 1
                if len(self.error_samples) < self.MAX_ERROR_SAMPLES:
                    self.error_samples.append(f"{msg.code}: {msg.message}")
            return
        ch = msg.ch
        last = chain.get(ch)
        if last is not None and last != msg.prev_seq:
            self.gaps += 1
        chain[ch] = msg.seq
        hist = self.hist
        if entries is None:
            self.deliveries += 1
            hist.record(now_ns - msg.ts)
            return
        count = len(entries)
        if not count:
            return
        self.deliveries += count
        # From here on this is Histogram.record inlined for a whole batch, with the
        # per-update work pushed into C (map, min, max, sum, set, list.count): a Python
        # loop per update would cost more than decoding the message.
        tss = list(map(_get_ts, entries))
        low = now_ns - max(tss)
        high = now_ns - min(tss)
        if low < 0 or high > MAX_VALUE:
            for ts in tss:  # rare: a clock behind the server's, or a minute late
                hist.record(now_ns - ts)
            return
        hist.total += count
        hist.sum += count * now_ns - sum(tss)
        if high > hist.max:
            hist.max = high
        counts = hist.counts
        if low == high:
            # Typical: a source stamps a burst with one time, a batch carries one burst.
            s = high.bit_length() - _SHIFT_BASE
            counts[(s << SUB_BITS) + (high >> s) if s > 0 else high] += count
            return
        distinct = set(tss)
        if len(distinct) <= _FEW:
            for ts in distinct:
                d = now_ns - ts
                s = d.bit_length() - _SHIFT_BASE
                counts[(s << SUB_BITS) + (d >> s) if s > 0 else d] += tss.count(ts)
            return
        for ts in tss:
            d = now_ns - ts
            s = d.bit_length() - _SHIFT_BASE
            counts[(s << SUB_BITS) + (d >> s) if s > 0 else d] += 1
