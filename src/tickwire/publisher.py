"""``tickwire publish``: run a market source and publish its engine's events to NATS.

The publisher is the leading engine of a scaled-out deployment (``docs/scaling.md``). It
runs the same sources a gateway can run embedded -- the simulator or a recording --
through its own :class:`~tickwire.engine.Engine`, which numbers every book update and
trade, and publishes, per tick, one :class:`~tickwire.sources.bus.BusBundle` on
``PREFIX.md._tick``: per symbol one :class:`~tickwire.sources.bus.BusBatch` carrying those
numbers, the event times, the engine's epoch and the encoded client messages (gateways
relay them); every 250 ms a heartbeat with the epoch and both seqs of every symbol, so a
follower notices a lost batch even on a quiet symbol; and, in turn, the complete state
of one symbol (``BusState``: a relaying gateway rebases on it). A request on
``PREFIX.snapshot.<SYMBOL>`` is answered with the engine's
:class:`~tickwire.engine.StateSnapshot`: that is how a gateway that joins late or detects
a gap recovers.

Why core NATS request/reply and not JetStream: followers need the live stream plus the
current state, and the publisher holds that state; a snapshot is bounded by the book's
size, while replaying a stream is bounded by how long it ran. Core NATS has no per-message
acks or storage on the hot path, and a publisher restart starts a new epoch anyway, so a
durable log of the old epoch would serve no client. JetStream becomes the right tool when
the source must survive its own restart *without* a new epoch (a persistent matching
engine), see ``docs/scaling.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import nats
from nats.aio.msg import Msg
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from .engine import Engine, LeaderBatch, StateSnapshot
from .exceptions import ConfigError
from .hotpath import relax_gc
from .protocol import BookUpdate
from .sources import RawTrade, Source
from .sources.bus import (
    TICK_SUBJECT,
    BusHeartbeat,
    BusState,
    bundles,
    encode_bus,
    leader_batch,
    md_subject,
    relayed_batch,
)

__all__ = ["BusSink", "Publisher"]


class _Collector:
    """Prometheus collector of one publisher (read at scrape time)."""

    def __init__(self, publisher: Publisher) -> None:
        self.publisher = publisher

    def collect(self) -> Iterator[Metric]:
        yield from self.publisher.metrics()


log = logging.getLogger("tickwire.publisher")

#: Seconds between two bus heartbeats.
HEARTBEAT_INTERVAL = 0.25
#: Seconds between two in-stream states of one symbol (``BusState``): what a relaying
#: gateway may have to apply at most when a snapshot is read, and how soon a follower
#: with a hole heals without asking. The states of all symbols are spread over it.
STATE_INTERVAL = 0.25


class BusSink:
    """The publisher's :class:`~tickwire.sources.Sink`: numbers batches, queues payloads.

    Args:
        engine: the leading engine.
        prefix: subject prefix.
    """

    #: Batches are numbered per tick (the compiled market relays through here).
    batch = True

    def __init__(self, engine: Engine, prefix: str) -> None:
        self.engine = engine
        self.prefix = prefix
        self.incomplete: set[str] = set(engine.symbols)
        #: Encoded bus messages of this tick, in order; the I/O loop bundles them.
        self.out: list[bytes] = []
        self.updates = 0
        self.trades = 0

    def publish(self, symbol: str, updates: list[BookUpdate], trades: Iterable[RawTrade]) -> None:
        """Number one batch in the engine and queue it as a bus message."""
        raw = list(trades)
        batch = leader_batch(self.engine, symbol, updates, raw)
        self.out.append(encode_bus(batch))
        self.updates += len(updates)
        self.trades += len(raw)

    def relay(self, batches: Sequence[LeaderBatch], now: float) -> bool:
        """Queue the compiled market's batches, numbered and encoded already.

        The engine only moves its seqs (it follows the core's state, :meth:`follow`).
        Returns False, queueing nothing, when they do not chain from its seqs.
        """
        engine = self.engine
        state = engine.symbols[batches[0].symbol]
        book, trade = state.book_seq, state.trade_seq
        for batch in batches:
            if (batch.prev_book, batch.prev_trade) != (book, trade):
                return False
            book, trade = batch.book, batch.trade
        for batch in batches:
            engine.defer(batch.symbol, batch)
            self.out.append(encode_bus(relayed_batch(engine.epoch, batch)))
            self.updates += batch.book - batch.prev_book
            self.trades += batch.trade - batch.prev_trade
        return True

    def follow(self, symbol: str, live: Callable[[], StateSnapshot]) -> None:
        """Let the engine follow the compiled market's state of ``symbol``."""
        self.engine.follow(symbol, live)

    def rebase(self, snap: StateSnapshot) -> None:
        """Not used by the publisher's sources."""

    def queue_state(self, symbol: str) -> None:
        """Queue the in-stream state of ``symbol`` (a ``BusState``)."""
        self.out.append(encode_bus(BusState(self.engine.export(symbol))))

    def restore(self, snap: StateSnapshot) -> None:
        """Load a state (a recording's snapshot, an ingest source's): it goes out in
        stream at once, so followers with a hole (or a stale symbol) heal on it."""
        self.engine.restore(snap)
        self.incomplete.discard(snap.symbol)
        self.queue_state(snap.symbol)

    def invalidate(self, symbol: str) -> None:
        """Stop serving ``symbol`` (an ingest source sent what cannot be trusted).

        A heartbeat naming it stale goes out at once (then with every heartbeat until
        :meth:`restore`): followers stop serving it, and the snapshot service does not
        answer for it meanwhile.
        """
        if symbol not in self.incomplete:
            self.incomplete.add(symbol)
            self.out.append(self.heartbeat())

    def revalidate(self, symbol: str) -> None:
        """Not used by the publisher's sources."""

    def status(self, symbol: str, status: str) -> None:
        """The source reported ``symbol``'s trading status: its state goes out in
        stream (followers' tickers carry it), or with the load that serves it again."""
        state = self.engine.symbols[symbol]
        if state.status != status:
            state.status = status
            if symbol not in self.incomplete:
                self.queue_state(symbol)

    def add_symbol(self, symbol: str) -> None:
        """Publish a new symbol (an ingest source's): not served until restored."""
        self.engine.add_symbol(symbol)
        self.incomplete.add(symbol)

    def reset(self, epoch: str) -> None:
        """Not used by the publisher's sources."""

    def heartbeat(self) -> bytes:
        """Return the heartbeat payload: the epoch and both seqs of every symbol."""
        seqs = {s: (st.book_seq, st.trade_seq) for s, st in self.engine.symbols.items()}
        stale = sorted(self.incomplete) if self.incomplete else []
        return encode_bus(BusHeartbeat(self.engine.epoch, seqs, stale))


class Publisher:
    """Runs ``source`` and publishes to NATS until stopped (SIGTERM/SIGINT).

    Args:
        url: NATS server URL(s), comma-separated.
        symbols: the symbols of the engine.
        source: the market source (simulator or replay).
        prefix: subject prefix.
        tick_ms: batching period; one bus message per symbol per tick at most.
        tick_pacing: ``"pause"`` waits ``tick_ms`` after each pass ends, ``"clock"``
            starts one every ``tick_ms``.
        max_seconds: exit by itself after this long (0: never).
        metrics_port: serve Prometheus ``/metrics`` on this port of ``metrics_host``
            (None: off; the ingest source's ``tickwire_ingest_*`` among them).
    """

    def __init__(
        self,
        url: str,
        symbols: list[str],
        source: Source,
        *,
        prefix: str = "tickwire",
        tick_ms: float = 1.0,
        tick_pacing: str = "pause",
        max_seconds: float = 0.0,
        metrics_port: int | None = None,
        metrics_host: str = "127.0.0.1",
    ) -> None:
        if tick_pacing not in ("pause", "clock"):
            raise ConfigError("--tick-pacing is pause or clock")
        self.url = url
        self.source = source
        self.prefix = prefix
        self.tick = max(tick_ms, 0.1) / 1000.0
        self.pause = tick_pacing == "pause"
        self.max_seconds = max_seconds
        self.metrics_port = metrics_port
        self.metrics_host = metrics_host
        self.engine = Engine(symbols)
        self.sink = BusSink(self.engine, prefix)
        self.snapshots_served = 0
        self.messages = 0
        self.bytes = 0
        self._stopping = asyncio.Event()

    async def run(self, ready: Any = None) -> None:
        """Connect, serve snapshots, and publish until :meth:`stop`.

        Args:
            ready: called with the publisher once it is publishing (the CLI prints).

        Raises:
            ConfigError: the NATS server cannot be reached.
        """
        try:
            nc = await nats.connect(
                self.url.split(","),
                name="tickwire-publisher",
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.25,
                connect_timeout=2,
                # Keep publishing into the client's buffer across a server restart; what
                # is lost, followers notice by seq and recover from a snapshot.
                pending_size=64 << 20,
            )
        except Exception as exc:  # nats-py raises several unrelated types here
            raise ConfigError(f"cannot connect to NATS at {self.url}: {exc}") from None
        await nc.subscribe(f"{self.prefix}.snapshot.*", cb=self._on_snapshot(nc))
        await self.source.start(self.sink)
        metrics = None
        if self.metrics_port is not None:
            metrics = await self._serve_metrics(self.metrics_host, self.metrics_port)
        relax_gc()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        loop.add_signal_handler(signal.SIGUSR1, lambda: self.source.burst(time.monotonic()))
        if self.max_seconds > 0:
            loop.call_later(self.max_seconds, self._stopping.set)
        if ready is not None:
            ready(self)
        task = asyncio.create_task(self._loop(nc))
        stop = asyncio.create_task(self._stopping.wait())
        # Either a stop, or the loop ended by itself (a bug): then its error is raised.
        await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        self._stopping.set()
        # The loop also checks _stopping: nats-py swallows a cancel that lands while
        # it waits to flush a full buffer (the bus is down), which would keep it going.
        task.cancel()
        await asyncio.wait({task}, timeout=5.0)
        # close(), not drain(): both flush what is buffered, but drain() swallows a
        # cancel and then waits on a server that may have stopped reading.
        closing = asyncio.ensure_future(nc.close())
        await asyncio.wait({closing}, timeout=2.0)
        if not closing.done():
            log.warning("NATS did not take the last messages within 2 s; closing anyway")
            closing.cancel()
            await asyncio.wait({closing}, timeout=1.0)
        elif not closing.cancelled() and closing.exception() is not None:
            log.warning("closing the NATS connection: %s", closing.exception())
        if metrics is not None:
            metrics.close()
        await self.source.stop()
        error = task.exception() if task.done() and not task.cancelled() else None
        if error is not None:
            raise error

    def stop(self) -> None:
        """End :meth:`run`."""
        self._stopping.set()

    def stats(self) -> dict[str, Any]:
        """Counters since start (printed as one JSON line on stderr at exit)."""
        return {
            "publisher": "tickwire",
            "epoch": self.engine.epoch,
            "messages": self.messages,
            "bytes": self.bytes,
            "updates": self.sink.updates,
            "trades": self.sink.trades,
            "snapshots_served": self.snapshots_served,
            "source": self.source.stats(),
        }

    async def _serve_metrics(self, host: str, port: int) -> asyncio.Server:
        """Answer any HTTP request with the Prometheus text of :meth:`metrics`.

        Raises:
            ConfigError: the port cannot be bound.
        """
        from prometheus_client import generate_latest
        from prometheus_client.registry import CollectorRegistry

        registry = CollectorRegistry()
        registry.register(_Collector(self))

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
                body = generate_latest(registry)
                head = (
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                )
                writer.write(head.encode() + body)
                await writer.drain()
            except Exception as exc:  # a client gone, a malformed request, a timeout
                log.debug("metrics request: %s", exc)
            finally:
                writer.close()

        try:
            return await asyncio.start_server(handle, host, port)
        except OSError as exc:
            raise ConfigError(f"--metrics-port {host}:{port}: {exc.strerror or exc}") from None

    def metrics(self) -> Iterator[Metric]:
        """``tickwire_publisher_*``, and the source's own metrics if it has any."""
        yield CounterMetricFamily(
            "tickwire_publisher_messages", "Bus messages published.", float(self.messages)
        )
        yield CounterMetricFamily(
            "tickwire_publisher_updates", "Book updates published.", float(self.sink.updates)
        )
        yield CounterMetricFamily(
            "tickwire_publisher_trades", "Trades published.", float(self.sink.trades)
        )
        yield GaugeMetricFamily(
            "tickwire_publisher_symbols", "Symbols of the engine.", float(len(self.engine.symbols))
        )
        yield GaugeMetricFamily(
            "tickwire_publisher_stale",
            "Symbols not served now (never loaded, or their source is recovering).",
            float(len(self.sink.incomplete)),
        )
        source_metrics = getattr(self.source, "metrics", None)
        if source_metrics is not None:
            yield from source_metrics()

    def _on_snapshot(self, nc: Any) -> Any:
        engine = self.engine

        async def on_snapshot(msg: Msg) -> None:
            symbol = msg.subject.rpartition(".")[2]
            if symbol in self.sink.incomplete:
                return  # not served now (stale): the follower asks again later
            if symbol in engine.symbols:
                self.snapshots_served += 1
                payload = encode_bus(engine.export(symbol))
            else:
                payload = b""
            with contextlib.suppress(Exception):
                await msg.respond(payload)

        return on_snapshot

    async def _loop(self, nc: Any) -> None:
        sink = self.sink
        poll = self.source.poll
        publish = sink.publish
        monotonic = time.monotonic
        tick = self.tick
        pause = self.pause
        subject = md_subject(self.prefix, TICK_SUBJECT)
        deadline = next_hb = next_state = monotonic()
        # The symbols whose states go out in turn: those served, listed again at the
        # end of each round (an ingest source adds symbols and makes them stale).
        order: list[str] = []
        turn = 0
        stopping = self._stopping
        while not stopping.is_set():
            deadline += tick
            now = monotonic()
            if deadline > now:
                await asyncio.sleep(deadline - now)
            else:
                await asyncio.sleep(0)
                if now - deadline > tick:
                    deadline = now
            now = monotonic()
            for symbol, updates, trades in poll(now):
                publish(symbol, updates, trades)
            if now >= next_state:
                # One symbol's state per turn, after its batches: it is at their seqs.
                if turn >= len(order):
                    order = [s for s in self.engine.symbols if s not in sink.incomplete]
                    turn = 0
                next_state = now + STATE_INTERVAL / max(len(order), 1)
                if order:
                    symbol = order[turn]
                    turn += 1
                    if symbol not in sink.incomplete:
                        sink.queue_state(symbol)
            if now >= next_hb:
                next_hb = now + HEARTBEAT_INTERVAL
                sink.out.append(sink.heartbeat())
            if sink.out:
                out, sink.out = sink.out, []
                for payload in bundles(out):
                    try:
                        await nc.publish(subject, payload)
                    except Exception as exc:  # disconnected with a full buffer, closed
                        log.warning("publish to %s failed: %s", subject, exc)
                        break
                    self.messages += 1
                    self.bytes += len(payload)
                    if stopping.is_set():
                        return
            if pause:
                # The next pass waits a tick after this one ended (the loop adds it).
                deadline = monotonic()
