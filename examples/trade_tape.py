"""Print a symbol's trades as they happen, each exactly once and in order.

    python examples/trade_tape.py BTC-USD --url ws://127.0.0.1:8765/ws --count 20

Across reconnects the SDK resumes the trades channel from its last id, so the tape has
no hole; if the server could no longer replay some trades, ``trades_missed`` says so.
"""

from __future__ import annotations

import argparse
import asyncio

from tickwire.client import ChannelStatus, Client, TradesReceived


async def main(url: str, symbol: str, count: int) -> None:
    channel = f"trades.{symbol}"
    printed = 0
    async with Client(url, [channel]) as client:
        async for event in client:
            if isinstance(event, ChannelStatus):
                print(f"-- {event.channel} {event.state.value}: {event.reason}")
            elif isinstance(event, TradesReceived) and not event.snapshot:
                for t in event.trades:
                    print(f"#{t.id:<8} {t.side:4} {t.qty:>10} @ {t.price}")
                    printed += 1
                if printed >= count:
                    break
        print(f"-- missed: {client.channel(channel).counters.trades_missed}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("symbol")
    parser.add_argument("--url", default="ws://127.0.0.1:8765/ws")
    parser.add_argument("--count", type=int, default=20)
    args = parser.parse_args()
    asyncio.run(main(args.url, args.symbol, args.count))
