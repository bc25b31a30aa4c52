"""Books kept some updates behind the stream, for ``stale_snapshot`` (Sans-I/O).

A book cannot be wound back (an update does not say what it replaced), so a
:class:`StaleBook` starts from a snapshot taken when the fault is loaded and is rolled
*forward*, one update at a time, through the channel's own history (the resume ring:
every delta the channel sent, in order) to exactly ``seq - N``. It is rolled forward
periodically while the fault is active, so the history it needs is never long gone;
when it is (or the book was replaced), it starts again from the live book, and the
next answers are less stale than asked until the stream has moved N updates on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..book import Book
from ..framing import frame_payload
from ..protocol import Delta, decode_message

__all__ = ["StaleBook"]

#: ``(seq, bids, asks)`` of the live book.
Current = Callable[[], tuple[int, Sequence[Sequence[str]], Sequence[Sequence[str]]]]
#: The channel's frames after a seq (None: the history does not reach back so far).
Replay = Callable[[int], list[bytes] | None]


class StaleBook:
    """One symbol's book behind its stream."""

    def __init__(self) -> None:
        self.book: Book | None = None
        self.seq = -1

    def reset(self, current: Current) -> None:
        """Start again from the live book."""
        seq, bids, asks = current()
        book = Book()
        book.load(bids, asks)
        self.book, self.seq = book, seq

    def at(self, target: int, current: Current, replay: Replay) -> tuple[int, Book]:
        """The book at the last message boundary at or before ``target`` (a seq the
        stream itself had), or the closest after it that can be had."""
        if self.book is None:
            self.reset(current)
        book = self.book
        assert book is not None
        if self.seq >= target:
            return self.seq, book
        frames = replay(self.seq)
        if frames is None:
            self.reset(current)
            assert self.book is not None
            return self.seq, self.book
        for frame in frames:
            msg = decode_message(frame_payload(frame))
            if not isinstance(msg, Delta):
                continue
            offset = self.seq - msg.prev_seq
            if offset < 0 or msg.seq - msg.prev_seq != len(msg.updates):
                self.reset(current)  # not a chain we can follow (a hole, a restore)
                assert self.book is not None
                return self.seq, self.book
            if msg.seq > target:
                break  # whole messages only: the book is at a seq the stream had
            for u in msg.updates[offset:]:
                book.apply(u.side, u.price, u.qty)
            self.seq = msg.seq
        return self.seq, book
