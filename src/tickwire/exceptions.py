"""Every exception tickwire raises, in one place.

The tree::

    TickwireError
    ├── ProtocolError (Sans-I/O)            a peer sent something the protocol forbids
    │   ├── RequestError (Sans-I/O)         one client request is invalid; carries an
    │   │   │                                error ``code`` and the request ``id``; the
    │   │   │                                connection stays open
    │   │   └── AuthError (Sans-I/O)        a token is missing, malformed, badly signed,
    │   │                                    expired, or names another user
    │   └── MessageTooBig (Sans-I/O)        a message is over the size limit, also
    │                                        once decompressed (a deflate bomb)
    ├── BookError (Sans-I/O, ValueError)    a book update or snapshot is malformed
    ├── IntegrityError (Sans-I/O)           a client's local view diverged from the feed
    │   ├── SequenceGap                     ``prev_seq`` did not chain to the local ``seq``
    │   └── ChecksumMismatch                the book's CRC32 differs after applying
    ├── IngestError (Sans-I/O)              a market source's ingest message is rejected
    │                                        (``reason``: gap, crossed, decimal, ...)
    ├── DataError (Sans-I/O, ValueError)    a row of a recorded market-data file (a
    │                                        tardis.dev CSV) is malformed: names the
    │                                        file and the line
    ├── ReplayControlError (ValueError)     a replay control request (pause, resume,
    │                                        seek, speed) cannot be done
    ├── ConnectionClosed                    the WebSocket link ended (client side)
    └── ConfigError (ValueError)            a setting (flag, environment variable, file
        │                                    key) or constructor option is invalid
        └── ScenarioError (Sans-I/O)        a fault scenario (TOML file or one fault of
                                             the admin API) is invalid; names the line

"Sans-I/O" classes are raised by the core modules (``protocol``, ``book``, ``hub``)
without any socket involved. Remote errors (the peer misbehaved) are ``ProtocolError``;
local integrity failures of the SDK are ``IntegrityError``.
"""

from __future__ import annotations

__all__ = [
    "AuthError",
    "BookError",
    "ChecksumMismatch",
    "ConfigError",
    "ConnectionClosed",
    "DataError",
    "IngestError",
    "IntegrityError",
    "MessageTooBig",
    "ProtocolError",
    "ReplayControlError",
    "RequestError",
    "ScenarioError",
    "SequenceGap",
    "TickwireError",
]


class TickwireError(Exception):
    """Base class of every tickwire exception."""


class ProtocolError(TickwireError):
    """A peer sent data that the tickwire protocol forbids (Sans-I/O)."""


class RequestError(ProtocolError):
    """One client request is invalid (Sans-I/O).

    The server answers it with an ``error`` message carrying :attr:`code` (one of
    :class:`tickwire.protocol.ErrorCode`) and the request's ``id`` when it could be read,
    and keeps the connection open.
    """

    def __init__(self, code: str, message: str, request_id: int | str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id


class MessageTooBig(ProtocolError):
    """A message is larger than the receiver accepts (Sans-I/O).

    Raised while inflating a permessage-deflate message as soon as its output passes
    the limit, so a small compressed frame cannot make the receiver allocate a large
    buffer. The server closes the connection with ``MESSAGE_TOO_BIG`` (1009).
    """

    def __init__(self, limit: int) -> None:
        super().__init__(f"message over {limit} bytes once decompressed")
        self.limit = limit


class AuthError(RequestError):
    """A token cannot authenticate this client (Sans-I/O, raised by :mod:`tickwire.auth`).

    :attr:`code` is ``auth_failed`` (malformed, bad signature, wrong algorithm, missing
    claims), ``token_expired`` or ``forbidden``. The message never contains the token.
    At connect the gateway refuses the handshake (HTTP 401); in a ``login`` request it
    answers an ``error`` and keeps the connection.
    """


class BookError(TickwireError, ValueError):
    """A book update or snapshot is malformed: bad side, price or quantity (Sans-I/O)."""


class IntegrityError(TickwireError):
    """A local book or trade stream no longer matches the feed (Sans-I/O).

    The SDK raises it internally, marks the channel stale and resyncs; users see it
    through counters and the ``stale`` flag rather than as an exception.
    """

    def __init__(self, channel: str, message: str) -> None:
        super().__init__(f"{channel}: {message}")
        self.channel = channel


class SequenceGap(IntegrityError):
    """A message's ``prev_seq`` did not equal the channel's last applied ``seq``."""


class ChecksumMismatch(IntegrityError):
    """The book's CRC32 after applying a message differs from the one the server sent."""


class ConnectionClosed(TickwireError):
    """The WebSocket connection is closed; :attr:`code` and :attr:`reason` say why."""

    def __init__(self, code: int | None, reason: str = "") -> None:
        super().__init__(f"connection closed: code={code} reason={reason!r}")
        self.code = code
        self.reason = reason


class ConfigError(TickwireError, ValueError):
    """A setting or a constructor option is invalid.

    Raised by :mod:`tickwire.settings` (and the CLI around it) with one message naming
    where the value came from -- the file and ``[section] key``, the environment
    variable or the flag -- and what is expected, never a secret's value. The ``tickwire``
    command prints it as one line and exits with status 2; a ``SIGHUP`` reload logs it
    and keeps the running configuration.
    """


class IngestError(TickwireError):
    """A source's ingest message was rejected (Sans-I/O, :mod:`tickwire.ingest`).

    ``reason`` is one of :data:`tickwire.ingest.REASONS` (the metric label), ``detail``
    says exactly what was wrong, for the log.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class DataError(TickwireError, ValueError):
    """A row of a recorded market-data file is malformed (Sans-I/O, :mod:`tickwire.tardis`).

    ``path`` and ``line`` (1-based, the header is line 1) say where, ``detail`` what.
    A replay skips the row, logs the first of each kind per file and counts them all.
    """

    def __init__(self, path: str, line: int, detail: str) -> None:
        super().__init__(f"{path}:{line}: {detail}")
        self.path = path
        self.line = line
        self.detail = detail


class ReplayControlError(TickwireError, ValueError):
    """A replay control request cannot be done: a malformed time or speed, or a
    gateway whose source is not a replay. The admin API answers ``status`` (400, 409)
    with the message."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class ScenarioError(ConfigError):
    """A fault scenario or one fault is invalid (Sans-I/O, :mod:`tickwire.faults`).

    The message names the file and line (``scenario.toml:12: ...``) when the fault came
    from a file, and the key and what is expected; :attr:`line` is that line (0: none,
    e.g. a fault posted to the admin API).
    """

    def __init__(self, message: str, line: int = 0) -> None:
        super().__init__(message)
        self.line = line
