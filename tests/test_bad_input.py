"""Bad input gets its documented error or close code, and nobody else notices.

Each case runs against a real server while a healthy WebSocket client follows
``book.A``, ``trades.A`` and ``ticker.A`` on the same server
(:func:`helpers.run_beside_healthy_client`): it reads continuously, before, during and
for a second after the bad client's misbehaviour, and must keep receiving every update in
order (its :class:`helpers.StreamChecker` asserts the ``prev_seq`` chain, every checksum
and every trade id), at the server's rate. Malformed frames are
built by hand on raw sockets (:class:`helpers.RawClient`).
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest

from helpers import (
    OP_BINARY,
    OP_CONT,
    OP_PING,
    OP_TEXT,
    RawClient,
    ServerProcess,
    run_beside_healthy_client,
)
from tickwire.protocol import MAX_CHANNELS_PER_REQUEST, CloseCode, ErrorCode

Factory = Callable[..., ServerProcess]

#: Small limits so that the cases stay small: 4 KiB messages, 3 channels a connection
#: (the healthy client's book.A, trades.A and ticker.A).
SERVER_ARGS = ("--symbols", "A,B", "--rate", "500", "--max-message-kb", "4")
SERVER_ARGS += ("--max-subscriptions", "3", "--log-level", "INFO")


@pytest.fixture
def srv(server_factory: Factory) -> ServerProcess:
    return server_factory(*SERVER_ARGS)


def still_open(raw: RawClient) -> bool:
    raw.send_text('{"op":"ping","id":"alive"}')
    while True:
        msg = raw.recv_json()
        if msg["type"] == "pong":
            return bool(msg["id"] == "alive")


# -- error messages: the connection stays open --------------------------------------------

ERROR_CASES = [
    pytest.param(b'{"op":', None, ErrorCode.BAD_JSON, id="malformed-json"),
    pytest.param(b"[1,2]", None, ErrorCode.BAD_JSON, id="not-an-object"),
    pytest.param(b'{"op":"hack","id":7}', 7, ErrorCode.UNKNOWN_OP, id="unknown-op"),
    pytest.param(
        b'{"op":"fault","channels":["book.A"],"fault":"drop","id":7}',
        7,
        ErrorCode.UNKNOWN_OP,
        id="fault-op-without-test-faults",
    ),
    pytest.param(
        b'{"op":"subscribe","channels":["book.NOPE"],"id":8}',
        8,
        ErrorCode.UNKNOWN_CHANNEL,
        id="unknown-channel",
    ),
    pytest.param(
        b'{"op":"subscribe","channels":["book.A","quotes.A"],"id":"x"}',
        "x",
        ErrorCode.BAD_CHANNEL,
        id="malformed-channel",
    ),
    pytest.param(
        b'{"op":"subscribe","channels":"book.A","id":9}',
        9,
        ErrorCode.BAD_REQUEST,
        id="channels-not-a-list",
    ),
    pytest.param(
        json.dumps(
            {"op": "subscribe", "channels": [f"book.S{i}" for i in range(257)], "id": 10}
        ).encode(),
        10,
        ErrorCode.TOO_MANY_CHANNELS,
        id="too-many-channels-per-request",
    ),
    pytest.param(
        b'{"op":"subscribe","channels":["book.A","book.B","trades.A","ticker.B"],"id":11}',
        11,
        ErrorCode.TOO_MANY_CHANNELS,
        id="too-many-channels-per-connection",
    ),
    pytest.param(
        b'{"op":"unsubscribe","channels":["book.A"],"id":12}',
        12,
        ErrorCode.NOT_SUBSCRIBED,
        id="not-subscribed",
    ),
]


@pytest.mark.parametrize(("payload", "rid", "code"), ERROR_CASES)
def test_bad_request_gets_error_and_connection_stays_open(
    srv: ServerProcess, payload: bytes, rid: int | str | None, code: ErrorCode
) -> None:
    def bad() -> tuple[dict[str, Any], bool]:
        raw = RawClient(srv.port)
        try:
            raw.send_text(payload)
            return raw.recv_json(), still_open(raw)
        finally:
            raw.close()

    error, alive = run_beside_healthy_client(srv, bad)
    assert error["type"] == "error" and error["code"] == code
    assert error.get("id") == rid and error["message"]
    assert alive


def test_too_many_per_request_boundary_is_accepted_then_limited(srv: ServerProcess) -> None:
    # 256 names pass the per-request check; the connection cap (3) then rejects them.
    names = [f"book.S{i}" for i in range(MAX_CHANNELS_PER_REQUEST)]

    def bad() -> dict[str, Any]:
        raw = RawClient(srv.port)
        try:
            raw.send_text(json.dumps({"op": "subscribe", "channels": names, "id": 1}))
            return raw.recv_json()
        finally:
            raw.close()

    error = run_beside_healthy_client(srv, bad)
    # book.S0 does not exist: existence is checked before the connection cap.
    assert error["code"] == ErrorCode.UNKNOWN_CHANNEL


def test_subscription_cap_per_connection(srv: ServerProcess) -> None:
    def bad() -> list[dict[str, Any]]:
        raw = RawClient(srv.port)
        out = []
        try:
            raw.send_text('{"op":"subscribe","channels":["book.B","trades.B","ticker.A"],"id":1}')
            raw.send_text('{"op":"subscribe","channels":["ticker.B"],"id":2}')
            raw.send_text('{"op":"subscribe","channels":["book.B"],"id":3}')  # again: fine
            raw.send_text('{"op":"unsubscribe","channels":["trades.B"],"id":4}')
            raw.send_text('{"op":"subscribe","channels":["ticker.B"],"id":5}')
            while len(out) < 5:
                msg = raw.recv_json()
                if msg["type"] in ("ack", "error"):
                    out.append(msg)
            return out
        finally:
            raw.close()

    replies = run_beside_healthy_client(srv, bad)
    assert [(m["type"], m["id"]) for m in replies] == [
        ("ack", 1),
        ("error", 2),
        ("ack", 3),
        ("ack", 4),
        ("ack", 5),
    ]
    assert replies[1]["code"] == ErrorCode.TOO_MANY_CHANNELS


def test_fragmented_request_is_assembled(srv: ServerProcess) -> None:
    request = b'{"op":"subscribe","channels":["book.B"],"id":"frag"}'

    def bad() -> list[dict[str, Any]]:
        raw = RawClient(srv.port)
        try:
            raw.send(OP_TEXT, request[:10], fin=False)
            raw.send(OP_PING, b"mid-message ping")  # control frames may interleave
            raw.send(OP_CONT, request[10:30], fin=False)
            raw.send(OP_CONT, request[30:], fin=True)
            return [raw.recv_json(), raw.recv_json()]
        finally:
            raw.close()

    ack, snap = run_beside_healthy_client(srv, bad)
    assert ack["type"] == "ack" and ack["id"] == "frag"
    assert snap["type"] == "snapshot" and snap["ch"] == "book.B"


# -- close codes --------------------------------------------------------------------------


def _sender(*frames: tuple[int, bytes, bool]) -> Callable[[RawClient], None]:
    def send(raw: RawClient) -> None:
        for opcode, payload, fin in frames:
            raw.send(opcode, payload, fin=fin)

    return send


def _unmasked(raw: RawClient) -> None:
    payload = b'{"op":"ping"}'
    raw.sock.sendall(bytes((0x81, len(payload))) + payload)


def _many_bad(raw: RawClient) -> None:
    for _ in range(101):
        raw.send_text(b"nope")


CLOSE_CASES = [
    pytest.param(
        _sender((OP_BINARY, b"\x00\xff\x13garbage", True)),
        CloseCode.UNSUPPORTED_DATA,
        id="binary-garbage",
    ),
    pytest.param(
        _sender((OP_TEXT, b'"' + b"x" * 5000 + b'"', True)),
        CloseCode.MESSAGE_TOO_BIG,
        id="oversized-frame",
    ),
    pytest.param(
        _sender(
            (OP_TEXT, b'{"op":"ping","pad":"' + b"x" * 2000, False),
            (OP_CONT, b"x" * 2000, False),
            (OP_CONT, b"x" * 2000 + b'"}', True),
        ),
        CloseCode.MESSAGE_TOO_BIG,
        id="oversized-fragmented-message",
    ),
    pytest.param(
        _sender((OP_TEXT, b'{"op":"ping","id":"\xc3\x28"}', True)),
        CloseCode.INVALID_TEXT,
        id="invalid-utf8",
    ),
    pytest.param(
        _sender(
            (OP_TEXT, b'{"op":"ping","id":"\xe2\x82', False),
            (OP_CONT, b'\xac\xff"}', True),
        ),
        CloseCode.INVALID_TEXT,
        id="invalid-utf8-fragmented",
    ),
    pytest.param(
        _sender((OP_CONT, b"orphan", True)),
        CloseCode.PROTOCOL_ERROR,
        id="continuation-without-start",
    ),
    pytest.param(_unmasked, CloseCode.PROTOCOL_ERROR, id="unmasked-client-frame"),
    pytest.param(_many_bad, CloseCode.POLICY_VIOLATION, id="too-many-bad-requests"),
]


@pytest.mark.parametrize(("act", "code"), CLOSE_CASES)
def test_bad_frames_close_with_documented_code(
    srv: ServerProcess, act: Callable[[RawClient], None], code: CloseCode
) -> None:
    def bad() -> tuple[int | None, bool, int]:
        raw = RawClient(srv.port)
        errors = 0
        try:
            act(raw)
            while True:
                frame = raw.recv_frame()
                if frame is None:
                    return None, True, errors
                opcode, _, payload = frame
                if opcode == OP_TEXT:
                    assert json.loads(payload)["type"] == "error"
                    errors += 1
                elif opcode == 0x8:
                    got = int.from_bytes(payload[:2], "big")
                    return got, raw.recv_frame() is None, errors
        finally:
            raw.close()

    got, tcp_closed, errors = run_beside_healthy_client(srv, bad)
    assert got == code
    assert tcp_closed, "the server must end the TCP connection after its close frame"
    # Binary data and too many bad requests are explained by error messages first.
    expected_errors = {CloseCode.POLICY_VIOLATION: 101, CloseCode.UNSUPPORTED_DATA: 1}
    assert errors == expected_errors.get(code, 0)


def test_rejections_are_logged_once_per_code(srv: ServerProcess) -> None:
    def bad() -> None:
        raw = RawClient(srv.port)
        try:
            for i in range(5):
                raw.send_text(b"{")
                raw.send_text(json.dumps({"op": "nope", "id": i}))
            for _ in range(10):
                raw.recv_json()
        finally:
            raw.close()

    run_beside_healthy_client(srv, bad)
    srv.stop()
    log = srv.stderr
    assert log.count("rejected request: bad_json") == 1
    assert log.count("rejected request: unknown_op") == 1


# -- the healthy client itself can fail ---------------------------------------------------


@pytest.mark.parametrize(
    ("sig", "reason"),
    [
        pytest.param(signal.SIGSTOP, "stopped streaming", id="server-frozen"),
        pytest.param(signal.SIGKILL, "closed the healthy client", id="server-killed"),
    ],
)
def test_the_healthy_client_fails_when_the_server_stops_streaming_mid_attack(
    srv: ServerProcess, sig: signal.Signals, reason: str
) -> None:
    # The evidence behind every case in this module, test_hostile.py and
    # test_security.py must be able to fail: a server that freezes (or dies) a moment
    # into an attack fails the healthy client, however much it streamed before.
    assert srv.proc is not None
    pid = srv.proc.pid

    def bad() -> None:
        time.sleep(0.3)
        os.kill(pid, sig)
        time.sleep(2.0)

    try:
        with pytest.raises(AssertionError, match=reason):
            run_beside_healthy_client(srv, bad)
    finally:
        if sig == signal.SIGSTOP:
            os.kill(pid, signal.SIGCONT)
