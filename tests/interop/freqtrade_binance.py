"""freqtrade's Binance exchange class, unmodified, pointed at tickwire (.venv-interop).

argv: WS_BASE (wss://127.0.0.1:P) HTTP_BASE (http://127.0.0.1:Q) CAFILE PAIR (BTC/USDT)
It validates its configuration against tickwire's markets (exchangeInfo, time), loads
candles over REST, then keeps them fresh over the WebSocket (freqtrade's ExchangeWS,
watch_ohlcv), and reads an order book and a ticker. Prints JSON lines.
"""

import json
import sys
import time

from freqtrade.enums import CandleType, RunMode
from freqtrade.exchange import Binance


def out(**kw):
    print(json.dumps(kw, default=str), flush=True)


def main(ws_base, http_base, cafile, pair):
    urls = {
        "api": {
            "public": f"{http_base}/binance/api/v3",
            "ws": {"spot": f"{ws_base}/binance/stream"},
        }
    }
    config = {
        "dry_run": True,
        "runmode": RunMode.DRY_RUN,
        "stake_currency": pair.split("/")[1],
        "timeframe": "1m",
        "trading_mode": "spot",
        "margin_mode": "",
        # Price from the order book, as many live configurations do.
        "entry_pricing": {"price_side": "same", "use_order_book": True, "order_book_top": 1},
        "exit_pricing": {"price_side": "same", "use_order_book": True, "order_book_top": 1},
        "exchange": {
            "name": "binance",
            "key": "",
            "secret": "",
            "enable_ws": True,
            "pair_whitelist": [pair],
            "ccxt_config": {
                "urls": urls,
                "options": {"fetchMarkets": {"types": ["spot"]}},
                "cafile": cafile,
            },
        },
    }
    ex = Binance(config, validate=True)
    try:
        out(kind="markets", pairs=sorted(ex.markets))
        key = (pair, "1s", CandleType.SPOT)
        frames = ex.refresh_latest_ohlcv([key])
        rest = frames[key]
        out(kind="ohlcv_rest", rows=len(rest), last=rest.iloc[-1].to_dict() if len(rest) else None)
        deadline = time.monotonic() + 20
        ws = []
        while time.monotonic() < deadline:
            time.sleep(1.0)
            ex.refresh_latest_ohlcv([key])
            ws = ex._exchange_ws.ohlcvs(pair, "1s") if ex._exchange_ws else []
            if len(ws) >= 2:
                break
        out(kind="ohlcv_ws", candles=ws[-3:], via_ws=ex._exchange_ws is not None)
        ob = ex.fetch_l2_order_book(pair, 20)
        out(kind="rest_book", seq=ob.get("nonce"), bids=ob["bids"], asks=ob["asks"])
        ticker = ex.fetch_ticker(pair)
        out(kind="ticker", last=ticker["last"], bid=ticker["bid"], ask=ticker["ask"])
    finally:
        ex.close()


main(*sys.argv[1:5])
