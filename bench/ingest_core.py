"""Ingest throughput into the leading process on one core, beside the simulator path.

``python bench/ingest_core.py`` (one command, about a minute) builds ingest messages
with the example feeder's model (``examples/ingest/feeder.py``: ``--symbols`` symbols,
``--bundle`` level changes per message, interleaved as a NATS subscription delivers
them), then times, on one core and in alternating rounds:

* ``feed``: :meth:`tickwire.ingest.IngestFeed.receive` alone (msgspec decode, decimals,
  seqs, the book applied once and validated, checksum, ``delta`` JSON, numbering);
* ``leader``: what ``tickwire publish --ingest`` does between NATS and NATS: the
  ingest source's :meth:`poll` (every ``--per-poll`` messages, as a tick takes what
  arrived) relaying into the publisher's :class:`~tickwire.publisher.BusSink`, and the
  bus bundles encoded (:func:`tickwire.sources.bus.bundles`);
* ``sim``: the publisher's embedded simulator path for the same work: the compiled
  market (``--symbols`` symbols at S1's 20,000 updates/s each, 1 ms passes) relayed into
  a ``BusSink`` and bundled. The reference: ``leader / sim`` is the ratio to compare
  across machines, since both share whatever else the machine runs.

``--market-core python`` runs the ingest book in pure Python (``ingest.PyLevels``, the
same bytes). Prints one line per mode per round, then the median, range and the median
ratio. Level changes/s are per second of this process's CPU time in the timed loop
(``time.process_time``: per core, and steadier than wall time on a shared machine;
still, read the ratios).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples" / "ingest"))
from feeder import Feeder  # noqa: E402

from tickwire.engine import Engine  # noqa: E402
from tickwire.ingest import IngestFeed, Publish  # noqa: E402
from tickwire.publisher import BusSink  # noqa: E402
from tickwire.simulator import MarketSimulator  # noqa: E402
from tickwire.sources.bus import bundles  # noqa: E402
from tickwire.sources.ingest import StreamIngestSource  # noqa: E402
from tickwire.sources.simulated import SimulatorSource  # noqa: E402

CORES = {"auto": None, "c": True, "python": False}


def messages(args: argparse.Namespace) -> tuple[list[tuple[str, bytes]], list[tuple[str, bytes]]]:
    """Snapshots and data messages ``(symbol, payload)``, symbols interleaved."""
    enc: Any = (
        msgspec.msgpack.encode
        if args.encoding == "msgpack"
        else (lambda m: json.dumps(m, separators=(",", ":")).encode())
    )
    feeders = [Feeder(None, f"SYM{i}", kind=args.kind, seed=i + 1) for i in range(args.symbols)]
    snaps = [(f.symbol, enc(f.snapshot())) for f in feeders]
    per = max(1, args.messages // args.symbols)
    data = [(f.symbol, enc(f.next_message(args.bundle))) for _ in range(per) for f in feeders]
    return snaps, data


def run_feed(
    args: argparse.Namespace, snaps: list[tuple[str, bytes]], data: list[tuple[str, bytes]]
) -> tuple[int, float]:
    feed = IngestFeed(core=CORES[args.market_core])
    for symbol, payload in snaps:
        feed.receive(symbol, payload, 0.0)
    feed.out.clear()
    receive = feed.receive
    changes = 0
    gc.collect()
    t0 = time.process_time()
    for symbol, payload in data:
        receive(symbol, payload, 0.0)
        out, feed.out = feed.out, []
        for action in out:
            if isinstance(action, Publish):
                changes += action.book - action.prev_book
    dt = time.process_time() - t0
    assert sum(feed.rejected.values()) == 0, feed.rejected
    return changes, dt


async def _nothing() -> Any:
    yield b""


def run_leader(
    args: argparse.Namespace, snaps: list[tuple[str, bytes]], data: list[tuple[str, bytes]]
) -> tuple[int, float]:
    sink = BusSink(Engine([]), "tickwire")
    source = StreamIngestSource(_nothing(), core=CORES[args.market_core])
    source._attach(sink)
    for symbol, payload in snaps:
        source._queue(symbol, payload, False)
    for _ in source.poll(0.0):
        raise AssertionError("a relaying sink gets no batches back")
    sink.out.clear()
    queue, poll = source._queue, source.poll
    per_poll = args.per_poll
    updates0 = sink.updates
    payloads = 0
    gc.collect()
    t0 = time.process_time()
    for i, (symbol, payload) in enumerate(data, 1):
        queue(symbol, payload, False)
        if i % per_poll == 0 or i == len(data):
            for _ in poll(0.0):
                pass
            out, sink.out = sink.out, []
            payloads += len(bundles(out))
    dt = time.process_time() - t0
    assert sum(source.feed.rejected.values()) == 0, source.feed.rejected
    assert not sink.incomplete, sink.incomplete
    return sink.updates - updates0, dt


def run_sim(args: argparse.Namespace, target: int) -> tuple[int, float]:
    symbols = [f"SYM{i}" for i in range(args.symbols)]
    sink = BusSink(Engine(symbols), "tickwire")
    source = SimulatorSource(
        MarketSimulator(symbols, 20_000.0, 1), core=args.market_core != "python"
    )
    import asyncio

    asyncio.run(source.start(sink))
    sink.out.clear()
    now = time.monotonic()
    updates0 = sink.updates
    gc.collect()
    t0 = time.process_time()
    while sink.updates - updates0 < target:
        now += 0.001
        for symbol, updates, trades in source.poll(now):
            sink.publish(symbol, updates, trades)
        out, sink.out = sink.out, []
        bundles(out)
    dt = time.process_time() - t0
    return sink.updates - updates0, dt


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--kind", choices=("l2", "l3"), default="l2")
    p.add_argument("--bundle", type=int, default=100, help="changes (L3: events) per message")
    p.add_argument("--symbols", type=int, default=10)
    p.add_argument("--messages", type=int, default=10_000, help="data messages per round")
    p.add_argument("--encoding", choices=("json", "msgpack"), default="json")
    p.add_argument("--per-poll", type=int, default=5, help="messages taken per poll (a tick)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--market-core", choices=tuple(CORES), default="auto")
    p.add_argument("--modes", default="feed,leader,sim")
    args = p.parse_args()
    snaps, data = messages(args)
    modes = args.modes.split(",")
    rates: dict[str, list[float]] = {m: [] for m in modes}
    ratios: list[float] = []
    for r in range(args.rounds):
        got: dict[str, float] = {}
        for mode in modes:
            if mode == "feed":
                n, dt = run_feed(args, snaps, data)
            elif mode == "leader":
                n, dt = run_leader(args, snaps, data)
            else:
                n, dt = run_sim(args, args.messages * args.bundle)
            got[mode] = n / dt
            rates[mode].append(n / dt)
            print(
                f"round {r + 1} {mode:6s}: {n / dt:>11,.0f} level changes/s ({n:,} in {dt:.3f} s)"
            )
        if "leader" in got and "sim" in got:
            ratios.append(got["leader"] / got["sim"])
    label = (
        f"{args.kind} {args.encoding} bundle {args.bundle}, {args.symbols} symbols, "
        f"core {args.market_core}"
    )
    print(f"\nsummary ({label}, {args.rounds} rounds):")
    for mode, values in rates.items():
        print(
            f"  {mode:6s} median {statistics.median(values):>11,.0f}/s  "
            f"(range {min(values):,.0f} - {max(values):,.0f})"
        )
    if ratios:
        print(
            f"  leader / sim: median {statistics.median(ratios):.2f} "
            f"(range {min(ratios):.2f} - {max(ratios):.2f})"
        )


if __name__ == "__main__":
    main()
