"""Guarantees of docs/protocol.md, docs/security.md and docs/slow-consumers.md that no
other test exercised, each against a real server (audit 2026-12, section 6).

The wire cases run beside :func:`helpers.run_beside_healthy_client` where they are
attacks; the defaults are read from what ``tickwire serve`` builds with no flags and
compared with both documents' tables, so the code, the docs and this test agree.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import ssl
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from helpers import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    ROOT,
    HandshakeRefused,
    RawClient,
    ServerProcess,
    client_frame,
    run_beside_healthy_client,
)
from test_bad_input import still_open
from test_security import _self_signed, bearer, reply
from test_slow_consumers import connect, subscribe
from tickwire.auth import make_token
from tickwire.codec import Deflater, encode_msgpack
from tickwire.protocol import MAX_TOKEN_CHARS, BookUpdate, CloseCode, Delta, ErrorCode, Heartbeat

Factory = Callable[..., ServerProcess]
BASE = ("--symbols", "A,B", "--rate", "500")
ATTACKER = "127.0.0.3"


# -- 4001 at the server-wide buffer cap (protocol.md close codes, slow-consumers.md) -------


def test_server_wide_buffer_cap_closes_the_largest_buffers_with_4001(
    server_factory: Factory,
) -> None:
    # Per connection 1 MiB would be allowed, but all of them together only 1 MiB: six
    # stalled trades readers (trades never conflate) pass the total when each holds a
    # sixth of it, long before one reaches its own budget (the sweep checks the total
    # every 0.5 s). A small socket send buffer makes the server's own buffers grow.
    srv = server_factory(
        "--symbols", "3", "--rate", "3000", "--sndbuf-kb", "8",
        "--high-watermark-kb", "16", "--low-watermark-kb", "4",
        "--max-buffer-kb", "1024", "--max-total-buffer-mb", "1", "--stall-timeout", "60",
    )  # fmt: skip
    trades = [f"trades.SYM{i}" for i in range(3)]

    async def run() -> tuple[list[Any], Any]:
        fast = await connect(srv.url)
        stalled = [await connect(srv.url, small=True) for _ in range(6)]
        for c in [fast, *stalled]:
            subscribe(c, trades)
        for c in stalled:
            await c.wait_for(lambda c=c: len(c.of("trades.SYM0")) > 2)  # type: ignore[misc]
        for c in stalled:
            c.stall()
        # Together past the cap well before any one of them reaches its own budget;
        # then read again: the closed ones get what they were sent, then the 4001.
        await asyncio.sleep(2.0)
        for c in stalled:
            c.unstall()
        deadline = time.monotonic() + 15
        while not any(c.close_code for c in stalled):
            assert time.monotonic() < deadline, "nothing was closed at the server-wide cap"
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
        return stalled, fast

    stalled, fast = asyncio.run(run())
    stats = srv.stop()
    assert stats is not None
    closed = [c for c in stalled if c.close_code is not None]
    codes = [(c.close_code, c.close_reason) for c in stalled]
    assert closed and all(c.close_code == CloseCode.SLOW_CONSUMER for c in closed), codes
    assert all("server buffer cap" in c.close_reason for c in closed), codes
    assert stats["slow"]["closes"]["total"] == len(closed), (codes, stats["slow"])
    assert stats["slow"]["closes"]["budget"] == stats["slow"]["closes"]["stall"] == 0
    assert fast.close_code is None  # the reader that kept up was never a candidate
    assert stats["slow"]["max_buffered_total"] > 1 << 20


# -- 1002: bad opcodes, RSV2/RSV3, invalid deflate data ---------------------------------


def _first_byte(first: int, payload: bytes = b'{"op":"ping"}') -> Callable[[RawClient], None]:
    def send(raw: RawClient) -> None:
        frame = bytearray(client_frame(OP_TEXT, payload))
        frame[0] = first
        raw.sock.sendall(bytes(frame))

    return send


PROTOCOL_ERRORS = [
    pytest.param(_first_byte(0x80 | 0x3), id="reserved-data-opcode-3"),
    pytest.param(_first_byte(0x80 | 0x7), id="reserved-data-opcode-7"),
    pytest.param(_first_byte(0x80 | 0xB, b""), id="reserved-control-opcode-B"),
    pytest.param(_first_byte(0x80 | 0xF, b""), id="reserved-control-opcode-F"),
    pytest.param(_first_byte(0x80 | 0x20 | OP_TEXT), id="rsv2"),
    pytest.param(_first_byte(0x80 | 0x10 | OP_TEXT), id="rsv3"),
]


def _close_code(raw: RawClient) -> int | None:
    while True:
        frame = raw.recv_frame()
        if frame is None:
            return None
        if frame[0] == OP_CLOSE:
            return int.from_bytes(frame[2][:2], "big")


@pytest.mark.parametrize("act", PROTOCOL_ERRORS)
def test_framing_violations_close_1002(
    server_factory: Factory, act: Callable[[RawClient], None]
) -> None:
    srv = server_factory(*BASE)

    def bad() -> int | None:
        raw = RawClient(srv.port)
        try:
            act(raw)
            return _close_code(raw)
        finally:
            raw.close()

    assert run_beside_healthy_client(srv, bad) == CloseCode.PROTOCOL_ERROR


def test_invalid_deflate_data_from_a_deflate_client_closes_1002(server_factory: Factory) -> None:
    srv = server_factory(*BASE, "--deflate")
    offer = {"Sec-WebSocket-Extensions": "permessage-deflate"}

    def bad() -> tuple[dict[str, Any], int | None]:
        raw = RawClient(srv.port, headers=offer)
        try:
            # First a valid compressed request (the extension really is on) ...
            frame = bytearray(client_frame(OP_TEXT, Deflater().compress(b'{"op":"ping"}')))
            frame[0] |= 0x40
            raw.sock.sendall(bytes(frame))
            opcode, _, payload = raw.recv_frame() or (0, False, b"")
            import zlib

            pong = json.loads(zlib.decompressobj(-15).decompress(payload + b"\x00\x00\xff\xff"))
            # ... then bytes that are not DEFLATE data (a reserved block type, 0b11).
            frame = bytearray(client_frame(OP_TEXT, b"\xff\xff\xff\xff garbage"))
            frame[0] |= 0x40
            raw.sock.sendall(bytes(frame))
            return pong, _close_code(raw)
        finally:
            raw.close()

    pong, code = run_beside_healthy_client(srv, bad)
    assert pong == {"type": "pong", "id": None}
    assert code == CloseCode.PROTOCOL_ERROR


# -- subscribe and unsubscribe are all-or-nothing --------------------------------------


def _replies_until_pong(raw: RawClient, rid: str) -> list[dict[str, Any]]:
    """Everything before the pong answering ``rid`` (the server answers in order)."""
    raw.send_text(json.dumps({"op": "ping", "id": rid}))
    out = []
    while True:
        msg = raw.recv_json()
        if msg == {"type": "pong", "id": rid}:
            return out
        out.append(msg)


@pytest.mark.parametrize(
    ("channels", "code"),
    [
        (["book.A", "trades.A", "book.NOPE"], ErrorCode.UNKNOWN_CHANNEL),
        (["book.A", "quotes.A"], ErrorCode.BAD_CHANNEL),
        (["book.A", "trades.A", "ticker.A", "book.B"], ErrorCode.TOO_MANY_CHANNELS),
        (["book.A", "orders.alice"], ErrorCode.AUTH_REQUIRED),
    ],
    ids=["unknown", "malformed", "over-the-cap", "private"],
)
def test_a_subscribe_with_one_bad_channel_subscribes_to_nothing(
    server_factory: Factory, channels: list[str], code: ErrorCode
) -> None:
    srv = server_factory(*BASE, "--max-subscriptions", "3", "--heartbeat", "0.2")

    def bad() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        raw = RawClient(srv.port)
        try:
            raw.send_text(json.dumps({"op": "subscribe", "channels": channels, "id": 1}))
            first = _replies_until_pong(raw, "p1")
            # Nothing of the valid channels follows: not a snapshot, not a heartbeat
            # (every 0.2 s on a subscribed channel), for 1 s.
            time.sleep(1.0)
            later = _replies_until_pong(raw, "p2")
            return first, later
        finally:
            raw.close()

    first, later = run_beside_healthy_client(srv, bad)
    assert [(m["type"], m.get("code"), m.get("id")) for m in first] == [("error", code, 1)]
    assert later == []


def test_an_unsubscribe_with_one_unheld_channel_unsubscribes_nothing(
    server_factory: Factory,
) -> None:
    srv = server_factory(*BASE)

    def bad() -> tuple[dict[str, Any], list[dict[str, Any]]]:
        raw = RawClient(srv.port)
        try:
            raw.send_text('{"op":"subscribe","channels":["book.B","trades.B"],"id":1}')
            assert reply(raw, 1)["type"] == "ack"
            raw.send_text('{"op":"unsubscribe","channels":["book.B","ticker.B"],"id":2}')
            error = reply(raw, 2)
            # book.B is still held: its deltas keep coming, chained to before the error.
            after = []
            deadline = time.monotonic() + 10
            while sum(m["type"] == "delta" for m in after) < 20:
                assert time.monotonic() < deadline
                msg = raw.recv_json()
                if msg.get("ch") == "book.B":
                    after.append(msg)
            # And it can still be unsubscribed by itself: the set was unchanged.
            raw.send_text('{"op":"unsubscribe","channels":["book.B","trades.B"],"id":3}')
            assert reply(raw, 3)["type"] == "ack"
            return error, after
        finally:
            raw.close()

    error, after = run_beside_healthy_client(srv, bad)
    assert error["type"] == "error" and error["code"] == ErrorCode.NOT_SUBSCRIBED
    seqs = [(m["prev_seq"], m["seq"]) for m in after if m["type"] == "delta"]
    assert all(a[1] == b[0] for a, b in zip(seqs, seqs[1:], strict=False))


# -- login validation, its length limit, and both key types at once ---------------------


@pytest.fixture
def both_keys(server_factory: Factory, tmp_path: Path) -> tuple[ServerProcess, Any]:
    secret = tmp_path / "jwt.secret"
    secret.write_bytes(b"tickwire-test-secret-0123456789abcdef")
    key = ec.generate_private_key(ec.SECP256R1())
    pem = tmp_path / "jwt.pub.pem"
    pem.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    srv = server_factory(*BASE, "--jwt-secret-file", str(secret), "--jwt-public-key", str(pem))
    return srv, (key, pem.read_bytes())


def _hs256_by_hand(claims: dict[str, Any], key: bytes) -> str:
    import base64
    import hashlib
    import hmac

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps(claims).encode())
    mac = hmac.new(key, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(mac)}"


def test_login_requests_are_validated(both_keys: tuple[ServerProcess, Any]) -> None:
    srv, _ = both_keys
    requests: list[dict[str, Any]] = [
        {"op": "login", "id": "missing"},
        {"op": "login", "token": "", "id": "empty"},
        {"op": "login", "token": 123, "id": "number"},
        {"op": "login", "token": ["a.b.c"], "id": "list"},
        {"op": "login", "token": "x" * (MAX_TOKEN_CHARS + 1), "id": "too-long"},
        {"op": "login", "token": "x" * MAX_TOKEN_CHARS, "id": "at-the-limit"},
    ]

    def bad() -> dict[str, dict[str, Any]]:
        raw = RawClient(srv.port)
        try:
            out = {}
            for req in requests:
                raw.send_text(json.dumps(req))
                out[req["id"]] = reply(raw, req["id"])
            assert still_open(raw)
            return out
        finally:
            raw.close()

    out = run_beside_healthy_client(srv, bad)
    assert MAX_TOKEN_CHARS == 4096  # docs/protocol.md: "at most 4096 characters"
    for rid in ("missing", "empty", "number", "list", "too-long"):
        assert out[rid]["type"] == "error" and out[rid]["code"] == ErrorCode.BAD_REQUEST, rid
    # 4096 characters pass validation and reach the verifier, which refuses the junk.
    assert out["at-the-limit"]["code"] == ErrorCode.AUTH_FAILED


def test_hs256_and_es256_keys_together_each_verify_only_their_own_algorithm(
    both_keys: tuple[ServerProcess, Any],
) -> None:
    srv, (key, public_pem) = both_keys
    hs = make_token("alice", ttl=60, secret=b"tickwire-test-secret-0123456789abcdef")
    es = make_token("bob", ttl=60, private_key=key)
    # Algorithm confusion: HS256 "signed" with the ES256 public key as the secret (built
    # by hand: PyJWT refuses to make one).
    confused = _hs256_by_hand({"sub": "carol", "exp": int(time.time()) + 60}, public_pem)
    other = ec.generate_private_key(ec.SECP256R1())
    forged_es = make_token("dave", ttl=60, private_key=other)

    def scenario() -> dict[str, dict[str, Any]]:
        out = {}
        for name, tok in (("hs", hs), ("es", es), ("confused", confused), ("forged", forged_es)):
            raw = RawClient(srv.port)
            try:
                raw.send_text(json.dumps({"op": "login", "token": tok, "id": name}))
                out[name] = reply(raw, name)
            finally:
                raw.close()
        for name, tok in (("hs-at-connect", hs), ("es-at-connect", es)):
            RawClient(srv.port, headers=bearer(tok)).close()
            out[name] = {"type": "ack"}
        return out

    out = run_beside_healthy_client(srv, scenario)
    assert out["hs"]["type"] == "ack" and out["hs"]["channels"] == ["orders.alice"]
    assert out["es"]["type"] == "ack" and out["es"]["channels"] == ["orders.bob"]
    assert out["confused"]["code"] == ErrorCode.AUTH_FAILED
    assert out["forged"]["code"] == ErrorCode.AUTH_FAILED


# -- Retry-After on the wire --------------------------------------------------------------


def test_handshake_rate_429_carries_retry_after(server_factory: Factory) -> None:
    srv = server_factory(
        *BASE,
        "--per-ip-exempt", "127.0.0.1",
        "--handshakes-per-ip", "1", "--handshake-burst", "3", "--max-connections-per-ip", "50",
    )  # fmt: skip

    def attack() -> tuple[list[int], str]:
        statuses = []
        head = ""
        for _ in range(4):
            try:
                RawClient(srv.port, source=ATTACKER).close()
                statuses.append(101)
            except HandshakeRefused as exc:
                statuses.append(exc.status)
                head = exc.head
        return statuses, head

    statuses, head = run_beside_healthy_client(srv, attack)
    assert statuses == [101, 101, 101, 429]
    m = re.search(r"\r\nRetry-After: (\d+)\r\n", head + "\r\n", re.I)
    assert m is not None, head
    # 1 handshake/s: the next token is at most a second away.
    assert 1 <= int(m.group(1)) <= 2


def test_connection_cap_429_has_no_retry_after(server_factory: Factory) -> None:
    srv = server_factory(*BASE, "--per-ip-exempt", "127.0.0.1", "--max-connections-per-ip", "1")

    def attack() -> str:
        held = RawClient(srv.port, source=ATTACKER)
        try:
            with pytest.raises(HandshakeRefused) as info:
                RawClient(srv.port, source=ATTACKER)
            assert info.value.status == 429
            return info.value.head
        finally:
            held.close()

    head = run_beside_healthy_client(srv, attack)
    assert "Retry-After" not in head


# -- TLS 1.2 minimum --------------------------------------------------------------------


def _tls_handshake(port: int, version: ssl.TLSVersion) -> str:
    """Handshake with a client that speaks only ``version``; return its version or raise."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    # OpenSSL 3 refuses TLS 1.1 at its default security level: level 0 lets this client
    # offer it, so that a refusal can only come from the server.
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = version
        ctx.maximum_version = version
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        with ctx.wrap_socket(sock) as tls:
            return str(tls.version())


def _tls_1_1_server(cert: Path, key: Path) -> tuple[socket.socket, Any]:
    """A control: a bare TLS server that does accept TLS 1.1 (one handshake)."""
    import threading

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_1
    ctx.load_cert_chain(str(cert), str(key))
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with ctx.wrap_socket(conn, server_side=True):
                pass
        except (ssl.SSLError, OSError):
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener, thread


def test_tls_1_1_is_refused_and_1_2_accepted(server_factory: Factory, tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    srv = server_factory(*BASE, "--tls-cert", str(cert), "--tls-key", str(key))
    assert _tls_handshake(srv.port, ssl.TLSVersion.TLSv1_2) == "TLSv1.2"
    # The control: this client can speak TLS 1.1 to a server that allows it, so the
    # refusal below is the gateway's minimum version, not a limit of this machine.
    listener, thread = _tls_1_1_server(cert, key)
    try:
        try:
            control = _tls_handshake(listener.getsockname()[1], ssl.TLSVersion.TLSv1_1)
        except ssl.SSLError as exc:
            pytest.fail(f"this machine's OpenSSL cannot speak TLS 1.1 at all ({exc}): fix the test")
        assert control == "TLSv1.1"
    finally:
        thread.join(5)
        listener.close()
    with pytest.raises(ssl.SSLError) as info:
        _tls_handshake(srv.port, ssl.TLSVersion.TLSv1_1)
    assert "NO_PROTOCOLS_AVAILABLE" not in str(info.value).upper(), info.value


# -- the documented "0: off" switches ----------------------------------------------------


def test_zero_turns_the_per_ip_connection_cap_off(server_factory: Factory) -> None:
    srv = server_factory(
        *BASE, "--per-ip-exempt", "", "--max-connections-per-ip", "0",
        "--handshakes-per-ip", "1000", "--handshake-burst", "1000",
    )  # fmt: skip
    held = []
    try:
        # The default cap is 100; 0 means no cap at all (not "zero connections").
        for _ in range(130):
            held.append(RawClient(srv.port))
        assert still_open(held[-1])
    finally:
        for raw in held:
            raw.close()


def test_zero_turns_the_message_rate_off(server_factory: Factory) -> None:
    srv = server_factory(*BASE, "--max-messages-per-s", "0", "--message-burst", "5")

    def flood() -> list[dict[str, Any]]:
        raw = RawClient(srv.port, source=ATTACKER)
        try:
            n = 400  # twice the default burst, 80 times this server's
            raw.sock.sendall(
                b"".join(client_frame(OP_TEXT, b'{"op":"ping","id":%d}' % i) for i in range(n))
            )
            return [raw.recv_json() for _ in range(n)]
        finally:
            raw.close()

    replies = run_beside_healthy_client(srv, flood)
    assert replies == [{"type": "pong", "id": i} for i in range(400)]


def test_zero_turns_the_idle_timeout_off(server_factory: Factory) -> None:
    srv = server_factory(*BASE, "--idle-timeout", "0")

    def idle() -> bool:
        raw = RawClient(srv.port, source=ATTACKER)
        try:
            # Three half-second sweeps with no subscription and no request: still open
            # (0 is "never", not "at once").
            with pytest.raises(TimeoutError):
                raw.recv_frame(timeout=1.6)
            return still_open(raw)
        finally:
            raw.close()

    assert run_beside_healthy_client(srv, idle)


# -- pings, the 1008 boundary ------------------------------------------------------------


def test_the_server_answers_client_pings_with_pongs(server_factory: Factory) -> None:
    srv = server_factory(*BASE)

    def pinger() -> list[bytes]:
        raw = RawClient(srv.port)
        try:
            out = []
            for payload in (b"", b"hello", b"x" * 125):
                raw.send(OP_PING, payload)
                frame = raw.recv_frame()
                assert frame is not None and frame[0] == OP_PONG, frame
                out.append(frame[2])
            return out
        finally:
            raw.close()

    assert run_beside_healthy_client(srv, pinger) == [b"", b"hello", b"x" * 125]


def test_exactly_100_rejected_requests_keep_the_connection_open(server_factory: Factory) -> None:
    srv = server_factory(*BASE)

    def bad() -> tuple[int, bool, int | None]:
        raw = RawClient(srv.port)
        try:
            raw.sock.sendall(b"".join(client_frame(OP_TEXT, b"nope") for _ in range(100)))
            errors = sum(raw.recv_json()["code"] == ErrorCode.BAD_JSON for _ in range(100))
            alive = still_open(raw)
            # The 101st is one too many.
            raw.send_text(b"nope")
            assert raw.recv_json()["code"] == ErrorCode.BAD_JSON
            return errors, alive, _close_code(raw)
        finally:
            raw.close()

    errors, alive, code = run_beside_healthy_client(srv, bad)
    assert errors == 100 and alive and code == CloseCode.POLICY_VIOLATION


# -- the log budget for picows' per-violation lines (security.md) -------------------------


def test_picows_violation_lines_are_budgeted_at_10_per_s(server_factory: Factory) -> None:
    srv = server_factory(*BASE)
    n = 150

    def attack() -> float:
        start = time.monotonic()
        for _ in range(n):
            raw = RawClient(srv.port, source=ATTACKER)
            try:
                raw.send(OP_PING, b"x" * 126)  # picows logs this one at ERROR
                assert raw.wait_close(timeout=5)[0] == CloseCode.PROTOCOL_ERROR
            finally:
                raw.close()
        return time.monotonic() - start

    elapsed = run_beside_healthy_client(srv, attack)
    stats = srv.stop()
    assert stats is not None
    logged = sum("picows" in line and "WS parser error" in line for line in srv.stderr.splitlines())
    suppressed = stats["security"]["log_lines_suppressed"]
    # Each violation was either logged or counted; at most the burst (50) plus 10/s.
    assert logged + suppressed >= n and suppressed > 0, (logged, suppressed)
    assert 0 < logged <= 50 + 10 * (elapsed + 1), (logged, elapsed)


# -- the msgpack byte layout ------------------------------------------------------------


def _doc_hex_dump() -> bytes:
    text = Path(ROOT, "docs", "protocol.md").read_text()
    block = re.search(r"Worked example,\s+the heartbeat.*?```\n(.*?)```", text, re.S)
    assert block is not None
    out = b""
    for line in block.group(1).splitlines():
        hexpart = re.match(r"((?:[0-9a-f]{2} )+)", line + " ")
        assert hexpart is not None, line
        out += bytes.fromhex(hexpart.group(1))
    return out


def test_msgpack_heartbeat_is_the_documented_37_bytes() -> None:
    body = encode_msgpack(Heartbeat(ch="book.BTC-USD", seq=42))
    assert body == _doc_hex_dump()
    assert len(body) == 37 and body[0] == 0x83  # a fixmap of 3, "type" first
    assert (
        len(json.dumps({"type": "heartbeat", "ch": "book.BTC-USD", "seq": 42}).replace(" ", ""))
        == 49
    )


def test_msgpack_delta_layout_matches_the_docs() -> None:
    text = Path(ROOT, "docs", "protocol.md").read_text()
    example = re.search(r'(\{"type":"delta".*?\]\})', text, re.S)
    assert example is not None
    msg = json.loads(example.group(1))
    delta = Delta(
        ch=msg["ch"],
        seq=msg["seq"],
        prev_seq=msg["prev_seq"],
        checksum=msg["checksum"],
        updates=[BookUpdate(**u) for u in msg["updates"]],
    )
    body = encode_msgpack(delta)
    sizes = re.search(r"A one-update delta is (\d+) bytes against\s+(\d+) in JSON", text)
    ts_bytes = re.search(r"its `ts` travels as `((?:[0-9a-f]{2} ?)+)`", text)
    assert sizes is not None and ts_bytes is not None
    assert len(body) == int(sizes.group(1))
    assert len(json.dumps(msg, separators=(",", ":"))) == int(sizes.group(2))
    ts = bytes.fromhex(ts_bytes.group(1))
    assert ts[0] == 0xCF and int.from_bytes(ts[1:], "big") == msg["updates"][0]["ts"]
    assert b"\xa2ts" + ts in body
    # "type" first, then the JSON field order; prices and quantities stay strings.
    assert body[:12] == b"\x86\xa4type\xa5delta"
    assert b"\xa5price\xa837458.02\xa3qty\xa60.9300" in body
    assert b"\xa8checksum\xce" + msg["checksum"].to_bytes(4, "big") in body


def test_msgpack_on_the_wire_has_the_documented_layout(server_factory: Factory) -> None:
    srv = server_factory(*BASE)
    raw = RawClient(srv.port, headers={"Sec-WebSocket-Protocol": "tickwire.v1.msgpack"})
    try:
        raw.send_text('{"op":"subscribe","channels":["book.A"]}')
        deltas = []
        deadline = time.monotonic() + 10
        while len(deltas) < 5:
            assert time.monotonic() < deadline
            frame = raw.recv_frame()
            assert frame is not None
            if frame[0] == OP_BINARY and frame[2][:12] == b"\x86\xa4type\xa5delta":
                deltas.append(frame[2])
    finally:
        raw.close()
    for body in deltas:
        # Every ts is a uint 64: 0xcf and 8 bytes.
        assert body.count(b"\xa2ts") == body.count(b"\xa2ts\xcf") >= 1


# -- the documented defaults: code, protocol.md and security.md agree ---------------------


def _defaults(monkeypatch: pytest.MonkeyPatch) -> Any:
    """The GatewayConfig that ``tickwire serve`` (no flags) builds."""
    import tickwire.server
    from tickwire.cli import main

    built = []

    class Captured(Exception):
        pass

    class FakeGateway:
        def __init__(self, config: Any) -> None:
            built.append(config)
            raise Captured

    monkeypatch.setattr(tickwire.server, "Gateway", FakeGateway)
    with pytest.raises(Captured):
        main(["serve"])
    return built[0]


def _table(doc: str, heading: str) -> dict[str, str]:
    """First column -> second column of the first table under ``heading``."""
    text = Path(ROOT, "docs", doc).read_text()
    section = text[text.index(heading) :]
    rows = {}
    for line in section.splitlines()[1:]:
        if line.startswith("#"):
            break
        if line.startswith("|") and not line.startswith("|--"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = cells[1]
    return rows


def test_documented_defaults_are_the_codes(monkeypatch: pytest.MonkeyPatch) -> None:
    from tickwire.engine import RECENT_TRADES
    from tickwire.server import Gateway, GatewayConfig

    config = _defaults(monkeypatch)
    monkeypatch.undo()
    limits = config.limits
    code = {
        "subscriptions": config.max_subscriptions,
        "message size": config.max_message_bytes,
        "rejected": config.max_bad_requests,
        "history": config.history_bytes,
        "heartbeat": config.heartbeat_s,
        "ping": (config.ping_interval_s, config.ping_timeout_s),
        "handshake timeout": limits.handshake_timeout_s,
        "messages": (limits.max_messages_per_s, limits.message_burst),
        "idle": limits.idle_timeout_s,
        "connections per ip": limits.max_connections_per_ip,
        "handshakes": (limits.handshakes_per_s, limits.handshake_burst),
        "recent trades": RECENT_TRADES,
        "ticker": Gateway(GatewayConfig(symbols=["A"])).hub.ticker_interval,
    }
    assert code == {
        "subscriptions": 1024,
        "message size": 64 << 10,
        "rejected": 100,
        "history": 2 << 20,
        "heartbeat": 1.0,
        "ping": (20.0, 20.0),
        "handshake timeout": 5.0,
        "messages": (50.0, 200),
        "idle": 60.0,
        "connections per ip": 100,
        "handshakes": (20.0, 40),
        "recent trades": 50,
        "ticker": 0.1,
    }
    protocol = _table("protocol.md", "## Limits")
    assert protocol["subscriptions per connection"] == "1024"
    assert protocol["message size (one frame or a fragmented message; also once inflated)"] == (
        "64 KiB"
    )
    assert protocol["rejected requests per connection"] == "100"
    assert protocol["resume history per channel"] == "2 MiB"
    assert protocol["heartbeat interval"] == "1 s"
    assert protocol["WebSocket ping after silence / pong timeout"] == "20 s / 20 s"
    assert protocol["ticker interval per symbol"] == "100 ms"
    assert protocol["recent trades in a trades snapshot"] == "50"
    assert protocol["WebSocket handshake (request must arrive)"] == "5 s"
    assert protocol["inbound messages per connection"] == "50/s, burst 200"
    assert protocol["idle: no subscription and no request"] == "60 s"
    assert protocol["connections per client IP"] == "100"
    assert protocol["handshakes per second per client IP"] == "20/s, burst 40"
    security = _table("security.md", "## Every limit")
    assert security["connections per client IP (handshaking or open)"] == "100"
    assert security["handshakes per second per client IP"] == "20/s, burst 40"
    assert security["handshake timeout"] == "5 s"
    assert security["inbound messages per connection"] == "50/s, burst 200"
    assert security["subscriptions per connection"] == "1024"
    assert security["channels per request"] == "256"
    assert security["frame or message size"] == "64 KiB"
    assert security["rejected requests per connection"] == "100"
    assert security["idle: no subscription, no request"] == "60 s"
    assert security["WebSocket ping / pong timeout"] == "20 s / 20 s"


# -- drift between protocol.md and the code ------------------------------------------------


def test_protocol_md_names_every_channel_kind_and_op() -> None:
    from tickwire.protocol import _OPS, CHANNEL_KINDS

    text = Path(ROOT, "docs", "protocol.md").read_text()
    kinds = text[text.index("`KIND` is one of") :].split("\n\n")[0]
    for kind in CHANNEL_KINDS:
        assert f"`{kind}`" in kinds, kind
    row = next(line for line in text.splitlines() if line.startswith("| `unknown_op`"))
    for op in _OPS:
        assert f"`{op}`" in row, op
    requests = next(line for line in text.splitlines() if line.startswith("| `op`"))
    for op in _OPS - {"fault"}:
        assert f"`{op}`" in requests, op
    # A since inside a message resumes (test_nats.py splits it); it is no snapshot case.
    resume = text[text.index("## Resume") : text.index("## Liveness")]
    assert "not a message\n  boundary" not in resume and "inside" in resume
