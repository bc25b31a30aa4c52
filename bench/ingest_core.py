"""Time the ingest path without sockets: decode + validate + engine batch, per change.

``python bench/ingest_core.py --bundle 100 --kind l2`` builds messages with the example
feeder's model (``examples/ingest/feeder.py``), then times, on one core:

* ``feed``: :meth:`tickwire.ingest.IngestFeed.receive` (decode, canonical decimals, seq,
  the shadow book, crossed check; L3: the orders and the derived levels);
* ``leader``: the same plus what ``tickwire publish --ingest`` does with each batch
  (the engine applies and numbers it, the ``delta``/``trades`` JSON and checksum,
  the bus message: :func:`tickwire.sources.bus.leader_batch`).

It is a sanity measurement of the Sans-I/O cost (no NATS, no gateway), not the
end-to-end benchmark of issue 21's item 6.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples" / "ingest"))
from feeder import Feeder  # noqa: E402

from tickwire.engine import Engine  # noqa: E402
from tickwire.ingest import IngestFeed, Publish  # noqa: E402
from tickwire.sources.bus import encode_bus, leader_batch  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--kind", choices=("l2", "l3"), default="l2")
    p.add_argument("--bundle", type=int, default=100, help="changes (L3: events) per message")
    p.add_argument("--messages", type=int, default=2000)
    p.add_argument("--encoding", choices=("json", "msgpack"), default="json")
    args = p.parse_args()
    f = Feeder(None, "BENCH", kind=args.kind, seed=1)
    snap = f.snapshot()
    msgs = [f.next_message(args.bundle) for _ in range(args.messages)]
    enc = (
        msgspec.msgpack.encode if args.encoding == "msgpack" else (lambda m: json.dumps(m).encode())
    )
    snap_data = enc(snap)
    datas = [enc(m) for m in msgs]
    for mode in ("feed", "leader"):
        feed = IngestFeed()
        feed.receive("BENCH", snap_data, 0.0)
        feed.out.clear()
        engine = Engine(["BENCH"])
        gc.collect()
        changes = 0
        t0 = time.perf_counter()
        for data in datas:
            feed.receive("BENCH", data, 0.0)
            out, feed.out = feed.out, []
            for action in out:
                if isinstance(action, Publish):
                    changes += len(action.updates)
                    if mode == "leader":
                        encode_bus(leader_batch(engine, "BENCH", action.updates, action.trades))
        dt = time.perf_counter() - t0
        assert sum(feed.rejected.values()) == 0, feed.rejected
        print(
            f"{mode:7s} {args.kind} {args.encoding:7s} bundle {args.bundle}: "
            f"{changes / dt:,.0f} level changes/s, {dt / len(datas) * 1e6:.0f} us/message"
        )


if __name__ == "__main__":
    main()
