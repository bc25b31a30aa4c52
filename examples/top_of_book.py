"""Print one symbol's verified top of book and integrity counters once per second.

    python examples/top_of_book.py BTC-USD --url ws://127.0.0.1:8765/ws --seconds 10

The book is read directly from the client (no event loop work per update): the SDK
keeps it verified in the background and heals it if the feed breaks.
"""

from __future__ import annotations

import argparse
import asyncio

from tickwire.client import Client


async def main(url: str, symbol: str, seconds: float) -> None:
    channel = f"book.{symbol}"
    async with Client(url, [channel], events=False) as client:
        for _ in range(max(1, int(seconds))):
            await asyncio.sleep(1)
            ch = client.channel(channel)
            book = client.book(symbol)
            c = ch.counters
            print(
                f"{ch.state.value:7} seq {ch.position}  bid {book.best_bid()}  "
                f"ask {book.best_ask()}  gaps {c.gaps} resyncs {c.resyncs}"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("symbol")
    parser.add_argument("--url", default="ws://127.0.0.1:8765/ws")
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    asyncio.run(main(args.url, args.symbol, args.seconds))
