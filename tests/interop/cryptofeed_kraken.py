"""cryptofeed's Kraken feed (WebSocket v1), unmodified but for its endpoints (.venv-interop).

argv: WSS_BASE (wss://127.0.0.1:P) HTTP_BASE CAFILE SYMBOL (tickwire's, e.g. BTC-USD)
      SECONDS
Two feeds with ``checksum_validation=True``: ``max_depth=10`` (book-10, truncating) with
L2_BOOK, TRADES and TICKER, and the default depth (book-1000, never truncated) with
L2_BOOK. The pairs come from REST AssetPairs. Prints one JSON object per line: every
(re)subscription, books (top 10, cryptofeed's own checksum of its book and the
frame's ``c``), trades, tickers.
"""

import asyncio
import json
import ssl
import sys

from cryptofeed import FeedHandler
from cryptofeed.connection import RestEndpoint, Routes, WebsocketEndpoint
from cryptofeed.defines import L2_BOOK, TICKER, TRADES
from cryptofeed.exchanges import Kraken


def out(**kw):
    print(json.dumps(kw, default=str), flush=True)


async def main(wss_base, http_base, cafile, symbol, seconds):
    ctx = ssl.create_default_context(cafile=cafile)

    class LocalKraken(Kraken):
        websocket_endpoints = [
            WebsocketEndpoint(f"{wss_base}/kraken", limit=20, options={"ssl": ctx})
        ]
        rest_endpoints = [
            RestEndpoint(f"{http_base}/kraken", routes=Routes("/0/public/AssetPairs"))
        ]

        async def subscribe(self, conn):
            out(kind="subscribe", depth=self.max_depth)
            await super().subscribe(conn)

    def book(depth):
        async def cb(ob, receipt):
            raw = ob.raw or []
            snapshot = bool(raw) and "as" in raw[0]
            c = None if snapshot or not raw else raw[-1].get("c")
            bids = [[str(p), str(q)] for p, q in ob.book.bids.to_list()]
            asks = [[str(p), str(q)] for p, q in ob.book.asks.to_list()]
            out(
                kind="book",
                depth=depth,
                snapshot=snapshot,
                c=None if c is None else int(c),
                mine=ob.book.checksum(),
                validated=bool(raw) and "c" in raw[0],
                size=[len(bids), len(asks)],
                bids=bids[:10],
                asks=asks[:10],
            )

        return cb

    async def trade(t, receipt):
        out(kind="trade", price=str(t.price), amount=str(t.amount), side=t.side)

    async def ticker(t, receipt):
        out(kind="ticker", bid=str(t.bid), ask=str(t.ask))

    fh = FeedHandler(config={"uvloop": False, "log": {"disabled": True}})
    fh.add_feed(
        LocalKraken(
            symbols=[symbol],
            channels=[L2_BOOK, TRADES, TICKER],
            callbacks={L2_BOOK: book(10), TRADES: trade, TICKER: ticker},
            max_depth=10,
            checksum_validation=True,
        )
    )
    fh.add_feed(
        LocalKraken(
            symbols=[symbol],
            channels=[L2_BOOK],
            callbacks={L2_BOOK: book(1000)},
            checksum_validation=True,
        )
    )
    fh.run(start_loop=False, install_signal_handlers=False)
    await asyncio.sleep(float(seconds))
    await fh.stop_async()


asyncio.run(main(*sys.argv[1:6]))
