"""An example ingest source: a toy matching engine's market, published to tickwire.

It speaks the ingest protocol v1 (``docs/ingest.md``) over NATS with nothing but
``nats-py`` and the standard library's ``json``: the same messages any process in any
language would publish. L2 (``--kind l2``: level changes and trades) or L3 (``--kind l3``:
add / modify / cancel / execute of individual orders), and it answers tickwire's snapshot
requests on ``PREFIX.ingest.<SYMBOL>.snapshot``.

    nats-server -a 127.0.0.1 -p 4222 &
    tickwire publish --nats nats://127.0.0.1:4222 --ingest nats://127.0.0.1:4222 &
    tickwire serve --source nats://127.0.0.1:4222 &
    python examples/ingest/feeder.py --nats nats://127.0.0.1:4222 --symbols BTC-USD --kind l3
    tickwire watch BTC-USD

The tests drive :class:`Feeder` directly (``tests/test_ingest.py``), including the
faults a broken source would send.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from decimal import Decimal
from typing import Any

import nats

MID = 10_000  # cents: prices stay below it for bids and above it for asks (never crossed)


def _price(cents: int) -> str:
    # Deliberately not canonical ("99.50"): tickwire canonicalizes exact decimals.
    return f"{cents // 100}.{cents % 100:02d}"


class Feeder:
    """One symbol's toy market, published as ingest messages.

    Args:
        nc: a connected nats-py client.
        symbol: the symbol.
        kind: ``"l2"`` (levels) or ``"l3"`` (orders).
        prefix: the subject prefix (tickwire's ``--bus-prefix``).
        seed: the random seed.
        encoding: ``"json"`` or ``"msgpack"`` (needs msgspec).
    """

    def __init__(
        self,
        nc: Any,
        symbol: str,
        *,
        kind: str = "l2",
        prefix: str = "tickwire",
        seed: int = 1,
        encoding: str = "json",
    ) -> None:
        self.nc = nc
        self.symbol = symbol
        self.kind = kind
        self.subject = f"{prefix}.ingest.{symbol}"
        self.rng = random.Random(seed)
        self.encoding = encoding
        self.seq = 0
        # L2: (side, cents) -> qty; L3: order id -> [side, cents, qty].
        self.levels: dict[tuple[str, int], Decimal] = {}
        self.orders: dict[str, list[Any]] = {}
        self.next_id = 1
        self.sent = 0
        self.snapshots_served = 0
        self.answer = True
        for _ in range(30):
            self._step_model(self.rng)

    # -- the model -------------------------------------------------------------------------

    def _qty(self, rng: random.Random) -> Decimal:
        return Decimal(rng.randint(1, 50_000)) / 1000

    def _step_model(self, rng: random.Random) -> list[Any]:
        """Change the book once; return the change as this kind's events."""
        side = rng.choice(("bid", "ask"))
        cents = MID - rng.randint(1, 25) if side == "bid" else MID + rng.randint(1, 25)
        if self.kind == "l2":
            key = (side, cents)
            if key in self.levels and rng.random() < 0.3:
                del self.levels[key]
                return [[side, _price(cents), "0"]]
            qty = self._qty(rng)
            self.levels[key] = qty
            return [[side, _price(cents), f"{qty:f}"]]
        r = rng.random()
        if self.orders and r < 0.2:
            oid = rng.choice(list(self.orders))
            del self.orders[oid]
            return [["cancel", oid]]
        if self.orders and r < 0.35:
            oid = rng.choice(list(self.orders))
            qty = self._qty(rng)
            self.orders[oid][2] = qty
            return [["modify", oid, f"{qty:f}"]]
        if self.orders and r < 0.5:
            oid = rng.choice(list(self.orders))
            order = self.orders[oid]
            qty = min(order[2], self._qty(rng))
            order[2] -= qty
            if not order[2]:
                del self.orders[oid]
            return [["execute", oid, f"{qty:f}"]]
        oid = f"o{self.next_id}"
        self.next_id += 1
        qty = self._qty(rng)
        self.orders[oid] = [side, cents, qty]
        return [["add", oid, side, _price(cents), f"{qty:f}"]]

    def book(self) -> dict[str, dict[Decimal, Decimal]]:
        """The feeder's own L2 book: side -> {price: qty} (what clients must see)."""
        out: dict[str, dict[Decimal, Decimal]] = {"bid": {}, "ask": {}}
        if self.kind == "l2":
            for (side, cents), qty in self.levels.items():
                out[side][Decimal(cents) / 100] = qty
        else:
            for side, cents, qty in self.orders.values():
                price = Decimal(cents) / 100
                out[side][price] = out[side].get(price, Decimal(0)) + qty
        return out

    # -- messages --------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The snapshot message at the current seq."""
        head = {"v": 1, "symbol": self.symbol, "seq": self.seq, "ts": time.time_ns()}
        if self.kind == "l2":
            bids = [[_price(c), f"{q:f}"] for (s, c), q in self.levels.items() if s == "bid"]
            asks = [[_price(c), f"{q:f}"] for (s, c), q in self.levels.items() if s == "ask"]
            return {"type": "snapshot", **head, "bids": bids, "asks": asks}
        orders = [[oid, s, _price(c), f"{q:f}"] for oid, (s, c, q) in self.orders.items()]
        return {"type": "orders_snapshot", **head, "orders": orders}

    def next_message(self, changes: int) -> dict[str, Any]:
        """The next data message: ``changes`` model steps bundled, seq + 1."""
        events: list[Any] = []
        trades: list[Any] = []
        for _ in range(changes):
            events.extend(self._step_model(self.rng))
        if self.kind == "l2" and self.rng.random() < 0.3:
            side = self.rng.choice(("buy", "sell"))
            trades.append([_price(MID + (1 if side == "buy" else -1)), "0.5", side])
        self.seq += 1
        head = {"v": 1, "symbol": self.symbol, "seq": self.seq, "ts": time.time_ns()}
        if self.kind == "l2":
            return {"type": "update", **head, "changes": events, "trades": trades}
        return {"type": "orders", **head, "events": events}

    def encode(self, msg: dict[str, Any]) -> bytes:
        if self.encoding == "msgpack":
            import msgspec

            return msgspec.msgpack.encode(msg)
        return json.dumps(msg, separators=(",", ":")).encode()

    async def publish(self, msg: dict[str, Any]) -> None:
        await self.nc.publish(self.subject, self.encode(msg))
        self.sent += 1

    async def publish_raw(self, data: bytes, subject: str | None = None) -> None:
        await self.nc.publish(subject or self.subject, data)

    async def serve_snapshots(self) -> None:
        """Answer ``PREFIX.ingest.<SYMBOL>.snapshot`` requests with the current snapshot."""

        async def on_request(msg: Any) -> None:
            if self.answer:
                self.snapshots_served += 1
                await msg.respond(self.encode(self.snapshot()))

        await self.nc.subscribe(f"{self.subject}.snapshot", cb=on_request)

    async def run(self, seconds: float, rate: float = 200.0, bundle: int = 5) -> None:
        """Publish a snapshot, then ``rate`` messages per second of ``bundle`` changes."""
        await self.publish(self.snapshot())
        period = 1.0 / rate
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            await self.publish(self.next_message(bundle))
            await asyncio.sleep(period)


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--nats", default="nats://127.0.0.1:4222")
    p.add_argument("--symbols", default="BTC-USD")
    p.add_argument("--kind", choices=("l2", "l3"), default="l2")
    p.add_argument("--prefix", default="tickwire")
    p.add_argument("--rate", type=float, default=200.0, help="messages per second per symbol")
    p.add_argument("--bundle", type=int, default=5, help="changes per message")
    p.add_argument("--seconds", type=float, default=3600.0)
    p.add_argument("--encoding", choices=("json", "msgpack"), default="json")
    args = p.parse_args()
    nc = await nats.connect(args.nats)
    feeders = [
        Feeder(nc, s, kind=args.kind, prefix=args.prefix, seed=i, encoding=args.encoding)
        for i, s in enumerate(args.symbols.split(","))
    ]
    for f in feeders:
        await f.serve_snapshots()
    await asyncio.gather(*(f.run(args.seconds, args.rate, args.bundle) for f in feeders))
    await nc.drain()


if __name__ == "__main__":
    asyncio.run(main())
