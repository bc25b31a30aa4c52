"""The Kraken dialect through real clients: ccxt.pro (v2), cryptofeed (v1), raw WebSockets.

Kraken has no update ids: a client's book is identified by its top-10 checksum. The
:class:`NativeRecorder` indexes tickwire's native book at every seq by that checksum, so
each venue book is compared with the native one at a seq where the checksums agree.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
import urllib.request
import zlib
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import websockets

from helpers import ServerProcess
from tickwire.book import Book, checksum_string
from tickwire.dialects.feed import Tap, Window
from tickwire.dialects.kraken import BookV1, BookV2
from tickwire.dialects.markets import Market
from tickwire.framing import frame_payloads
from venues import NativeRecorder, VenueGateway, beside_recorder, dec, levels, start_venue_gateway

SYMBOLS = "BTC-USD,ETH-USD"


@pytest.fixture
def gateway(server_factory: Callable[..., ServerProcess], tmp_path: Path) -> VenueGateway:
    return start_venue_gateway(server_factory, tmp_path, "--symbols", SYMBOLS, "--rate", "400")


def get(gw: VenueGateway, path: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(gw.http + path, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def crc(asks: list[tuple[str, str]], bids: list[tuple[str, str]]) -> int:
    """Kraken's checksum of levels given as the strings sent (best first)."""
    return zlib.crc32(checksum_string(asks, bids).encode())


def top(
    rec: NativeRecorder, seq: int, n: int
) -> tuple[dict[Decimal, Decimal], dict[Decimal, Decimal]]:
    bids, asks = rec.books[seq]
    return (
        dict(sorted(bids.items(), reverse=True)[:n]),
        dict(sorted(asks.items())[:n]),
    )


def matches_native(
    rec: NativeRecorder,
    checksum: int,
    bids: dict[Decimal, Decimal],
    asks: dict[Decimal, Decimal],
    n: int,
) -> bool:
    """The book equals the native top ``n`` at a seq whose checksum is ``checksum``."""
    seqs = rec.by_checksum.get(checksum)
    assert seqs, f"checksum {checksum} matches no native book"
    return any(top(rec, s, n) == (bids, asks) for s in seqs)


def decimals(rec: NativeRecorder) -> tuple[int, int]:
    """The native price and quantity decimals (ccxt's floats are written back with them)."""
    bids, _ = next(iter(rec.books.values()))
    price, qty = next(iter(bids.items()))
    return -int(price.as_tuple().exponent), -int(qty.as_tuple().exponent)


def written(pairs: Any, pdec: int, qdec: int) -> list[tuple[str, str]]:
    return [(f"{float(p):.{pdec}f}", f"{float(q):.{qdec}f}") for p, q, *_ in pairs]


# -- the real clients ---------------------------------------------------------------------


def test_ccxt_v2_books_trades_ticker_match_the_native_feed(gateway: VenueGateway) -> None:
    rec, lines = asyncio.run(
        beside_recorder(
            gateway,
            "BTC-USD",
            "ccxt_kraken.py",
            gateway.ws,
            gateway.http,
            str(gateway.cafile),
            "BTC/USD",
            "7",
            linger_s=1.0,
        )
    )
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for line in lines:
        by_kind.setdefault(line["kind"], []).append(line)
    assert by_kind["markets"][0]["symbols"] == ["BTC/USD", "ETH/USD"]
    assert by_kind["markets"][0]["id"] == "XBTUSD"
    pdec, qdec = decimals(rec)
    # Every book ccxt held (depth 10, and 100: the whole simulated book) equals the
    # native top N at a seq with the same checksum, computed over ccxt's own book.
    for depth in (10, 100):
        books = [b for b in by_kind["book"] if b["depth"] == depth]
        assert len(books) >= 10, f"only {len(books)} books of depth {depth}"
        for book in books:
            bids, asks = written(book["bids"], pdec, qdec), written(book["asks"], pdec, qdec)
            assert len(bids) <= depth and len(asks) <= depth
            if depth == 10:
                assert len(bids) == len(asks) == 10
            assert matches_native(rec, crc(asks, bids), levels(bids), levels(asks), depth)
    trades = by_kind["trades"][0]["trades"]
    ids = [int(t[0]) for t in trades]
    assert ids == list(range(ids[0], ids[0] + len(ids))), "trade ids must be contiguous"
    for tid, price, amount, side in trades:
        assert rec.trades[int(tid)] == (dec(price), dec(amount), side)
    for tk in by_kind["ticker"]:
        assert tk["bid"] < tk["ask"] and tk["low"] <= tk["last"] <= tk["high"]
    rest = by_kind["rest_book"][0]
    bids, asks = written(rest["bids"], pdec, qdec), written(rest["asks"], pdec, qdec)
    assert matches_native(rec, crc(asks, bids), levels(bids), levels(asks), 50)
    for _, o, h, low, c, v in by_kind["ohlcv"][0]["candles"]:
        assert low <= min(o, c) <= max(o, c) <= h and v > 0
    rt = by_kind["rest_ticker"][0]
    assert rt["bid"] < rt["ask"]
    for tid, price, amount, side in by_kind["rest_trades"][0]["trades"]:
        assert rec.trades[int(tid)] == (dec(price), dec(amount), side)
    # ccxt pings every keepAlive (2 s here, Kraken's 6 s in ccxt) and closes after two
    # without a pong: it got a pong for each ping and still had its book after 7 s.
    assert by_kind["pongs"][0]["count"] >= 2 and by_kind["pongs"][0]["methods"] == ["pong"]
    assert by_kind["alive"][0] == {"kind": "alive", "bids": 10, "asks": 10}


def test_cryptofeed_v1_books_trades_ticker_match_the_native_feed(gateway: VenueGateway) -> None:
    rec, lines = asyncio.run(
        beside_recorder(
            gateway,
            "BTC-USD",
            "cryptofeed_kraken.py",
            gateway.ws,
            gateway.http,
            str(gateway.cafile),
            "BTC-USD",
            "5",
            linger_s=1.0,
        )
    )
    # One subscription per feed: no checksum failure, no reconnect.
    assert [line["depth"] for line in lines if line["kind"] == "subscribe"] == [10, 1000]
    for depth in (10, 1000):
        books = [b for b in lines if b["kind"] == "book" and b["depth"] == depth]
        assert len(books) >= 50, f"only {len(books)} books of depth {depth}"
        assert sum(b["snapshot"] for b in books) == 1
        # cryptofeed itself verified the single-sided updates (``c`` in the first
        # dict); every other frame's ``c`` is checked here against its own book.
        assert sum(b["validated"] for b in books) >= 10
        for book in books:
            assert book["c"] is None or book["c"] == book["mine"], book
            if depth == 10:
                assert book["size"] == [10, 10]
            bids, asks = levels(book["bids"]), levels(book["asks"])
            assert matches_native(rec, book["mine"], bids, asks, 10)
            seqs = rec.by_checksum[book["mine"]]
            if depth == 1000:  # the whole book, never truncated: as large as native
                assert any(
                    [len(rec.books[s][0]), len(rec.books[s][1])] == book["size"] for s in seqs
                )
    trades = [(dec(t["price"]), dec(t["amount"]), t["side"]) for t in lines if t["kind"] == "trade"]
    assert len(trades) >= 20
    native = [rec.trades[i] for i in sorted(rec.trades)]
    starts = [i for i, t in enumerate(native) if t == trades[0]]
    assert any(native[i : i + len(trades)] == trades for i in starts), "trades differ"
    tickers = [t for t in lines if t["kind"] == "ticker"]
    assert tickers and all(dec(t["bid"]) < dec(t["ask"]) for t in tickers)


# -- the wire, by hand ----------------------------------------------------------------------


async def recv(ws: Any, timeout: float = 5.0) -> Any:  # noqa: ASYNC109 - a plain deadline
    """The next frame; a close fails the test with the server's close code and reason."""
    try:
        return await asyncio.wait_for(ws.recv(), timeout)
    except websockets.ConnectionClosed as exc:
        raise AssertionError(f"connection closed: {exc.rcvd!r} (sent {exc.sent!r})") from exc


async def next_dict(ws: Any) -> dict[str, Any]:
    """The next object frame (v1 data frames are arrays; heartbeats skipped)."""
    deadline = time.monotonic() + 5.0
    while True:
        msg = json.loads(await recv(ws, deadline - time.monotonic()))
        if isinstance(msg, dict) and msg.get("event") != "heartbeat":
            if msg.get("channel") not in ("heartbeat", "book", "trade", "ticker"):
                return msg


def test_v1_acks_errors_ping_trades_and_unsubscribe(gateway: VenueGateway) -> None:
    async def main() -> None:
        async with websockets.connect(f"{gateway.ws}/kraken", ssl=gateway.ssl()) as ws:
            status = json.loads(await recv(ws))
            assert status["event"] == "systemStatus" and status["status"] == "online"
            sub = {"name": "book", "depth": 10}
            await ws.send(
                json.dumps(
                    {"event": "subscribe", "pair": ["XBT/USD", "NOPE/USD"], "subscription": sub}
                )
            )
            ack = await next_dict(ws)
            assert ack["event"] == "subscriptionStatus" and ack["status"] == "subscribed"
            assert ack["channelName"] == "book-10" and ack["pair"] == "XBT/USD"
            assert ack["subscription"] == sub and isinstance(ack["channelID"], int)
            err = await next_dict(ws)
            assert err == {
                "event": "subscriptionStatus",
                "pair": "NOPE/USD",
                "subscription": sub,
                "status": "error",
                "errorMessage": "Currency pair not supported NOPE/USD",
            }
            bad_depth = {"name": "book", "depth": 7}
            await ws.send(
                json.dumps(
                    {
                        "event": "subscribe",
                        "pair": ["XBT/USD"],
                        "subscription": bad_depth,
                        "reqid": 4,
                    }
                )
            )
            err = await next_dict(ws)
            assert err["status"] == "error" and err["reqid"] == 4
            assert err["errorMessage"] == "Subscription depth not supported"
            await ws.send(
                json.dumps(
                    {"event": "subscribe", "pair": ["XBT/USD"], "subscription": {"name": "spread"}}
                )
            )
            assert (await next_dict(ws))["errorMessage"] == "Subscription name invalid"
            await ws.send(json.dumps({"event": "ping", "reqid": 9}))
            assert await next_dict(ws) == {"event": "pong", "reqid": 9}
            await ws.send("{nope")
            assert await next_dict(ws) == {"errorMessage": "Malformed request", "event": "error"}
            await ws.send(
                json.dumps(
                    {"event": "subscribe", "pair": ["XBT/USD"], "subscription": {"name": "trade"}}
                )
            )
            trade_ack = await next_dict(ws)
            assert trade_ack["channelName"] == "trade" and trade_ack["status"] == "subscribed"
            # Trades: exactly six fields (cryptofeed unpacks six), after the ack.
            seen = 0
            while seen < 10:
                msg = json.loads(await recv(ws))
                if isinstance(msg, list) and msg[-2] == "trade":
                    assert msg[0] == trade_ack["channelID"] and msg[-1] == "XBT/USD"
                    for t in msg[1]:
                        assert len(t) == 6 and t[3] in "bs" and t[4] in "lm" and t[5] == ""
                        assert re.fullmatch(r"\d+\.\d{6}", t[2])
                        seen += 1
                elif isinstance(msg, list):
                    assert msg[0] == ack["channelID"] and msg[-2:] == ["book-10", "XBT/USD"]
            await ws.send(
                json.dumps({"event": "unsubscribe", "pair": ["XBT/USD"], "subscription": sub})
            )
            unsub = await next_dict(ws)
            assert unsub["status"] == "unsubscribed" and unsub["channelID"] == ack["channelID"]
            await ws.send(
                json.dumps({"event": "unsubscribe", "pair": ["XBT/USD"], "subscription": sub})
            )
            assert (await next_dict(ws))["errorMessage"] == "Subscription Not Found"
            # By channel id, as Kraken allows.
            await ws.send(json.dumps({"event": "unsubscribe", "channelID": trade_ack["channelID"]}))
            unsub = await next_dict(ws)
            assert unsub["status"] == "unsubscribed" and unsub["channelName"] == "trade"
            assert unsub["subscription"] == {"name": "trade"}
            await ws.send(json.dumps({"event": "frob"}))
            assert await next_dict(ws) == {"errorMessage": "Unsupported event", "event": "error"}

    asyncio.run(main())


def test_v2_acks_errors_ping_trades_and_number_literals(gateway: VenueGateway) -> None:
    async def main() -> None:
        async with websockets.connect(f"{gateway.ws}/kraken/v2", ssl=gateway.ssl()) as ws:
            status = json.loads(await recv(ws))
            assert status["channel"] == "status" and status["data"][0]["system"] == "online"
            await ws.send(
                json.dumps(
                    {
                        "method": "subscribe",
                        "params": {"channel": "book", "symbol": ["BTC/USD", "X/Y"], "depth": 10},
                        "req_id": 1,
                    }
                )
            )
            ack = await next_dict(ws)
            assert ack["method"] == "subscribe" and ack["success"] is True and ack["req_id"] == 1
            assert ack["result"] == {
                "channel": "book",
                "depth": 10,
                "snapshot": True,
                "symbol": "BTC/USD",
            }
            assert ack["time_in"].endswith("Z") and ack["time_out"] >= ack["time_in"]
            err = await next_dict(ws)
            assert err["success"] is False and err["req_id"] == 1 and err["symbol"] == "X/Y"
            assert err["error"] == "Currency pair not supported X/Y"
            assert err["method"] == "subscribe"
            await ws.send(
                json.dumps(
                    {
                        "method": "subscribe",
                        "params": {"channel": "book", "symbol": ["BTC/USD"], "depth": 7},
                        "req_id": 2,
                    }
                )
            )
            err = await next_dict(ws)
            assert err["success"] is False and err["req_id"] == 2 and "depth" in err["error"]
            await ws.send("{nope")
            assert (await next_dict(ws))["success"] is False
            await ws.send(json.dumps({"method": "frob", "req_id": 5}))
            err = await next_dict(ws)
            assert err["success"] is False and err["req_id"] == 5
            # The pong comes at once, whatever the book traffic.
            sent = time.monotonic()
            await ws.send(json.dumps({"method": "ping", "req_id": 3}))
            pong = await next_dict(ws)
            assert time.monotonic() - sent < 0.5
            assert pong["method"] == "pong" and pong["req_id"] == 3
            assert set(pong) == {"method", "req_id", "time_in", "time_out"}
            # Trades are kept from the first venue request on: let some happen.
            await asyncio.sleep(0.5)
            await ws.send(
                json.dumps(
                    {
                        "method": "subscribe",
                        "params": {"channel": "trade", "symbol": ["BTC/USD"], "snapshot": True},
                        "req_id": 6,
                    }
                )
            )
            assert (await next_dict(ws))["result"]["channel"] == "trade"
            kinds = []
            checked = 0
            while len(kinds) < 5 or checked < 20:
                raw = await recv(ws)
                # Number literals keep the native digits: parse them as strings.
                msg = json.loads(raw, parse_float=str, parse_int=str)
                if msg.get("channel") == "trade":
                    kinds.append(msg["type"])
                    assert len({t["symbol"] for t in msg["data"]}) == 1
                    for t in msg["data"]:
                        assert set(t) == {
                            "symbol",
                            "side",
                            "price",
                            "qty",
                            "ord_type",
                            "trade_id",
                            "timestamp",
                        }
                        assert re.fullmatch(r"\d+\.\d{2}", t["price"])
                        assert re.fullmatch(r"\d+\.\d{4}", t["qty"]), t
                elif msg.get("channel") == "book":
                    (data,) = msg["data"]
                    for lv in data["bids"] + data["asks"]:
                        assert re.fullmatch(r"\d+\.\d{2}", lv["price"])
                        assert re.fullmatch(r"\d+\.\d{4}", lv["qty"]), lv
                        checked += 1
            assert kinds[0] == "snapshot" and set(kinds[1:]) == {"update"}
            await ws.send(
                json.dumps(
                    {
                        "method": "unsubscribe",
                        "params": {"channel": "book", "symbol": ["BTC/USD"], "depth": 10},
                        "req_id": 7,
                    }
                )
            )
            unsub = await next_dict(ws)
            assert unsub["success"] is True and unsub["req_id"] == 7
            assert unsub["result"] == {"channel": "book", "depth": 10, "symbol": "BTC/USD"}

    asyncio.run(main())


def test_heartbeats_keep_quiet_connections_alive(gateway: VenueGateway) -> None:
    async def count(url: str, request: dict[str, Any] | None, beat: dict[str, str]) -> int:
        async with websockets.connect(url, ssl=gateway.ssl()) as ws:
            if request is not None:
                await ws.send(json.dumps(request))
            beats = 0
            end = time.monotonic() + 3.2
            while (left := end - time.monotonic()) > 0:
                try:
                    msg = json.loads(await recv(ws, left))
                except TimeoutError:
                    break
                beats += msg == beat
            return beats

    async def main() -> None:
        # Subscribed to a ticker only (at most five frames a second, none when the
        # ticker does not move): heartbeats every second all the same.
        sub1 = {"event": "subscribe", "pair": ["ETH/USD"], "subscription": {"name": "ticker"}}
        v1 = await count(f"{gateway.ws}/kraken", sub1, {"event": "heartbeat"})
        sub2 = {
            "method": "subscribe",
            "params": {"channel": "ticker", "symbol": ["ETH/USD"]},
        }
        v2 = await count(f"{gateway.ws}/kraken/v2", sub2, {"channel": "heartbeat"})
        assert v1 >= 3 and v2 >= 3, (v1, v2)

    asyncio.run(main())


class WindowClient:
    """A client of one book stream: applies each frame; ``cut`` truncates to the depth."""

    def __init__(self, depth: int, cut: bool) -> None:
        self.depth = depth
        self.cut = cut
        self.bids: dict[str, str] = {}
        self.asks: dict[str, str] = {}

    def apply(self, side: str, price: str, qty: str) -> None:
        book = self.bids if side == "bid" else self.asks
        if Decimal(qty) == 0:
            book.pop(price, None)
        else:
            book[price] = qty
        if self.cut and len(book) > self.depth:
            order = sorted(book, key=Decimal, reverse=side == "bid")
            for price in order[self.depth :]:
                del book[price]

    def load(self, bids: list[tuple[str, str]], asks: list[tuple[str, str]]) -> None:
        self.bids, self.asks = dict(bids), dict(asks)

    def sides(self) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        bids = sorted(self.bids.items(), key=lambda lv: Decimal(lv[0]), reverse=True)
        asks = sorted(self.asks.items(), key=lambda lv: Decimal(lv[0]))
        return bids, asks

    def checksum(self) -> int:
        bids, asks = self.sides()
        return crc(asks, bids)


def apply_v1(clients: list[WindowClient], msg: list[Any]) -> tuple[int | None, int]:
    """Apply one v1 book frame; its ``c`` (None on a snapshot) and its ``r`` count."""
    body = msg[1:-2]
    if "as" in body[0]:
        for c in clients:
            c.load([(p, q) for p, q, _ in body[0]["bs"]], [(p, q) for p, q, _ in body[0]["as"]])
        return None, 0
    republished = 0
    for part in body:
        for key, side in (("a", "ask"), ("b", "bid")):
            for level in part.get(key, ()):
                assert len(level) in (3, 4) and level[3:] in ([], ["r"])
                republished += len(level) == 4
                for c in clients:
                    c.apply(side, level[0], level[1])
    assert "c" in body[-1] and all("c" not in part for part in body[:-1])
    return int(body[-1]["c"]), republished


def apply_v2(clients: list[WindowClient], msg: dict[str, Any]) -> int:
    (data,) = msg["data"]
    bids = [(lv["price"], lv["qty"]) for lv in data["bids"]]
    asks = [(lv["price"], lv["qty"]) for lv in data["asks"]]
    for c in clients:
        if msg["type"] == "snapshot":
            c.load(bids, asks)
        else:
            for p, q in asks:
                c.apply("ask", p, q)
            for p, q in bids:
                c.apply("bid", p, q)
    return int(data["checksum"])


def test_depth_windows_keep_clients_on_the_servers_top_n(gateway: VenueGateway) -> None:
    """Clients of depth 10 and 25 (v1 and v2), truncating or not, always hold the
    native top N after each frame, and each frame's checksum is theirs."""

    async def v1(rec: NativeRecorder, states: list[Any], stats: dict[str, int]) -> None:
        clients = {d: [WindowClient(d, True), WindowClient(d, False)] for d in (10, 25)}
        async with websockets.connect(f"{gateway.ws}/kraken", ssl=gateway.ssl()) as ws:
            for d in (10, 25):
                sub = {"name": "book", "depth": d}
                req = {"event": "subscribe", "pair": ["XBT/USD"], "subscription": sub}
                await ws.send(json.dumps(req))
            end = time.monotonic() + 4
            while time.monotonic() < end:
                msg = json.loads(await recv(ws))
                if not isinstance(msg, list):
                    continue
                depth = int(msg[-2].split("-")[1])
                c, r = apply_v1(clients[depth], msg)
                stats["r"] += r
                stats["v1"] += 1
                cut, whole = clients[depth]
                assert cut.sides() == whole.sides(), "a level outside the window was kept"
                if c is not None:
                    assert cut.checksum() == c
                states.append((depth, cut.checksum(), *cut.sides()))

    async def v2(depth: int, states: list[Any], stats: dict[str, int]) -> None:
        clients = [WindowClient(depth, True), WindowClient(depth, False)]
        async with websockets.connect(f"{gateway.ws}/kraken/v2", ssl=gateway.ssl()) as ws:
            params = {"channel": "book", "symbol": ["BTC/USD"], "depth": depth}
            await ws.send(json.dumps({"method": "subscribe", "params": params, "req_id": 1}))
            end = time.monotonic() + 4
            while time.monotonic() < end:
                raw = await recv(ws)
                msg = json.loads(raw, parse_float=str, parse_int=str)
                if msg.get("channel") != "book":
                    continue
                c = apply_v2(clients, msg)
                stats["v2"] += 1
                cut, whole = clients
                assert cut.sides() == whole.sides(), "a level outside the window was kept"
                assert cut.checksum() == c, "checksum differs from the client's book"
                states.append((depth, c, *cut.sides()))

    async def main() -> tuple[NativeRecorder, list[Any], dict[str, int]]:
        rec = NativeRecorder(gateway, "BTC-USD")
        task = asyncio.create_task(rec.run())
        states: list[Any] = []
        stats = {"r": 0, "v1": 0, "v2": 0}
        try:
            await asyncio.wait_for(rec.ready.wait(), 10)
            await asyncio.gather(
                v1(rec, states, stats), v2(10, states, stats), v2(25, states, stats)
            )
            await asyncio.sleep(1.0)
        finally:
            rec.stop()
            await task
        return rec, states, stats

    rec, states, stats = asyncio.run(main())
    assert stats["v1"] >= 100 and stats["v2"] >= 100, stats
    assert stats["r"] >= 1, "no level ever re-entered a window"
    for depth, checksum, bids, asks in states:
        assert len(bids) <= depth and len(asks) <= depth
        assert matches_native(rec, checksum, levels(bids), levels(asks), depth)


# -- renderers, without a server -------------------------------------------------------------


def tap_with(bids: list[tuple[str, str]], asks: list[tuple[str, str]]) -> Tap:
    tap = Tap(Market("BTC-USD"))
    tap.mirror.load(bids, asks)
    tap.loaded = True
    tap.ts = 1_700_000_000_123_456_000
    return tap


def payload(frames: bytes | None) -> Any:
    assert frames is not None
    (one,) = frame_payloads(frames)
    return json.loads(one, parse_float=str, parse_int=str)


# Kraken's v1 checksum guide: this book's checksum is 974947235.
GUIDE_ASKS = [
    (f"0.{p:05d}", "0.00000500")
    for p in (5005, 5010, 5015, 5020, 5025, 5030, 5035, 5040, 5045, 5050)
]
GUIDE_BIDS = [
    (f"0.{p:05d}", "0.00000500")
    for p in (5000, 4995, 4990, 4980, 4975, 4970, 4965, 4960, 4955, 4950)
]


def test_kraken_guide_vector_through_the_v1_renderer() -> None:
    renderer = BookV1(Market("BTC-USD"), 10)
    # Start one level away from the guide's book, then move it there in one window.
    tap = tap_with(GUIDE_BIDS, [*GUIDE_ASKS[:-1], ("0.05050", "0.00000600")])
    snap = payload(renderer.join(tap))
    assert snap[-2:] == ["book-10", "XBT/USD"]
    assert snap[1]["as"][-1][:2] == ["0.05050", "0.00000600"]
    tap.mirror.apply("ask", "0.05050", "0.00000500")
    window = Window(0.0, 1, 0.0)
    window.levels = {("ask", "0.05050"): "0.00000500"}
    window.seq = 2
    update = payload(renderer.book(tap, window))
    assert update[1] == {"a": [["0.05050", "0.00000500", "1700000000.123456"]], "c": "974947235"}
    # The strings as sent give the guide's string and checksum.
    asks = [(p, q) for p, q, _ in snap[1]["as"][:-1]] + [("0.05050", "0.00000500")]
    bids = [(p, q) for p, q, _ in snap[1]["bs"]]
    text = checksum_string(asks, bids)
    assert text == (
        "5005500501050050155005020500502550050305005035500504050050455005050500"
        "5000500499550049905004980500497550049705004965500496050049555004950500"
    )
    assert zlib.crc32(text.encode()) == 974947235


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize(("depth", "levels_per_side"), [(10, 30), (25, 30), (10, 3)])
def test_window_renderer_against_random_books(
    version: str, depth: int, levels_per_side: int
) -> None:
    """Random passes on a book of 60 levels (or a thin one, under 10 levels a side at
    times): a truncating and a non-truncating client of the stream hold the book's
    top N after every frame, with its checksum."""
    rng = random.Random(depth * 7 + len(version) + levels_per_side)
    market = Market("BTC-USD")
    renderer = BookV1(market, depth) if version == "v1" else BookV2(market, depth)

    def price(i: int) -> str:
        return f"{100 + i * 0.5:.2f}"

    bids = [(price(i), "1.0000") for i in range(30 - levels_per_side, 30)]
    asks = [(price(i), "1.0000") for i in range(31, 31 + levels_per_side)]
    tap = tap_with(bids, asks)
    clients = [WindowClient(depth, True), WindowClient(depth, False)]
    if version == "v1":
        apply_v1(clients, payload(renderer.join(tap)))
    else:
        apply_v2(clients, payload(renderer.join(tap)))
    book: Book = tap.mirror
    for n in range(1, 400):
        window = Window(0.0, n - 1, 0.0)
        window.seq = n
        for _ in range(rng.randint(1, 8)):
            bid = Decimal((book.best_bid() or (price(29), ""))[0])
            ask = Decimal((book.best_ask() or (price(31), ""))[0])
            side = rng.choice(("bid", "ask"))
            i = rng.randint(-2, 40 if levels_per_side > 10 else 6)
            if side == "bid":
                p = f"{bid - Decimal('0.5') * i:.2f}"
                if Decimal(p) >= ask or Decimal(p) <= 0:
                    continue
            else:
                p = f"{ask + Decimal('0.5') * i:.2f}"
                if Decimal(p) <= bid:
                    continue
            q = "0.0000" if rng.random() < 0.45 else f"{rng.randint(1, 500) / 100:.4f}"
            book.apply(side, p, q)
            window.levels[(side, p)] = q
        frames = renderer.book(tap, window)
        if frames is None:
            continue
        msg = payload(frames)
        c = apply_v1(clients, msg)[0] if version == "v1" else apply_v2(clients, msg)
        want_bids, want_asks = book.bids(depth), book.asks(depth)
        for client in clients:
            assert client.sides() == (want_bids, want_asks), f"pass {n}"
        assert c == book.checksum() == clients[0].checksum()


# -- REST ---------------------------------------------------------------------------------


def test_rest_endpoints_and_their_errors(gateway: VenueGateway) -> None:
    status, pairs = get(gateway, "/kraken/0/public/AssetPairs")
    assert status == 200 and pairs["error"] == []
    assert set(pairs["result"]) == {"XBTUSD", "ETHUSD"}
    xbt = pairs["result"]["XBTUSD"]
    assert xbt["wsname"] == "XBT/USD" and xbt["altname"] == "XBTUSD"
    assert (xbt["base"], xbt["quote"], xbt["status"]) == ("XBT", "USD", "online")
    assert (xbt["pair_decimals"], xbt["lot_decimals"]) == (2, 4)
    status, one = get(gateway, "/kraken/0/public/AssetPairs?pair=ETHUSD")
    assert set(one["result"]) == {"ETHUSD"}
    status, assets = get(gateway, "/kraken/0/public/Assets")
    assert status == 200 and set(assets["result"]) == {"XBT", "USD", "ETH"}
    status, depth = get(gateway, "/kraken/0/public/Depth?pair=XBTUSD&count=5")
    book = depth["result"]["XBTUSD"]
    assert status == 200 and len(book["bids"]) == len(book["asks"]) == 5
    assert dec(book["bids"][0][0]) < dec(book["asks"][0][0])
    assert get(gateway, "/kraken/0/public/Depth?pair=BTC/USD&count=1")[1]["result"]
    status, tk = get(gateway, "/kraken/0/public/Ticker?pair=XBTUSD")
    t = tk["result"]["XBTUSD"]
    assert status == 200 and dec(t["b"][0]) < dec(t["a"][0]) and isinstance(t["o"], str)
    time.sleep(0.5)  # trades are kept from the first venue request on
    status, tr = get(gateway, "/kraken/0/public/Trades?pair=XBTUSD&count=5")
    assert status == 200 and 0 < len(tr["result"]["XBTUSD"]) <= 5
    assert all(len(x) == 7 for x in tr["result"]["XBTUSD"]) and tr["result"]["last"]
    status, ohlc = get(gateway, "/kraken/0/public/OHLC?pair=XBTUSD&interval=1")
    assert status == 200
    for _ts, o, h, low, c, vwap, vol, n in ohlc["result"]["XBTUSD"]:
        assert dec(low) <= min(dec(o), dec(c)) <= max(dec(o), dec(c)) <= dec(h)
        assert dec(low) <= dec(vwap) <= dec(h) and dec(vol) > 0 and n > 0
    status, t = get(gateway, "/kraken/0/public/Time")
    assert status == 200 and abs(t["result"]["unixtime"] - time.time()) < 5
    assert get(gateway, "/kraken/0/public/SystemStatus")[1]["result"]["status"] == "online"
    unknown = {"error": ["EQuery:Unknown asset pair"]}
    assert get(gateway, "/kraken/0/public/Depth?pair=NOPE") == (200, unknown)
    assert get(gateway, "/kraken/0/public/Ticker?pair=XBTUSD,NOPE") == (200, unknown)
    assert get(gateway, "/kraken/0/public/Depth")[1] == {"error": ["EGeneral:Invalid arguments"]}
    bad = get(gateway, "/kraken/0/public/OHLC?pair=XBTUSD&interval=7")
    assert bad == (200, {"error": ["EGeneral:Invalid arguments"]})
    assert get(gateway, "/kraken/0/public/Nothing") == (
        404,
        {"error": ["EGeneral:Unknown method"]},
    )


def test_unknown_kraken_path_is_refused(gateway: VenueGateway) -> None:
    async def main() -> None:
        with pytest.raises(websockets.InvalidStatus) as info:
            async with websockets.connect(f"{gateway.ws}/kraken/v3", ssl=gateway.ssl()):
                pass
        assert info.value.response.status_code == 404

    asyncio.run(main())


# -- a slow consumer, Sans-I/O -----------------------------------------------------------------


class FakeSub:
    """A venue connection that keeps the frames it is sent."""

    def __init__(self) -> None:
        self.streams: dict[str, Any] = {}
        self.frames: list[Any] = []
        self.deliver = self.take

    def take(self, data: bytes) -> None:
        for one in frame_payloads(data):
            self.frames.append(json.loads(one, parse_float=str, parse_int=str))

    def close(self, code: int, reason: str) -> None:
        raise AssertionError(f"closed {code} {reason}")

    def rejected(self, code: str, reason: str) -> None:
        raise AssertionError(f"rejected {code} {reason}")


def test_a_slow_subscriber_restarts_from_a_snapshot() -> None:
    from tickwire.dialects.feed import DialectFeed
    from tickwire.dialects.kraken import KrakenV2Session
    from tickwire.engine import Engine
    from tickwire.hub import Hub
    from tickwire.simulator import MarketSimulator

    sim = MarketSimulator(["BTC-USD"], rate=1000, seed=7)
    hub = Hub(Engine(["BTC-USD"]))
    feed = DialectFeed(hub)
    now = 0.0

    def market(batches: int) -> None:
        nonlocal now
        for _ in range(batches):
            for symbol, updates, trades in sim.generate(20):
                hub.publish(symbol, updates, trades)
            now += 0.01
            hub.flush(now)
            for sub in hub.dirty:
                if sub.outbox:
                    sub.write(b"".join(sub.outbox))
                    sub.outbox.clear()
            hub.dirty.clear()
            feed.flush(now)

    for symbol, updates, trades in sim.seed_books():
        hub.publish(symbol, updates, trades)
    market(1)
    fast, slow = FakeSub(), FakeSub()
    request = {"method": "subscribe", "params": {"channel": "book", "symbol": ["BTC/USD"]}}
    for sub in (fast, slow):
        session = KrakenV2Session(feed)
        session.open(sub)  # type: ignore[arg-type]
        session.receive(sub, json.dumps(request).encode())  # type: ignore[arg-type]
    market(5)
    feed.pause(slow, now)  # type: ignore[arg-type]
    paused_at = len(slow.frames)
    market(30)
    assert all(f.get("channel") != "book" for f in slow.frames[paused_at:])
    feed.resume(slow)  # type: ignore[arg-type]
    market(1)
    books = [f for f in slow.frames[paused_at:] if f.get("channel") == "book"]
    assert books[0]["type"] == "snapshot" and all(b["type"] == "update" for b in books[1:])
    market(5)
    held = []
    for sub in (fast, slow):
        client = WindowClient(10, True)
        for frame in sub.frames:
            if frame.get("channel") == "book":
                c = apply_v2([client], frame)
                assert client.checksum() == c
        held.append(client.sides())
    tap = feed.taps["BTC-USD"]
    assert held[0] == held[1] == (tap.book.bids(10), tap.book.asks(10))
    assert [f["type"] for f in fast.frames if f.get("channel") == "book"].count("snapshot") == 1


def test_book_loads_and_reloads_send_one_snapshot_each() -> None:
    market = Market("BTC-USD")
    renderer = BookV2(market, 10)
    tap = tap_with(GUIDE_BIDS, GUIDE_ASKS)
    tap.windows[0.0] = Window(0.0, 5, 0.0)
    # Joined after the first load: its snapshot is the start, the load adds none.
    assert payload(renderer.join(tap))["type"] == "snapshot"
    assert renderer.reset(tap, True) is None
    # A reload after a broken chain (the feed reports it as a first load too): the
    # window restarted at the new book's seq, so every subscriber gets a snapshot.
    tap.windows[0.0] = Window(0.0, 9, 0.0)
    assert payload(renderer.reset(tap, True))["type"] == "snapshot"
    # Joined before any load: nothing, no update either, then the load's snapshot.
    waiting = BookV2(market, 10)
    tap.loaded = False
    assert waiting.join(tap) is None
    tap.loaded = True
    window = tap.windows[0.0]
    window.levels = {("ask", "0.05050"): "0.00000600"}
    window.seq = 10
    assert waiting.book(tap, window) is None
    assert payload(waiting.reset(tap, True))["type"] == "snapshot"
