"""Process settings for a hot loop (the gateway's tick loop, the publisher's)."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Coroutine
from typing import Any, TypeVar

import uvloop

__all__ = ["relax_gc", "run"]

_T = TypeVar("_T")


def relax_gc() -> None:
    """Freeze what start-up built and collect rarely.

    The hot paths allocate many short-lived containers and build no reference cycles;
    the default gen-0 threshold (700) spent ~20% of a gateway's core in the collector
    (bench/core_hotpath.py), and its full collections are millisecond pauses.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)


def run(main: Coroutine[Any, Any, _T], grace: float = 2.0) -> _T:
    """Run ``main`` on a new uvloop loop, then cancel what is left, waiting ``grace`` s.

    ``uvloop.run`` waits without limit for the tasks it cancels at the end, and a
    nats-py task can swallow that cancel (its flush wait catches ``CancelledError``)
    and then wait for ever: a publisher once hung at exit that way after SIGTERM. A
    task still running after ``grace`` is abandoned with the loop.
    """
    loop = uvloop.new_event_loop()
    try:
        return loop.run_until_complete(main)
    finally:
        try:
            left = asyncio.all_tasks(loop)
            for task in left:
                task.cancel()
            if left:
                loop.run_until_complete(asyncio.wait(left, timeout=grace))
            loop.run_until_complete(loop.shutdown_asyncgens())
            executor = asyncio.ensure_future(loop.shutdown_default_executor(), loop=loop)
            loop.run_until_complete(asyncio.wait({executor}, timeout=grace))
        finally:
            loop.close()
