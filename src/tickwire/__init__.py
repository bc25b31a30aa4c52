"""tickwire: a high-throughput WebSocket market-data gateway with verified local books."""

from __future__ import annotations

from .book import Book, checksum_string
from .exceptions import (
    AuthError,
    BookError,
    ChecksumMismatch,
    ConfigError,
    ConnectionClosed,
    DataError,
    IngestError,
    IntegrityError,
    MessageTooBig,
    ProtocolError,
    ReplayControlError,
    RequestError,
    ScenarioError,
    SequenceGap,
    TickwireError,
)
from .protocol import PROTOCOL_VERSION, CloseCode, ErrorCode

__version__ = "0.1.0"

__all__ = [
    "PROTOCOL_VERSION",
    "AuthError",
    "Book",
    "BookError",
    "ChecksumMismatch",
    "CloseCode",
    "ConfigError",
    "ConnectionClosed",
    "DataError",
    "ErrorCode",
    "IngestError",
    "IntegrityError",
    "MessageTooBig",
    "ProtocolError",
    "ReplayControlError",
    "RequestError",
    "ScenarioError",
    "SequenceGap",
    "TickwireError",
    "checksum_string",
]
