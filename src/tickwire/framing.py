"""Server-side WebSocket frame headers (RFC 6455 §5.2), built once per message (Sans-I/O).

Server frames are unmasked, so the bytes of one frame are valid for every subscriber:
the hub frames each batch once and writes the same ``bytes`` object to all of them.
"""

from __future__ import annotations

__all__ = ["binary_frame", "text_frame"]


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
