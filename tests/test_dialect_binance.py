"""The Binance spot dialect through real clients: ccxt.pro, cryptofeed, raw WebSockets.

Every test runs a real ``tickwire serve`` (TLS on: cryptofeed only speaks ``wss://``)
and compares what the venue client holds with tickwire's native book at the same
update id (Binance's ``u`` is the native ``book.<SYM>`` seq).
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import websockets

from helpers import ServerProcess
from venues import VenueGateway, beside_recorder, dec, levels, start_venue_gateway

SYMBOLS = "BTC-USDT,ETH-USDT"


@pytest.fixture
def gateway(server_factory: Callable[..., ServerProcess], tmp_path: Path) -> VenueGateway:
    return start_venue_gateway(server_factory, tmp_path, "--symbols", SYMBOLS, "--rate", "400")


def get(gw: VenueGateway, path: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(gw.http + path, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


async def recv_json(ws: Any) -> Any:
    return json.loads(await asyncio.wait_for(ws.recv(), 5))


# -- the real clients ---------------------------------------------------------------------


def test_ccxt_books_trades_ticker_candles_match_the_native_feed(gateway: VenueGateway) -> None:
    rec, lines = asyncio.run(
        beside_recorder(
            gateway,
            "BTC-USDT",
            "ccxt_binance.py",
            gateway.ws,
            gateway.http,
            str(gateway.cafile),
            "BTC/USDT",
            "15",
        )
    )
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for line in lines:
        by_kind.setdefault(line["kind"], []).append(line)
    assert by_kind["markets"][0]["symbols"] == ["BTC/USDT", "ETH/USDT"]
    books = by_kind["book"]
    assert len(books) == 15
    # ccxt synced from the REST snapshot and then applied every diff: its whole book
    # equals tickwire's at each nonce, and the nonces move forward.
    for book in books:
        rec.assert_book(book["seq"], levels(book["bids"]), levels(book["asks"]))
    assert books[-1]["seq"] > books[0]["seq"]
    trades = by_kind["trades"][0]["trades"]
    ids = [int(t[0]) for t in trades]
    assert ids == list(range(ids[0], ids[0] + len(ids))), "trade ids must be contiguous"
    for tid, price, amount, side in trades:
        assert rec.trades[int(tid)] == (dec(price), dec(amount), side)
    ticker = by_kind["ticker"][0]
    assert dec(ticker["low"]) <= dec(ticker["last"]) <= dec(ticker["high"])
    rest = by_kind["rest_book"][0]
    rec.assert_book(rest["seq"], levels(rest["bids"]), levels(rest["asks"]), depth=50)
    candles = by_kind["ohlcv"][0]["candles"]
    assert candles, "no candles over REST"
    for _, o, h, low, c, v in candles:
        assert low <= min(o, c) <= max(o, c) <= h and v > 0
    assert by_kind["ohlcv_ws"][0]["candles"]


def test_cryptofeed_books_trades_ticker_match_the_native_feed(gateway: VenueGateway) -> None:
    rec, lines = asyncio.run(
        beside_recorder(
            gateway,
            "BTC-USDT",
            "cryptofeed_binance.py",
            gateway.ws,
            gateway.http,
            str(gateway.cafile),
            "BTC-USDT",
            "4",
        )
    )
    books = [line for line in lines if line["kind"] == "book"]
    trades = [line for line in lines if line["kind"] == "trade"]
    tickers = [line for line in lines if line["kind"] == "ticker"]
    assert len(books) >= 20, f"only {len(books)} books in 4 s"
    # The first callback is the REST snapshot (no sequence number); every later one
    # is after a diff event, at its ``u``.
    checked = 0
    for book in books:
        if book["seq"] is not None and book["seq"] in rec.books:
            rec.assert_book(book["seq"], levels(book["bids"]), levels(book["asks"]))
            checked += 1
    assert checked >= len(books) - 2
    assert len(trades) >= 10
    ids = [int(t["id"]) for t in trades]
    assert ids == list(range(ids[0], ids[0] + len(ids)))
    for t in trades:
        assert rec.trades[int(t["id"])][:2] == (dec(t["price"]), dec(t["amount"]))
    assert tickers and all(dec(t["bid"]) < dec(t["ask"]) for t in tickers)


# -- the wire, by hand ----------------------------------------------------------------------


def test_subscribe_acks_errors_list_and_repeats(gateway: VenueGateway) -> None:
    async def main() -> None:
        url = f"{gateway.ws}/binance/ws"
        async with websockets.connect(url, ssl=gateway.ssl()) as ws:
            await ws.send(
                json.dumps({"method": "SUBSCRIBE", "params": ["btcusdt@depth@100ms"], "id": 1})
            )
            assert await recv_json(ws) == {"result": None, "id": 1}
            # All or nothing: one unknown stream refuses the whole request.
            bad = {"method": "SUBSCRIBE", "params": ["btcusdt@trade", "nope@trade"], "id": 2}
            await ws.send(json.dumps(bad))
            # A repeated subscribe for a live stream is acked and not duplicated.
            again = {"method": "SUBSCRIBE", "params": ["btcusdt@depth@100ms"], "id": 3}
            await ws.send(json.dumps(again))
            await ws.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": 4}))
            await ws.send("{not json")
            await ws.send(json.dumps({"method": "FROB", "id": 5}))
            replies: list[Any] = []
            events: list[dict[str, Any]] = []
            while len(replies) < 5:
                msg = await recv_json(ws)
                (events if "e" in msg else replies).append(msg)
            assert replies[0]["id"] == 2 and replies[0]["error"]["code"] == 2
            assert "nope@trade" in replies[0]["error"]["msg"]
            assert replies[1] == {"result": None, "id": 3}
            assert replies[2] == {"result": ["btcusdt@depth@100ms"], "id": 4}
            assert replies[3]["error"]["code"] == 3 and replies[3]["id"] is None
            assert replies[4]["error"]["code"] == 2 and replies[4]["id"] == 5
            # Only depth events, never a trade (the refused request subscribed nothing),
            # each chained to the previous one: U == previous u + 1, no ``pu``.
            while len(events) < 12:
                msg = await recv_json(ws)
                assert "e" in msg, msg
                events.append(msg)
            assert {e["e"] for e in events} == {"depthUpdate"}
            for prev, ev in zip(events, events[1:], strict=False):
                assert ev["U"] == prev["u"] + 1, (prev, ev)
                assert "pu" not in ev and ev["s"] == "BTCUSDT"
            await ws.send(
                json.dumps({"method": "UNSUBSCRIBE", "params": ["btcusdt@depth@100ms"], "id": 6})
            )
            while (msg := await recv_json(ws)).get("id") != 6:
                assert msg.get("e") == "depthUpdate"
            assert msg == {"result": None, "id": 6}

    asyncio.run(main())


def test_combined_stream_from_the_query_wraps_every_event(gateway: VenueGateway) -> None:
    async def main() -> None:
        streams = "btcusdt@depth@100ms/ethusdt@aggTrade/btcusdt@bookTicker/btcusdt@depth5"
        url = f"{gateway.ws}/binance/stream?streams={streams}"
        seen: dict[str, int] = {}
        async with websockets.connect(url, ssl=gateway.ssl()) as ws:
            while len(seen) < 4 or min(seen.values()) < 3:
                msg = await recv_json(ws)
                assert set(msg) == {"stream", "data"}, msg
                seen[msg["stream"]] = seen.get(msg["stream"], 0) + 1
                data = msg["data"]
                if msg["stream"] == "btcusdt@bookTicker":
                    assert "e" not in data and data["b"] < data["a"]
                elif msg["stream"] == "btcusdt@depth5":
                    assert len(data["bids"]) == 5 and data["lastUpdateId"] > 0
                elif msg["stream"] == "ethusdt@aggTrade":
                    assert data["e"] == "aggTrade" and data["s"] == "ETHUSDT"
        assert set(seen) == set(streams.split("/"))

    asyncio.run(main())


def test_rest_depth_is_never_older_than_a_diff_sent(gateway: VenueGateway) -> None:
    async def main() -> None:
        url = f"{gateway.ws}/binance/ws/btcusdt@depth@100ms"
        async with websockets.connect(url, ssl=gateway.ssl()) as ws:
            for _ in range(10):
                ev = await recv_json(ws)
                status, snap = await asyncio.to_thread(
                    get, gateway, "/binance/api/v3/depth?symbol=BTCUSDT&limit=1000"
                )
                assert status == 200
                assert snap["lastUpdateId"] >= ev["u"]

    asyncio.run(main())


def test_rest_endpoints_and_their_errors(gateway: VenueGateway) -> None:
    status, info = get(gateway, "/binance/api/v3/exchangeInfo")
    assert status == 200
    sym = {s["symbol"]: s for s in info["symbols"]}
    assert set(sym) == {"BTCUSDT", "ETHUSDT"}
    assert sym["BTCUSDT"]["filters"][0]["filterType"] == "PRICE_FILTER"
    assert sym["BTCUSDT"]["filters"][0]["tickSize"] == "0.01"
    assert sym["BTCUSDT"]["baseAsset"] == "BTC" and sym["BTCUSDT"]["quoteAsset"] == "USDT"
    assert get(gateway, "/binance/api/v3/ping") == (200, {})
    status, t = get(gateway, "/binance/api/v3/time")
    assert status == 200 and t["serverTime"] > 1_600_000_000_000
    status, depth = get(gateway, "/binance/api/v3/depth?symbol=ETHUSDT&limit=5")
    assert status == 200 and len(depth["bids"]) == 5 and len(depth["asks"]) == 5
    status, bt = get(gateway, "/binance/api/v3/ticker/bookTicker?symbol=BTCUSDT")
    assert status == 200 and dec(bt["bidPrice"]) < dec(bt["askPrice"])
    status, tk = get(gateway, "/binance/api/v3/ticker/24hr")
    assert status == 200 and {t["symbol"] for t in tk} == {"BTCUSDT", "ETHUSDT"}
    status, trades = get(gateway, "/binance/api/v3/trades?symbol=BTCUSDT&limit=5")
    assert status == 200 and len(trades) <= 5
    assert get(gateway, "/binance/api/v3/depth?symbol=NOPE") == (
        400,
        {"code": -1121, "msg": "Invalid symbol."},
    )
    status, err = get(gateway, "/binance/api/v3/depth")
    assert status == 400 and err["code"] == -1102
    status, err = get(gateway, "/binance/api/v3/depth?symbol=BTCUSDT&limit=x")
    assert status == 400 and err["code"] == -1100
    status, err = get(gateway, "/binance/api/v3/klines?symbol=BTCUSDT&interval=7m")
    assert status == 400 and err["code"] == -1120
    status, err = get(gateway, "/binance/api/v3/nothing")
    assert status == 404


def test_unknown_venue_path_is_refused(gateway: VenueGateway) -> None:
    async def main() -> None:
        with pytest.raises(websockets.InvalidStatus) as info:
            async with websockets.connect(f"{gateway.ws}/binance/nowhere", ssl=gateway.ssl()):
                pass
        assert info.value.response.status_code == 404

    asyncio.run(main())


def test_a_stalled_reader_catches_up_with_one_merged_event_per_stream(
    server_factory: Callable[..., ServerProcess],
) -> None:
    """A Binance client that stops reading: the others are untouched, and when it reads
    again each diff stream continues with one merged event, U still chained."""
    from test_slow_consumers import connect

    srv = server_factory(
        "--symbols", "3", "--rate", "20000", "--sndbuf-kb", "8",
        "--high-watermark-kb", "16", "--low-watermark-kb", "4", "--stall-timeout", "30",
    )  # fmt: skip
    streams = [f"sym{i}usd@depth@100ms" for i in range(3)]
    url = f"ws://127.0.0.1:{srv.port}/binance/stream"
    sub = json.dumps({"method": "SUBSCRIBE", "params": streams, "id": 1})

    async def run() -> tuple[Any, Any]:
        fast = await connect(url)
        slow = await connect(url, small=True)
        for c in (fast, slow):
            c.send(sub)
        await slow.wait_for(lambda: len(slow.messages) > 10)
        slow.stall()
        await asyncio.sleep(3)
        slow.unstall()
        await asyncio.sleep(1.5)
        return fast, slow

    fast, slow = asyncio.run(run())
    stats = srv.stop()
    assert stats is not None
    for client in (fast, slow):
        for name in streams:
            events = [m["data"] for m in client.messages if m.get("stream") == name]
            assert len(events) > 20, (client is slow, len(events), client.close_code, stats)
            for prev, ev in zip(events, events[1:], strict=False):
                assert ev["U"] == prev["u"] + 1, f"{name}: hole {prev['u']} -> {ev['U']}"
    assert stats["venues"]["catch_ups"] >= 1, stats["venues"]
    assert stats["slow"]["closes"] == {"budget": 0, "stall": 0, "total": 0}


def test_freqtrade_validates_loads_candles_and_keeps_them_fresh_over_the_websocket(
    gateway: VenueGateway,
) -> None:
    rec, lines = asyncio.run(
        beside_recorder(
            gateway,
            "BTC-USDT",
            "freqtrade_binance.py",
            gateway.ws,
            gateway.http,
            str(gateway.cafile),
            "BTC/USDT",
        )
    )
    by_kind = {line["kind"]: line for line in lines}
    assert by_kind["markets"]["pairs"] == ["BTC/USDT", "ETH/USDT"]
    assert by_kind["ohlcv_rest"]["rows"] >= 1
    ws = by_kind["ohlcv_ws"]
    assert ws["via_ws"] and len(ws["candles"]) >= 2
    for _, o, h, low, c, v in ws["candles"]:
        assert low <= min(o, c) <= max(o, c) <= h and v > 0
    book = by_kind["rest_book"]
    rec.assert_book(book["seq"], levels(book["bids"]), levels(book["asks"]), depth=20)
    ticker = by_kind["ticker"]
    assert ticker["bid"] < ticker["ask"]
