"""cryptofeed's OKX feed, unmodified but for its endpoints (run in .venv-interop).

argv: WSS_BASE (wss://127.0.0.1:P) HTTP_BASE CAFILE SYMBOL (e.g. BTC-USDT) SECONDS
Books are checked by cryptofeed itself (``checksum_validation=True``: a mismatch raises
BadChecksum and reconnects). Symbols come from tickwire's REST instruments (the five
queries cryptofeed makes). Prints one JSON object per line: books (seqId of the push +
full book), trades, tickers, and at the end how many times cryptofeed subscribed (one
per connection: more means it reconnected).
"""

import asyncio
import json
import ssl
import sys

from cryptofeed import FeedHandler
from cryptofeed.connection import RestEndpoint, Routes, WebsocketEndpoint
from cryptofeed.defines import L2_BOOK, TICKER, TRADES
from cryptofeed.exchanges import OKX


def out(**kw):
    print(json.dumps(kw, default=str), flush=True)


async def main(wss_base, http_base, cafile, symbol, seconds):
    ctx = ssl.create_default_context(cafile=cafile)
    subscribes = []

    class LocalOKX(OKX):
        websocket_endpoints = [
            WebsocketEndpoint(
                f"{wss_base}/okx/ws/v5/public", options={"compression": None, "ssl": ctx}
            )
        ]
        rest_endpoints = [
            RestEndpoint(
                f"{http_base}/okx",
                routes=Routes(
                    [
                        "/api/v5/public/instruments?instType=SPOT",
                        "/api/v5/public/instruments?instType=SWAP",
                        "/api/v5/public/instruments?instType=FUTURES",
                        "/api/v5/public/instruments?instType=OPTION&uly=BTC-USD",
                        "/api/v5/public/instruments?instType=OPTION&uly=ETH-USD",
                    ],
                ),
            )
        ]

        async def subscribe(self, connection):
            subscribes.append(1)
            await super().subscribe(connection)

    async def book(ob, receipt):
        bids = [[str(p), str(q)] for p, q in ob.book.bids.to_list()]
        asks = [[str(p), str(q)] for p, q in ob.book.asks.to_list()]
        data = ob.raw["data"][0]
        out(
            kind="book",
            seq=data["seqId"],
            prev=data["prevSeqId"],
            action=ob.raw["action"],
            checksum=ob.checksum,
            bids=bids,
            asks=asks,
        )

    async def trade(t, receipt):
        out(kind="trade", id=t.id, price=str(t.price), amount=str(t.amount), side=t.side)

    async def ticker(t, receipt):
        out(kind="ticker", bid=str(t.bid), ask=str(t.ask))

    fh = FeedHandler(config={"uvloop": False, "log": {"disabled": True}})
    fh.add_feed(
        LocalOKX(
            symbols=[symbol],
            channels=[L2_BOOK, TRADES, TICKER],
            callbacks={L2_BOOK: book, TRADES: trade, TICKER: ticker},
            checksum_validation=True,
        )
    )
    fh.run(start_loop=False, install_signal_handlers=False)
    await asyncio.sleep(float(seconds))
    await fh.stop_async()
    out(kind="subscribes", count=len(subscribes))


asyncio.run(main(*sys.argv[1:6]))
