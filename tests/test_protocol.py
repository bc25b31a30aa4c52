"""The wire protocol: request validation (every error code path), ids, and message codecs."""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any

import msgspec
import pytest

from tickwire.exceptions import ProtocolError, RequestError
from tickwire.protocol import (
    CHANNEL_KINDS,
    MAX_CHANNELS_PER_REQUEST,
    PROTOCOL_VERSION,
    Ack,
    BookUpdate,
    CloseCode,
    Delta,
    Error,
    ErrorCode,
    Heartbeat,
    Message,
    Pong,
    Request,
    Snapshot,
    Ticker,
    Trade,
    Trades,
    decode_message,
    decode_request,
    encode,
    parse_channel,
)


def _error(data: bytes | str) -> RequestError:
    with pytest.raises(RequestError) as info:
        decode_request(data)
    assert isinstance(info.value, ProtocolError)
    return info.value


# -- valid requests -----------------------------------------------------------------------


def test_minimal_subscribe_as_documented() -> None:
    req = decode_request('{"op":"subscribe","channels":["book.SYM0"]}')
    assert req == Request("subscribe", ["book.SYM0"])
    assert req.id is None and req.epoch is None and req.since == {} and req.fault is None


def test_bytes_and_str_payloads_decode_alike() -> None:
    text = '{"op":"unsubscribe","channels":["trades.BTC-USD"],"id":"a-1"}'
    assert decode_request(text) == decode_request(text.encode())


def test_full_resume_request() -> None:
    req = decode_request(
        json.dumps(
            {
                "op": "subscribe",
                "channels": ["book.BTC-USD", "trades.BTC-USD", "ticker.ETH-USD"],
                "id": 7,
                "epoch": "18f-abc",
                "since": {"book.BTC-USD": 123, "trades.BTC-USD": 0},
            }
        )
    )
    assert req.op == "subscribe" and req.id == 7 and req.epoch == "18f-abc"
    assert req.channels == ["book.BTC-USD", "trades.BTC-USD", "ticker.ETH-USD"]
    assert req.since == {"book.BTC-USD": 123, "trades.BTC-USD": 0}


def test_unknown_fields_are_ignored() -> None:
    # Forward compatibility: a newer client may send fields this server does not know.
    req = decode_request('{"op":"subscribe","channels":["book.A"],"depth":10,"x":{}}')
    assert req.channels == ["book.A"]


def test_ping_needs_no_channels() -> None:
    assert decode_request('{"op":"ping","id":3}') == Request("ping", id=3)


def test_fault_request_decodes() -> None:
    req = decode_request('{"op":"fault","channels":["book.X"],"fault":"drop"}')
    assert req.op == "fault" and req.fault == "drop"


def test_duplicate_channels_removed_in_order() -> None:
    req = decode_request(
        '{"op":"subscribe","channels":["book.B","book.A","book.B","trades.A","book.A"]}'
    )
    assert req.channels == ["book.B", "book.A", "trades.A"]


@pytest.mark.parametrize("rid", [0, 1, -5, 2**53, "x", "", "a" * 64, None])
def test_ids_are_echoed(rid: int | str | None) -> None:
    payload = json.dumps({"op": "subscribe", "channels": ["book.X"], "id": rid})
    assert decode_request(payload).id == rid
    # ...including on errors found after the id was read.
    bad = json.dumps({"op": "subscribe", "channels": ["nope"], "id": rid})
    assert _error(bad).request_id == rid


def test_max_channels_is_allowed() -> None:
    names = [f"book.S{i}" for i in range(MAX_CHANNELS_PER_REQUEST)]
    req = decode_request(json.dumps({"op": "subscribe", "channels": names}))
    assert req.channels == names


# -- every error code path ----------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [b"", b"{", b"not json", b"[1]", b'"x"', b"1", b"null", b"\xff\xfe", b'{"op":"ping"}x'],
)
def test_bad_json(data: bytes) -> None:
    err = _error(data)
    assert err.code == ErrorCode.BAD_JSON and err.request_id is None


@pytest.mark.parametrize(
    "rid", [True, False, 1.5, [1], {"a": 1}, "a" * 65], ids=lambda r: type(r).__name__
)
def test_bad_id(rid: Any) -> None:
    err = _error(json.dumps({"op": "ping", "id": rid}))
    assert err.code == ErrorCode.BAD_REQUEST and err.request_id is None
    assert "id" in err.message


@pytest.mark.parametrize("extra", [{}, {"op": None}, {"op": 1}, {"op": ["subscribe"]}])
def test_missing_or_non_string_op(extra: dict[str, Any]) -> None:
    err = _error(json.dumps({"channels": ["book.X"], "id": 9, **extra}))
    assert err.code == ErrorCode.BAD_REQUEST and err.request_id == 9
    assert "op" in err.message


@pytest.mark.parametrize("op", ["", "Subscribe", "sub", "logon", "x" * 100])
def test_unknown_op(op: str) -> None:
    err = _error(json.dumps({"op": op, "id": "q"}))
    assert err.code == ErrorCode.UNKNOWN_OP and err.request_id == "q"
    assert len(err.message) < 64  # the op is quoted, truncated


@pytest.mark.parametrize(
    "fields",
    [
        {"channels": "book.X"},
        {"channels": [1]},
        {"channels": ["book.X"], "since": {"book.X": "5"}},
        {"channels": ["book.X"], "since": {"book.X": True}},
        {"channels": ["book.X"], "since": [1]},
        {"channels": ["book.X"], "epoch": 5},
        {"channels": ["book.X"], "fault": 1},
    ],
)
def test_wrong_field_types(fields: dict[str, Any]) -> None:
    err = _error(json.dumps({"op": "subscribe", "id": 4, **fields}))
    assert err.code == ErrorCode.BAD_REQUEST and err.request_id == 4


@pytest.mark.parametrize("op", ["subscribe", "unsubscribe", "fault"])
@pytest.mark.parametrize("fields", [{}, {"channels": []}, {"channels": None}])
def test_channels_required(op: str, fields: dict[str, Any]) -> None:
    err = _error(json.dumps({"op": op, "id": 1, **fields}))
    assert err.code == ErrorCode.BAD_REQUEST and err.request_id == 1


def test_too_many_channels_per_request() -> None:
    names = [f"book.S{i}" for i in range(MAX_CHANNELS_PER_REQUEST + 1)]
    err = _error(json.dumps({"op": "subscribe", "channels": names, "id": 2}))
    assert err.code == ErrorCode.TOO_MANY_CHANNELS and err.request_id == 2
    assert str(MAX_CHANNELS_PER_REQUEST) in err.message


@pytest.mark.parametrize(
    "name",
    [
        "",
        "book",
        "book.",
        ".BTC",
        "bookBTC",
        "quotes.BTC",
        "orders.-alice",
        "orders.a b",
        "BOOK.BTC",
        "book.-BTC",
        "book._X",
        "book.BTC USD",
        "book.BTC.USD",
        "book." + "A" * 33,
        "book.BTC\n",
        "book.ÄBC",
    ],
)
def test_bad_channel_syntax(name: str) -> None:
    err = _error(json.dumps({"op": "subscribe", "channels": ["book.OK", name], "id": 5}))
    assert err.code == ErrorCode.BAD_CHANNEL and err.request_id == 5
    with pytest.raises(RequestError) as info:
        parse_channel(name)
    assert info.value.code == ErrorCode.BAD_CHANNEL and info.value.request_id is None


@pytest.mark.parametrize(
    ("name", "parsed"),
    [
        ("book.BTC-USD", ("book", "BTC-USD")),
        ("trades.ETH/USD", ("trades", "ETH/USD")),
        ("ticker.SYM0", ("ticker", "SYM0")),
        ("book.a_b:c", ("book", "a_b:c")),
        ("book.0", ("book", "0")),
        ("book." + "A" * 32, ("book", "A" * 32)),
    ],
)
def test_good_channel_syntax(name: str, parsed: tuple[str, str]) -> None:
    assert parse_channel(name) == parsed


def test_channel_kinds() -> None:
    assert CHANNEL_KINDS == ("book", "trades", "ticker", "orders")


def test_long_channel_name_is_truncated_in_message() -> None:
    err = _error(json.dumps({"op": "subscribe", "channels": ["x" * 10_000]}))
    assert len(err.message) < 200


# -- codes --------------------------------------------------------------------------------


def test_error_codes_are_stable() -> None:
    # docs/protocol.md lists exactly these; clients match on the strings.
    assert {c.value for c in ErrorCode} == {
        "bad_json",
        "bad_msgpack",
        "bad_request",
        "unknown_op",
        "bad_channel",
        "unknown_channel",
        "too_many_channels",
        "not_subscribed",
        "unsupported_data",
        "auth_required",
        "auth_failed",
        "token_expired",
        "forbidden",
        "rate_limited",
    }


def test_close_codes_are_stable() -> None:
    assert {c.name: c.value for c in CloseCode} == {
        "NORMAL": 1000,
        "GOING_AWAY": 1001,
        "PROTOCOL_ERROR": 1002,
        "UNSUPPORTED_DATA": 1003,
        "INVALID_TEXT": 1007,
        "POLICY_VIOLATION": 1008,
        "MESSAGE_TOO_BIG": 1009,
        "INTERNAL_ERROR": 1011,
        "SLOW_CONSUMER": 4001,
        "IDLE_TIMEOUT": 4002,
        "AUTH_EXPIRED": 4003,
        "RATE_LIMITED": 4008,
    }


# -- server messages ----------------------------------------------------------------------

TICKER = Ticker(
    "ticker.BTC-USD",
    3,
    2,
    1_700_000_000_000_000_000,
    bid="100.00",
    bid_qty="1.0000",
    ask="100.50",
    ask_qty="0.0100",
    last="100.25",
    open="99.00",
    high="101.00",
    low="98.50",
    volume="12.3456",
    trades=17,
)
TRADE = Trade(12, "100.25", "0.5000", "buy", 1_700_000_000_000_000_001)

MESSAGES: list[Message] = [
    Ack("subscribe", 1, ["book.BTC-USD"], "e1"),
    Ack("unsubscribe", "x", ["book.BTC-USD", "trades.BTC-USD"], "e1"),
    Ack("ping"),
    Error("bad_channel", "bad channel 'x'", 5, None),
    Error("unknown_channel", "no such channel", None, "book.NOPE"),
    Snapshot(
        "book.BTC-USD",
        42,
        "e1",
        bids=[("100.00", "1.0000")],
        asks=[("100.50", "0.0100")],
        checksum=3881386666,
    ),
    Snapshot("book.BTC-USD", 42, "e1", bids=[], asks=[], checksum=0, resumed=False),
    Snapshot("trades.BTC-USD", 12, "e1", trades=[TRADE]),
    Snapshot("ticker.BTC-USD", 3, "e1", ticker=TICKER),
    Delta(
        "book.BTC-USD",
        44,
        42,
        123,
        [
            BookUpdate("bid", "100.00", "0", 1_700_000_000_000_000_000),
            BookUpdate("ask", "100.75", "2.5000", 1_700_000_000_000_000_001),
        ],
    ),
    Trades("trades.BTC-USD", 12, 11, [TRADE]),
    TICKER,
    Ticker("ticker.X", 1, 0, 5),
    Heartbeat("book.BTC-USD", 44),
    Pong(3),
    Pong(),
]


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: type(m).__name__)
def test_message_round_trip(msg: Message) -> None:
    data = encode(msg)
    assert isinstance(data, bytes)
    back = decode_message(data)
    assert back == msg and type(back) is type(msg)
    # Every message is one JSON object tagged by "type"; no floats anywhere.
    raw = json.loads(data)
    assert (
        raw["type"]
        == {
            Ack: "ack",
            Error: "error",
            Snapshot: "snapshot",
            Delta: "delta",
            Trades: "trades",
            Ticker: "ticker",
            Heartbeat: "heartbeat",
            Pong: "pong",
        }[type(msg)]
    )
    assert not _floats(raw)


def _floats(value: Any) -> bool:
    if isinstance(value, float):
        return True
    if isinstance(value, dict):
        return any(_floats(v) for v in value.values())
    if isinstance(value, list):
        return any(_floats(v) for v in value)
    return False


def test_exact_wire_forms() -> None:
    # These literal forms are quoted in docs/protocol.md.
    assert encode(Ack("subscribe", 1, ["book.BTC-USD"], "e1")) == (
        b'{"type":"ack","op":"subscribe","id":1,"channels":["book.BTC-USD"],'
        b'"epoch":"e1","version":%d}' % PROTOCOL_VERSION
    )
    assert encode(Error("bad_channel", "m", 1)) == (
        b'{"type":"error","code":"bad_channel","message":"m","id":1}'
    )
    assert encode(Heartbeat("book.X", 5)) == b'{"type":"heartbeat","ch":"book.X","seq":5}'
    assert encode(Delta("book.X", 2, 1, 7, [BookUpdate("ask", "1.5", "0", 9)])) == (
        b'{"type":"delta","ch":"book.X","seq":2,"prev_seq":1,"checksum":7,'
        b'"updates":[{"side":"ask","price":"1.5","qty":"0","ts":9}]}'
    )
    assert encode(Trades("trades.X", 3, 2, [Trade(3, "1.5", "2", "sell", 9)])) == (
        b'{"type":"trades","ch":"trades.X","seq":3,"prev_seq":2,'
        b'"trades":[{"id":3,"price":"1.5","qty":"2","side":"sell","ts":9}]}'
    )
    # Optional snapshot fields are omitted, not null.
    assert encode(Snapshot("trades.X", 0, "e", trades=[])) == (
        b'{"type":"snapshot","ch":"trades.X","seq":0,"epoch":"e","trades":[]}'
    )


def test_request_encodes_and_decodes_back() -> None:
    req = Request("subscribe", ["book.X"], 1, "e", {"book.X": 4})
    assert decode_request(encode(req)) == req


@pytest.mark.parametrize(
    "data",
    [
        b"{}",
        b'{"type":"nope"}',
        b'{"type":"delta","ch":"book.X"}',
        b'{"type":"delta","ch":"book.X","seq":1,"prev_seq":0,"checksum":1,'
        b'"updates":[{"side":"up","price":"1","qty":"1","ts":1}]}',
        b'{"type":"heartbeat","ch":"book.X","seq":1.5}',
        b"[]",
        b"garbage",
    ],
)
def test_decode_message_rejects_invalid(data: bytes) -> None:
    with pytest.raises(msgspec.DecodeError):
        decode_message(data)


# -- docs/protocol.md stays in step with this module --------------------------------------

DOC = (Path(__file__).parent.parent / "docs" / "protocol.md").read_text()


def test_doc_lists_every_error_code() -> None:
    for code in ErrorCode:
        assert f"| `{code.value}`" in DOC, code


def test_doc_lists_every_close_code() -> None:
    for code in CloseCode:
        assert f"| {code.value} | `{code.name}`" in DOC, code


def test_doc_quotes_the_version_limits_and_checksum_example() -> None:
    assert f"version {PROTOCOL_VERSION}" in DOC.splitlines()[0]
    assert f"At most {MAX_CHANNELS_PER_REQUEST} names per request" in DOC
    assert '`zlib.crc32(b"1005100100020000") = 3881386666`' in DOC
    assert zlib.crc32(b"1005100100020000") == 3881386666
    # The ack example in the doc is the exact wire form.
    assert encode(Ack("subscribe", 1, ["book.BTC-USD"], "1a2107237ff-6c2da3")).decode() in DOC
