"""The OKX v5 dialect through real clients: ccxt.pro, cryptofeed, raw WebSockets.

Every client test runs a real ``tickwire serve`` (TLS on: cryptofeed only speaks
``wss://``) and compares what the venue client holds with tickwire's native book at the
same ``seqId`` (OKX's ``seqId`` is the native ``book.<SYM>`` seq). The Sans-I/O tests at
the end drive the renderers through a hub without sockets: the 400-level window, slow
consumers and a book replaced upstream.
"""

from __future__ import annotations

import asyncio
import json
import re
import urllib.request
import zlib
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import pytest
import websockets

from helpers import ServerProcess, parse_server_frames
from tickwire.book import Book
from tickwire.dialects import DialectFeed
from tickwire.dialects.feed import Stream
from tickwire.dialects.okx import OkxSession, checksum
from tickwire.engine import Engine
from tickwire.framing import text_frame
from tickwire.hub import Hub
from tickwire.protocol import BookUpdate, Delta, Snapshot
from venues import NativeRecorder, VenueGateway, beside_recorder, dec, levels, start_venue_gateway

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


async def recv(ws: Any) -> Any:
    raw = await asyncio.wait_for(ws.recv(), 5)
    return raw if raw == "pong" else json.loads(raw)


def ws_url(gw: VenueGateway) -> str:
    return f"{gw.ws}/okx/ws/v5/public"


def sub_msg(*args: tuple[str, str], op: str = "subscribe") -> str:
    return json.dumps({"op": op, "args": [{"channel": c, "instId": i} for c, i in args]})


class ClientBook:
    """A book built from OKX pushes as a client builds it (wire strings kept)."""

    def __init__(self) -> None:
        self.bids: dict[str, str] = {}
        self.asks: dict[str, str] = {}
        self.seq: int | None = None

    def apply(self, push: dict[str, Any]) -> None:
        [data] = push["data"]
        if push["action"] == "snapshot":
            assert data["prevSeqId"] == -1
            self.bids, self.asks = {}, {}
        else:
            assert data["prevSeqId"] == self.seq, (data["prevSeqId"], self.seq)
        for side, book in (("bids", self.bids), ("asks", self.asks)):
            for px, sz, liq, orders in data[side]:
                assert liq == "0" and "e" not in px.lower() and "e" not in sz.lower()
                if Decimal(sz) == 0:
                    assert orders == "0"
                    book.pop(px, None)
                else:
                    book[px] = sz
        self.seq = data["seqId"]
        assert self.checksum() == data["checksum"], f"checksum differs at seqId {self.seq}"

    def sorted(self) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        bids = sorted(self.bids.items(), key=lambda x: Decimal(x[0]), reverse=True)
        asks = sorted(self.asks.items(), key=lambda x: Decimal(x[0]))
        return bids, asks

    def checksum(self) -> int:
        """OKX's algorithm, written again from its documentation (not tickwire's)."""
        bids, asks = self.sorted()
        parts: list[str] = []
        for i in range(25):
            if i < len(bids):
                parts += bids[i]
            if i < len(asks):
                parts += asks[i]
        crc = zlib.crc32(":".join(parts).encode())
        return crc - 2**32 if crc > 2**31 - 1 else crc

    def levels(self) -> tuple[dict[Decimal, Decimal], dict[Decimal, Decimal]]:
        return levels(self.bids.items()), levels(self.asks.items())


# -- the checksum --------------------------------------------------------------------------


def test_checksum_vectors_of_okx() -> None:
    # dialects.md §5.2: interleaved bid/ask, the longer side alone at the end, signed.
    bids = [("3366.1", "7"), ("3366", "6")]
    asks = [("3366.8", "9"), ("3368", "8")]
    assert checksum(bids, asks) == -1881014294
    assert checksum([("3366.1", "7")], [("3366.8", "9"), ("3368", "8"), ("3372", "8")]) == (
        831078360
    )
    # Only 25 levels a side count; an empty book is the CRC of "".
    deep_bids = [(f"{100 - i}", "1") for i in range(40)]
    deep_asks = [(f"{101 + i}", "2") for i in range(40)]
    assert checksum(deep_bids, deep_asks) == checksum(deep_bids[:25], deep_asks[:25])
    assert checksum([], []) == 0
    book = ClientBook()
    book.bids, book.asks = dict(deep_bids), dict(deep_asks)
    assert book.checksum() == checksum(deep_bids, deep_asks)


# -- the real clients ----------------------------------------------------------------------


def test_ccxt_books_trades_ticker_and_resync_match_the_native_feed(
    gateway: VenueGateway,
) -> None:
    rec, lines = asyncio.run(
        beside_recorder(
            gateway,
            "BTC-USDT",
            "ccxt_okx.py",
            gateway.ws,
            gateway.http,
            str(gateway.cafile),
            "BTC/USDT",
            "15",
            "resync",
        )
    )
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for line in lines:
        by_kind.setdefault(line["kind"], []).append(line)
    assert by_kind["markets"][0]["symbols"] == ["BTC/USDT", "ETH/USDT"]
    assert by_kind["markets"][0]["tick"] == 0.01
    books = by_kind["book"]
    assert len(books) == 31  # 15, the first after the resync, 15 more
    # ccxt built the book from the snapshot and applied every update whose prevSeqId
    # matched its nonce: its whole book equals tickwire's at each nonce (= seqId).
    for book in books:
        rec.assert_book(book["seq"], levels(book["bids"]), levels(book["asks"]))
    assert books[14]["seq"] > books[0]["seq"]
    trades = by_kind["trades"][0]["trades"]
    ids = [int(t[0]) for t in trades]
    assert ids == list(range(ids[0], ids[0] + len(ids))), "trade ids must be contiguous"
    for tid, price, amount, side in trades:
        assert rec.trades[int(tid)] == (dec(price), dec(amount), side)
    ticker = by_kind["ticker"][0]
    assert dec(ticker["low"]) <= dec(ticker["last"]) <= dec(ticker["high"])
    assert dec(ticker["bid"]) < dec(ticker["ask"])
    rest = by_kind["rest_book"][0]
    assert 0 < len(rest["bids"]) <= 50 and 0 < len(rest["asks"]) <= 50
    assert rest["bids"][0][0] < rest["asks"][0][0]
    # The forced nonce break took ccxt's InvalidNonce path once: it unsubscribed,
    # waited for the unsubscribe ack, subscribed again and rebuilt from the snapshot;
    # the trades stream on the same socket went on without a duplicate.
    assert by_kind["resync"] == [{"kind": "resync", "errors": 1}]
    after = [int(t[0]) for t in by_kind["trades_after"][0]["trades"]]
    assert after == list(range(after[0], after[0] + len(after)))
    candles = by_kind["ohlcv"][0]["candles"]
    assert candles, "no candles over REST"
    for _, o, h, low, c, v in candles:
        assert low <= min(o, c) <= max(o, c) <= h and v > 0
    assert [c[0] for c in candles] == sorted(c[0] for c in candles)
    assert by_kind["ohlcv_ws"][0]["candles"]
    top = by_kind["books5"][0]
    assert len(top["bids"]) == len(top["asks"]) == 5 and top["bids"][0][0] < top["asks"][0][0]
    # Text ping every second, answered: no RequestTimeout over the whole run.
    assert by_kind["alive"]


def test_cryptofeed_books_pass_every_checksum_and_trades_match(gateway: VenueGateway) -> None:
    async def main() -> tuple[NativeRecorder, list[dict[str, Any]], list[float]]:
        subs: list[float] = []

        async def watch_metrics() -> None:
            # While cryptofeed runs: its three channels, each streamed once to it.
            await asyncio.sleep(2)
            for _ in range(30):
                _, text = await asyncio.to_thread(_metrics, gateway)
                m = re.search(r'tickwire_venue_subscriptions\{venue="okx"\} (\S+)', text)
                assert m
                subs.append(float(m.group(1)))
                await asyncio.sleep(0.1)

        task = asyncio.create_task(watch_metrics())
        rec, lines = await beside_recorder(
            gateway,
            "BTC-USDT",
            "cryptofeed_okx.py",
            gateway.ws,
            gateway.http,
            str(gateway.cafile),
            "BTC-USDT",
            "7",
        )
        await task
        return rec, lines, subs

    rec, lines, subs = asyncio.run(main())
    # Once subscribed (the first samples may precede its connect), exactly 3 streams.
    assert subs.count(3.0) >= 5 and set(subs[subs.index(3.0) :]) == {3.0}, subs
    assert max(subs) == 3.0
    books = [line for line in lines if line["kind"] == "book"]
    trades = [line for line in lines if line["kind"] == "trade"]
    tickers = [line for line in lines if line["kind"] == "ticker"]
    # One connection, subscribed once: no BadChecksum (it would have reconnected).
    assert [line for line in lines if line["kind"] == "subscribes"] == [
        {"kind": "subscribes", "count": 1}
    ]
    assert len(books) >= 30, f"only {len(books)} books in 7 s"
    # Its cumulative subscribe sent `books` up to three times: each time a snapshot,
    # never a second stream. Every update chains to the push before it.
    snapshots = [b for b in books if b["action"] == "snapshot"]
    assert 1 <= len(snapshots) <= 3
    for prev, book in zip(books, books[1:], strict=False):
        if book["action"] == "update":
            assert book["prev"] == prev["seq"]
    for book in books:
        rec.assert_book(book["seq"], levels(book["bids"]), levels(book["asks"]))
    assert len(trades) >= 10
    ids = [int(t["id"]) for t in trades]
    assert ids == list(range(ids[0], ids[0] + len(ids))), "no duplicate, no missing trade"
    for t in trades:
        assert rec.trades[int(t["id"])] == (dec(t["price"]), dec(t["amount"]), t["side"])
    assert tickers and all(dec(t["bid"]) < dec(t["ask"]) for t in tickers)


def _metrics(gw: VenueGateway) -> tuple[int, str]:
    with urllib.request.urlopen(gw.http + "/metrics", timeout=5) as resp:
        return resp.status, resp.read().decode()


# -- the wire, by hand ---------------------------------------------------------------------


def test_acks_errors_ping_and_idempotent_subscribe(gateway: VenueGateway) -> None:
    async def main() -> None:
        async with websockets.connect(ws_url(gateway), ssl=gateway.ssl()) as ws:
            await ws.send("ping")
            assert await recv(ws) == "pong"
            await ws.send(sub_msg(("trades", "BTC-USDT"), ("tickers", "BTC-USDT")))
            ack1, ack2 = await recv(ws), await recv(ws)
            conn_id = ack1["connId"]
            assert re.fullmatch(r"[0-9a-f]{8}", conn_id)
            assert ack1 == {
                "event": "subscribe",
                "arg": {"channel": "trades", "instId": "BTC-USDT"},
                "connId": conn_id,
            }
            assert ack2["arg"] == {"channel": "tickers", "instId": "BTC-USDT"}
            # cryptofeed's cumulative subscribe: acked again, never streamed twice.
            await ws.send(sub_msg(("trades", "BTC-USDT")))
            await ws.send(sub_msg(("trades", "BTC-USDT"), ("tickers", "BTC-USDT")))
            # All or nothing: one unknown instId refuses the request.
            await ws.send(sub_msg(("books", "BTC-USDT"), ("trades", "NOPE-USDT")))
            await ws.send(sub_msg(("candle1m", "BTC-USDT")))
            await ws.send("{not json")
            await ws.send(json.dumps({"op": "login", "args": []}))
            await ws.send(json.dumps({"op": "subscribe"}))
            await ws.send(json.dumps({"id": "42", "op": "subscribe", "args": [{"x": 1}]}))
            replies: list[Any] = []
            data: list[dict[str, Any]] = []
            while len(replies) < 9:
                msg = await recv(ws)
                (data if "data" in msg else replies).append(msg)
            assert [r["event"] for r in replies[:3]] == ["subscribe"] * 3
            errors = replies[3:]
            assert all(e["event"] == "error" and e["connId"] == conn_id for e in errors)
            assert [e["code"] for e in errors] == [
                "60018",
                "60018",
                "60012",
                "60019",
                "60012",
                "60012",
            ]
            assert errors[0]["msg"].startswith(
                "Wrong URL or channel:trades,instId:NOPE-USDT doesn't exist."
            )
            assert errors[1]["msg"].startswith("Wrong URL or channel:candle1m,instId:BTC-USDT")
            assert errors[2]["msg"] == "Invalid request: {not json"
            assert errors[3]["msg"] == "Invalid op: login"
            assert errors[5]["id"] == "42"
            # Data: trades and tickers only (the refused request subscribed no book),
            # each trade once, ids contiguous.
            while sum(1 for m in data if m["arg"]["channel"] == "trades") < 15:
                msg = await recv(ws)
                assert "data" in msg, msg
                data.append(msg)
            assert {m["arg"]["channel"] for m in data} <= {"trades", "tickers"}
            trades = [t for m in data if m["arg"]["channel"] == "trades" for t in m["data"]]
            ids = [int(t["tradeId"]) for t in trades]
            assert ids == list(range(ids[0], ids[0] + len(ids)))
            t = trades[0]
            assert set(t) == {"instId", "tradeId", "px", "sz", "side", "ts", "count"}
            assert t["instId"] == "BTC-USDT" and t["side"] in ("buy", "sell")
            assert t["count"] == "1" and t["ts"].isdigit()
            tickers = [m["data"][0] for m in data if m["arg"]["channel"] == "tickers"]
            if tickers:
                tk = tickers[-1]
                assert tk["instType"] == "SPOT" and tk["instId"] == "BTC-USDT"
                assert dec(tk["bidPx"]) < dec(tk["askPx"])
                for key in (
                    "last",
                    "lastSz",
                    "open24h",
                    "high24h",
                    "low24h",
                    "vol24h",
                    "volCcy24h",
                    "sodUtc0",
                    "sodUtc8",
                    "ts",
                ):
                    assert isinstance(tk[key], str) and tk[key], key
            # Unsubscribe: acked (ccxt waits for it), then no more trades.
            await ws.send(sub_msg(("trades", "BTC-USDT"), op="unsubscribe"))
            while (msg := await recv(ws)).get("event") != "unsubscribe":
                assert "data" in msg
            assert msg == {
                "event": "unsubscribe",
                "arg": {"channel": "trades", "instId": "BTC-USDT"},
                "connId": conn_id,
            }
            await ws.send("ping")
            while (msg := await recv(ws)) != "pong":
                assert msg["arg"]["channel"] == "tickers", msg

    asyncio.run(main())


def test_books_chain_checksums_and_native_book_at_every_seq_id(gateway: VenueGateway) -> None:
    async def main() -> NativeRecorder:
        rec = NativeRecorder(gateway, "ETH-USDT")
        task = asyncio.create_task(rec.run())
        await asyncio.wait_for(rec.ready.wait(), 10)
        try:
            async with websockets.connect(ws_url(gateway), ssl=gateway.ssl()) as ws:
                await ws.send(sub_msg(("books", "ETH-USDT")))
                ack = await recv(ws)
                assert ack["event"] == "subscribe"
                book = ClientBook()
                snap = await recv(ws)
                assert snap["action"] == "snapshot" and snap["arg"]["instId"] == "ETH-USDT"
                book.apply(snap)
                seen = [book.seq]
                for _ in range(40):
                    push = await recv(ws)
                    assert push["action"] == "update"
                    assert set(push["data"][0]) == {
                        "asks",
                        "bids",
                        "ts",
                        "checksum",
                        "prevSeqId",
                        "seqId",
                    }
                    book.apply(push)
                    assert book.seq is not None
                    seen.append(book.seq)
                    while rec.seq < book.seq:
                        rec.moved.clear()
                        await asyncio.wait_for(rec.moved.wait(), 5)
                    rec.assert_book(book.seq, *book.levels())
                assert seen == sorted(set(seen))
                # A repeated subscribe: a fresh snapshot at the stream's seq, then the
                # chain goes on from it (one stream, not two).
                await ws.send(sub_msg(("books", "ETH-USDT")))
                while (msg := await recv(ws)).get("event") != "subscribe":
                    book.apply(msg)
                snap = await recv(ws)
                assert snap["action"] == "snapshot"
                book.apply(snap)
                for _ in range(10):
                    push = await recv(ws)
                    assert push["action"] == "update"
                    book.apply(push)
        finally:
            rec.stop()
            await task
        return rec

    asyncio.run(main())


def test_books5_and_bbo_tbt_are_the_top_of_the_native_book(gateway: VenueGateway) -> None:
    async def main() -> None:
        rec = NativeRecorder(gateway, "BTC-USDT")
        task = asyncio.create_task(rec.run())
        await asyncio.wait_for(rec.ready.wait(), 10)
        try:
            async with websockets.connect(ws_url(gateway), ssl=gateway.ssl()) as ws:
                await ws.send(sub_msg(("books5", "BTC-USDT"), ("bbo-tbt", "BTC-USDT")))
                counts = {"books5": 0, "bbo-tbt": 0}
                while min(counts.values()) < 10:
                    msg = await recv(ws)
                    if "event" in msg:
                        continue
                    channel = msg["arg"]["channel"]
                    assert "action" not in msg
                    [data] = msg["data"]
                    depth = 5 if channel == "books5" else 1
                    assert len(data["bids"]) == depth and len(data["asks"]) == depth
                    counts[channel] += 1
                    while rec.seq < data["seqId"]:
                        rec.moved.clear()
                        await asyncio.wait_for(rec.moved.wait(), 5)
                    bids, asks = levels(data["bids"]), levels(data["asks"])
                    rec.assert_book(data["seqId"], bids, asks, depth=depth)
                    if channel == "books5":
                        assert data["instId"] == "BTC-USDT"
        finally:
            rec.stop()
            await task

    asyncio.run(main())


def test_rest_endpoints_and_their_errors(gateway: VenueGateway) -> None:
    status, body = get(gateway, "/okx/api/v5/public/instruments?instType=SPOT")
    assert status == 200 and body["code"] == "0" and body["msg"] == ""
    inst = {i["instId"]: i for i in body["data"]}
    assert set(inst) == {"BTC-USDT", "ETH-USDT"}
    btc = inst["BTC-USDT"]
    assert (btc["instType"], btc["baseCcy"], btc["quoteCcy"], btc["state"]) == (
        "SPOT",
        "BTC",
        "USDT",
        "live",
    )
    assert btc["tickSz"] == "0.01" and btc["lotSz"] == btc["minSz"] == "0.0001"
    for other in ("SWAP", "FUTURES", "OPTION&uly=BTC-USD", "MARGIN"):
        assert get(gateway, f"/okx/api/v5/public/instruments?instType={other}") == (
            200,
            {"code": "0", "msg": "", "data": []},
        )
    status, body = get(gateway, "/okx/api/v5/market/books?instId=ETH-USDT&sz=5")
    assert status == 200
    [book] = body["data"]
    assert len(book["bids"]) == 5 and len(book["asks"]) == 5 and len(book["bids"][0]) == 4
    assert book["seqId"] > 0 and book["ts"].isdigit()
    assert dec(book["bids"][0][0]) < dec(book["asks"][0][0])
    status, body = get(gateway, "/okx/api/v5/market/books?instId=ETH-USDT")
    assert len(body["data"][0]["bids"]) == 1  # OKX's default sz
    status, body = get(gateway, "/okx/api/v5/market/ticker?instId=BTC-USDT")
    assert status == 200 and body["data"][0]["instId"] == "BTC-USDT"
    status, body = get(gateway, "/okx/api/v5/market/tickers?instType=SPOT")
    assert status == 200 and {t["instId"] for t in body["data"]} == {"BTC-USDT", "ETH-USDT"}
    status, body = get(gateway, "/okx/api/v5/market/trades?instId=BTC-USDT&limit=5")
    assert status == 200 and len(body["data"]) <= 5
    ids = [int(t["tradeId"]) for t in body["data"]]
    assert ids == sorted(ids, reverse=True)  # newest first, as OKX
    status, body = get(gateway, "/okx/api/v5/public/time")
    assert status == 200 and int(body["data"][0]["ts"]) > 1_600_000_000_000
    assert get(gateway, "/okx/api/v5/market/books?instId=NOPE-USDT") == (
        200,
        {"code": "51001", "msg": "Instrument ID does not exist.", "data": []},
    )
    status, body = get(gateway, "/okx/api/v5/market/books")
    assert status == 400 and body["code"] == "50014"
    status, body = get(gateway, "/okx/api/v5/market/books?instId=BTC-USDT&sz=401")
    assert status == 400 and body["code"] == "51000"
    status, body = get(gateway, "/okx/api/v5/public/instruments")
    assert status == 400 and body["code"] == "50014"
    status, body = get(gateway, "/okx/api/v5/public/instruments?instType=BOND")
    assert status == 400 and body["code"] == "51000"
    status, _ = get(gateway, "/okx/api/v5/nothing")
    assert status == 404


def test_candles_over_rest_and_the_business_socket(gateway: VenueGateway) -> None:
    async def main() -> None:
        url = f"{gateway.ws}/okx/ws/v5/business"
        async with websockets.connect(url, ssl=gateway.ssl()) as ws:
            await ws.send(sub_msg(("candle1s", "BTC-USDT"), ("candle1m", "BTC-USDT")))
            assert (await recv(ws))["arg"] == {"channel": "candle1s", "instId": "BTC-USDT"}
            assert (await recv(ws))["event"] == "subscribe"
            rows: dict[str, list[list[str]]] = {"candle1s": [], "candle1m": []}
            while len(rows["candle1s"]) < 6 or not rows["candle1m"]:
                msg = await recv(ws)
                [row] = msg["data"]
                rows[msg["arg"]["channel"]].append(row)
            for row in rows["candle1s"] + rows["candle1m"]:
                assert len(row) == 9 and all(isinstance(x, str) for x in row)
                ts, o, h, low, c, vol, ccy, _, confirm = row
                assert dec(low) <= min(dec(o), dec(c)) <= max(dec(o), dec(c)) <= dec(h)
                assert confirm in ("0", "1") and int(ts) % 1000 == 0
            # A one-second candle is pushed once more, confirmed, when the next opens.
            assert any(r[8] == "1" for r in rows["candle1s"])
            # The business socket serves candles only (as OKX's), public ones not.
            await ws.send(sub_msg(("books", "BTC-USDT")))
            while (msg := await recv(ws)).get("event") is None:
                pass
            assert msg["event"] == "error" and msg["code"] == "60018"

    asyncio.run(main())
    status, body = get(gateway, "/okx/api/v5/market/candles?instId=BTC-USDT&bar=1s&limit=5")
    assert status == 200 and 0 < len(body["data"]) <= 5
    ts = [int(r[0]) for r in body["data"]]
    assert ts == sorted(ts, reverse=True)  # newest first
    status, older = get(
        gateway, f"/okx/api/v5/market/candles?instId=BTC-USDT&bar=1s&after={ts[0]}&limit=2"
    )
    assert [int(r[0]) for r in older["data"]] == ts[1:3]
    status, newer = get(
        gateway, f"/okx/api/v5/market/history-candles?instId=BTC-USDT&bar=1s&before={ts[1]}"
    )
    assert [int(r[0]) for r in newer["data"]][-1] == ts[0]
    status, body = get(gateway, "/okx/api/v5/market/candles?instId=BTC-USDT&bar=1D")
    assert status == 400 and body["code"] == "51000"


def test_unknown_okx_path_is_refused(gateway: VenueGateway) -> None:
    async def main() -> None:
        with pytest.raises(websockets.InvalidStatus) as info:
            async with websockets.connect(f"{gateway.ws}/okx/ws/v5/private", ssl=gateway.ssl()):
                pass
        assert info.value.response.status_code == 404

    asyncio.run(main())


# -- Sans-I/O: the renderers driven through a hub, no sockets --------------------------------

TS = 1_700_000_000_000_000_000


class FakeConn:
    """A venue connection as the feed sees it; pushes are parsed from its bytes."""

    def __init__(self) -> None:
        self.streams: dict[str, Stream] = {}
        self.buf = bytearray()
        self.closed: tuple[int, str] | None = None
        self.codes: list[str] = []

    @property
    def deliver(self) -> Callable[[bytes], object]:
        return self.buf.extend

    def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)

    def rejected(self, code: str, reason: str) -> None:
        self.codes.append(code)

    def pushes(self) -> list[dict[str, Any]]:
        frames = parse_server_frames(self.buf)
        assert not self.buf
        return [json.loads(payload) for _, _, payload in frames]


def bu(side: str, price: str, qty: str) -> BookUpdate:
    return BookUpdate(side, price, qty, TS)  # type: ignore[arg-type]


class Market:
    """One symbol's hub, dialect feed and a clock."""

    def __init__(self, bids: int, asks: int) -> None:
        self.hub = Hub(Engine(("BTC-USDT",), epoch="e"))
        self.feed = DialectFeed(self.hub)
        self.now = 0.0
        ups = [bu("bid", f"{1000 - i * 0.01:.2f}", "1.0000") for i in range(bids)]
        ups += [bu("ask", f"{1001 + i * 0.01:.2f}", "2.0000") for i in range(asks)]
        self.publish(ups)

    @property
    def book(self) -> Book:
        return self.hub.engine.symbols["BTC-USDT"].book

    def publish(self, updates: list[BookUpdate]) -> None:
        self.now += 1.0
        self.hub.publish("BTC-USDT", updates, [])
        self.hub.flush(self.now)
        self.feed.flush(self.now)

    def subscribe(self, conn: FakeConn) -> ClientBook:
        session = OkxSession(self.feed)
        session.receive(conn, sub_msg(("books", "BTC-USDT")).encode())
        ack, snap = conn.pushes()
        assert ack["event"] == "subscribe"
        book = ClientBook()
        book.apply(snap)
        return book

    def assert_top(self, client: ClientBook, depth: int = 400) -> None:
        bids, asks = client.sorted()
        assert bids == self.book.bids(depth) and asks == self.book.asks(depth)


def test_books_keep_the_top_400_of_a_deeper_book() -> None:
    mkt = Market(bids=450, asks=30)
    conn = FakeConn()
    client = mkt.subscribe(conn)
    assert len(client.bids) == 400 and len(client.asks) == 30
    mkt.assert_top(client)
    # The best 10 bids go: 10 deeper levels enter the window (sent whole).
    mkt.publish([bu("bid", f"{1000 - i * 0.01:.2f}", "0") for i in range(10)])
    [push] = conn.pushes()
    entered = {p for p, *_ in push["data"][0]["bids"]} - {
        f"{1000 - i * 0.01:.2f}" for i in range(10)
    }
    assert len(entered) == 10
    client.apply(push)
    mkt.assert_top(client)
    # New best bids push levels out of the window: they are deleted ("0").
    mkt.publish([bu("bid", f"{1000.5 + i * 0.01:.2f}", "3.0000") for i in range(5)])
    [push] = conn.pushes()
    gone = [p for p, sz, *_ in push["data"][0]["bids"] if sz == "0"]
    assert len(gone) == 5
    client.apply(push)
    mkt.assert_top(client)
    # Shrunk below 400: the whole book, then plain changes again.
    mkt.publish([bu("bid", f"{1000 - i * 0.01:.2f}", "0") for i in range(10, 120)])
    client.apply(conn.pushes()[0])
    mkt.assert_top(client, depth=1000)
    mkt.publish([bu("ask", "1001.00", "5.0000"), bu("bid", "999.00", "0")])
    [push] = conn.pushes()
    assert len(push["data"][0]["bids"]) + len(push["data"][0]["asks"]) == 2
    client.apply(push)
    mkt.assert_top(client, depth=1000)


def test_a_slow_consumer_catches_up_with_one_chained_update() -> None:
    mkt = Market(bids=40, asks=40)
    fast, slow = FakeConn(), FakeConn()
    fast_book, slow_book = mkt.subscribe(fast), mkt.subscribe(slow)
    mkt.publish([])  # the tap's first load is settled (a laggard then gets a snapshot)
    mkt.feed.pause(slow, mkt.now)
    for i in range(6):
        mkt.publish([bu("bid", "999.90", f"{i + 2}.0000"), bu("ask", f"{1002 + i}.00", "1.0000")])
        mkt.publish([bu("ask", f"{1002 + i}.00", "0")] if i % 2 else [])
    for push in fast.pushes():
        fast_book.apply(push)
    assert slow.pushes() == []
    had = slow_book.seq
    mkt.feed.resume(slow)
    mkt.publish([])
    [merged] = slow.pushes()
    assert merged["action"] == "update" and merged["data"][0]["prevSeqId"] == had
    slow_book.apply(merged)  # chain and checksum checked
    assert slow_book.seq == fast_book.seq == mkt.hub.channels["book.BTC-USDT"].seq
    mkt.assert_top(slow_book)
    # Back on the shared stream: the same bytes as everyone.
    mkt.publish([bu("bid", "999.95", "1.0000")])
    assert fast.buf == slow.buf
    [push] = slow.pushes()
    slow_book.apply(push)
    fast.pushes()
    # Paused when it subscribed: a snapshot when it drains.
    late = FakeConn()
    mkt.feed.pause(late, mkt.now)
    OkxSession(mkt.feed).receive(late, sub_msg(("books", "BTC-USDT")).encode())
    [ack] = late.pushes()
    mkt.feed.resume(late)
    mkt.publish([bu("bid", "999.95", "2.0000")])
    late_book = ClientBook()
    for push in late.pushes():
        late_book.apply(push)
    assert late_book.seq == slow_book.seq + 1
    mkt.assert_top(late_book)


def test_a_book_replaced_upstream_sends_everyone_a_snapshot() -> None:
    mkt = Market(bids=20, asks=20)
    conn, paused = FakeConn(), FakeConn()
    client, paused_book = mkt.subscribe(conn), mkt.subscribe(paused)
    mkt.feed.pause(paused, mkt.now)
    mkt.publish([bu("bid", "999.99", "7.0000")])
    client.apply(conn.pushes()[0])
    tap = mkt.feed.taps["BTC-USDT"]
    seq = tap.seq + 50  # a hole upstream: the source sends a new snapshot
    snap = Snapshot(
        ch="book.BTC-USDT",
        seq=seq,
        epoch="e",
        bids=[("990.00", "1.0000"), ("989.00", "2.0000")],
        asks=[("1010.00", "3.0000")],
    )
    tap.receive(text_frame(msgspec.json.encode(snap)))
    mkt.feed.flush(mkt.now + 1)
    [push] = conn.pushes()
    assert push["action"] == "snapshot" and push["data"][0]["seqId"] == seq
    client.apply(push)
    assert client.sorted() == (
        [("990.00", "1.0000"), ("989.00", "2.0000")],
        [("1010.00", "3.0000")],
    )
    mkt.feed.resume(paused)
    mkt.feed.flush(mkt.now + 2)
    [push] = paused.pushes()
    assert push["action"] == "snapshot" and push["data"][0]["seqId"] == seq
    paused_book.apply(push)


def test_a_laggard_from_between_a_replacement_and_the_next_window_chains() -> None:
    # The replacement's snapshot goes out at once, at the seq the tap has (past the
    # window's start); a subscriber that stalls before the window emits holds that
    # seq, and its catch-up must chain to it.
    mkt = Market(bids=10, asks=10)
    conn, slow = FakeConn(), FakeConn()
    client, slow_book = mkt.subscribe(conn), mkt.subscribe(slow)
    mkt.publish([bu("bid", "995.00", "1.0")])  # a window emits now: next due in 100 ms
    client.apply(conn.pushes()[0])
    slow_book.apply(slow.pushes()[0])
    tap = mkt.feed.taps["BTC-USDT"]
    ch = "book.BTC-USDT"

    def native(msg: Snapshot | Delta) -> None:
        tap.receive(text_frame(msgspec.json.encode(msg)))

    x = tap.seq + 100
    native(Snapshot(ch=ch, seq=x, epoch="e", bids=[("990.00", "1.0")], asks=[("1010.00", "1.0")]))
    native(Delta(ch=ch, seq=x + 1, prev_seq=x, checksum=0, updates=[bu("bid", "991.00", "2.0")]))
    mkt.feed.flush(mkt.now + 0.01)  # the 100 ms window is not due yet
    for c, book in ((conn, client), (slow, slow_book)):
        [snap] = c.pushes()
        assert snap["action"] == "snapshot" and snap["data"][0]["seqId"] == x + 1
        book.apply(snap)
    mkt.feed.pause(slow, mkt.now + 0.02)
    native(
        Delta(ch=ch, seq=x + 2, prev_seq=x + 1, checksum=0, updates=[bu("ask", "1009.00", "3.0")])
    )
    mkt.feed.flush(mkt.now + 1)
    [push] = conn.pushes()
    client.apply(push)
    assert push["data"][0]["prevSeqId"] == x + 1 and client.seq == x + 2
    mkt.feed.resume(slow)
    mkt.feed.flush(mkt.now + 2)
    [merged] = slow.pushes()
    assert merged["action"] == "update"
    slow_book.apply(merged)  # prevSeqId == x + 1: what it holds
    assert (
        slow_book.sorted()
        == client.sorted()
        == (
            [("991.00", "2.0"), ("990.00", "1.0")],
            [("1009.00", "3.0"), ("1010.00", "1.0")],
        )
    )
