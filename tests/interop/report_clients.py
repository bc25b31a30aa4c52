"""ccxt.pro or cryptofeed, unmodified, keeping one order book under faults (.venv-interop).

argv: CLIENT (ccxt | cryptofeed) VENUE (binance | okx | kraken) WS_BASE (wss://127.0.0.1:P)
      HTTP_BASE (http://127.0.0.1:Q) CAFILE SYMBOL (tickwire's, e.g. BTC-USDT) SECONDS NAME

Each client is used the way its documentation shows: ccxt in the loop its maintainers
advise (``watch_order_book`` again after any error, ccxt#15343), cryptofeed's
FeedHandler (it reconnects by itself) with checksum validation where the venue has one.
The client names itself to the gateway's connectivity report with the
``X-Tickwire-Client: NAME`` header on its WebSocket and REST requests (configuration,
not a change to the client). The script prints one JSON line when SECONDS are over,
or earlier when it reads the line ``stop`` on its stdin:
``{"kind": "summary", "books": N, "errors": [...]}``.
"""

import asyncio
import json
import ssl
import sys
import time


def out(**kw):
    print(json.dumps(kw, default=str), flush=True)


async def stop_on_request():
    """An event set when ``stop`` arrives on stdin (EOF: never)."""
    stop = asyncio.Event()

    async def read():
        line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        if line.strip() == "stop":
            stop.set()

    asyncio.get_running_loop().create_task(read())
    return stop


def venue_symbol(client, venue, symbol):
    base, quote = symbol.split("-")
    if client == "ccxt":
        return f"{base}/{quote}"
    return symbol


async def run_ccxt(venue, ws_base, http_base, cafile, symbol, seconds, name):
    import ccxt.pro as ccxtpro

    headers = {"X-Tickwire-Client": name}
    config = {
        "cafile": cafile,
        "headers": headers,
        "options": {"ws": {"headers": headers}},
    }
    if venue == "binance":
        config["urls"] = {
            "api": {
                "public": f"{http_base}/binance/api/v3",
                "ws": {"spot": f"{ws_base}/binance/stream"},
            }
        }
        config["options"]["fetchMarkets"] = {"types": ["spot"]}
        ex = ccxtpro.binance(config)
    elif venue == "okx":
        config["urls"] = {"api": {"rest": f"{http_base}/okx", "ws": f"{ws_base}/okx/ws/v5"}}
        config["options"]["fetchMarkets"] = {"types": ["spot"]}
        config["streaming"] = {"keepAlive": 1000}
        ex = ccxtpro.okx(config)
    else:
        config["urls"] = {
            "api": {"public": f"{http_base}/kraken", "ws": {"publicV2": f"{ws_base}/kraken/v2"}}
        }
        config["streaming"] = {"keepAlive": 2000}
        ex = ccxtpro.kraken(config)
    books = 0
    errors = []
    until = time.monotonic() + float(seconds)
    stop = await stop_on_request()
    try:
        # watch_order_book loads the markets itself (a failure is retried by the loop).
        while time.monotonic() < until and not stop.is_set():
            try:
                await asyncio.wait_for(
                    ex.watch_order_book(symbol), max(0.1, until - time.monotonic())
                )
                books += 1
            except TimeoutError:
                break
            except Exception as exc:  # the loop ccxt's maintainers advise
                errors.append(f"{type(exc).__name__}: {str(exc)[:120]}")
                if len(errors) > 500:
                    break
    finally:
        await ex.close()
    out(kind="summary", books=books, errors=errors[:20], error_count=len(errors))


async def run_cryptofeed(venue, ws_base, http_base, cafile, symbol, seconds, name):
    from cryptofeed import FeedHandler
    from cryptofeed.connection import RestEndpoint, Routes, WebsocketEndpoint
    from cryptofeed.defines import L2_BOOK
    from cryptofeed.exchanges import OKX, Binance, Kraken
    from cryptofeed.symbols import Symbols

    ctx = ssl.create_default_context(cafile=cafile)
    ws_options = {"ssl": ctx, "additional_headers": {"X-Tickwire-Client": name}}
    extra = {}
    if venue == "binance":
        Symbols.set(
            "BINANCE",
            {symbol: symbol.replace("-", "")},
            {"tick_size": {symbol: "0.01"}, "instrument_type": {symbol: "spot"}},
        )

        class Feed(Binance):
            websocket_endpoints = [WebsocketEndpoint(f"{ws_base}/binance", options=ws_options)]
            rest_endpoints = [
                RestEndpoint(
                    f"{http_base}/binance",
                    routes=Routes(
                        "/api/v3/exchangeInfo",
                        l2book="/api/v3/depth?symbol={}&limit={}&client=" + name,
                        authentication="/api/v3/userDataStream",
                    ),
                )
            ]

        extra["max_depth"] = 0
    elif venue == "okx":
        Symbols.set(
            "OKX",
            {symbol: symbol},
            {"tick_size": {symbol: "0.01"}, "instrument_type": {symbol: "spot"}},
        )

        class Feed(OKX):
            websocket_endpoints = [
                WebsocketEndpoint(
                    f"{ws_base}/okx/ws/v5/public", options={**ws_options, "compression": None}
                )
            ]

        extra["checksum_validation"] = True
    else:

        class Feed(Kraken):
            websocket_endpoints = [
                WebsocketEndpoint(f"{ws_base}/kraken", limit=20, options=ws_options)
            ]
            rest_endpoints = [
                RestEndpoint(
                    f"{http_base}/kraken", routes=Routes(f"/0/public/AssetPairs?client={name}")
                )
            ]

        extra["max_depth"] = 10
        extra["checksum_validation"] = True

    books = 0

    async def book(ob, receipt):
        nonlocal books
        books += 1

    fh = FeedHandler(config={"uvloop": False, "log": {"disabled": True}})
    fh.add_feed(Feed(symbols=[symbol], channels=[L2_BOOK], callbacks={L2_BOOK: book}, **extra))
    stop = await stop_on_request()
    fh.run(start_loop=False, install_signal_handlers=False)
    try:
        await asyncio.wait_for(stop.wait(), float(seconds))
    except TimeoutError:
        pass
    await fh.stop_async()
    out(kind="summary", books=books, errors=[], error_count=0)


async def main(client, venue, ws_base, http_base, cafile, symbol, seconds, name):
    run = run_ccxt if client == "ccxt" else run_cryptofeed
    await run(venue, ws_base, http_base, cafile, venue_symbol(client, venue, symbol), seconds, name)


asyncio.run(main(*sys.argv[1:9]))
