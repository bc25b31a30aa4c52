"""Server-side WebSocket frame headers (RFC 6455 §5.2), built once per message (Sans-I/O).

Server frames are unmasked, so the bytes of one frame are valid for every subscriber:
the hub frames each batch once and writes the same ``bytes`` object to all of them.
A compressed frame (permessage-deflate, RFC 7692 §6) only adds the RSV1 bit to the
first byte, so it is shared the same way.
"""

from __future__ import annotations

__all__ = [
    "binary_frame",
    "compressed_frame",
    "frame_payload",
    "frame_payloads",
    "split_frames",
    "text_frame",
]


def _frame(first: int, payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        return bytes((first, n)) + payload
    if n < 65536:
        return bytes((first, 126)) + n.to_bytes(2, "big") + payload
    return bytes((first, 127)) + n.to_bytes(8, "big") + payload


def text_frame(payload: bytes) -> bytes:
    """Return a complete, unmasked, final text frame carrying ``payload`` (UTF-8)."""
    return _frame(0x81, payload)


def binary_frame(payload: bytes) -> bytes:
    """Return a complete, unmasked, final binary frame carrying ``payload``."""
    return _frame(0x82, payload)


def compressed_frame(payload: bytes, binary: bool) -> bytes:
    """Return a final frame with RSV1 set: ``payload`` is a deflated message.

    Args:
        payload: the message compressed per RFC 7692 §7.2.1 (trailing
            ``00 00 ff ff`` already removed).
        binary: the opcode of the uncompressed message (binary or text).
    """
    return _frame(0xC2 if binary else 0xC1, payload)


def frame_payload(frame: bytes) -> bytes:
    """Return the payload of one unmasked frame built by this module.

    The header length is read from the length field: a length byte may itself look
    like payload (``0x7B`` is ``{``), so never search for the payload's start.
    """
    n = frame[1] & 0x7F
    return frame[2 if n < 126 else 4 if n == 126 else 10 :]


def _spans(data: bytes) -> list[tuple[int, int, int]]:
    """``(frame start, payload start, end)`` of each frame in joined unmasked frames."""
    out: list[tuple[int, int, int]] = []
    i, end = 0, len(data)
    while i < end:
        n = data[i + 1] & 0x7F
        if n < 126:
            start = i + 2
        elif n == 126:
            n = int.from_bytes(data[i + 2 : i + 4], "big")
            start = i + 4
        else:
            n = int.from_bytes(data[i + 2 : i + 10], "big")
            start = i + 10
        out.append((i, start, start + n))
        i = start + n
    return out


def frame_payloads(data: bytes) -> list[bytes]:
    """Split joined unmasked frames built by this module into their payloads.

    The hub writes a connection's frames of one pass in one ``write``; a subscriber
    inside the process (a dialect tap) gets those bytes and splits them here.
    """
    return [data[start:stop] for _, start, stop in _spans(data)]


def split_frames(data: bytes) -> list[bytes]:
    """Split joined unmasked frames into whole frames (headers included): what a fault
    filter drops, repeats or holds back one by one."""
    return [data[i:stop] for i, _, stop in _spans(data)]
