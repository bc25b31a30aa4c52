"""Encodings: msgpack and permessage-deflate, negotiated per connection, built once per wire.

Sans-I/O first (negotiation, the deflate codec, the hub's per-wire groups: frame
identity, lazy encodes, replay and catch-up in the subscriber's wire), then real
``tickwire serve`` processes: one stream seen identically by JSON, msgpack and compressed
clients (the SDK and an independent ``websockets`` client), malformed binary input, a
decompression bomb, and a server that declines compression.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import socket
import time
import zlib
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
import websockets

from helpers import (
    OP_BINARY,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    RawClient,
    ServerProcess,
    StreamChecker,
    frame_payload,
)
from tickwire.client import BookChanged, Client, Event, TradesReceived
from tickwire.codec import (
    DEFLATE_OFFER,
    DEFLATE_RESPONSE,
    JSON_WIRE,
    Deflater,
    Encoding,
    Inflater,
    Wire,
    decode_msgpack,
    encode_msgpack,
    inflate,
    negotiate,
)
from tickwire.engine import Engine
from tickwire.exceptions import MessageTooBig, ProtocolError
from tickwire.hub import Channel, Hub, SubscriptionStats
from tickwire.protocol import BookUpdate, Delta, Message, Snapshot, decode_message, encode
from tickwire.simulator import MarketSimulator

MSGPACK = Wire(Encoding.MSGPACK, False)
JSON_DEFLATE = Wire(Encoding.JSON, True)
MSGPACK_DEFLATE = Wire(Encoding.MSGPACK, True)
ALL_WIRES = (JSON_WIRE, MSGPACK, JSON_DEFLATE, MSGPACK_DEFLATE)
TS = 1_700_000_000_000_000_000
TIMEOUT = 20.0


# -- negotiation -------------------------------------------------------------------------


def test_no_offer_is_json_with_the_plain_handshake() -> None:
    assert negotiate([], [], True) == (JSON_WIRE, [])
    # Unknown subprotocols are not echoed: the client gets JSON, as before encodings.
    assert negotiate(["graphql-ws, mqtt"], [], False) == (JSON_WIRE, [])


@pytest.mark.parametrize(
    ("offered", "encoding", "echo"),
    [
        (["tickwire.v1.msgpack"], Encoding.MSGPACK, "tickwire.v1.msgpack"),
        (["tickwire.v1.json"], Encoding.JSON, "tickwire.v1.json"),
        # The client's order is its preference; unknown names are skipped.
        (["other, tickwire.v1.msgpack, tickwire.v1.json"], Encoding.MSGPACK, "tickwire.v1.msgpack"),
        (["tickwire.v1.json", "tickwire.v1.msgpack"], Encoding.JSON, "tickwire.v1.json"),
        (["tickwire.v2.msgpack"], Encoding.JSON, None),
    ],
)
def test_subprotocol_selects_the_encoding(
    offered: list[str], encoding: Encoding, echo: str | None
) -> None:
    wire, headers = negotiate(offered, [], False)
    assert wire == Wire(encoding, False)
    assert headers == ([("Sec-WebSocket-Protocol", echo)] if echo else [])


@pytest.mark.parametrize(
    ("offer", "accepted"),
    [
        ("permessage-deflate", True),
        ("permessage-deflate; client_max_window_bits", True),  # what browsers send
        ("permessage-deflate; client_max_window_bits=12", True),
        (DEFLATE_OFFER, True),
        ("permessage-deflate; server_max_window_bits=15", True),
        ("permessage-deflate; server_max_window_bits=10", False),  # frames are shared
        ("permessage-deflate; server_no_context_takeover; server_no_context_takeover", False),
        ("permessage-deflate; unknown_param", False),
        ("x-webkit-deflate-frame", False),
        # A declined first offer falls back to the next one.
        ("permessage-deflate; server_max_window_bits=9, permessage-deflate", True),
    ],
)
def test_deflate_offers(offer: str, accepted: bool) -> None:
    wire, headers = negotiate([], [offer], True)
    assert wire.deflate is accepted
    assert headers == ([("Sec-WebSocket-Extensions", DEFLATE_RESPONSE)] if accepted else [])
    # Off by default: the same offer to a server without --deflate gets nothing.
    assert negotiate([], [offer], False) == (JSON_WIRE, [])


# -- the deflate codec -------------------------------------------------------------------


def test_each_compressed_message_stands_alone() -> None:
    """No context takeover: any message inflates alone, whatever came before it."""
    deflater = Deflater()
    payloads = [encode(_delta(i)) for i in range(5)] * 2
    compressed = [deflater.compress(p) for p in payloads]
    assert compressed[0] == compressed[5]  # same message, same bytes: shareable
    for raw, packed in reversed(list(zip(payloads, compressed, strict=True))):
        assert not packed.endswith(b"\x00\x00\xff\xff")  # RFC 7692 §7.2.1: tail removed
        assert inflate(packed, 1 << 20) == raw
    # A reused client-side inflater reads the same stream in order.
    inflater = Inflater(1 << 20)
    assert [inflater.inflate(c) for c in compressed] == payloads


def test_inflate_stops_a_bomb_at_the_limit() -> None:
    bomb = Deflater(9).compress(b" " * (8 << 20))
    assert len(bomb) < 16 << 10  # 8 MiB in a few KiB
    with pytest.raises(MessageTooBig):
        inflate(bomb, 64 << 10)
    inflater = Inflater(64 << 10)
    with pytest.raises(MessageTooBig):
        inflater.inflate(bomb)
    # The inflater starts afresh after refusing a message.
    assert inflater.inflate(Deflater().compress(b"{}")) == b"{}"
    assert inflate(Deflater().compress(b"x" * 100), 100) == b"x" * 100  # exactly the limit
    with pytest.raises(ProtocolError):
        inflate(b"\xff\xff\xff\xff not deflate", 1 << 20)


# -- the hub, Sans-I/O -------------------------------------------------------------------


class Recorder:
    """A queued hub subscriber (like a multi-channel connection) on one wire."""

    def __init__(self, wire: Wire = JSON_WIRE) -> None:
        self.wire = wire
        self.outbox: list[bytes] = []
        self.channels: dict[str, Channel] = {}
        self.slow: dict[str, SubscriptionStats] = {}
        self.deliver: Callable[[bytes], object] | None = None
        self.frames: list[bytes] = []

    def take(self) -> list[bytes]:
        frames, self.outbox = self.outbox, []
        self.frames.extend(frames)
        return frames

    def messages(self) -> list[Message]:
        return [decode_frame(f) for f in self.take()]


def decode_frame(frame: bytes) -> Message:
    """Decode one server frame of any wire by its first byte (opcode and RSV1)."""
    first, payload = frame[0], frame_payload(frame)
    if first & 0x40:
        payload = inflate(payload, 16 << 20)
    if first & 0x0F == OP_BINARY:
        return decode_msgpack(payload)
    assert first & 0x0F == OP_TEXT
    return decode_message(payload)


class CountingDeflater(Deflater):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def compress(self, payload: bytes) -> bytes:
        self.calls += 1
        return super().compress(payload)


def _delta(i: int) -> Delta:
    up = BookUpdate("bid", f"{100 + i}.00", "1.0000", TS + i)
    return Delta("book.AAA", i + 1, i, 12345, [up])


def make_hub(**kw: Any) -> Hub:
    return Hub(Engine(("AAA",), epoch="e1"), **kw)


class Market:
    """Simulator flow into a hub, 1 ms ticks, each flushed (the gateway's tick)."""

    def __init__(self, hub: Hub, seed: int = 7) -> None:
        self.hub = hub
        self.now = 10.0
        self.sim = MarketSimulator(list(hub.engine.symbols), rate=20_000, seed=seed)
        self.sim.clock = iter(range(TS, TS + 10**9)).__next__
        for symbol, updates, trades in self.sim.seed_books():
            hub.publish(symbol, updates, trades)
        hub.flush(self.now)
        self.sim.due(self.now)

    def run(self, ticks: int) -> None:
        hub, sim = self.hub, self.sim
        for _ in range(ticks):
            self.now += 0.001
            for symbol, updates, trades in sim.generate(sim.due(self.now)):
                hub.publish(symbol, updates, trades)
            hub.flush(self.now)


def subscribe(hub: Hub, subs: list[Recorder], name: str = "book.AAA", **kw: Any) -> None:
    for sub in subs:
        hub.set_wire(sub, sub.wire)
        hub.subscribe(sub, hub.channel(name), **kw)
        sub.take()


def test_one_frame_object_per_wire_per_batch() -> None:
    hub = make_hub()
    counting = hub.deflater = CountingDeflater()
    mkt = Market(hub)
    mkt.run(3)
    subs = [Recorder(w) for w in ALL_WIRES for _ in range(3)]
    subscribe(hub, subs)
    ch = hub.channel("book.AAA")
    assert len(ch.subscribers) == 3 and {w: len(g) for w, g in ch.groups.items()} == {
        MSGPACK: 3,
        JSON_DEFLATE: 3,
        MSGPACK_DEFLATE: 3,
    }
    counting.calls = 0
    mkt.run(20)
    by_wire: dict[Wire, list[list[bytes]]] = {}
    for sub in subs:
        by_wire.setdefault(sub.wire, []).append(sub.take())
    reference = [decode_frame(f) for f in by_wire[JSON_WIRE][0]]
    batches = len(reference)
    assert batches >= 10
    # Two deflated wires: two compressions per batch, however many subscribers.
    assert counting.calls == 2 * batches
    for wire, streams in by_wire.items():
        first = streams[0]
        for other in streams[1:]:
            # The very same bytes objects, not equal copies.
            assert all(a is b for a, b in zip(first, other, strict=True))
        assert [decode_frame(f) for f in first] == reference, wire
        opcode = first[0][0]
        assert (
            opcode
            == {
                JSON_WIRE: 0x81,
                MSGPACK: 0x82,
                JSON_DEFLATE: 0xC1,
                MSGPACK_DEFLATE: 0xC2,
            }[wire]
        )
    # The wires differ on the wire: msgpack is smaller than JSON, deflate smaller still.
    size = {w: sum(map(len, s[0])) for w, s in by_wire.items()}
    assert size[JSON_DEFLATE] < size[MSGPACK] < size[JSON_WIRE]


def test_json_only_channel_builds_nothing_else() -> None:
    hub = make_hub()
    counting = hub.deflater = CountingDeflater()
    mkt = Market(hub)
    subs = [Recorder() for _ in range(3)]
    subscribe(hub, subs)
    deflated = Recorder(JSON_DEFLATE)
    subscribe(hub, [deflated], "trades.AAA")  # another channel's wire does not leak in
    counting.calls = 0
    mkt.run(30)
    ch = hub.channel("book.AAA")
    assert ch.groups == {} and len(ch.subscribers) == 3
    frames = subs[0].take()
    assert len(frames) == 30 and all(f[0] == 0x81 for f in frames)
    # Every compression was a trades message for the one deflate subscriber.
    trades = deflated.take()
    assert trades and counting.calls == len(trades)


def test_groups_follow_unsubscribe_and_drop() -> None:
    hub = make_hub()
    a, b = Recorder(MSGPACK), Recorder(MSGPACK)
    subscribe(hub, [a, b])
    ch = hub.channel("book.AAA")
    assert set(ch.groups[MSGPACK]) == {a, b}
    assert hub.unsubscribe(a, "book.AAA")
    assert set(ch.groups[MSGPACK]) == {b}
    hub.drop(b)
    assert ch.groups == {} and hub.wire_of == {a: MSGPACK}  # a is still connected
    Market(hub).run(3)
    assert a.take() == [] and b.take() == []


@pytest.mark.parametrize("wire", [MSGPACK, JSON_DEFLATE, MSGPACK_DEFLATE])
def test_resume_replays_history_in_the_subscribers_wire(wire: Wire) -> None:
    hub = make_hub()
    mkt = Market(hub)
    mkt.run(3)
    since = hub.channel("book.AAA").seq
    witness = Recorder()
    subscribe(hub, [witness])
    mkt.run(10)
    expected = witness.messages()
    assert len(expected) >= 5
    sub = Recorder(wire)
    hub.set_wire(sub, wire)
    assert hub.subscribe(sub, hub.channel("book.AAA"), "e1", since)
    replay = sub.take()
    assert [decode_frame(f) for f in replay] == expected
    assert all(
        f[0]
        == (0x82 if wire.encoding is Encoding.MSGPACK else 0x81) | (0x40 if wire.deflate else 0)
        for f in replay
    )
    # A resume that cannot be served gets a snapshot, in the same wire.
    late = Recorder(wire)
    hub.set_wire(late, wire)
    assert not hub.subscribe(late, hub.channel("book.AAA"), "other-epoch", since)
    (snap,) = late.messages()
    assert isinstance(snap, Snapshot) and snap.resumed is False


def test_slow_consumer_catch_up_in_its_wire() -> None:
    hub = make_hub()
    mkt = Market(hub)
    mkt.run(3)
    slow, healthy = Recorder(MSGPACK), Recorder(MSGPACK)
    subscribe(hub, [slow, healthy])
    hub.pause(slow, mkt.now)
    ch = hub.channel("book.AAA")
    assert set(ch.groups[MSGPACK]) == {healthy} and slow in ch.lagging
    mkt.run(5)
    assert slow.take() == []
    hub.resume(slow)
    hub.flush(mkt.now + 0.001)
    (catch_up,) = slow.take()
    assert catch_up[0] == 0x82
    msg = decode_frame(catch_up)
    assert isinstance(msg, Delta | Snapshot) and msg.seq == ch.seq
    assert set(ch.groups[MSGPACK]) == {slow, healthy}


def test_fault_reaches_every_wire() -> None:
    hub = make_hub()
    mkt = Market(hub)
    mkt.run(3)
    subs = [Recorder(w) for w in ALL_WIRES]
    subscribe(hub, subs)
    hub.inject_fault(hub.channel("book.AAA"), "checksum")
    mkt.run(1)
    sums = {sub.wire: [m.checksum for m in sub.messages() if isinstance(m, Delta)] for sub in subs}
    history = decode_message(frame_payload(hub.channel("book.AAA").history[-1][2]))
    assert isinstance(history, Delta)
    for wire, got in sums.items():
        assert got == [history.checksum ^ 0x5A5A5A5A], wire


# -- real servers ------------------------------------------------------------------------


class Tape:
    """Everything one SDK client applied: per seq, the book's checksum and top levels."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.book: dict[int, tuple[int, list[tuple[str, str]], list[tuple[str, str]]]] = {}
        self.trades: dict[int, tuple[str, str, str, int]] = {}
        client.on_event = self.on_event

    def on_event(self, event: Event) -> None:
        if isinstance(event, BookChanged):
            book = self.client.book(event.symbol)
            self.book[event.seq] = (book.checksum(), book.bids(10), book.asks(10))
        elif isinstance(event, TradesReceived) and not event.snapshot:
            for t in event.trades:
                self.trades[t.id] = (t.price, t.qty, t.side, t.ts)


def ws_msgpack_stream(messages: list[Any]) -> StreamChecker:
    checker = StreamChecker()
    for msg in messages:
        checker.apply(msg)
    return checker


async def _same_stream(url: str, symbol: str) -> None:
    chans = [f"book.{symbol}", f"trades.{symbol}"]
    wires = [("json", None), ("msgpack", None), ("json", "deflate"), ("msgpack", "deflate")]
    clients = [Client(url, chans, events=False, encoding=e, compression=c) for e, c in wires]
    tapes = [Tape(c) for c in clients]
    # An independent implementation: websockets' own permessage-deflate and msgpack.
    independent: list[Any] = []
    for c in clients:
        await c.start()
    assert [c.wire for c in clients] == [JSON_WIRE, MSGPACK, JSON_DEFLATE, MSGPACK_DEFLATE]
    async with websockets.connect(
        url, subprotocols=["tickwire.v1.msgpack"], compression="deflate"
    ) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == "tickwire.v1.msgpack"
        await ws.send(json.dumps({"op": "subscribe", "channels": chans, "id": 1}))
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            data = await asyncio.wait_for(ws.recv(), 5)
            assert isinstance(data, bytes)  # msgpack travels in binary messages
            independent.append(msgspec.msgpack.decode(data))
    async with asyncio.timeout(TIMEOUT):
        await asyncio.gather(*(c.wait_live() for c in clients))
        # Until every client is well past a common seq.
        target = max(c.channel(chans[0]).position or 0 for c in clients) + 200
        for c in clients:
            await c.wait_until(lambda c=c: (c.channel(chans[0]).position or 0) >= target)
    for c in clients:
        await c.close()
    for c in clients:
        for name in chans:
            counters = c.channel(name).counters
            assert counters.gaps == counters.checksum_failures == counters.resyncs == 0
        assert c.protocol.malformed == 0
    ref = tapes[0]
    for tape in tapes[1:]:
        common = ref.book.keys() & tape.book.keys()
        assert len(common) > 50
        assert all(ref.book[s] == tape.book[s] for s in common)
        traded = ref.trades.keys() & tape.trades.keys()
        assert traded and all(ref.trades[i] == tape.trades[i] for i in traded)
    # The websockets client verified the chain and every checksum on its own.
    checker = ws_msgpack_stream(independent)
    assert checker.deltas > 10 and checker.trades > 0
    ch = f"book.{symbol}"
    assert ref.book[checker.seq[ch]][0] == checker.books[ch].checksum()


def test_json_msgpack_and_compressed_clients_see_the_same_stream(
    server_factory: Callable[..., ServerProcess],
) -> None:
    srv = server_factory("--symbols", "AAA,BBB", "--rate", "1500", "--deflate")
    asyncio.run(_same_stream(srv.url, "AAA"))
    stats = srv.stop()
    assert stats is not None
    assert stats["wires"] == {"msgpack": 1, "json+deflate": 1, "msgpack+deflate": 2}


async def _declined(url: str) -> None:
    async with Client(url, ["book.AAA"], encoding="msgpack", compression="deflate") as c:
        assert c.wire == MSGPACK  # no --deflate: the offer is declined, msgpack holds
        async with asyncio.timeout(TIMEOUT):
            await c.wait_live()
            start = c.channel("book.AAA").position or 0
            await c.wait_until(lambda: (c.channel("book.AAA").position or 0) > start + 20)
        assert c.channel("book.AAA").counters.checksum_failures == 0


def test_compression_is_off_by_default(server_factory: Callable[..., ServerProcess]) -> None:
    srv = server_factory("--symbols", "AAA", "--rate", "500")
    asyncio.run(_declined(srv.url))


async def _resume_msgpack(url: str) -> None:
    chans = ["book.AAA"]
    async with websockets.connect(url, subprotocols=["tickwire.v1.msgpack"], close_timeout=1) as ws:  # type: ignore[list-item]
        await ws.send(json.dumps({"op": "subscribe", "channels": chans, "id": 1}))
        msgs = [msgspec.msgpack.decode(await asyncio.wait_for(ws.recv(), 5)) for _ in range(8)]
    ack = msgs[0]
    assert ack["type"] == "ack"
    last = [m for m in msgs if m["type"] in ("snapshot", "delta")][-1]["seq"]
    await asyncio.sleep(0.3)  # missed messages pile up in the history ring
    async with websockets.connect(url, subprotocols=["tickwire.v1.msgpack"], close_timeout=1) as ws:  # type: ignore[list-item]
        request = {"op": "subscribe", "channels": chans, "id": 2}
        request |= {"epoch": ack["epoch"], "since": {"book.AAA": last}}
        await ws.send(json.dumps(request))
        reply = msgspec.msgpack.decode(await asyncio.wait_for(ws.recv(), 5))
        first = msgspec.msgpack.decode(await asyncio.wait_for(ws.recv(), 5))
    assert reply["type"] == "ack"
    # Replayed from history, re-encoded as msgpack: it chains exactly, no snapshot.
    assert first["type"] == "delta" and first["prev_seq"] == last


def test_resume_replays_in_msgpack(server_factory: Callable[..., ServerProcess]) -> None:
    srv = server_factory("--symbols", "AAA", "--rate", "2000")
    asyncio.run(_resume_msgpack(srv.url))


def raw_connect(port: int, *headers: str) -> RawClient:
    """A RawClient whose handshake carries extra headers; check the 101 answer."""
    client = RawClient.__new__(RawClient)
    client.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    key = base64.b64encode(os.urandom(16)).decode()
    extra = "".join(h + "\r\n" for h in headers)
    client.sock.sendall(
        (
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\n{extra}\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = client.sock.recv(4096)
        assert chunk, head
        head += chunk
    status, _, rest = head.partition(b"\r\n\r\n")
    assert b" 101 " in status.split(b"\r\n", 1)[0], status
    client.response = status.decode()  # type: ignore[attr-defined]
    client.buf = bytearray(rest)
    client.frames = []
    return client


def compressed_client_frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame with RSV1 set (permessage-deflate)."""
    from helpers import client_frame

    frame = bytearray(client_frame(opcode, payload))
    frame[0] |= 0x40
    return bytes(frame)


def recv_data(client: RawClient) -> tuple[int, bytes]:
    """The next data frame as (first byte: FIN, RSV1, opcode; payload), skipping pings.

    ``RawClient.recv_frame`` keeps only the opcode; RSV1 matters here.
    """
    deadline = time.monotonic() + 5.0
    buf = client.buf
    while True:
        n, offset = (buf[1] & 0x7F, 2) if len(buf) >= 2 else (0, 1 << 30)
        if n == 126:
            n, offset = (int.from_bytes(buf[2:4], "big"), 4) if len(buf) >= 4 else (0, 1 << 30)
        elif n == 127:
            n, offset = (int.from_bytes(buf[2:10], "big"), 10) if len(buf) >= 10 else (0, 1 << 30)
        if len(buf) >= offset + n:
            first, payload = buf[0], bytes(buf[offset : offset + n])
            del buf[: offset + n]
            if first & 0x0F not in (OP_PING, OP_PONG):
                return first, payload
            continue
        client.sock.settimeout(max(deadline - time.monotonic(), 0.01))
        chunk = client.sock.recv(65536)
        assert chunk, "connection closed"
        buf.extend(chunk)


def test_malformed_binary_gets_bad_msgpack_and_the_connection_stays(
    server_factory: Callable[..., ServerProcess],
) -> None:
    srv = server_factory("--symbols", "AAA", "--rate", "100")
    assert srv.port is not None
    c = raw_connect(srv.port, "Sec-WebSocket-Protocol: tickwire.v1.msgpack")
    try:
        assert "Sec-WebSocket-Protocol: tickwire.v1.msgpack" in c.response  # type: ignore[attr-defined]
        for garbage in (b"\xc1", b"\x93\x01\x02\x03", b"\x81\x01\x02", b"{not msgpack"):
            c.send(OP_BINARY, garbage)
            first, payload = recv_data(c)
            assert first == 0x80 | OP_BINARY
            err = msgspec.msgpack.decode(payload)
            assert err["type"] == "error" and err["code"] == "bad_msgpack", err
        # A msgpack map with bad fields gets the same codes as JSON.
        c.send(OP_BINARY, msgspec.msgpack.encode({"op": "dance", "id": 7}))
        err = msgspec.msgpack.decode(recv_data(c)[1])
        assert (err["code"], err["id"]) == ("unknown_op", 7)
        # Well-formed msgpack and JSON requests both work on the same connection.
        c.send(OP_BINARY, msgspec.msgpack.encode({"op": "ping", "id": 8}))
        assert msgspec.msgpack.decode(recv_data(c)[1]) == {"type": "pong", "id": 8}
        c.send_text(json.dumps({"op": "subscribe", "channels": ["book.AAA"], "id": 9}))
        ack = msgspec.msgpack.decode(recv_data(c)[1])
        snap = msgspec.msgpack.decode(recv_data(c)[1])
        assert ack["type"] == "ack" and snap["type"] == "snapshot"
    finally:
        c.close()
    # On a JSON connection a binary message is still refused with 1003.
    plain = RawClient(srv.port)
    try:
        plain.send(OP_BINARY, msgspec.msgpack.encode({"op": "ping"}))
        err = plain.recv_json()
        assert err["code"] == "unsupported_data"
        assert plain.wait_close()[0] == 1003
    finally:
        plain.close()


def test_compressed_requests_and_a_bomb(server_factory: Callable[..., ServerProcess]) -> None:
    srv = server_factory("--symbols", "AAA", "--rate", "100", "--deflate")
    assert srv.port is not None
    c = raw_connect(srv.port, "Sec-WebSocket-Extensions: permessage-deflate")
    try:
        assert f"Sec-WebSocket-Extensions: {DEFLATE_RESPONSE}" in c.response  # type: ignore[attr-defined]
        ping = Deflater().compress(b'{"op":"ping","id":1}')
        c.sock.sendall(compressed_client_frame(OP_TEXT, ping))
        first, payload = recv_data(c)
        assert first == 0x80 | 0x40 | OP_TEXT  # FIN, RSV1: a compressed text message
        pong = json.loads(zlib.decompressobj(-15).decompress(payload + b"\x00\x00\xff\xff"))
        assert pong == {"type": "pong", "id": 1}
        # A 64 KiB message limit, and 8 MiB of spaces compressed to a few KiB.
        bomb = Deflater(9).compress(b" " * (8 << 20))
        c.sock.sendall(compressed_client_frame(OP_TEXT, bomb))
        code, reason, _ = c.wait_close()
        assert code == 1009, reason
    finally:
        c.close()
    # RSV1 on a connection that did not negotiate the extension is a protocol error.
    plain = RawClient(srv.port)
    try:
        plain.sock.sendall(compressed_client_frame(OP_TEXT, ping))
        assert plain.wait_close()[0] == 1002
    finally:
        plain.close()
    stats = srv.stop()
    assert stats is not None and stats["connections"] == 0


# -- tickwire bench and tickwire watch speak every wire -----------------------------------


def test_tally_counts_msgpack_and_compressed_like_json() -> None:
    from tickwire.loadtest.tally import Tally

    msgs: list[Message] = [
        Snapshot("book.A", 5, "e", bids=[("1", "2")], asks=[], checksum=1),
        Delta("book.A", 8, 5, 7, [BookUpdate("bid", "1", "3", TS + i) for i in range(3)]),
        Delta("book.A", 10, 9, 7, [BookUpdate("ask", "2", "1", TS)]),  # a gap
    ]
    deflater = Deflater()
    tallies = {"json": Tally(), "msgpack": Tally(), "deflate": Tally()}
    chains: dict[str, dict[str, int]] = {k: {} for k in tallies}
    for m in msgs:
        tallies["json"].feed(chains["json"], encode(m), TS + 10)
        tallies["msgpack"].feed(chains["msgpack"], encode_msgpack(m), TS + 10, True)
        packed = deflater.compress(encode_msgpack(m))
        tallies["deflate"].feed(chains["deflate"], encode_msgpack(m), TS + 10, True, len(packed))
    counters = {k: t.counters() for k, t in tallies.items()}
    for k in ("msgpack", "deflate"):
        assert counters[k].deliveries == counters["json"].deliveries == 4
        assert counters[k].gaps == counters["json"].gaps == 1
        assert chains[k] == chains["json"] == {"book.A": 10}
    # Bytes as on the wire: compressed < msgpack < JSON.
    assert counters["deflate"].bytes < counters["msgpack"].bytes < counters["json"].bytes


def test_bench_and_watch_speak_msgpack_and_deflate(
    server_factory: Callable[..., ServerProcess],
) -> None:
    import subprocess
    import sys

    srv = server_factory("--symbols", "AAA,BBB", "--rate", "1000", "--deflate")
    bench = [sys.executable, "-m", "tickwire", "bench", srv.url, "--json", "--no-progress"]
    bench += ["--channels", "book.AAA,trades.BBB", "--conns", "2", "--procs", "1"]
    bench += ["--duration", "1", "--warmup", "0.3", "--encoding", "msgpack", "--deflate"]
    proc = subprocess.run(bench, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["connected"] == 2 and doc["deliveries"] > 100, doc
    assert doc["gaps"] == 0 and doc["totals"]["errors"] == 0 and doc["errors"] == []
    watch = [sys.executable, "-m", "tickwire", "watch", "AAA", "--url", srv.url]
    watch += ["--duration", "1.5", "--encoding", "msgpack", "--deflate"]
    out = subprocess.run(watch, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    summary = re.search(r"watched AAA for [\d.]+ s: (\d+) updates, gaps (\d+)", out.stdout)
    assert summary and int(summary.group(1)) > 50 and summary.group(2) == "0", out.stdout
    stats = srv.stop()
    assert stats is not None and stats["wires"] == {"msgpack+deflate": 3}
