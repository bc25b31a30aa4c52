"""Time the Sans-I/O hot path (simulator -> engine -> hub flush) without sockets.

Seeded and deterministic: ``python bench/core_hotpath.py --symbols 10 --rate 20000``
simulates one second of S1-like load (1 ms ticks, 10 subscribers per channel) and prints
microseconds per book update and per tick. Use it with py-spy to see where time goes.
``--market-core python`` times the pure-Python market (generate, then publish: the
engine's book and trades); with the compiled core (the default when built) "generate"
is everything up to the writes: events, book, checksum, JSON, history and fan-out.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time

from tickwire.engine import Engine
from tickwire.hub import Channel, Hub
from tickwire.simulator import HAVE_CORE, MarketSimulator, parse_symbols
from tickwire.sources.simulated import SimulatorSource


class Sink:
    """A subscriber that drops what it is given, as a socket write would."""

    def __init__(self) -> None:
        self.outbox: list[bytes] = []
        self.channels: dict[str, Channel] = {}
        self.slow: dict[str, object] = {}
        # As the gateway does for a connection on one channel: write (here: drop) at once.
        self.deliver = self.write

    def write(self, frame: bytes) -> None:
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--symbols", default="10")
    ap.add_argument("--rate", type=float, default=20000)
    ap.add_argument("--subs", type=int, default=10, help="subscribers per book channel")
    ap.add_argument("--seconds", type=float, default=1.0, help="simulated seconds")
    ap.add_argument("--tick-ms", type=float, default=1.0)
    ap.add_argument(
        "--gc-threshold",
        type=int,
        default=100_000,
        help="gen-0 GC threshold, as the gateway sets it (700: Python default)",
    )
    ap.add_argument(
        "--market-core", choices=("c", "python"), default="c" if HAVE_CORE else "python"
    )
    args = ap.parse_args()
    gc.set_threshold(args.gc_threshold, 50, 100)
    symbols = parse_symbols(args.symbols)
    engine = Engine(symbols)
    hub = Hub(engine)
    sim = MarketSimulator(symbols, args.rate, seed=1)
    source = SimulatorSource(sim, core=args.market_core == "c")
    asyncio.run(source.start(hub))
    hub.flush(0.0)
    sinks = [Sink() for _ in range(args.subs * len(symbols))]
    for i, sink in enumerate(sinks):
        hub.subscribe(sink, hub.channels[f"book.{symbols[i % len(symbols)]}"])
    ticks = int(args.seconds * 1000 / args.tick_ms)
    source.poll(0.0)  # starts the simulator's clock
    t_gen = t_pub = t_flush = 0.0
    pc = time.perf_counter
    for i in range(1, ticks + 1):
        t0 = pc()
        batches = list(source.poll(i * args.tick_ms / 1000))
        t1 = pc()
        for symbol, updates, trades in batches:
            hub.publish(symbol, updates, trades)
        t2 = pc()
        hub.flush(t2)
        for sub in hub.dirty:
            sub.outbox.clear()
        hub.dirty.clear()
        t3 = pc()
        t_gen += t1 - t0
        t_pub += t2 - t1
        t_flush += t3 - t2
    n = sim.generated
    total = t_gen + t_pub + t_flush
    print(f"market={args.market_core} updates={n} ticks={ticks} deliveries={hub.updates_out}")
    print(
        f"generate {t_gen / n * 1e6:.2f} us/update   publish {t_pub / n * 1e6:.2f} us/update   "
        f"flush {t_flush / n * 1e6:.2f} us/update ({t_flush / ticks * 1e6:.1f} us/tick)"
    )
    print(
        f"total {total / n * 1e6:.2f} us/update, {total:.3f} s CPU for {args.seconds:g} s "
        f"of feed = {100 * total / args.seconds:.0f}% of a core"
    )


if __name__ == "__main__":
    main()
