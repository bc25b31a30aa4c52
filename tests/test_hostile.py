"""Hostile clients against a real server, while a healthy client keeps its whole stream.

Each case runs beside :func:`helpers.run_beside_healthy_client`: a WebSocket
client on ``book.A``, ``trades.A`` and ``ticker.A`` reads continuously and must receive
every update in order, at the server's rate (its :class:`helpers.StreamChecker` asserts
the seq chain, every checksum and every trade id) before, during and after the attack.
Oversized, fragmented, invalid-UTF-8 and unmasked frames are in ``test_bad_input.py``;
here: slow-loris handshakes, thousands of connection attempts from one address,
control-frame abuse, interleaved fragments and request floods.

Attackers connect from 127.0.0.3 and the healthy client from 127.0.0.1, which the
servers here exempt from per-IP limits (``--per-ip-exempt 127.0.0.1``): on loopback every
client would otherwise share one address.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from helpers import (
    OP_PING,
    OP_TEXT,
    HandshakeRefused,
    RawClient,
    ServerProcess,
    client_frame,
    run_beside_healthy_client,
)
from test_bad_input import still_open
from tickwire.protocol import CloseCode, ErrorCode

Factory = Callable[..., ServerProcess]
ATTACKER = "127.0.0.3"
BASE = ("--symbols", "A,B", "--rate", "500", "--per-ip-exempt", "127.0.0.1")

UPGRADE = (
    b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def _closed_by_server(sock: socket.socket, deadline: float) -> bool:
    """Read until EOF/reset (True) or the deadline (False)."""
    while time.monotonic() < deadline:
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            if not sock.recv(4096):
                return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False
    return False


def test_slow_loris_handshakes_are_cut_off(server_factory: Factory) -> None:
    srv = server_factory(*BASE, "--handshake-timeout", "1", "--max-connections-per-ip", "10")

    def attack() -> tuple[int, float]:
        socks = []
        for _ in range(30):
            s = socket.create_connection(("127.0.0.1", srv.port), source_address=(ATTACKER, 0))
            s.sendall(UPGRADE[:10])  # a request that never completes
            socks.append(s)
        start = time.monotonic()
        # Trickle one more byte now and then: the timeout is for the whole request.
        for i in range(4):
            time.sleep(0.2)
            for s in socks:
                try:
                    s.sendall(UPGRADE[10 + i : 11 + i])
                except OSError:
                    pass
        closed = sum(_closed_by_server(s, start + 5) for s in socks)
        elapsed = time.monotonic() - start
        for s in socks:
            s.close()
        return closed, elapsed

    closed, elapsed = run_beside_healthy_client(srv, attack)
    assert closed == 30
    stats = srv.stop()
    assert stats is not None
    # Past twice the per-IP cap the extra ones were dropped at accept.
    assert stats["security"]["dropped_at_accept"] == 10
    assert stats["security"]["tracked_ips"] == 0  # every count released


def test_two_thousand_connection_attempts_from_one_address(server_factory: Factory) -> None:
    srv = server_factory(
        *BASE,
        "--max-connections-per-ip",
        "50",
        "--handshakes-per-ip",
        "20",
        "--handshake-burst",
        "40",
    )

    def attempt(_: int) -> tuple[str, socket.socket | None]:
        try:
            s = socket.create_connection(
                ("127.0.0.1", srv.port), timeout=5, source_address=(ATTACKER, 0)
            )
            s.sendall(UPGRADE)
            head = s.recv(4096)
        except (ConnectionResetError, BrokenPipeError):
            return "reset", None
        if not head:
            s.close()
            return "reset", None
        status = head.split(b" ", 2)[1].decode()
        if status == "101":
            return status, s  # held open: it counts against the address
        assert b"\r\n\r\n" in head, head
        s.close()
        return status, None

    def attack() -> dict[str, int]:
        with ThreadPoolExecutor(32) as pool:
            results = list(pool.map(attempt, range(2000)))
        counts: dict[str, int] = {}
        for status, sock in results:
            counts[status] = counts.get(status, 0) + 1
            if sock is not None:
                sock.close()
        return counts

    counts = run_beside_healthy_client(srv, attack)
    assert sum(counts.values()) == 2000
    assert set(counts) <= {"101", "429", "reset"}, counts
    # Never more than the handshake burst (plus what 20/s refills while it runs).
    assert 0 < counts["101"] <= 50, counts
    assert counts["429"] > 1000, counts
    # Once the attacker has gone, its address may connect again after the refill.
    time.sleep(1.5)
    RawClient(srv.port, source=ATTACKER).close()


def test_connection_cap_answers_429(server_factory: Factory) -> None:
    srv = server_factory(*BASE, "--max-connections-per-ip", "3")

    def attack() -> tuple[int, bytes]:
        held = [RawClient(srv.port, source=ATTACKER) for _ in range(3)]
        try:
            with pytest.raises(HandshakeRefused) as refused:
                RawClient(srv.port, source=ATTACKER)
            # Another address is unaffected, and a slot frees up on close.
            RawClient(srv.port, source="127.0.0.4").close()
            held.pop().close()
            time.sleep(0.3)
            RawClient(srv.port, source=ATTACKER).close()
            return refused.value.status, refused.value.head.encode()
        finally:
            for raw in held:
                raw.close()

    status, _ = run_beside_healthy_client(srv, attack)
    assert status == 429


CONTROL_CASES = [
    pytest.param([(OP_PING, b"x" * 126, True)], id="ping-over-125-bytes"),
    pytest.param([(0xA, b"y" * 200, True)], id="pong-over-125-bytes"),
    pytest.param([(OP_PING, b"p", False)], id="fragmented-ping"),
    pytest.param(
        [(OP_TEXT, b'{"op":', False), (OP_TEXT, b'{"op":"ping"}', True)],
        id="new-message-inside-fragments",
    ),
]


@pytest.mark.parametrize("frames", CONTROL_CASES)
def test_control_frame_abuse_is_a_protocol_error(
    server_factory: Factory, frames: list[tuple[int, bytes, bool]]
) -> None:
    srv = server_factory(*BASE)

    def attack() -> tuple[int | None, bool]:
        raw = RawClient(srv.port, source=ATTACKER)
        try:
            for opcode, payload, fin in frames:
                raw.send(opcode, payload, fin=fin)
            code, _, closed = raw.wait_close()
            return code, closed
        finally:
            raw.close()

    code, closed = run_beside_healthy_client(srv, attack)
    assert code == CloseCode.PROTOCOL_ERROR and closed


def test_subscribe_flood_is_rate_limited_then_closed(server_factory: Factory) -> None:
    # One token a second: the server reads the 41 frames (one segment) long before a
    # token refills, even on a loaded machine, so the counts below are exact.
    srv = server_factory(*BASE, "--max-messages-per-s", "1", "--message-burst", "20")
    request = b'{"op":"subscribe","channels":["book.B","trades.B"],"id":1}'

    def attack() -> tuple[int, int, int | None]:
        raw = RawClient(srv.port, source=ATTACKER)
        acks = limited = 0
        try:
            # The burst (20), 20 refused, and the one that closes: exactly what the server
            # reads before it closes. More would still be unread at the close, and the
            # kernel would answer with a reset that discards the replies not yet read.
            raw.sock.sendall(b"".join(client_frame(OP_TEXT, request) for _ in range(41)))
            while True:
                frame = raw.recv_frame()
                if frame is None:
                    return acks, limited, None
                opcode, _, payload = frame
                if opcode == 0x8:
                    return acks, limited, int.from_bytes(payload[:2], "big")
                if opcode == OP_TEXT:
                    msg = json.loads(payload)
                    if msg["type"] == "ack":
                        acks += 1
                    elif msg["type"] == "error":
                        assert msg["code"] == ErrorCode.RATE_LIMITED
                        limited += 1
        finally:
            raw.close()

    acks, limited, code = run_beside_healthy_client(srv, attack)
    # The burst is served, the next 20 are refused with an error, then the close.
    assert acks == 20 and limited == 20 and code == CloseCode.RATE_LIMITED


def test_requests_within_the_rate_are_served(server_factory: Factory) -> None:
    srv = server_factory(*BASE, "--max-messages-per-s", "50", "--message-burst", "5")

    def polite() -> bool:
        raw = RawClient(srv.port, source=ATTACKER)
        try:
            for i in range(30):
                raw.send_text(json.dumps({"op": "ping", "id": i}))
                assert raw.recv_json() == {"type": "pong", "id": i}
                time.sleep(0.03)
            return still_open(raw)
        finally:
            raw.close()

    assert run_beside_healthy_client(srv, polite)


def test_idle_connection_without_subscription_is_closed(server_factory: Factory) -> None:
    srv = server_factory(*BASE, "--idle-timeout", "1")

    def idle() -> tuple[int | None, float]:
        # Timed from before the TCP connect: the server's idle clock starts after it.
        start = time.monotonic()
        raw = RawClient(srv.port, source=ATTACKER)
        try:
            code, _, _ = raw.wait_close(timeout=5)
            return code, time.monotonic() - start
        finally:
            raw.close()

    code, waited = run_beside_healthy_client(srv, idle)
    # The healthy client is subscribed, so it is never idle; this one is closed.
    assert code == CloseCode.IDLE_TIMEOUT and waited >= 1.0
