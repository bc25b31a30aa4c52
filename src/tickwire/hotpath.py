"""Process settings for a hot loop (the gateway's tick loop, the publisher's)."""

from __future__ import annotations

import gc

__all__ = ["relax_gc"]


def relax_gc() -> None:
    """Freeze what start-up built and collect rarely.

    The hot paths allocate many short-lived containers and build no reference cycles;
    the default gen-0 threshold (700) spent ~20% of a gateway's core in the collector
    (bench/core_hotpath.py), and its full collections are millisecond pauses.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)
