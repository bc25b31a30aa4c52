"""ccxt.pro's kraken class (WebSocket v2), unmodified, pointed at tickwire (in .venv-interop).

argv: WS_BASE (wss://127.0.0.1:P) HTTP_BASE (http://127.0.0.1:Q) CAFILE SYMBOL (BTC/USD)
      SECONDS
Prints one JSON object per line: markets, books of depth 10 and 100 (full book), trades,
tickers, the pongs ccxt saw, REST order book, candles, ticker and trades. Runs for SECONDS
(ccxt pings every 6 s and closes after 12 s without a pong), with ccxt's checksum option
left off (dialects.md §5.1).
"""

import asyncio
import json
import sys
import time

import ccxt.pro as ccxtpro


def out(**kw):
    print(json.dumps(kw, default=str), flush=True)


def make(ws_base, http_base, cafile):
    return ccxtpro.kraken(
        {
            "urls": {
                "api": {
                    "public": f"{http_base}/kraken",
                    "ws": {"publicV2": f"{ws_base}/kraken/v2"},
                }
            },
            "cafile": cafile,
            # Kraken's own 6 s keepalive, shortened so a short run sees several pings.
            "streaming": {"keepAlive": 2000},
        }
    )


async def books(ex, symbol, depth, until):
    """A book about every 0.3 s until ``until`` (each one as ccxt holds it)."""
    last = 0.0
    n = 0
    while time.monotonic() < until:
        ob = await ex.watch_order_book(symbol, depth)
        if time.monotonic() - last >= 0.3:
            last = time.monotonic()
            n += 1
            out(kind="book", depth=depth, bids=ob["bids"], asks=ob["asks"])
    return n


def count_pongs(ex):
    """Observe ccxt's own pong handler (it still runs): the pongs it got."""
    seen = []
    handle = ex.handle_pong

    def observed(client, message):
        seen.append(message)
        return handle(client, message)

    ex.handle_pong = observed
    return seen


async def pongs(seen, until):
    await asyncio.sleep(max(0.0, until - time.monotonic()))
    out(kind="pongs", count=len(seen), methods=sorted({m.get("method") for m in seen}))


async def main(ws_base, http_base, cafile, symbol, seconds):
    ex = make(ws_base, http_base, cafile)
    deep = make(ws_base, http_base, cafile)
    seen_pongs = count_pongs(ex)
    until = time.monotonic() + float(seconds)
    try:
        markets = await ex.load_markets()
        out(kind="markets", symbols=sorted(markets), id=markets[symbol]["id"])
        await deep.load_markets()
        book_task = asyncio.ensure_future(books(ex, symbol, 10, until))
        deep_task = asyncio.ensure_future(books(deep, symbol, 100, until))
        pong_task = asyncio.ensure_future(pongs(seen_pongs, until))
        seen = []
        while len(seen) < 30:
            trades = await ex.watch_trades(symbol)
            seen += [[t["id"], t["price"], t["amount"], t["side"]] for t in trades]
        out(kind="trades", trades=seen)
        tickers = 0
        while tickers < 3:
            tk = await ex.watch_ticker(symbol)
            tickers += 1
            out(
                kind="ticker",
                bid=tk["bid"],
                ask=tk["ask"],
                last=tk["last"],
                high=tk["high"],
                low=tk["low"],
            )
        rest = await ex.fetch_order_book(symbol, 50)
        out(kind="rest_book", bids=rest["bids"], asks=rest["asks"])
        candles = await ex.fetch_ohlcv(symbol, "1m", limit=5)
        out(kind="ohlcv", candles=candles)
        rt = await ex.fetch_ticker(symbol)
        out(kind="rest_ticker", bid=rt["bid"], ask=rt["ask"], last=rt["last"])
        rtr = await ex.fetch_trades(symbol, limit=10)
        out(kind="rest_trades", trades=[[t["id"], t["price"], t["amount"], t["side"]] for t in rtr])
        await asyncio.gather(book_task, deep_task, pong_task)
        # Still served after several ping/pong rounds.
        ob = await ex.watch_order_book(symbol, 10)
        out(kind="alive", bids=len(ob["bids"]), asks=len(ob["asks"]))
    finally:
        await ex.close()
        await deep.close()


asyncio.run(main(*sys.argv[1:6]))
