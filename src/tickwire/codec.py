"""Wire formats: JSON or msgpack, optionally permessage-deflate, negotiated per connection.

This module is Sans-I/O: it parses the handshake headers that choose a connection's
*wire* (an :class:`Encoding` plus whether permessage-deflate is on), turns a message into
the frame of any wire, and inflates compressed client messages under a size cap. The
schemas themselves stay in :mod:`tickwire.protocol`; msgpack carries exactly the same
Structs (same field names, the same ``type`` tag, integers as integers), so ``seq``,
``prev_seq``, ``checksum`` and ``ts`` mean the same in every encoding.

Negotiation (``docs/protocol.md``, "Encodings")
-----------------------------------------------
* **Encoding**, by WebSocket subprotocol (``Sec-WebSocket-Protocol``, RFC 6455 §1.9):
  ``tickwire.v1.json`` or ``tickwire.v1.msgpack``; the first one the client lists that
  the server knows wins and is echoed. No offer (or none known) means JSON, with no
  echo, so every existing client keeps working.
* **Compression**, by extension (``Sec-WebSocket-Extensions``, RFC 7692): when the
  server runs with ``--deflate`` and the client offers ``permessage-deflate``, the
  server answers ``permessage-deflate; server_no_context_takeover;
  client_no_context_takeover``. Offers that limit ``server_max_window_bits`` below 15
  are declined (the shared frames are built with the full 32 KiB window).

Why no context takeover: each message is compressed on its own, from an empty window,
so the compressed bytes do not depend on what a connection received before. One
compressed frame therefore serves every subscriber of a channel on the same encoding:
the hub compresses **once per batch per encoding**, not once per connection, and the
server keeps **no per-connection compressor state** (a zlib deflate stream costs about
256 KiB of memory at the default memLevel; a context-takeover server would need one per
connection). The price is a lower ratio for tiny messages, which cannot reference the
previous one; market-data batches are large enough for that not to matter much
(``docs/benchmarks.md``, "Encodings").

Frames built here
-----------------
* JSON: a text frame (opcode 0x1) of compact JSON, as before.
* msgpack: a binary frame (opcode 0x2) of one msgpack map (``msgspec.msgpack``).
* deflated: the same opcode with RSV1 set; the payload is the raw DEFLATE stream of the
  message (RFC 7692 §7.2.1: compressed with a full flush, the trailing
  ``00 00 ff ff`` removed).
"""

from __future__ import annotations

import enum
import zlib
from collections.abc import Iterable
from typing import NamedTuple

import msgspec

from .exceptions import MessageTooBig, ProtocolError
from .framing import binary_frame, compressed_frame, frame_payload, text_frame
from .protocol import Message, decode_message, encode

__all__ = [
    "DEFLATE_OFFER",
    "DEFLATE_RESPONSE",
    "JSON_WIRE",
    "SUBPROTOCOLS",
    "Deflater",
    "Encoding",
    "Inflater",
    "Wire",
    "decode_msgpack",
    "encode_msgpack",
    "frame_as",
    "frame_message",
    "inflate",
    "negotiate",
    "transcode",
    "transcode_frame",
]


class Encoding(enum.StrEnum):
    """How messages are serialized on a connection."""

    JSON = "json"  #: compact JSON in text frames (the default)
    MSGPACK = "msgpack"  #: the same objects as msgpack maps in binary frames


#: Subprotocol name of each encoding (``Sec-WebSocket-Protocol``).
SUBPROTOCOLS = {
    Encoding.JSON: "tickwire.v1.json",
    Encoding.MSGPACK: "tickwire.v1.msgpack",
}
_BY_SUBPROTOCOL = {name: enc for enc, name in SUBPROTOCOLS.items()}

#: The extension offer clients send (``Sec-WebSocket-Extensions``).
DEFLATE_OFFER = "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
#: The server's answer when it accepts an offer.
DEFLATE_RESPONSE = DEFLATE_OFFER

#: The four bytes a sync/full flush ends with; stripped on send, put back to inflate.
_TAIL = b"\x00\x00\xff\xff"


class Wire(NamedTuple):
    """A connection's wire format: its encoding and whether frames are deflated.

    A tuple, so it hashes in C: the hub keys a channel's subscriber groups by it.
    """

    encoding: Encoding = Encoding.JSON
    deflate: bool = False


#: The default wire: JSON text frames, uncompressed.
JSON_WIRE = Wire()

_msgpack_encoder = msgspec.msgpack.Encoder()
_msgpack_decoder = msgspec.msgpack.Decoder(Message)


def encode_msgpack(message: Message) -> bytes:
    """Encode a server message as one msgpack map (the fields of its JSON object)."""
    return _msgpack_encoder.encode(message)


def decode_msgpack(data: bytes | memoryview) -> Message:
    """Decode one msgpack server message (the SDK's side).

    Raises:
        msgspec.DecodeError: the payload is not a valid tickwire message.
    """
    message: Message = _msgpack_decoder.decode(data)
    return message


# -- negotiation -----------------------------------------------------------------------


def _split_header(values: Iterable[str]) -> list[str]:
    return [item.strip() for value in values for item in value.split(",") if item.strip()]


def _deflate_acceptable(offer: str) -> bool:
    """True if one ``permessage-deflate`` offer can be served with shared frames."""
    name, *params = (part.strip() for part in offer.split(";"))
    if name.lower() != "permessage-deflate":
        return False
    seen: set[str] = set()
    for param in params:
        key, _, value = param.partition("=")
        key = key.strip().lower()
        value = value.strip().strip('"')
        if key in seen:
            return False  # RFC 7692 §7: a repeated parameter invalidates the offer
        seen.add(key)
        if key in ("server_no_context_takeover", "client_no_context_takeover"):
            if value:
                return False
        elif key == "server_max_window_bits":
            # We always compress with the full window; a client that cannot hold it
            # would need frames of its own.
            if value != "15":
                return False
        elif key == "client_max_window_bits":
            if value and not (value.isdigit() and 8 <= int(value) <= 15):
                return False
        else:
            return False
    return True


def negotiate(
    protocols: Iterable[str], extensions: Iterable[str], deflate: bool
) -> tuple[Wire, list[tuple[str, str]]]:
    """Choose a connection's wire from its handshake headers.

    Args:
        protocols: the values of the request's ``Sec-WebSocket-Protocol`` headers.
        extensions: the values of its ``Sec-WebSocket-Extensions`` headers.
        deflate: whether the server allows permessage-deflate (``--deflate``).

    Returns:
        The wire, and the headers to add to the 101 response (empty for a plain JSON
        client: the handshake is then exactly what it was before encodings existed).
    """
    headers: list[tuple[str, str]] = []
    encoding = Encoding.JSON
    for name in _split_header(protocols):
        found = _BY_SUBPROTOCOL.get(name)
        if found is not None:
            encoding = found
            headers.append(("Sec-WebSocket-Protocol", name))
            break
    compress = False
    if deflate and any(_deflate_acceptable(o) for o in _split_header(extensions)):
        compress = True
        headers.append(("Sec-WebSocket-Extensions", DEFLATE_RESPONSE))
    return Wire(encoding, compress), headers


# -- compression -----------------------------------------------------------------------


class Deflater:
    """Compresses messages one at a time, each independent of the others.

    One zlib stream is reused (allocating one per message costs a 256 KiB state); a
    **full** flush after every message resets its window, so no message refers to an
    earlier one: exactly what ``server_no_context_takeover`` promises, and what lets
    one compressed frame go to many connections.

    Args:
        level: zlib level, 1 (fastest, the default: market data is CPU-bound) to 9.
    """

    __slots__ = ("_compress", "_flush", "level")

    def __init__(self, level: int = 1) -> None:
        if not 0 <= level <= 9:
            raise ValueError("deflate level must be 0..9")
        self.level = level
        stream = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
        self._compress = stream.compress
        self._flush = stream.flush

    def compress(self, payload: bytes) -> bytes:
        """Return ``payload`` as one permessage-deflate message body (tail removed)."""
        out = self._compress(payload) + self._flush(zlib.Z_FULL_FLUSH)
        return out[:-4]


def inflate(data: bytes, limit: int) -> bytes:
    """Inflate one permessage-deflate message from a client, at most ``limit`` bytes.

    A fresh decompressor per message: the server asks clients for
    ``client_no_context_takeover``, so no state is kept between messages (and the rare
    compressed request costs nothing while the connection is idle).

    Raises:
        MessageTooBig: the output would exceed ``limit`` (a decompression bomb stops
            after ``limit + 1`` bytes of output, whatever the ratio).
        ProtocolError: ``data`` is not a valid DEFLATE stream.
    """
    return Inflater(limit).inflate(data)


class Inflater:
    """Inflates a peer's compressed messages in order, reusing one zlib stream.

    Valid with or without context takeover (a reused stream keeps the window the peer
    may refer to). This is the client's side: one per connection.

    Args:
        limit: largest message accepted, in bytes once inflated.
    """

    __slots__ = ("_stream", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._stream = zlib.decompressobj(-zlib.MAX_WBITS)

    def inflate(self, data: bytes | memoryview) -> bytes:
        """Return the message compressed in ``data`` (one whole message).

        Raises:
            MessageTooBig: the message inflates past :attr:`limit`.
            ProtocolError: ``data`` is not a valid DEFLATE stream.
        """
        stream = self._stream
        try:
            out = stream.decompress(bytes(data) + _TAIL, self.limit + 1)
        except zlib.error as exc:
            raise ProtocolError(f"invalid permessage-deflate data: {exc}") from None
        if len(out) > self.limit or stream.unconsumed_tail:
            # The stream is mid-message now: unusable for the next one.
            self._stream = zlib.decompressobj(-zlib.MAX_WBITS)
            raise MessageTooBig(self.limit)
        return out


# -- frames ------------------------------------------------------------------------


def frame_as(wire: Wire, body: bytes, deflater: Deflater) -> bytes:
    """Frame an encoded message ``body`` (already in ``wire.encoding``) for ``wire``."""
    binary = wire.encoding is Encoding.MSGPACK
    if wire.deflate:
        return compressed_frame(deflater.compress(body), binary)
    return binary_frame(body) if binary else text_frame(body)


def frame_message(wire: Wire, message: Message, deflater: Deflater) -> bytes:
    """Encode and frame ``message`` for ``wire``."""
    if wire.encoding is Encoding.MSGPACK:
        return frame_as(wire, encode_msgpack(message), deflater)
    return frame_as(wire, encode(message), deflater)


def transcode(payload: bytes, wire: Wire, deflater: Deflater) -> bytes:
    """Return the frame of the message whose JSON encoding is ``payload``, for ``wire``.

    For control messages (acks, errors) and history replays, which are kept as JSON
    only: other encodings are built on demand rather than stored.

    Args:
        payload: the message as JSON.
        wire: the connection's wire.
        deflater: the compressor, used when ``wire.deflate``.
    """
    if wire.encoding is Encoding.MSGPACK:
        payload = encode_msgpack(decode_message(payload))
    return frame_as(wire, payload, deflater)


def transcode_frame(frame: bytes, wire: Wire, deflater: Deflater) -> bytes:
    """Like :func:`transcode`, from a JSON text frame built by the hub."""
    return transcode(frame_payload(frame), wire, deflater)
