"""ccxt.pro's binance class, unmodified, pointed at tickwire (run in .venv-interop).

argv: WS_BASE (wss://127.0.0.1:P) HTTP_BASE (http://127.0.0.1:Q) CAFILE SYMBOL BOOKS
Prints one JSON object per line: markets, books (nonce + full book), trades, ticker,
a REST order book and candles.
"""

import asyncio
import json
import sys

import ccxt.pro as ccxtpro


def out(**kw):
    print(json.dumps(kw, default=str), flush=True)


async def main(ws_base, http_base, cafile, symbol, books):
    ex = ccxtpro.binance(
        {
            "urls": {
                "api": {
                    "public": f"{http_base}/binance/api/v3",
                    # '/stream' in the URL makes ccxt treat it as spot (dialects.md §2.1)
                    "ws": {"spot": f"{ws_base}/binance/stream"},
                }
            },
            "options": {"fetchMarkets": {"types": ["spot"]}},
            "cafile": cafile,
        }
    )
    try:
        markets = await ex.load_markets()
        out(kind="markets", symbols=sorted(markets))
        for _ in range(int(books)):
            ob = await ex.watch_order_book(symbol)
            out(kind="book", seq=ob["nonce"], bids=ob["bids"], asks=ob["asks"])
        seen = []
        while len(seen) < 20:
            trades = await ex.watch_trades(symbol)
            seen += [[t["id"], t["price"], t["amount"], t["side"]] for t in trades]
        out(kind="trades", trades=seen)
        tk = await ex.watch_ticker(symbol)
        out(kind="ticker", last=tk["last"], high=tk["high"], low=tk["low"])
        rest = await ex.fetch_order_book(symbol, 50)
        out(kind="rest_book", seq=rest["nonce"], bids=rest["bids"], asks=rest["asks"])
        candles = await ex.fetch_ohlcv(symbol, "1s", limit=5)
        out(kind="ohlcv", candles=candles)
        live = await ex.watch_ohlcv(symbol, "1s")
        out(kind="ohlcv_ws", candles=live)
    finally:
        await ex.close()


asyncio.run(main(*sys.argv[1:6]))
