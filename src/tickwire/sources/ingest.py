"""A market from any process that speaks the ingest protocol over NATS (I/O half).

Subjects (``PREFIX`` is ``tickwire`` unless ``--bus-prefix`` / ``--ingest-prefix`` says
otherwise; ``docs/ingest.md``)::

    PREFIX.ingest.<SYMBOL>            the source publishes its messages (JSON or msgpack)
    PREFIX.ingest.<SYMBOL>.snapshot   request/reply: the source answers with a snapshot
                                      (or an empty reply, and publishes one in stream)

Messages are queued as they arrive and wake the tick loop (:meth:`on_arrival`), whose
:meth:`poll` runs them through the Sans-I/O :class:`~tickwire.ingest.IngestFeed` and
applies its actions to the sink in order. The feed leads each symbol's engine state
(it applies each change once, to the book it validates with, and numbers and encodes
the batch), so a batch is relayed as the compiled market's are (:meth:`Sink.relay`,
the engine following the feed's state: :meth:`Sink.follow`); a sink that cannot relay
(unbatched sends) gets it back from the tick loop and numbers it the same. A rejection
makes the symbol stale (:meth:`Sink.invalidate`) and a snapshot loads it
(:meth:`Sink.restore`, its book seq one past the last so no resume chains across).
The sink is a gateway's hub (``tickwire serve --source ingest+nats://...``) or the
publisher's bus sink (``tickwire publish --ingest nats://...``, the leading engine:
every gateway behind it then emits the same seqs and checksums).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator
from typing import Any

import msgspec
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from ..engine import StateSnapshot
from ..exceptions import IntegrityError
from ..ingest import REASONS, IngestFeed, Invalidate, Load, Message, Publish, StatusChange
from . import Batch, Sink
from .nats import connect

__all__ = [
    "IngestSource",
    "StreamIngestSource",
    "ingest_metrics",
    "ingest_subject",
    "load_book",
    "ndjson_lines",
    "snapshot_request_subject",
]

log = logging.getLogger("tickwire.ingest")

#: Seconds between two snapshot requests of one symbol, and a reply's timeout.
REQUEST_INTERVAL = 1.0
REQUEST_TIMEOUT = 2.0
#: Bytes held for the tick loop at most; past it messages are dropped (the feed sees
#: the gap and recovers), so a stalled loop cannot grow memory without bound.
MAX_INBOX_BYTES = 64 << 20
#: An NDJSON line longer than this is skipped (a source cannot grow memory unbounded).
MAX_LINE_BYTES = 4 << 20
#: Seconds between two silence checks.
CHECK_EVERY = 0.5

_json_encoder = msgspec.json.Encoder()


def ingest_subject(prefix: str, symbol: str) -> str:
    """The subject a source publishes ``symbol``'s messages on."""
    return f"{prefix}.ingest.{symbol}"


def snapshot_request_subject(prefix: str, symbol: str) -> str:
    """The subject tickwire requests ``symbol``'s snapshot on (the source answers)."""
    return f"{prefix}.ingest.{symbol}.snapshot"


def load_book(
    sink: Sink, symbol: str, bids: list[tuple[str, str]], asks: list[tuple[str, str]], ts: int
) -> bool:
    """Load a complete book of ``symbol`` into ``sink`` (adding the symbol if new), for a
    source whose sink's engine keeps the book (a venue feed; an ingest feed leads its
    symbols' state itself and restores that).

    The book's seq moves one past the last: its content jumps, so no resume may chain
    across. Trades and ticker statistics are kept. Returns whether it is the first load.
    """
    engine = sink.engine
    if symbol not in engine.symbols:
        sink.add_symbol(symbol)
    current = engine.export(symbol)
    snap = msgspec.structs.replace(
        current,
        book_seq=current.book_seq + 1,
        bids=bids,
        asks=asks,
        last_ts=max(current.last_ts, ts),
    )
    sink.restore(snap)
    return current.book_seq == 0


class _FeedSource:
    """What every ingest transport shares: the inbox, the feed, and applying its actions."""

    def __init__(self, symbols: list[str], silent_after: float, core: bool | None = None) -> None:
        self.feed = IngestFeed(list(symbols), silent_after=silent_after, core=core)
        self.sink: Sink | None = None
        #: The sink's engine follows the feed's state and batches are relayed (False:
        #: the sink sends every update on its own, so batches go back to the tick loop).
        self.relaying = False
        self._inbox: list[tuple[str | None, bytes, bool]] = []
        self._inbox_bytes = 0
        self._wake: Callable[[], None] | None = None
        self._asked: dict[str, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._next_check = 0.0
        self.skipped = 0
        self.dropped = 0
        self.bytes = 0
        self.snapshot_requests = 0
        self.snapshot_failures = 0
        self._closing = False

    @property
    def generated(self) -> int:
        """Book level changes taken from the source."""
        return sum(f.changes for f in self.feed.feeds.values())

    def _attach(self, sink: Sink) -> None:
        """Take ``sink``: its symbols (if any) are the ones accepted, stale until loaded."""
        self.sink = sink
        self.relaying = sink.batch
        if not self.feed.symbols:
            self.feed.symbols = list(sink.engine.symbols)
        for symbol in list(sink.engine.symbols):
            sink.invalidate(symbol)
            self.feed.requests.add(symbol)

    def _ask(self, now: float) -> None:
        """Request the snapshots the feed wants (a transport without requests: none)."""
        self.feed.requests.clear()

    # -- per tick ------------------------------------------------------------------------

    def poll(self, now: float) -> Iterator[Batch]:
        """Run what arrived through the feed; apply its actions in order: batches are
        relayed, a symbol's consecutive ones together (one write per subscriber), or
        yielded for the tick loop to publish when the sink cannot relay (a generator:
        each is sent before the next action applies)."""
        feed = self.feed
        if self._inbox:
            inbox, self._inbox = self._inbox, []
            self._inbox_bytes = 0
            receive = feed.receive
            for symbol, data, reply in inbox:
                receive(symbol, data, now, reply)
        if now >= self._next_check:
            self._next_check = now + CHECK_EVERY
            feed.check(now)
        if feed.requests:
            self._ask(now)
        if not feed.out:
            return
        out, feed.out = feed.out, []
        sink = self.sink
        assert sink is not None
        runs: dict[str, list[Publish]] = {}
        for action in out:
            symbol = action.symbol
            if isinstance(action, Publish):
                if self.relaying:
                    runs.setdefault(symbol, []).append(action)
                else:
                    yield symbol, action.book_updates(), action.raw_trades()
                continue
            run = runs.pop(symbol, None)
            if run:
                self._relay(sink, run, now)
            if isinstance(action, Invalidate):
                sink.invalidate(symbol)
            elif isinstance(action, StatusChange):
                if symbol in sink.engine.symbols:
                    sink.status(symbol, action.status)
            else:
                self._load(sink, action)
        for run in runs.values():
            self._relay(sink, run, now)

    @staticmethod
    def _relay(sink: Sink, batches: list[Publish], now: float) -> None:
        if not sink.relay(batches, now):
            raise IntegrityError(batches[0].symbol, "the ingest feed is out of step with the sink")

    def _load(self, sink: Sink, action: Load) -> None:
        symbol = action.symbol
        engine = sink.engine
        if symbol not in engine.symbols:
            sink.add_symbol(symbol)
        if self.relaying:
            sink.follow(symbol, self._live(symbol))
        # The feed's state at the load: its book seq is one past the last already.
        sink.restore(msgspec.structs.replace(action.state, epoch=engine.epoch))
        self._asked.pop(symbol, None)  # the next episode asks at once
        # The first load says so; reloads follow a rejection, which was logged already.
        level = logging.INFO if action.state.book_seq == 1 else logging.DEBUG
        log.log(
            level, "ingest %s: loaded %d bids, %d asks", symbol, len(action.bids), len(action.asks)
        )

    def _live(self, symbol: str) -> Callable[[], StateSnapshot]:
        feed, engine = self.feed.feeds[symbol], self.sink.engine if self.sink else None
        assert engine is not None
        return lambda: feed.export(engine.epoch)

    def burst(self, now: float) -> None:
        """Bursts belong to the source."""

    def stats(self) -> dict[str, Any]:
        """The feed's counters and symbol states, plus the transport's."""
        return {
            "kind": "ingest",
            "bytes": self.bytes,
            "dropped": self.dropped,
            "snapshot_requests": self.snapshot_requests,
            "snapshot_failures": self.snapshot_failures,
            **self.feed.stats(),
        }

    def metrics(self) -> Iterator[Metric]:
        """Prometheus metrics of the feed (the gateway's and publisher's /metrics)."""
        yield from ingest_metrics(self)

    def _queue(self, symbol: str | None, data: bytes, reply: bool) -> None:
        size = len(data)
        self.bytes += size
        if self._inbox_bytes + size > MAX_INBOX_BYTES:
            self.dropped += 1
            return
        self._inbox.append((symbol, data, reply))
        self._inbox_bytes += size
        if self._wake is not None:
            self._wake()

    def on_arrival(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` whenever a message arrives (the tick loop polls at once)."""
        self._wake = callback


class IngestSource(_FeedSource):
    """A source fed by ``PREFIX.ingest.*`` over NATS (see the module docstring).

    Args:
        url: ``nats://HOST:PORT``, or several comma-separated.
        symbols: the symbols accepted (empty: any valid name, added as they come).
        prefix: subject prefix.
        silent_after: seconds without a message after which a symbol is reported.
        timeout: seconds :meth:`start` tries to reach NATS.
        core: the compiled book (``tickwire._market.Levels``): True, False, or None
            (when built); the pure-Python one writes the same bytes.
    """

    def __init__(
        self,
        url: str,
        symbols: list[str],
        *,
        prefix: str = "tickwire",
        silent_after: float = 5.0,
        timeout: float = 30.0,
        core: bool | None = None,
    ) -> None:
        super().__init__(symbols, silent_after, core)
        self.url = url
        self.prefix = prefix
        self.timeout = timeout
        self.nc: NatsClient | None = None
        self._inflight: set[str] = set()

    async def start(self, sink: Sink) -> None:
        """Connect and subscribe; symbols are served as their snapshots come.

        Raises:
            ConfigError: NATS cannot be reached within ``timeout`` seconds.
        """
        self._attach(sink)
        self.nc = await connect(
            self.url,
            "tickwire-ingest",
            self.timeout,
            disconnected_cb=self._disconnected,
            error_cb=self._error,
        )
        await self.nc.subscribe(f"{self.prefix}.ingest.*", cb=self._arrived)
        log.info("taking the ingest protocol on %s.ingest.<SYMBOL>", self.prefix)

    async def stop(self) -> None:
        """Close the connection and cancel pending requests."""
        self._closing = True
        for task in list(self._tasks):
            task.cancel()
        if self.nc is not None and not self.nc.is_closed:
            try:
                await asyncio.wait_for(self.nc.close(), 2.0)
            except Exception as exc:  # closing a broken link may fail in many ways
                log.debug("NATS close: %s", exc)

    def _ask(self, now: float) -> None:
        asked = self._asked
        for symbol in list(self.feed.requests):
            if now < asked.get(symbol, 0.0) or symbol in self._inflight:
                continue
            asked[symbol] = now + REQUEST_INTERVAL
            task = asyncio.get_running_loop().create_task(self._request(symbol))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    # -- callbacks and tasks -------------------------------------------------------------

    async def _request(self, symbol: str) -> None:
        nc = self.nc
        if nc is None or nc.is_closed:
            return
        self.snapshot_requests += 1
        self._inflight.add(symbol)
        try:
            reply = await nc.request(
                snapshot_request_subject(self.prefix, symbol), b"", timeout=REQUEST_TIMEOUT
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # timeout, no responders, connection lost
            self.snapshot_failures += 1
            log.debug("snapshot request of %s: %s", symbol, type(exc).__name__)
            return
        finally:
            self._inflight.discard(symbol)
        if reply.data:
            self._queue(symbol, reply.data, True)

    async def _arrived(self, msg: Msg) -> None:
        self._queue(msg.subject.rpartition(".")[2], msg.data, False)

    def stats(self) -> dict[str, Any]:
        """The feed's counters, and the NATS URL."""
        return {**super().stats(), "url": self.url}

    async def _disconnected(self) -> None:
        if not self._closing:
            log.warning("NATS disconnected: ingest messages may be lost (the seqs will tell)")

    async def _error(self, exc: Exception) -> None:
        log.debug("NATS error: %s", exc)


IngestItem = bytes | str | dict[str, Any] | Message


class StreamIngestSource(_FeedSource):
    """A source fed by an async iterator of ingest messages: no NATS.

    ``tickwire serve --source -`` (standard input) or ``--source ingest:PATH`` (a file
    or a named pipe) read NDJSON, one message per line (:func:`ndjson_lines`); a
    Python program runs a gateway in-process on its own iterator (``docs/ingest.md``)::

        gateway = Gateway(GatewayConfig(symbols=[]), source=StreamIngestSource(feed()))

    Items are JSON or msgpack bytes, JSON text, dicts or :mod:`tickwire.ingest`
    structs. A stream cannot be asked for a snapshot: a stale symbol recovers from the
    next snapshot in the stream, so such a source should send one now and then. When
    the iterator ends, the symbols stay served as they are (and are reported silent).

    Args:
        messages: the messages, in order.
        symbols: the symbols accepted (empty: the sink's, or any valid name).
        silent_after: seconds without a message after which a symbol is reported.
        core: the compiled book: True, False, or None (when built).
    """

    def __init__(
        self,
        messages: AsyncIterator[IngestItem] | AsyncIterable[IngestItem],
        symbols: list[str] | None = None,
        *,
        silent_after: float = 5.0,
        core: bool | None = None,
    ) -> None:
        super().__init__(symbols or [], silent_after, core)
        self.messages = messages
        self.ended = False
        self._room = asyncio.Event()
        self._room.set()
        self._task: asyncio.Task[None] | None = None

    async def start(self, sink: Sink) -> None:
        """Start reading the iterator; symbols are served as their snapshots come."""
        self._attach(sink)
        self._task = asyncio.get_running_loop().create_task(self._read())

    async def stop(self) -> None:
        """Stop reading."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=1.0)

    def poll(self, now: float) -> Iterator[Batch]:
        """As :meth:`_FeedSource.poll`; then let the reader go on."""
        yield from super().poll(now)
        self._room.set()

    async def _read(self) -> None:
        n = 0
        try:
            async for item in self.messages:
                if isinstance(item, bytes):
                    data = item
                elif isinstance(item, str):
                    data = item.encode()
                else:
                    data = _json_encoder.encode(item)
                if not data.strip():
                    continue
                self._queue(None, data, False)
                n += 1
                # Back-pressure rather than drops: a pipe can wait for the tick loop.
                if self._inbox_bytes > MAX_INBOX_BYTES // 4:
                    self._room.clear()
                    await self._room.wait()
                elif n % 256 == 0:
                    await asyncio.sleep(0)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the user's iterator failed
            log.error("ingest stream failed: %s", exc)
        self.ended = True
        log.warning("ingest stream ended after %d messages; the books stay as they are", n)

    def stats(self) -> dict[str, Any]:
        """The feed's counters, and whether the stream ended."""
        return {**super().stats(), "ended": self.ended}


async def ndjson_lines(path: str, chunk: int = 1 << 16) -> AsyncIterator[bytes]:
    """The lines of a file, a named pipe or standard input (``-``), read off the loop.

    Raises:
        OSError: the file cannot be opened (a pipe's open waits for its writer).
    """
    fd = 0 if path == "-" else await asyncio.to_thread(os.open, path, os.O_RDONLY)
    rest = b""
    skipping = False
    try:
        while True:
            # What is there (a pipe's writer may be slow), up to ``chunk``.
            data = await asyncio.to_thread(os.read, fd, chunk)
            if not data:
                break
            lines = (rest + data).split(b"\n")
            rest = lines.pop()
            for line in lines:
                if skipping:  # the end of a line too long to take
                    skipping = False
                    continue
                yield line
            if len(rest) > MAX_LINE_BYTES:
                if not skipping:
                    log.error("ingest %s: a line over %d bytes, skipped", path, MAX_LINE_BYTES)
                rest, skipping = b"", True
        if rest.strip() and not skipping:
            yield rest
    finally:
        if fd != 0:
            os.close(fd)


def ingest_metrics(source: _FeedSource) -> Iterator[Metric]:
    """``tickwire_ingest_*``: what the source sent, what was rejected and why, and
    where each symbol stands."""
    feed = source.feed
    yield CounterMetricFamily(
        "tickwire_ingest_messages", "Ingest messages received.", float(feed.received)
    )
    rejected = CounterMetricFamily(
        "tickwire_ingest_rejected",
        "Ingest messages rejected, by reason (duplicates are dropped, the rest make "
        "the symbol stale until a snapshot).",
        labels=["reason"],
    )
    for reason in REASONS:
        rejected.add_metric([reason], float(feed.rejected[reason]))
    yield rejected
    yield CounterMetricFamily(
        "tickwire_ingest_loads", "Snapshots loaded (first loads and recoveries).", float(feed.loads)
    )
    yield CounterMetricFamily(
        "tickwire_ingest_silences",
        "Times a symbol's source went silent past --ingest-silent-after.",
        float(feed.silences),
    )
    yield CounterMetricFamily(
        "tickwire_ingest_dropped",
        "Ingest messages dropped because the tick loop fell behind.",
        float(source.dropped),
    )
    states = GaugeMetricFamily(
        "tickwire_ingest_symbols", "Ingest symbols by state.", labels=["state"]
    )
    counts = {"waiting": 0, "live": 0, "stale": 0}
    silent = 0
    up = GaugeMetricFamily(
        "tickwire_ingest_up",
        "1 when the symbol is live and its source not silent.",
        labels=["symbol"],
    )
    for symbol, f in list(feed.feeds.items()):
        counts[f.state] += 1
        silent += f.silent
        up.add_metric([symbol], float(f.state == "live" and not f.silent))
    for state, n in counts.items():
        states.add_metric([state], float(n))
    yield states
    yield up
    yield GaugeMetricFamily(
        "tickwire_ingest_silent", "Ingest symbols whose source is silent now.", float(silent)
    )
