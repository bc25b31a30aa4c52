"""When the gateway's tick loop may run its next pass (Sans-I/O: times in, times out).

A push source (the bus) wakes the tick loop when its data arrives; the loop then relays
it at once, within two limits kept here:

* a subscriber gets at most one relayed write per period, and fewer when the writes
  are the bottleneck: after a pass that took longer than a period, the next one waits
  until the pass's duration divided by the pass share (:data:`MAX_PASS_SHARE` unless
  ``serve --pass-share`` says otherwise) has gone by since it began, at most
  :data:`MAX_SPACING_TICKS` periods (each write then carries more, and
  the core keeps room for the bus, requests and handshakes: an S2 relay went from 99%
  of a core to 52%). A reply queued meanwhile waits for the spacing too;
* while data keeps arriving, the clock ticks only for housekeeping,
  :data:`QUIET_TICKS` periods after the end of the last relayed pass. Counting from the
  *end* matters: a pass longer than that (S2's 1,000 writes) used to be followed by
  clock passes back to back, each running before the bus data behind it had come
  through nats-py's read loop and callback (three loop iterations), so relayed data
  waited three passes (S2: 20 ms at p50).

Clock-driven passes (the embedded market) are spaced by the same rule
(:func:`spacing`): a pass that overran its period is write-bound, and running the next
one at once only splits the same updates into more, smaller writes. At S2 (1,000
subscribers) back-to-back passes held the core at 100%; spaced, each write carries a
longer batch and the core keeps half its time for requests, handshakes and pings.

By default (``--tick-pacing pause``) a clock pass also waits one period after the
previous one *ended* (:func:`next_clock_pass`), as the peer servers' ``sleep(tick)``
loops do. Each subscriber write costs the kernel about the same whatever it carries, so
how often passes run sets the write rate, hence the CPU: at S1 a strict 1 ms clock
wrote 1.7 times as often as the pause does and spent 1.4 times its CPU
(docs/benchmarks.md).
"""

from __future__ import annotations

__all__ = [
    "MAX_PASS_SHARE",
    "MAX_SPACING_TICKS",
    "QUIET_TICKS",
    "ArrivalPacing",
    "next_clock_pass",
    "spacing",
]

#: While a push source keeps delivering, the clock ticks this many periods after the
#: last relayed pass (housekeeping only: the arrivals themselves drive the passes).
QUIET_TICKS = 5

#: Share of the time passes may take once they overrun their period (the default of
#: ``serve --pass-share``; 1 leaves write-bound passes unspaced).
MAX_PASS_SHARE = 0.5

#: The spacing never exceeds this many periods. A pass's time includes taking in the
#: backlog that built up during the spacing before it, so when that intake alone needs
#: half the core, spacing by twice the pass would grow without end; capped, such a
#: loop just runs flat out, as it did without pacing.
MAX_SPACING_TICKS = 10


def spacing(took: float, period: float, share: float = MAX_PASS_SHARE) -> float:
    """Time from a pass's start to the next one's, for a pass that took ``took``.

    Only a pass that overran its period is write-bound; a shorter one leaves the pace
    at the period (S1 at 1,000 bundles/s runs passes of ~0.5 ms). A write-bound pass
    may take ``share`` of the time.
    """
    if took <= period:
        return period
    return min(took / share, MAX_SPACING_TICKS * period)


def next_clock_pass(
    start: float, end: float, period: float, pause: bool, share: float = MAX_PASS_SHARE
) -> float:
    """Earliest start of the clock pass after one that ran from ``start`` to ``end``.

    With ``pause`` the next pass waits a full period after this one ended (a longer
    pass makes the next batch longer, not the writes more frequent); without it the
    passes keep a period apart, start to start. Either way a pass that overran is
    spaced (:func:`spacing`), unless ``share`` is 1 and the pause alone applies.
    """
    earliest = start + spacing(end - start, period, share)
    return max(earliest, end + period) if pause else earliest


class ArrivalPacing:
    """Earliest start of the next relayed pass, and the quiet clock's next tick.

    Args:
        period: the tick period in seconds (``--batch-ms``).
        share: the share of the time write-bound passes may take (``--pass-share``).
    """

    __slots__ = ("period", "share", "quiet", "last_start", "spacing")

    def __init__(self, period: float, share: float = MAX_PASS_SHARE) -> None:
        self.period = period
        self.share = share
        #: The clock's next deadline after a relayed pass, less the period the loop adds.
        self.quiet = (QUIET_TICKS - 1) * period
        self.last_start = float("-inf")
        self.spacing = period

    def earliest(self) -> float:
        """Monotonic time before which the next relayed pass must not start."""
        return self.last_start + self.spacing

    def passed(self, start: float, end: float) -> float:
        """Record a relayed pass from ``start`` to ``end``; return the clock deadline
        to use next (the loop adds one period to it before waiting)."""
        self.last_start = start
        self.spacing = spacing(end - start, self.period, self.share)
        return end + self.quiet
