"""``tickwire record URL --out FILE``: write what a gateway streams, as NDJSON.

The file starts with one header line::

    {"type":"recording","version":1,"url":"ws://...","symbols":["BTC-USD",...],
     "channels":["book.BTC-USD",...],"start_ns":...}

and continues with every server message exactly as it arrived (the gateway's compact
JSON, one message per line, never re-encoded): the subscribe ``ack``, the snapshots,
then deltas, trades, tickers and heartbeats. A replay source
(:mod:`tickwire.sources.replay`) plays it back into an engine; ``jq`` reads it as is.

The recorder reads with a large socket buffer and does nothing per message but append
it, so it keeps up with a gateway; should it fall behind anyway, the gateway conflates
its books (a conflated delta is recorded as such) or, for trades, closes the
connection with 4001 -- the recording then ends there, visibly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import sys
import time
from typing import IO

from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from .exceptions import ConfigError
from .protocol import CHANNEL_KINDS

__all__ = ["Recorder", "record"]


class Recorder(WSListener):
    """Appends every text frame's payload and a newline to ``out``."""

    def __init__(self, out: IO[bytes], subscribe: bytes, done: asyncio.Future[None]) -> None:
        super().__init__()
        self.out = out
        self.subscribe = subscribe
        self.done = done
        self.messages = 0
        self.bytes = 0
        self.close_code: int | None = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        sock = transport.underlying_transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        transport.send(WSMsgType.TEXT, self.subscribe)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.TEXT:
            data = frame.get_payload_as_bytes()
            self.out.write(data)
            self.out.write(b"\n")
            self.messages += 1
            self.bytes += len(data)
        elif frame.msg_type == WSMsgType.CLOSE:
            code = frame.get_close_code()
            self.close_code = None if code is None else code.value
            transport.send_close(frame.get_close_code())
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if not self.done.done():
            self.done.set_result(None)


def _open(path: str) -> IO[bytes]:
    try:
        return open(path, "wb", buffering=1 << 20)
    except OSError as exc:
        raise ConfigError(f"cannot write {path!r}: {exc.strerror}") from None


async def record(
    url: str,
    out_path: str,
    symbols: list[str],
    *,
    kinds: tuple[str, ...] = CHANNEL_KINDS,
    duration: float = 0.0,
) -> dict[str, object]:
    """Record ``kinds`` channels of ``symbols`` from ``url`` into ``out_path``.

    Runs until ``duration`` seconds passed (0: until SIGINT/SIGTERM) or the server
    closes the connection.

    Returns:
        A summary: messages, bytes, seconds, and the close code if the server closed.

    Raises:
        ConfigError: the file cannot be written or the gateway cannot be reached.
    """
    channels = [f"{kind}.{symbol}" for symbol in symbols for kind in kinds]
    subscribe = json.dumps({"op": "subscribe", "channels": channels, "id": 1}).encode()
    header = {
        "type": "recording",
        "version": 1,
        "url": url,
        "symbols": symbols,
        "channels": channels,
        "start_ns": time.time_ns(),
    }
    out = _open(out_path)
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    recorder: Recorder | None = None
    started = time.monotonic()
    with out:
        out.write(json.dumps(header, separators=(",", ":")).encode() + b"\n")

        def factory() -> Recorder:
            nonlocal recorder
            recorder = Recorder(out, subscribe, done)
            return recorder

        try:
            transport, _ = await ws_connect(
                factory, url, max_frame_size=16 << 20, logger_name="tickwire.record"
            )
        except (TimeoutError, OSError) as exc:
            raise ConfigError(f"cannot connect to {url}: {exc}") from None

        def finish() -> None:
            if not done.done():
                done.set_result(None)

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, finish)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(done), duration or None)
        transport.disconnect()
        assert recorder is not None
        summary: dict[str, object] = {
            "out": out_path,
            "messages": recorder.messages,
            "bytes": recorder.bytes,
            "seconds": round(time.monotonic() - started, 3),
            "close_code": recorder.close_code,
        }
    sys.stderr.write(json.dumps(summary) + "\n")
    return summary
