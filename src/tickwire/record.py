"""``tickwire record URL --out FILE``: write what a gateway streams, as NDJSON.

``tickwire record --source okx+wss://HOST/PATH --symbols BTC-USDT --out FILE`` (or
``binance+``, ``kraken+``) records a venue's feed instead: what the venue source
(:mod:`tickwire.sources.venue`) yields -- verified books, resynced by the venue's rules
-- numbered by an engine exactly as a gateway following that venue would, and written
in the same format, so ``tickwire serve --source FILE`` replays it. A book snapshot
starts each symbol and follows every resync (the replay restores it); deltas carry the
venue's event times as ``ts``.

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
from collections.abc import Callable, Iterable, Sequence
from typing import IO

import msgspec
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from .engine import Engine, LeaderBatch, StateSnapshot
from .exceptions import ConfigError
from .protocol import CHANNEL_KINDS, BookUpdate, Delta, Snapshot, Trades
from .sources import RawTrade

__all__ = ["Recorder", "RecordingSink", "record", "record_venue"]


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


class RecordingSink:
    """A :class:`~tickwire.sources.Sink` that writes what a source yields as a recording.

    An engine numbers the batches and keeps the books, as a gateway's hub would; each
    batch is written as the ``delta`` and ``trades`` messages a subscriber would get,
    each complete state (:meth:`restore`) as ``book`` and ``trades`` snapshots.
    """

    batch = True

    def __init__(self, out: IO[bytes], symbols: list[str]) -> None:
        self.out = out
        self.engine = Engine(symbols)
        self.incomplete: set[str] = set(symbols)
        self.messages = 0
        self.bytes = 0
        self._encode = msgspec.json.Encoder().encode

    def _write(self, msg: msgspec.Struct) -> None:
        data = self._encode(msg)
        self.out.write(data + b"\n")
        self.messages += 1
        self.bytes += len(data)

    def publish(self, symbol: str, updates: list[BookUpdate], trades: Iterable[RawTrade]) -> None:
        """Number one batch and write it."""
        if symbol in self.incomplete:
            return
        engine = self.engine
        st = engine.symbols[symbol]
        if updates:
            prev = st.book_seq
            seq = engine.apply_book(symbol, updates)
            self._write(Delta(f"book.{symbol}", seq, prev, st.book.checksum(), updates))
        raw = list(trades)
        if raw:
            prev = st.trade_seq
            numbered = engine.apply_trades(symbol, raw)
            self._write(Trades(f"trades.{symbol}", st.trade_seq, prev, numbered))

    def restore(self, snap: StateSnapshot) -> None:
        """A complete book: write the snapshots a subscriber would get."""
        engine = self.engine
        engine.restore(snap)
        self.incomplete.discard(snap.symbol)
        st = engine.symbols[snap.symbol]
        book = st.book
        epoch = engine.epoch
        self._write(
            Snapshot(
                f"book.{snap.symbol}",
                st.book_seq,
                epoch,
                bids=book.bids(),
                asks=book.asks(),
                checksum=book.checksum(),
            )
        )
        self._write(
            Snapshot(f"trades.{snap.symbol}", st.trade_seq, epoch, trades=list(snap.trades))
        )

    def invalidate(self, symbol: str) -> None:
        """A hole: nothing is written until the next snapshot."""
        self.incomplete.add(symbol)

    def revalidate(self, symbol: str) -> None:
        self.incomplete.discard(symbol)

    def add_symbol(self, symbol: str) -> None:
        self.engine.add_symbol(symbol)
        self.incomplete.add(symbol)

    def status(self, symbol: str, status: str) -> None:
        """Kept in the engine state; a recording has no status line."""
        self.engine.symbols[symbol].status = status

    def relay(self, batches: Sequence[LeaderBatch], now: float) -> bool:
        return False

    def rebase(self, snap: StateSnapshot) -> None:
        self.restore(snap)

    def follow(self, symbol: str, live: Callable[[], StateSnapshot]) -> None:
        """Not a bus: nothing to follow."""

    def reset(self, epoch: str) -> None:
        self.engine.reset(epoch)
        self.incomplete.update(self.engine.symbols)


async def record_venue(
    spec: str,
    out_path: str,
    symbols: list[str],
    *,
    rest: str | None = None,
    depth: int = 0,
    duration: float = 0.0,
    book_wait: float = 30.0,
) -> dict[str, object]:
    """Record a venue's feed (``okx+wss://...``) of ``symbols`` into ``out_path``.

    Runs until ``duration`` seconds passed (0: until SIGINT/SIGTERM); a lost upstream
    connection is retried, as by ``tickwire serve --source``. ``book_wait``: seconds
    to wait for every book before recording the ones that are there.

    Returns:
        A summary: messages, bytes, seconds, and the source's counters.

    Raises:
        ConfigError: the file cannot be written, the spec is malformed, or Binance has
            no REST base.
    """
    from .sources.venue import VenueSource

    source = VenueSource(spec, symbols, rest=rest, depth=depth, timeout=book_wait)
    header = {
        "type": "recording",
        "version": 1,
        "url": spec,
        "venue": source.venue,
        "symbols": symbols,
        "channels": [f"{kind}.{s}" for s in symbols for kind in ("book", "trades")],
        "start_ns": time.time_ns(),
    }
    out = _open(out_path)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    wake = asyncio.Event()
    started = time.monotonic()
    with out:
        out.write(json.dumps(header, separators=(",", ":")).encode() + b"\n")
        sink = RecordingSink(out, symbols)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        source.on_arrival(wake.set)
        end = started + duration if duration else float("inf")
        try:
            start = asyncio.ensure_future(source.start(sink))
            stopped = asyncio.ensure_future(stop.wait())
            await asyncio.wait(
                [start, stopped],
                timeout=None if not duration else duration,
                return_when=asyncio.FIRST_COMPLETED,
            )
            for task in (start, stopped):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            while not stop.is_set() and time.monotonic() < end:
                wake.clear()
                for batch in source.poll(time.monotonic()):
                    sink.publish(*batch)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(wake.wait(), min(0.1, max(0.0, end - time.monotonic())))
            for batch in source.poll(time.monotonic()):
                sink.publish(*batch)
        finally:
            await source.stop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
        summary: dict[str, object] = {
            "out": out_path,
            "messages": sink.messages,
            "bytes": sink.bytes,
            "seconds": round(time.monotonic() - started, 3),
            "source": source.stats(),
        }
    sys.stderr.write(json.dumps(summary) + "\n")
    return summary
