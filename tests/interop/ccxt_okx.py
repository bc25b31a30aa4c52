"""ccxt.pro's okx class, unmodified, pointed at tickwire (run in .venv-interop).

argv: WS_BASE (wss://127.0.0.1:P) HTTP_BASE (http://127.0.0.1:Q) CAFILE SYMBOL BOOKS
      [resync]
Prints one JSON object per line: markets, books (nonce = seqId + full book), trades,
ticker, a REST order book, candles (REST and the business socket). With ``resync``, it
then breaks its own book's nonce (as a missed update would) so ccxt takes its
InvalidNonce path: unsubscribe, wait for the ack, subscribe, rebuild from the new
snapshot; and prints the books after that. Last, a books5 book (another socket) and,
after more pings every second, a ticker: the keepalive held.
"""

import asyncio
import json
import sys

import ccxt.pro as ccxtpro


def out(**kw):
    print(json.dumps(kw, default=str), flush=True)


async def main(ws_base, http_base, cafile, symbol, books, mode=""):
    ex = ccxtpro.okx(
        {
            "urls": {"api": {"rest": f"{http_base}/okx", "ws": f"{ws_base}/okx/ws/v5"}},
            "options": {"fetchMarkets": {"types": ["spot"]}},
            "cafile": cafile,
            # OKX's text ping every second instead of 18 s: a missing pong would fail
            # every watch with RequestTimeout after 2 s.
            "streaming": {"keepAlive": 1000},
        }
    )
    try:
        markets = await ex.load_markets()
        out(kind="markets", symbols=sorted(markets), tick=markets[symbol]["precision"]["price"])
        for _ in range(int(books)):
            ob = await ex.watch_order_book(symbol)
            out(kind="book", seq=ob["nonce"], bids=ob["bids"], asks=ob["asks"])
        seen = []
        while len(seen) < 20:
            trades = await ex.watch_trades(symbol)
            seen += [[t["id"], t["price"], t["amount"], t["side"]] for t in trades]
        out(kind="trades", trades=seen)
        tk = await ex.watch_ticker(symbol)
        out(
            kind="ticker",
            last=tk["last"],
            high=tk["high"],
            low=tk["low"],
            bid=tk["bid"],
            ask=tk["ask"],
        )
        rest = await ex.fetch_order_book(symbol, 50)
        out(kind="rest_book", bids=rest["bids"], asks=rest["asks"])
        candles = await ex.fetch_ohlcv(symbol, "1m", limit=5)
        out(kind="ohlcv", candles=candles)
        live = await ex.watch_ohlcv(symbol, "1m")  # on /ws/v5/business
        out(kind="ohlcv_ws", candles=live)
        if mode == "resync":
            # A missed update, as ccxt sees one: its book's nonce no longer matches the
            # next update's prevSeqId -> InvalidNonce on this watch.
            ex.orderbooks[symbol]["nonce"] = -7
            errors = 0
            while True:
                try:
                    ob = await ex.watch_order_book(symbol)
                    out(kind="book", seq=ob["nonce"], bids=ob["bids"], asks=ob["asks"])
                    break
                except ccxtpro.InvalidNonce:
                    errors += 1
                    if errors > 1:
                        raise
            out(kind="resync", errors=errors)
            for _ in range(int(books)):
                ob = await ex.watch_order_book(symbol)
                out(kind="book", seq=ob["nonce"], bids=ob["bids"], asks=ob["asks"])
            seen = []
            while len(seen) < 10:
                trades = await ex.watch_trades(symbol)
                seen += [[t["id"], t["price"], t["amount"], t["side"]] for t in trades]
            out(kind="trades_after", trades=seen)
        # watch_order_book(limit=5) -> books5, limit=1 -> bbo-tbt (another socket: ccxt
        # keeps one book per symbol, which books5 would overwrite).
        ex2 = ccxtpro.okx(
            {
                "urls": {"api": {"rest": f"{http_base}/okx", "ws": f"{ws_base}/okx/ws/v5"}},
                "cafile": cafile,
            }
        )
        try:
            ex2.set_markets(list(markets.values()))
            top = await ex2.watch_order_book(symbol, 5)
            out(kind="books5", bids=top["bids"], asks=top["asks"])
        finally:
            await ex2.close()
        await asyncio.sleep(3)  # a few more pings on the first socket
        tk = await ex.watch_ticker(symbol)
        out(kind="alive", last=tk["last"])
    finally:
        await ex.close()


asyncio.run(main(*sys.argv[1:]))
