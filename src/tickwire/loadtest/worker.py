"""One load-generator process: picows connections on uvloop feeding a Tally (I/O).

The parent (:mod:`tickwire.loadtest.runner`) starts one of these per ``--procs`` and
talks to it over a duplex pipe:

1. the worker opens its connections (bounded concurrency, each attempt bounded by the
   connect timeout), subscribes each to its channels, and sends a ``ready`` report;
2. the parent answers ``("go", window_start, window_end)`` in ``time.monotonic()``
   seconds, a clock shared by every process on the host, so all workers measure the
   same window; ``("stop",)`` ends the run at once (Ctrl-C);
3. the worker sends a ``progress`` report every ``progress_interval`` seconds, and at
   ``window_end`` (or when its last connection closes) closes everything and sends its
   ``final`` report, histogram included, then exits.

Everything per message is in :class:`tickwire.loadtest.tally.Tally`; this module only
receives frames and keeps time. ``on_ws_frame`` reads the payload as a memoryview (no
copy): the view is valid only during the callback, and the tally does not keep it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection as Pipe
from typing import Any

import msgspec
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from ..codec import DEFLATE_OFFER, SUBPROTOCOLS, Encoding, Inflater
from ..exceptions import ProtocolError
from .report import WorkerReport
from .tally import Counters, Tally

__all__ = ["WorkerConfig", "worker_main"]


@dataclass(frozen=True)
class WorkerConfig:
    """What one worker does; built by the parent, pickled to the child.

    Attributes:
        worker: this worker's number.
        url: the feed's WebSocket URL.
        subscriptions: for each connection of this worker, the channels it subscribes.
        connect_timeout: seconds for TCP connect plus WebSocket handshake, per connection.
        connect_concurrency: most handshakes in flight at once.
        progress_interval: seconds between progress reports.
        max_frame_bytes: largest server frame accepted.
        encoding: ``"json"`` or ``"msgpack"``, asked for by subprotocol.
        deflate: offer permessage-deflate.
        dialect: a venue (``binance``, ``okx``, ``kraken``): connections speak its
            protocol through a decoder instead of tickwire's (``--dialect``).
        rest: the venue's REST base (Binance's snapshots: ``{rest}/api/v3/depth``).
        depth: Kraken's book depth.
        clock_offset_ns: the venue's clock minus this host's, for latencies.
        keepalive_s: a venue connection quiet this long gets the venue's ping.
    """

    worker: int
    url: str
    subscriptions: list[list[str]]
    connect_timeout: float = 10.0
    connect_concurrency: int = 256
    progress_interval: float = 0.5
    max_frame_bytes: int = 64 << 20
    encoding: str = "json"
    deflate: bool = False
    dialect: str = ""
    rest: str = ""
    depth: int = 0
    clock_offset_ns: int = 0
    keepalive_s: float = 15.0

    def headers(self) -> list[tuple[str, str]]:
        """The handshake headers that ask for this run's encoding and compression."""
        out = []
        if self.encoding != "json":
            out.append(("Sec-WebSocket-Protocol", SUBPROTOCOLS[Encoding(self.encoding)]))
        if self.deflate:
            out.append(("Sec-WebSocket-Extensions", DEFLATE_OFFER))
        return out


class _Client(WSListener):
    """One connection: subscribes on connect, feeds every text message to the tally."""

    def __init__(self, worker: _Worker, channels: list[str], request_id: int) -> None:
        super().__init__()
        self.worker = worker
        self.chain: dict[str, int] = {}
        self.subscribe = json.dumps(
            {"op": "subscribe", "channels": channels, "id": request_id}
        ).encode()
        self.feed = worker.tally.feed
        self.fragments: list[bytes] | None = None
        self.fragments_kind = (False, False)
        # One zlib stream per connection, created at the first compressed frame.
        self.inflater: Inflater | None = None
        self.close_code: int | None = None
        self.close_reason = ""

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.worker.open += 1
        transport.send(WSMsgType.TEXT, self.subscribe)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        msg_type = frame.msg_type
        if msg_type == WSMsgType.TEXT and frame.fin and not frame.rsv1:
            try:
                self.feed(self.chain, frame.get_payload_as_memoryview(), time.time_ns())
            except msgspec.DecodeError as exc:
                self.worker.protocol_error(f"undecodable message: {exc}")
        elif msg_type == WSMsgType.BINARY and frame.fin and not frame.rsv1:
            try:
                self.feed(self.chain, frame.get_payload_as_memoryview(), time.time_ns(), True)
            except msgspec.DecodeError as exc:
                self.worker.protocol_error(f"undecodable message: {exc}")
        elif msg_type in (WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.CONTINUATION):
            # Compressed (RSV1) or fragmented messages; tickwire servers do not fragment.
            if msg_type != WSMsgType.CONTINUATION:
                self.fragments = []
                self.fragments_kind = (msg_type == WSMsgType.BINARY, frame.rsv1)
            if self.fragments is not None:
                self.fragments.append(frame.get_payload_as_bytes())
                if frame.fin:
                    data = b"".join(self.fragments)
                    self.fragments = None
                    self.whole(data, *self.fragments_kind)
        elif msg_type == WSMsgType.CLOSE:
            self.close_code = int(frame.get_close_code().value)
            self.close_reason = frame.get_close_message().decode(errors="replace")
            with contextlib.suppress(Exception):
                transport.send_close(frame.get_close_code())
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.worker.closed(self)

    def whole(self, data: bytes, binary: bool, compressed: bool) -> None:
        """Count one reassembled or compressed message (``data`` as on the wire)."""
        size = len(data)
        try:
            if compressed:
                if self.inflater is None:
                    self.inflater = Inflater(self.worker.config.max_frame_bytes)
                data = self.inflater.inflate(data)
            self.feed(self.chain, data, time.time_ns(), binary, size)
        except (msgspec.DecodeError, ProtocolError) as exc:
            self.worker.protocol_error(f"undecodable message: {exc}")


class _VenueClient(_Client):
    """A connection to a venue's feed: its decoder in place of tickwire's protocol.

    The frame handling of :class:`_Client` is kept (fragments, compression); each whole
    text message goes to :meth:`Tally.feed_venue`, and the events that need an answer
    get one: a Binance REST snapshot is fetched, a broken book resubscribed (OKX,
    Kraken), as a venue client would.
    """

    def __init__(self, worker: _Worker, channels: list[str], request_id: int) -> None:
        super().__init__(worker, channels, request_id)
        from .venue import decoder_for

        config = worker.config
        self.decoder = decoder_for(config.dialect, channels, config.depth)
        self.offset = config.clock_offset_ns
        self.transport: WSTransport | None = None
        self.last_frame = time.monotonic()
        self.feed = self.feed_venue

    def keepalive(self, now: float) -> None:
        """Send the venue's application ping when quiet (OKX closes a connection silent
        for 30 s; WebSocket pings do not count)."""
        ping = self.decoder.keepalive()
        quiet = now - self.last_frame >= self.worker.config.keepalive_s
        if ping is not None and self.transport is not None and quiet:
            self.transport.send(WSMsgType.TEXT, ping)
            self.last_frame = now

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.worker.open += 1
        self.worker.clients.append(self)
        self.transport = transport
        for frame in self.decoder.subscribe():
            transport.send(WSMsgType.TEXT, frame)

    def feed_venue(
        self,
        chain: dict[str, int],
        data: bytes | memoryview,
        now_ns: int,
        binary: bool = False,
        size: int = -1,
    ) -> None:
        from ..dialects.decode import Hole, SnapshotWanted

        self.last_frame = time.monotonic()
        events = self.worker.tally.feed_venue(self.decoder, data, now_ns, self.offset, size)
        for e in events:
            if isinstance(e, SnapshotWanted):
                self.worker.fetch_snapshot(self, e.symbol, e.venue_symbol, e.limit)
            elif isinstance(e, Hole) and self.transport is not None:
                for frame in self.decoder.resubscribe(e.symbol):
                    self.transport.send(WSMsgType.TEXT, frame)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.transport = None
        super().on_ws_disconnected(transport)


class _Worker:
    def __init__(self, config: WorkerConfig, pipe: Pipe) -> None:
        self.config = config
        self.pipe = pipe
        self.tally = Tally()
        self.transports: list[WSTransport] = []
        self.open = 0
        self.connect_errors = 0
        self.disconnects = 0
        self.errors: list[str] = []
        self.started = False  # "go" received
        self.finishing = False
        self.ended_early = False
        self.window_open = False
        self.window_counters = Counters()
        self.window_t0 = 0.0
        self.window_cpu0 = 0.0
        self.window_s = 0.0
        self.cpu_s = 0.0
        self.done = asyncio.Event()
        self.handles: list[asyncio.TimerHandle] = []
        self.http: Any = None  # an aiohttp session, for venue REST snapshots
        self.clients: list[_VenueClient] = []  # venue connections (keepalive)
        self.tasks: set[asyncio.Task[None]] = set()

    # -- venue REST snapshots ----------------------------------------------------------

    def fetch_snapshot(
        self, client: _VenueClient, symbol: str, venue_symbol: str, limit: int
    ) -> None:
        task = asyncio.ensure_future(self._fetch(client, symbol, venue_symbol, limit))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _fetch(
        self, client: _VenueClient, symbol: str, venue_symbol: str, limit: int
    ) -> None:
        url = f"{self.config.rest.rstrip('/')}/api/v3/depth?symbol={venue_symbol}&limit={limit}"
        decoder = client.decoder
        try:
            if not self.config.rest:
                raise ValueError("no --rest base given for the Binance REST snapshot")
            if self.http is None:
                import aiohttp

                self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
            async with self.http.get(url) as resp:
                body = await resp.read()
                if resp.status != 200:
                    raise ValueError(f"HTTP {resp.status}: {body[:200]!r}")
        except Exception as exc:  # refused, timeout, HTTP error: the next diff asks again
            self.error(f"REST snapshot {url} failed: {type(exc).__name__}: {exc}")
            # A second later, not at the next diff: never hammer a venue's REST limits.
            await asyncio.sleep(1.0)
            events = decoder.snapshot_failed(symbol, f"{type(exc).__name__}: {exc}")
            self.tally.count_events(events, time.time_ns() + client.offset)
            return
        events = decoder.snapshot(symbol, body, time.time_ns())
        self.tally.count_events(events, time.time_ns() + client.offset)

    # -- bookkeeping -------------------------------------------------------------------

    def error(self, text: str) -> None:
        if len(self.errors) < 5 and text not in self.errors:
            self.errors.append(text)

    def protocol_error(self, text: str) -> None:
        self.tally.errors += 1
        self.error(text)

    def closed(self, client: _Client) -> None:
        self.open -= 1
        if self.finishing:
            return
        self.disconnects += 1
        if client.close_code is not None:
            self.error(f"closed by server: {client.close_code} {client.close_reason}".strip())
        else:
            self.error("connection lost without a close frame")
        if self.open == 0 and self.started:
            self.finish(early=True)

    def report(self, phase: str) -> WorkerReport:
        return WorkerReport(
            worker=self.config.worker,
            phase=phase,
            conns=len(self.config.subscriptions),
            open=self.open,
            connect_errors=self.connect_errors,
            disconnects=self.disconnects,
            totals=self.tally.counters(),
            errors=list(self.errors) + self.tally.error_samples,
        )

    def send(self, report: WorkerReport) -> None:
        with contextlib.suppress(OSError):
            self.pipe.send(report)

    # -- connecting --------------------------------------------------------------------

    async def connect_all(self) -> None:
        limit = asyncio.Semaphore(self.config.connect_concurrency)
        timeout = self.config.connect_timeout
        headers = self.config.headers()

        async def one(index: int, channels: list[str]) -> None:
            async with limit:
                if self.finishing:
                    return
                try:
                    kind = _VenueClient if self.config.dialect else _Client
                    transport, _ = await asyncio.wait_for(
                        ws_connect(
                            lambda: kind(self, channels, index),
                            self.config.url,
                            websocket_handshake_timeout=timeout,
                            max_frame_size=self.config.max_frame_bytes,
                            logger_name="tickwire.bench",
                            extra_headers=headers or None,
                        ),
                        timeout,
                    )
                except Exception as exc:  # refused, reset, timeout, handshake: all count
                    self.connect_errors += 1
                    self.error(f"connect failed: {type(exc).__name__}: {exc}".rstrip(": "))
                    return
                self.transports.append(transport)

        await asyncio.gather(*(one(i, ch) for i, ch in enumerate(self.config.subscriptions)))

    # -- schedule ----------------------------------------------------------------------

    def on_pipe(self) -> None:
        try:
            msg: tuple[Any, ...] = self.pipe.recv()
        except (EOFError, OSError):
            # The parent is gone: stop rather than run on alone (and stop polling the
            # pipe, which would otherwise stay readable at EOF).
            asyncio.get_running_loop().remove_reader(self.pipe.fileno())
            msg = ("stop",)
        if msg[0] == "go" and not self.started:
            self.go(float(msg[1]), float(msg[2]))
        elif msg[0] == "stop":
            self.finish(early=False)

    def go(self, window_start: float, window_end: float) -> None:
        self.started = True
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        self.handles.append(loop.call_later(max(0.0, window_start - now), self.open_window))
        self.handles.append(loop.call_later(max(0.0, window_end - now), self.finish, False))
        self.handles.append(loop.call_later(self.config.progress_interval, self.progress))
        if self.config.dialect:
            self.handles.append(loop.call_later(self.config.keepalive_s / 3, self.keepalive))
        if self.open == 0:
            self.finish(early=True)

    def keepalive(self) -> None:
        """Every third of ``keepalive_s``: the venue's ping on quiet connections."""
        if self.finishing:
            return
        now = time.monotonic()
        for client in self.clients:
            client.keepalive(now)
        loop = asyncio.get_running_loop()
        self.handles.append(loop.call_later(self.config.keepalive_s / 3, self.keepalive))

    def progress(self) -> None:
        if self.finishing:
            return
        self.send(self.report("progress"))
        loop = asyncio.get_running_loop()
        self.handles.append(loop.call_later(self.config.progress_interval, self.progress))

    def open_window(self) -> None:
        if self.finishing:
            return
        self.window_open = True
        self.window_counters = self.tally.counters()
        self.tally.clear_latency()
        self.window_t0 = time.monotonic()
        self.window_cpu0 = time.process_time()

    def finish(self, early: bool) -> None:
        if self.finishing:
            return
        self.finishing = True
        self.ended_early = early
        for h in self.handles:
            h.cancel()
        if self.window_open:
            self.window_s = time.monotonic() - self.window_t0
            self.cpu_s = time.process_time() - self.window_cpu0
            self.window_counters = self.tally.counters() - self.window_counters
        else:
            self.window_counters = Counters()
            self.tally.clear_latency()
        self.done.set()

    async def close_all(self) -> None:
        for t in self.transports:
            with contextlib.suppress(Exception):
                t.send_close()
                t.disconnect()
        waits = [t.wait_disconnected() for t in self.transports if not t.is_disconnected]
        if waits:
            with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.gather(*waits), 1.0)

    def final_report(self) -> WorkerReport:
        report = self.report("final")
        hist = self.tally.hist
        report.window = self.window_counters
        report.window_s = self.window_s
        report.cpu_s = self.cpu_s
        report.hist = hist.to_sparse()
        report.hist_total = hist.total
        report.hist_sum = hist.sum
        report.hist_max = hist.max
        report.hist_negative = hist.negative
        report.ended_early = self.ended_early
        return report

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_reader(self.pipe.fileno(), self.on_pipe)
        try:
            await self.connect_all()
            self.send(self.report("ready"))
            await self.done.wait()
            await self.close_all()
            self.send(self.final_report())
        finally:
            loop.remove_reader(self.pipe.fileno())
            for task in list(self.tasks):
                task.cancel()
            if self.http is not None:
                await self.http.close()


def worker_main(config: WorkerConfig, pipe: Pipe) -> None:
    """Entry point of a worker process (the target given to ``multiprocessing``).

    Args:
        config: this worker's share of the connections.
        pipe: its end of the duplex pipe to the parent.
    """
    import uvloop

    # Ctrl-C reaches the whole process group; the parent turns it into ("stop",) so
    # that every worker still sends its final report.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        uvloop.run(_Worker(config, pipe).run())
    finally:
        pipe.close()
