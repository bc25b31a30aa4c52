"""Property tests: the request decoder and the gateway's request path under random input.

1. Any bytes, any text and any JSON value given to :func:`protocol.decode_request`
   either decode to a valid :class:`Request` or raise :class:`RequestError` with one of
   the documented codes -- never anything else (the atheris harness in ``fuzzing/``
   checks the same with coverage guidance).
2. Random requests from one connection, pushed through the real
   :meth:`Gateway.handle_request` and hub (no sockets, as in ``test_client_sync.py``),
   never change what another subscriber receives: its frames are exactly those of a
   twin gateway that got no random requests.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tickwire.exceptions import RequestError
from tickwire.protocol import (
    CHANNEL_KINDS,
    MAX_CHANNELS_PER_REQUEST,
    ErrorCode,
    Request,
    decode_request,
    encode,
    parse_channel,
)
from tickwire.server import Connection, Gateway, GatewayConfig

CODES = {c.value for c in ErrorCode}


def _check(data: bytes | str, binary: bool = False) -> None:
    try:
        req = decode_request(data, binary)
    except RequestError as exc:
        assert exc.code in CODES
        assert isinstance(exc.message, str)
        assert exc.request_id is None or isinstance(exc.request_id, int | str)
        return
    assert isinstance(req, Request)
    assert req.op in ("subscribe", "unsubscribe", "ping", "fault", "login")
    if req.op in ("subscribe", "unsubscribe", "fault"):
        assert 0 < len(req.channels) <= MAX_CHANNELS_PER_REQUEST
        assert len(set(req.channels)) == len(req.channels)
        for name in req.channels:
            assert parse_channel(name)[0] in CHANNEL_KINDS
    if req.op == "login":
        assert req.token
    # A decoded request survives a round trip through its own encoding.
    assert decode_request(encode(req)) == req


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=512), st.booleans())
def test_any_bytes(data: bytes, binary: bool) -> None:
    # As a text frame (JSON) and as a binary frame of a msgpack connection.
    _check(data, binary)


@settings(max_examples=300, deadline=None)
@given(st.deferred(lambda: st.one_of(JSON, REQUEST)))
def test_any_msgpack_value(value: Any) -> None:
    try:
        data = msgspec.msgpack.encode(value)
    except OverflowError:  # an int msgpack cannot carry: no client can send it
        return
    _check(data, binary=True)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=256))
def test_any_text(data: str) -> None:
    _check(data)


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=20,
)

CHANNEL = st.one_of(
    st.sampled_from(["book.A", "trades.A", "ticker.B", "orders.alice", "orders.bob", "book.Z"]),
    st.text(max_size=20),
)

REQUEST = st.fixed_dictionaries(
    {"op": st.sampled_from(["subscribe", "unsubscribe", "ping", "fault", "login", "x"])},
    optional={
        "channels": st.one_of(st.lists(CHANNEL, max_size=4), JSON),
        "id": st.one_of(st.integers(), st.text(max_size=70), JSON),
        "epoch": st.one_of(st.text(max_size=12), JSON),
        "since": st.one_of(st.dictionaries(CHANNEL, st.integers(-5, 10**6)), JSON),
        "fault": st.one_of(st.sampled_from(["drop", "checksum", "nope"]), JSON),
        "token": st.one_of(st.text(max_size=30), JSON),
    },
)


@settings(max_examples=500, deadline=None)
@given(st.one_of(JSON, REQUEST))
def test_any_json(value: Any) -> None:
    _check(json.dumps(value))


# -- random requests never change what others receive ---------------------------------------


def _gateway() -> tuple[Gateway, Connection]:
    gw = Gateway(GatewayConfig(symbols=["A", "B"], seed=5))
    # Both twins must share an epoch for their frames to be byte-identical.
    gw.engine.epoch = "fuzz-epoch"
    gw.source.simulator.clock = itertools.count(10**18, 1000).__next__  # type: ignore[attr-defined]
    watcher = Connection(gw, 1)
    gw.handle_request(watcher, b'{"op":"subscribe","channels":["book.A","trades.A","ticker.A"]}')
    return gw, watcher


def _tick(gw: Gateway, n: int, now: float) -> None:
    flows = gw.source.simulator.generate(n)  # type: ignore[attr-defined]
    for symbol, updates, trades in flows:
        gw.hub.publish(symbol, updates, trades)
    gw.hub.flush(now)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.lists(st.one_of(REQUEST.map(json.dumps), st.binary(max_size=64)), max_size=12))
def test_random_requests_do_not_change_other_subscribers(requests: list[Any]) -> None:
    quiet, quiet_watcher = _gateway()
    noisy, noisy_watcher = _gateway()
    intruder = Connection(noisy, 2)
    for i, request in enumerate(requests):
        data = request.encode() if isinstance(request, str) else request
        noisy.handle_request(intruder, data)
        intruder.outbox.clear()
        for gw in (quiet, noisy):
            _tick(gw, 3, float(i))
        assert noisy_watcher.outbox == quiet_watcher.outbox
    for gw in (quiet, noisy):
        gw.hub.heartbeats(1000.0)
    assert noisy_watcher.outbox == quiet_watcher.outbox and quiet_watcher.outbox
