"""A channel's history ring and resume (Sans-I/O).

Every message a channel sends is kept as its JSON frame with the seqs it spans,
``(prev_seq, seq, frame)``, in a ring bounded in bytes (the oldest go first, the
newest always stays). A client that reconnects with the last seq it holds is resumed
by :meth:`History.replay`: the frames after that seq, when the chain from it is still
complete -- otherwise the hub sends a fresh snapshot, never a silent hole.

Gateways that follow one feed (NATS) share its seqs but batch them differently, so a
client's ``since`` may fall inside one of this channel's messages: :func:`split`
re-encodes that message's tail.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator

from .framing import frame_payload, text_frame
from .protocol import Delta, Trades, decode_message, encode

__all__ = ["History", "split"]


class History:
    """The ring of ``(prev_seq, seq, frame)`` messages of one channel.

    Indexing, ``len`` and iteration give the entries oldest first.

    Args:
        limit: frame bytes kept; the newest message is kept even when larger.
    """

    __slots__ = ("ring", "size", "limit")

    def __init__(self, limit: int) -> None:
        self.ring: deque[tuple[int, int, bytes]] = deque()
        self.size = 0  # bytes of the frames in the ring
        self.limit = limit

    def __len__(self) -> int:
        return len(self.ring)

    def __iter__(self) -> Iterator[tuple[int, int, bytes]]:
        return iter(self.ring)

    def __getitem__(self, i: int) -> tuple[int, int, bytes]:
        return self.ring[i]

    def append(self, prev_seq: int, seq: int, frame: bytes) -> None:
        """Keep ``frame``, message ``(prev_seq, seq]``; drop the oldest past the limit."""
        ring = self.ring
        ring.append((prev_seq, seq, frame))
        self.size += len(frame)
        while self.size > self.limit and len(ring) > 1:
            self.size -= len(ring.popleft()[2])

    def clear(self) -> None:
        """Forget every message: no resume may chain across what comes next."""
        self.ring.clear()
        self.size = 0

    def replay(self, since: int, seq: int) -> list[bytes] | None:
        """Return the frames after ``since`` up to ``seq`` (the channel's), or None if
        any of them is gone.

        ``since`` may fall inside one of the messages: its tail is re-encoded
        (:func:`split`); the rest follows as stored.
        """
        if since == seq:
            return []
        if since > seq:
            return None
        ring = self.ring
        for i in range(len(ring) - 1, -1, -1):
            prev_seq, last, frame = ring[i]
            if prev_seq == since:
                return [ring[j][2] for j in range(i, len(ring))]
            if prev_seq < since:
                tail = split(frame, since) if since < last else None
                if tail is None:
                    return None
                return [tail] + [ring[j][2] for j in range(i + 1, len(ring))]
        return None


def split(frame: bytes, since: int) -> bytes | None:
    """Re-encode the part of a history message after ``since``, or None if it cannot.

    A delta's update ``i`` has seq ``prev_seq + 1 + i`` (history deltas are never
    conflated); its checksum is the state after its last update, which the tail shares.
    A trade carries its own seq as ``id``. Tickers are whole states with one seq each,
    so ``since`` never falls inside one.
    """
    msg = decode_message(frame_payload(frame))
    if isinstance(msg, Delta):
        if msg.seq - msg.prev_seq != len(msg.updates):
            return None
        tail = msg.updates[since - msg.prev_seq :]
        return text_frame(encode(Delta(msg.ch, msg.seq, since, msg.checksum, tail)))
    if isinstance(msg, Trades):
        trades = [t for t in msg.trades if t.id > since]
        if not trades or trades[0].id != since + 1:
            return None
        return text_frame(encode(Trades(msg.ch, msg.seq, since, trades)))
    return None
