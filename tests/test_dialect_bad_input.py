"""Bad input on the venue dialects: each venue's own error shape, never a crash, never
a disturbance for anyone else.

Every case runs beside the healthy native client of ``helpers.run_beside_healthy_client``
(it reads the whole time and checks every seq and checksum), on a real server.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from helpers import (
    OP_BINARY,
    OP_CLOSE,
    RawClient,
    ServerProcess,
    run_beside_healthy_client,
)

Server = Callable[..., ServerProcess]


@pytest.fixture
def srv(server_factory: Server) -> ServerProcess:
    return server_factory("--symbols", "A,BTC-USDT", "--rate", "500")


def recv_reply(raw: RawClient) -> dict[str, Any] | str:
    """The next text message that is not market data (a reply or an error)."""
    for _ in range(200):
        frame = raw.recv_frame()
        assert frame is not None, "no reply"
        opcode, _, payload = frame
        if opcode == OP_CLOSE:
            raise AssertionError(f"closed: {payload!r}")
        text = payload.decode()
        if not text.startswith("{"):
            return text
        msg = json.loads(text)
        if isinstance(msg, dict) and not ({"e", "stream", "arg"} & set(msg) and "event" not in msg):
            return msg
    raise AssertionError("only market data")


BINANCE = [
    (b"{nope", lambda m: m["error"]["code"] == 3 and m["id"] is None),
    (b'{"method":"SUBSCRIBE","params":["zzzusdt@trade"],"id":7}', lambda m: m == {
        "error": {"code": 2, "msg": "Invalid request: unknown stream `zzzusdt@trade`"},
        "id": 7,
    }),
    (b'{"method":"SUBSCRIBE","params":"btcusdt@trade","id":8}', lambda m: m["error"]["code"] == 2),
    (b'{"method":"FLY","id":9}', lambda m: m["error"]["code"] == 2 and m["id"] == 9),
    (b'{"params":[],"id":10}', lambda m: m["error"]["code"] == 2),
    (b'{"method":"SUBSCRIBE","params":[],"id":true}', lambda m: m["error"]["code"] == 2),
]  # fmt: skip


@pytest.mark.parametrize(("payload", "ok"), BINANCE)
def test_binance_errors_have_binance_shapes(
    srv: ServerProcess, payload: bytes, ok: Callable[[Any], bool]
) -> None:
    def bad() -> Any:
        raw = RawClient(srv.port, "/binance/ws")
        try:
            raw.send_text(payload)
            reply = recv_reply(raw)
            # Still open and serving: a good request right after is answered.
            raw.send_text(b'{"method":"LIST_SUBSCRIPTIONS","id":99}')
            return reply, recv_reply(raw)
        finally:
            raw.close()

    reply, after = run_beside_healthy_client(srv, bad)
    assert ok(reply), reply
    assert after == {"result": [], "id": 99}


def test_repeated_bad_requests_close_1008_and_binary_1003(srv: ServerProcess) -> None:
    def bad() -> tuple[int | None, int | None]:
        raw = RawClient(srv.port, "/binance/ws")
        try:
            for i in range(101):  # the 101st bad request in a row closes (as native)
                raw.send_text(f'{{"method":"FLY","id":{i}}}'.encode())
            code = raw.wait_close()[0]
        finally:
            raw.close()
        raw = RawClient(srv.port, "/binance/stream")
        try:
            raw.send(OP_BINARY, b"\x00\x01")
            binary = raw.wait_close()[0]
        finally:
            raw.close()
        return code, binary

    code, binary = run_beside_healthy_client(srv, bad)
    assert code == 1008
    assert binary == 1003


def test_unknown_venue_paths_and_streams_at_connect(srv: ServerProcess) -> None:
    from helpers import HandshakeRefused

    def bad() -> tuple[int, list[Any]]:
        try:
            RawClient(srv.port, "/binance/elsewhere")
        except HandshakeRefused as exc:
            status = exc.status
        else:
            status = 101
        # Unknown streams named in the connect URL are skipped, as Binance ignores
        # a path suffix that is no stream; the connection serves the rest.
        raw = RawClient(srv.port, "/binance/stream?streams=nope@trade/btcusdt@depth@100ms")
        try:
            raw.send_text(b'{"method":"LIST_SUBSCRIPTIONS","id":1}')
            return status, [recv_reply(raw)]
        finally:
            raw.close()

    status, replies = run_beside_healthy_client(srv, bad)
    assert status == 404
    assert replies == [{"result": ["btcusdt@depth@100ms"], "id": 1}]


def _binance_limited(m: Any) -> bool:
    return isinstance(m, dict) and m.get("error", {}).get("code") == -1003


def _okx_limited(m: Any) -> bool:
    return isinstance(m, dict) and m.get("event") == "error" and m.get("code") == "60014"


KRAKEN_RATE = "Exceeded msg rate"

RATE_LIMITED = [
    ("/binance/ws", b'{"method":"LIST_SUBSCRIPTIONS","id":1}', _binance_limited),
    ("/okx/ws/v5/public", b"ping", _okx_limited),
    ("/kraken", b'{"event":"ping"}', {"event": "error", "errorMessage": KRAKEN_RATE}.__eq__),
    ("/kraken/v2", b'{"method":"ping"}', {"error": KRAKEN_RATE, "success": False}.__eq__),
]  # fmt: skip


def _is_answer(m: Any) -> bool:
    """A reply to a request (not a status message sent at connect or a heartbeat)."""
    if not isinstance(m, dict):
        return m == "pong"
    return bool(
        {"id", "result", "error"} & set(m)
        or m.get("event") in ("pong", "error")
        or m.get("method") == "pong"
    )


@pytest.mark.parametrize(("path", "message", "ok"), RATE_LIMITED)
def test_a_venue_client_over_the_rate_limit_gets_the_venue_error(
    server_factory: Server, path: str, message: bytes, ok: Callable[[Any], bool]
) -> None:
    srv = server_factory(
        "--symbols", "A,BTC-USDT", "--rate", "500",
        "--max-messages-per-s", "0.1", "--message-burst", "3",
    )  # fmt: skip

    def bad() -> list[Any]:
        raw = RawClient(srv.port, path)
        try:
            for _ in range(5):
                raw.send_text(message)
            replies: list[Any] = []
            while len(replies) < 5:
                reply = recv_reply(raw)
                if _is_answer(reply):
                    replies.append(reply)
            return replies
        finally:
            raw.close()

    replies = run_beside_healthy_client(srv, bad)
    # The burst of 3 is answered; the next 2 are refused in the venue's own shape.
    assert [ok(r) for r in replies] == [False, False, False, True, True], replies
