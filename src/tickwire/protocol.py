"""The tickwire wire protocol, version 1: every message schema, error and close code.

This module is the single source of truth for what travels on the WebSocket; the prose
version is ``docs/protocol.md``. It is Sans-I/O: it turns bytes into request objects and
message objects into bytes, and never touches a socket.

Client → server (text frames, JSON objects)::

    {"op": "subscribe",   "channels": ["book.BTC-USD", ...], "id": 1}
    {"op": "subscribe",   "channels": [...], "epoch": "...", "since": {"book.BTC-USD": 42}}
    {"op": "unsubscribe", "channels": [...], "id": 2}
    {"op": "ping", "id": 3}
    {"op": "login", "token": "<JWT>", "id": 4}                  (private channels)
    {"op": "fault", "channels": ["book.X"], "fault": "drop"}   (only with --test-faults)

Server → client: one JSON object per text frame, tagged by ``type``: ``ack``, ``error``,
``snapshot``, ``delta``, ``trades``, ``ticker``, ``orders``, ``heartbeat``, ``pong``.
"""

from __future__ import annotations

import enum
import re
from typing import Any, Literal

import msgspec

from .exceptions import RequestError

__all__ = [
    "CHANNEL_KINDS",
    "MAX_CHANNELS_PER_REQUEST",
    "MAX_TOKEN_CHARS",
    "PRIVATE_KINDS",
    "PROTOCOL_VERSION",
    "PUBLIC_KINDS",
    "Ack",
    "BookUpdate",
    "CloseCode",
    "Delta",
    "Error",
    "ErrorCode",
    "Heartbeat",
    "Message",
    "OrderUpdate",
    "Orders",
    "Pong",
    "Request",
    "Side",
    "Snapshot",
    "Ticker",
    "Trade",
    "Trades",
    "decode_message",
    "delta_updates",
    "decode_request",
    "encode",
    "parse_channel",
    "trade_tuples",
    "valid_user",
]

#: Bumped on any incompatible change of a schema below.
PROTOCOL_VERSION = 1

#: Market-data channel families: anyone may subscribe (``kind.SYMBOL``).
PUBLIC_KINDS = ("book", "trades", "ticker")

#: Private channel families (``kind.USER``): only the connection logged in as USER may
#: subscribe (docs/security.md).
PRIVATE_KINDS = ("orders",)

#: Channel families a client may subscribe to.
CHANNEL_KINDS = PUBLIC_KINDS + PRIVATE_KINDS

#: Longest token accepted in a ``login`` request or at connect; longer ones are refused
#: unparsed (a JWT of a few claims is a few hundred characters).
MAX_TOKEN_CHARS = 4096

#: Most channels one subscribe or unsubscribe request may name.
MAX_CHANNELS_PER_REQUEST = 256

_SYMBOL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-/:]{0,31}\Z")
#: A user id (the token's ``sub``) as it appears in ``orders.<USER>``.
_USER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-.@:]{0,63}\Z")


class ErrorCode(enum.StrEnum):
    """Machine-readable codes carried by ``error`` messages."""

    BAD_JSON = "bad_json"  #: the frame is not a JSON object
    BAD_MSGPACK = "bad_msgpack"  #: a binary frame (msgpack connection) is not a msgpack map
    BAD_REQUEST = "bad_request"  #: a field is missing or has the wrong type
    UNKNOWN_OP = "unknown_op"  #: ``op`` is not one of subscribe / unsubscribe / ping
    BAD_CHANNEL = "bad_channel"  #: a channel name is malformed (not ``kind.SYMBOL``)
    UNKNOWN_CHANNEL = "unknown_channel"  #: well formed, but no such symbol or kind
    TOO_MANY_CHANNELS = "too_many_channels"  #: over the per-request or per-connection cap
    NOT_SUBSCRIBED = "not_subscribed"  #: unsubscribe from a channel never subscribed
    UNSUPPORTED_DATA = "unsupported_data"  #: a binary frame on a JSON connection
    AUTH_REQUIRED = "auth_required"  #: a private channel without a login (or no auth)
    AUTH_FAILED = "auth_failed"  #: a login token is malformed or badly signed
    TOKEN_EXPIRED = "token_expired"  #: a login token's ``exp`` has passed
    FORBIDDEN = "forbidden"  #: another user's private channel, or a second identity
    RATE_LIMITED = "rate_limited"  #: over the inbound messages-per-second limit; dropped


class CloseCode(enum.IntEnum):
    """WebSocket close codes the server uses (RFC 6455 §7.4 plus the 4000 range)."""

    NORMAL = 1000  #: the client asked to close
    GOING_AWAY = 1001  #: server shutdown or restart: reconnect (with jittered backoff)
    PROTOCOL_ERROR = 1002  #: WebSocket framing violation (unmasked frame, bad opcode...)
    UNSUPPORTED_DATA = 1003  #: binary frames where text is required, after a warning
    INVALID_TEXT = 1007  #: a text frame is not valid UTF-8
    POLICY_VIOLATION = 1008  #: too many bad requests in a row
    MESSAGE_TOO_BIG = 1009  #: a frame or message over the maximum size
    INTERNAL_ERROR = 1011  #: a server bug; the feed itself is unaffected
    SLOW_CONSUMER = 4001  #: the client read too slowly for a channel that never conflates
    IDLE_TIMEOUT = 4002  #: no subscription and no request for the idle timeout
    AUTH_EXPIRED = 4003  #: the login token expired and no new ``login`` refreshed it
    RATE_LIMITED = 4008  #: kept sending past the messages-per-second limit


# -- client requests -----------------------------------------------------------------


class Request(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    """A decoded client request.

    Attributes:
        op: ``"subscribe"``, ``"unsubscribe"``, ``"ping"`` or ``"login"``.
        channels: channel names, in the order given, without duplicates.
        id: the client's correlation id, echoed in the ack or error.
        epoch: the server epoch the ``since`` positions belong to (resume).
        since: per channel, the last ``seq`` the client applied (resume).
        token: ``login`` only: a signed JWT (never logged, never echoed).
    """

    op: str
    channels: list[str] = []
    id: int | str | None = None
    epoch: str | None = None
    since: dict[str, int] = {}
    fault: str | None = None
    token: str | None = None

    def __repr__(self) -> str:
        # A request may carry a bearer token: keep it out of logs and tracebacks.
        token = None if self.token is None else "<redacted>"
        return (
            f"Request(op={self.op!r}, channels={self.channels!r}, id={self.id!r}, "
            f"epoch={self.epoch!r}, since={self.since!r}, fault={self.fault!r}, "
            f"token={token})"
        )


_request_decoder = msgspec.json.Decoder(dict[str, Any])
_msgpack_request_decoder = msgspec.msgpack.Decoder(dict[str, Any])
_OPS = frozenset(("subscribe", "unsubscribe", "ping", "fault", "login"))


def _request_id(raw: dict[str, Any]) -> int | str | None:
    rid = raw.get("id")
    if isinstance(rid, bool) or not isinstance(rid, int | str | None):
        return None
    if isinstance(rid, str) and len(rid) > 64:
        return None
    return rid


def decode_request(data: bytes | str, binary: bool = False) -> Request:
    """Decode and validate one client request.

    Args:
        data: the payload of a text frame (JSON).
        binary: ``data`` is the payload of a binary frame on a msgpack connection: the
            same object as a msgpack map (see ``docs/protocol.md``, "Encodings").

    Returns:
        The request, with channel names checked for syntax (not for existence).

    Raises:
        RequestError: with the code the server sends back; the request ``id`` is set
            whenever the JSON object could be read.
    """
    if binary:
        try:
            raw = _msgpack_request_decoder.decode(data.encode() if isinstance(data, str) else data)
        except (msgspec.DecodeError, UnicodeDecodeError):
            # A msgpack str holding invalid UTF-8 raises UnicodeDecodeError (found by
            # tests/test_fuzz.py).
            raise RequestError(ErrorCode.BAD_MSGPACK, "request must be a msgpack map") from None
    else:
        try:
            raw = _request_decoder.decode(data)
        except (msgspec.DecodeError, UnicodeDecodeError):
            raise RequestError(ErrorCode.BAD_JSON, "request must be a JSON object") from None
    rid = _request_id(raw)
    if "id" in raw and rid is None and raw["id"] is not None:
        raise RequestError(ErrorCode.BAD_REQUEST, "id must be an integer or a short string")
    op = raw.get("op")
    if not isinstance(op, str):
        raise RequestError(ErrorCode.BAD_REQUEST, "missing string field 'op'", rid)
    if op not in _OPS:
        raise RequestError(ErrorCode.UNKNOWN_OP, f"unknown op {op[:32]!r}", rid)
    try:
        req = msgspec.convert(raw, Request)
    except msgspec.ValidationError as exc:
        raise RequestError(ErrorCode.BAD_REQUEST, str(exc), rid) from None
    if op == "ping":
        return req
    if op == "login":
        if not req.token or len(req.token) > MAX_TOKEN_CHARS:
            raise RequestError(
                ErrorCode.BAD_REQUEST,
                f"'token' must be a non-empty string of at most {MAX_TOKEN_CHARS} characters",
                rid,
            )
        return req
    if not req.channels:
        raise RequestError(ErrorCode.BAD_REQUEST, "'channels' must be a non-empty list", rid)
    if len(req.channels) > MAX_CHANNELS_PER_REQUEST:
        raise RequestError(
            ErrorCode.TOO_MANY_CHANNELS,
            f"at most {MAX_CHANNELS_PER_REQUEST} channels per request",
            rid,
        )
    for name in req.channels:
        parse_channel(name, rid)
    unique = list(dict.fromkeys(req.channels))
    if len(unique) != len(req.channels):
        req = msgspec.structs.replace(req, channels=unique)
    return req


def valid_user(user: str) -> bool:
    """True when ``user`` can name a private channel (``orders.<user>``).

    1-64 characters from ``[A-Za-z0-9_-.@:]``, starting with a letter or digit.
    """
    return _USER.match(user) is not None


def parse_channel(name: str, request_id: int | str | None = None) -> tuple[str, str]:
    """Split ``"book.BTC-USD"`` into ``("book", "BTC-USD")``.

    A private channel splits the same way: ``"orders.alice"`` is ``("orders", "alice")``.

    Raises:
        RequestError: ``bad_channel`` when the name is not ``kind.SYMBOL`` with a known
            kind and a symbol of 1-32 characters from ``[A-Za-z0-9_-/:]`` (for a private
            kind: a user id, see :func:`valid_user`).
    """
    kind, dot, symbol = name.partition(".")
    if kind in PRIVATE_KINDS:
        ok = bool(dot) and _USER.match(symbol) is not None
    else:
        ok = bool(dot) and kind in CHANNEL_KINDS and _SYMBOL.match(symbol) is not None
    if not ok:
        raise RequestError(
            ErrorCode.BAD_CHANNEL,
            f"bad channel {name[:48]!r}: expected one of {'/'.join(CHANNEL_KINDS)}.SYMBOL",
            request_id,
        )
    return kind, symbol


# -- server messages -----------------------------------------------------------------


#: A book side.
Side = Literal["bid", "ask"]


class BookUpdate(msgspec.Struct, frozen=True, gc=False):
    """One price level's new absolute quantity; ``qty`` "0" deletes the level.

    ``ts`` is the engine's event time in integer nanoseconds since the Unix epoch.
    """

    side: Side
    price: str
    qty: str
    ts: int


class Trade(msgspec.Struct, frozen=True, gc=False):
    """One trade. ``id`` equals the trade's ``seq`` on its ``trades.<SYM>`` channel;
    ``side`` is the taker's side."""

    id: int
    price: str
    qty: str
    side: Literal["buy", "sell"]
    ts: int


class OrderUpdate(msgspec.Struct, frozen=True, gc=False):
    """One event of a user's order, on the private ``orders.<USER>`` channel.

    ``id`` equals the event's ``seq`` on that channel (as a trade's on ``trades``).
    ``event``: ``new`` (the order rests in the book: ``qty`` its size), ``fill`` (``qty``
    traded at ``price``) or ``cancel`` (``qty`` withdrawn). ``left`` is what stays open
    after the event ("0": the order is done).
    """

    id: int
    order: str
    symbol: str
    event: Literal["new", "fill", "cancel"]
    side: Literal["buy", "sell"]
    price: str
    qty: str
    left: str
    ts: int


class Ack(msgspec.Struct, tag="ack", tag_field="type"):
    """A request succeeded. ``epoch`` identifies the server's engine state."""

    op: str
    id: int | str | None = None
    channels: list[str] = []
    epoch: str = ""
    version: int = PROTOCOL_VERSION


class Error(msgspec.Struct, tag="error", tag_field="type", omit_defaults=True):
    """A request failed; ``code`` is one of :class:`ErrorCode`."""

    code: str
    message: str
    id: int | str | None = None
    channel: str | None = None


class Snapshot(msgspec.Struct, tag="snapshot", tag_field="type", omit_defaults=True):
    """The full state of a channel at ``seq``; the stream continues with ``prev_seq == seq``.

    Book: ``bids`` (best first), ``asks`` (best first), ``checksum``. Trades: the most
    recent ``trades``. Ticker: ``ticker``. Orders: the user's recent order events
    (``orders``). ``resumed`` is False when the client asked to
    resume and could not be (history gone or epoch changed): for trades this is an
    explicit hole.
    """

    ch: str
    seq: int
    epoch: str
    bids: list[tuple[str, str]] | None = None
    asks: list[tuple[str, str]] | None = None
    checksum: int | None = None
    trades: list[Trade] | None = None
    ticker: Ticker | None = None
    orders: list[OrderUpdate] | None = None
    resumed: bool | None = None


class Delta(msgspec.Struct, tag="delta", tag_field="type"):
    """Book updates ``(prev_seq, seq]`` applied in order; ``checksum`` is after the last.

    Apply only when ``prev_seq`` equals the local seq. Normally ``seq - prev_seq ==
    len(updates)``; a conflated delta (slow consumer) merges levels and has fewer.
    """

    ch: str
    seq: int
    prev_seq: int
    checksum: int
    updates: list[BookUpdate]


class Trades(msgspec.Struct, tag="trades", tag_field="type"):
    """Trades ``(prev_seq, seq]`` in order; never merged, never dropped."""

    ch: str
    seq: int
    prev_seq: int
    trades: list[Trade]


class Orders(msgspec.Struct, tag="orders", tag_field="type"):
    """A user's order events ``(prev_seq, seq]`` in order; never merged, never dropped."""

    ch: str
    seq: int
    prev_seq: int
    orders: list[OrderUpdate]


class Ticker(msgspec.Struct, tag="ticker", tag_field="type", omit_defaults=True):
    """Top of book and rolling trade statistics for a symbol at ``ts``."""

    ch: str
    seq: int
    prev_seq: int
    ts: int
    bid: str | None = None
    bid_qty: str | None = None
    ask: str | None = None
    ask_qty: str | None = None
    last: str | None = None
    open: str | None = None
    high: str | None = None
    low: str | None = None
    volume: str = "0"
    trades: int = 0
    #: The trading status an ingest source reported (``open``, ``halted``, ``closed``);
    #: absent until it sends one (the embedded market has none).
    status: str | None = None


class Heartbeat(msgspec.Struct, tag="heartbeat", tag_field="type"):
    """Sent on a channel idle for the heartbeat interval; ``seq`` is its current seq."""

    ch: str
    seq: int


class Pong(msgspec.Struct, tag="pong", tag_field="type"):
    """Answer to ``{"op": "ping"}``."""

    id: int | str | None = None


Message = Ack | Error | Snapshot | Delta | Trades | Orders | Ticker | Heartbeat | Pong

_encoder = msgspec.json.Encoder()
_message_decoder = msgspec.json.Decoder(Message)
_delta_decoder = msgspec.json.Decoder(Delta)
_trades_decoder = msgspec.json.Decoder(Trades)


def encode(message: Message | Request) -> bytes:
    """Encode a message (or request) as compact JSON bytes."""
    return _encoder.encode(message)


def decode_message(data: bytes | str) -> Message:
    """Decode one server message (the SDK's side).

    Raises:
        msgspec.DecodeError: the payload is not a valid tickwire message.
    """
    message: Message = _message_decoder.decode(data)
    return message


def delta_updates(data: bytes) -> list[BookUpdate]:
    """Return the updates of an encoded ``delta`` message (none for ``b""``).

    A relayed batch carries its updates only in that form; they are decoded on demand.
    """
    if not data:
        return []
    return _delta_decoder.decode(data).updates


def trade_tuples(data: bytes) -> list[tuple[str, str, str, int]]:
    """Return the trades of an encoded ``trades`` message as ``(price, qty, side, ts)``."""
    if not data:
        return []
    return [(t.price, t.qty, t.side, t.ts) for t in _trades_decoder.decode(data).trades]
