"""cryptofeed's Binance feed, unmodified but for its endpoints (run in .venv-interop).

argv: WSS_BASE (wss://127.0.0.1:P) HTTP_BASE CAFILE SYMBOL (tickwire's, e.g. BTC-USDT)
      SECONDS
Prints one JSON object per line: books (sequence number + full book), trades, tickers.
"""

import asyncio
import json
import ssl
import sys

from cryptofeed import FeedHandler
from cryptofeed.connection import RestEndpoint, Routes, WebsocketEndpoint
from cryptofeed.defines import L2_BOOK, TICKER, TRADES
from cryptofeed.exchanges import Binance
from cryptofeed.symbols import Symbols


def out(**kw):
    print(json.dumps(kw, default=str), flush=True)


async def main(wss_base, http_base, cafile, symbol, seconds):
    ctx = ssl.create_default_context(cafile=cafile)
    venue_id = symbol.replace("-", "")
    Symbols.set(
        "BINANCE",
        {symbol: venue_id},
        {"tick_size": {symbol: "0.01"}, "instrument_type": {symbol: "spot"}},
    )

    class LocalBinance(Binance):
        websocket_endpoints = [WebsocketEndpoint(f"{wss_base}/binance", options={"ssl": ctx})]
        rest_endpoints = [
            RestEndpoint(
                f"{http_base}/binance",
                routes=Routes(
                    "/api/v3/exchangeInfo",
                    l2book="/api/v3/depth?symbol={}&limit={}",
                    authentication="/api/v3/userDataStream",
                ),
            )
        ]

    async def book(ob, receipt):
        bids = [[str(p), str(q)] for p, q in ob.book.bids.to_list()]
        asks = [[str(p), str(q)] for p, q in ob.book.asks.to_list()]
        out(kind="book", seq=ob.sequence_number, bids=bids, asks=asks)

    async def trade(t, receipt):
        out(kind="trade", id=t.id, price=str(t.price), amount=str(t.amount), side=t.side)

    async def ticker(t, receipt):
        out(kind="ticker", bid=str(t.bid), ask=str(t.ask))

    fh = FeedHandler(config={"uvloop": False, "log": {"disabled": True}})
    fh.add_feed(
        LocalBinance(
            symbols=[symbol],
            channels=[L2_BOOK, TRADES, TICKER],
            callbacks={L2_BOOK: book, TRADES: trade, TICKER: ticker},
            max_depth=0,
        )
    )
    fh.run(start_loop=False, install_signal_handlers=False)
    await asyncio.sleep(float(seconds))
    await fh.stop_async()


asyncio.run(main(*sys.argv[1:6]))
