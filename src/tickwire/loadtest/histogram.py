"""A fixed log-linear latency histogram whose merge is plain addition (Sans-I/O).

``tickwire bench`` records one latency per delivered update, in several processes at
once, and must combine them without losing precision. Quantile sketches (t-digest,
reservoirs) merge only approximately; a histogram with *fixed* buckets merges exactly by
adding counts bucket by bucket, whatever the order, in any number of processes.

The buckets are HdrHistogram-style log-linear: values below ``2 * SUB`` (``SUB`` = 32)
each get their own bucket, and every further power of two is cut into ``SUB`` equal
buckets. A value's bucket is therefore known to within 1/32 (about 3%) of the value,
at every scale from nanoseconds to minutes, with about 1,200 buckets in all. The index
is one ``bit_length`` and two shifts::

    shift = max(0, v.bit_length() - 6)
    index = shift * 32 + (v >> shift)

Values are integers (tickwire uses nanoseconds); negative values (a clock behind the
sender's) are counted apart, as ``negative``, and recorded as 0.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

__all__ = ["MAX_VALUE", "SUB_BITS", "Histogram", "bucket_bounds", "bucket_index"]

#: log2 of the buckets per power of two: 5 gives 32 buckets, under 3.2% relative width.
SUB_BITS = 5
_SUB = 1 << SUB_BITS
_SHIFT_BASE = SUB_BITS + 1

#: Largest value recorded exactly; larger ones land in the last bucket (2**36 ns ≈ 69 s).
MAX_VALUE = (1 << 36) - 1


def bucket_index(value: int) -> int:
    """Return the bucket of a non-negative integer ``value`` (clamped to MAX_VALUE)."""
    if value > MAX_VALUE:
        value = MAX_VALUE
    shift = value.bit_length() - _SHIFT_BASE
    if shift < 0:
        return value
    return (shift << SUB_BITS) + (value >> shift)


def bucket_bounds(index: int) -> tuple[int, int]:
    """Return the smallest and largest value that fall into bucket ``index``."""
    shift = (index >> SUB_BITS) - 1
    if shift <= 0:
        return index, index
    mantissa = index - (shift << SUB_BITS)
    return mantissa << shift, ((mantissa + 1) << shift) - 1


#: Number of buckets: one past the index of MAX_VALUE.
_NBUCKETS = bucket_index(MAX_VALUE) + 1


class Histogram:
    """Counts of integer values in fixed log-linear buckets.

    The hot path of a load generator should not call :meth:`record` per value; it may
    inline the index formula above and increment :attr:`counts` itself (see
    :class:`tickwire.loadtest.tally.Tally`), then add to :attr:`total` and :attr:`sum`.

    Attributes:
        counts: one count per bucket; length is fixed, so lists from any two
            histograms line up.
        total: number of values recorded (including ``negative`` ones).
        sum: sum of the (clamped at 0) values, for the mean.
        max: largest value recorded, exact (not bucketed).
        negative: values below zero, recorded as 0.
    """

    __slots__ = ("counts", "max", "negative", "sum", "total")

    def __init__(self) -> None:
        self.counts: list[int] = [0] * _NBUCKETS
        self.total = 0
        self.sum = 0
        self.max = 0
        self.negative = 0

    def record(self, value: int, count: int = 1) -> None:
        """Add ``count`` occurrences of ``value``."""
        if value < 0:
            self.negative += count
            value = 0
        self.counts[bucket_index(value)] += count
        self.total += count
        self.sum += value * count
        if value > self.max:
            self.max = value

    def merge(self, other: Histogram) -> None:
        """Add every count of ``other`` into this histogram (exact, order-free)."""
        counts = self.counts
        for i, c in enumerate(other.counts):
            if c:
                counts[i] += c
        self.total += other.total
        self.sum += other.sum
        self.negative += other.negative
        if other.max > self.max:
            self.max = other.max

    def clear(self) -> None:
        """Forget every value (used when a warm-up ends)."""
        self.counts = [0] * _NBUCKETS
        self.total = self.sum = self.max = self.negative = 0

    def quantile(self, q: float) -> int:
        """Return the value at quantile ``q`` (0..1), or 0 when the histogram is empty.

        The answer is the upper bound of the bucket holding the ``ceil(q * total)``-th
        smallest value, capped at the exact :attr:`max`: it never understates a latency
        and overstates it by under 1/32.
        """
        if self.total == 0:
            return 0
        rank = max(1, math.ceil(q * self.total))
        seen = 0
        for i, c in enumerate(self.counts):
            seen += c
            if seen >= rank:
                return min(bucket_bounds(i)[1], self.max)
        return self.max  # pragma: no cover - seen reaches total above

    def mean(self) -> float:
        """Return the mean of the recorded values (negative ones count as 0)."""
        return self.sum / self.total if self.total else 0.0

    # -- transport between processes ---------------------------------------------------

    def to_sparse(self) -> list[tuple[int, int]]:
        """Return ``(index, count)`` for the non-empty buckets (compact to pickle)."""
        return [(i, c) for i, c in enumerate(self.counts) if c]

    @classmethod
    def from_sparse(
        cls,
        buckets: Iterable[Sequence[int]],
        total: int,
        sum_: int,
        max_: int,
        negative: int = 0,
    ) -> Histogram:
        """Rebuild a histogram sent as :meth:`to_sparse` plus its scalar fields."""
        h = cls()
        for i, c in buckets:
            h.counts[i] += c
        h.total, h.sum, h.max, h.negative = total, sum_, max_, negative
        return h
