"""Follow one user's own orders (the private ``orders.<USER>`` channel) with a login.

    tickwire serve --jwt-secret-file jwt.secret --sim-order-fraction 0.3 &
    python examples/my_orders.py alice --secret-file jwt.secret --count 10

A real application gets its tokens from its issuer; here the provider signs short-lived
ones with the server's HS256 secret (``tickwire token`` does the same). The client asks
the provider again before each token expires, so the login never lapses, and resumes
the channel after a reconnect without losing an event.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from tickwire.auth import make_token
from tickwire.client import ChannelStatus, Client, OrdersReceived


async def main(url: str, user: str, secret: bytes, count: int) -> None:
    channel = f"orders.{user}"

    def token() -> str:
        return make_token(user, ttl=60, secret=secret)

    printed = 0
    async with Client(url, [channel], token=token) as client:
        async for event in client:
            if isinstance(event, ChannelStatus):
                print(f"-- {event.channel} {event.state.value}: {event.reason}")
            elif isinstance(event, OrdersReceived) and not event.snapshot:
                for o in event.orders:
                    print(f"#{o.id:<6} {o.order:12} {o.event:6} {o.side:4} {o.qty:>8} @ {o.price}")
                    printed += 1
                if printed >= count:
                    break


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("user")
    parser.add_argument("--url", default="ws://127.0.0.1:8765/ws")
    parser.add_argument("--secret-file", type=Path, required=True, help="the server's HS256 secret")
    parser.add_argument("--count", type=int, default=10)
    args = parser.parse_args()
    asyncio.run(main(args.url, args.user, args.secret_file.read_bytes().strip(), args.count))
