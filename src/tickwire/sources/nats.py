"""Follow a ``tickwire publish`` engine over NATS (the I/O half of :mod:`.bus`).

``PREFIX.md.>`` messages are queued as they arrive and wake the gateway's tick loop
(:meth:`NatsSource.on_arrival`), whose :meth:`NatsSource.poll` takes them all at once,
decodes them in arrival order, runs them through the
:class:`~tickwire.sources.bus.BusFollower`, relays the batches the publisher encoded
(:meth:`~tickwire.hub.Hub.relay`) and returns the others to publish. All hub changes
(relay, publish, invalidate, restore) therefore happen inside the tick loop, as with the
embedded simulator, and a bundle is relayed as soon as it arrives rather than at the
next tick. Snapshot requests run as tasks; their replies queue and are handled by the
next poll, before that poll's bus messages.

One wildcard subscription carries batches and heartbeats alike, so the follower sees
them in the order the publisher sent them (nats-py keeps order within a subscription);
a heartbeat ahead of the local seqs is therefore a lost batch, never one in flight.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
import nats
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from ..exceptions import ConfigError
from . import Batch, Sink
from .bus import BusFollower, decode_bus, decode_snapshot, snapshot_subject

__all__ = ["NatsSource"]

log = logging.getLogger("tickwire.nats")


async def connect(url: str, name: str, within_s: float, **callbacks: Any) -> NatsClient:
    """Connect to NATS (``url``: comma-separated servers), retrying for ``within_s``.

    The client reconnects by itself afterwards (forever, every 0.25 s); ``callbacks``
    go to :func:`nats.connect` (``disconnected_cb``, ``error_cb`` ...).

    Raises:
        ConfigError: no server answered within ``within_s`` seconds.
    """
    deadline = time.monotonic() + within_s
    while True:
        try:
            nc: NatsClient = await nats.connect(
                url.split(","),
                name=name,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.25,
                connect_timeout=2,
                **callbacks,
            )
            return nc
        except Exception as exc:  # nats-py raises several unrelated types here
            if time.monotonic() > deadline:
                raise ConfigError(f"cannot connect to NATS at {url}: {exc}") from None
            log.warning("NATS at %s: %s; retrying", url, exc)
            await asyncio.sleep(0.5)


#: Seconds to wait for one snapshot reply, and before asking again after a failure.
REQUEST_TIMEOUT = 2.0
RETRY_DELAY = 0.5
#: Bus bytes held for the tick loop at most; past it messages are dropped (and the
#: follower recovers the hole), so a stalled loop cannot grow memory without bound.
MAX_INBOX_BYTES = 64 << 20


class NatsSource:
    """A source fed by the NATS subjects ``PREFIX.md.>`` (see ``docs/scaling.md``).

    Args:
        url: ``nats://HOST:PORT``, or several comma-separated (a cluster).
        symbols: the symbols to follow (the gateway's ``--symbols``: the publisher's
            or a subset of them); empty: all of the publisher's, including those it
            adds later.
        prefix: subject prefix (``--bus-prefix``).
        timeout: seconds :meth:`start` waits for the bus and every book.
    """

    def __init__(
        self, url: str, symbols: list[str], *, prefix: str = "tickwire", timeout: float = 30.0
    ) -> None:
        self.url = url
        self.symbols = symbols
        self.prefix = prefix
        self.timeout = timeout
        self.nc: NatsClient | None = None
        self.follower: BusFollower | None = None
        self._sub: Subscription | None = None
        self._replies: list[bytes] = []
        # Bus payloads received since the last poll, in order, and their size.
        self._inbox: list[bytes] = []
        self._inbox_bytes = 0
        self._wake: Callable[[], None] | None = None
        self.dropped = 0
        self._failed: list[str] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.skipped = 0
        self.messages = 0
        self.bytes = 0
        self.bad_messages = 0
        self.disconnects = 0
        self.reconnects = 0
        self.snapshot_requests = 0
        self._closing = False

    @property
    def generated(self) -> int:
        """Book updates received and handed to the hub."""
        return self.follower.updates if self.follower is not None else 0

    # -- life ----------------------------------------------------------------------------

    async def start(self, sink: Sink) -> None:
        """Connect, subscribe, and load every book from the publisher's snapshots.

        Raises:
            ConfigError: no bus or no complete books within ``timeout`` seconds.
        """
        # No symbols named: follow all of the leader's, and those it adds later.
        self.follower = BusFollower(sink, follow_all=not self.symbols)
        deadline = time.monotonic() + self.timeout
        self.nc = await connect(
            self.url,
            "tickwire-gateway",
            self.timeout,
            disconnected_cb=self._disconnected,
            reconnected_cb=self._reconnected,
            error_cb=self._error,
        )
        # The callback only queues the payload and wakes the tick loop, which relays it
        # at once: one bundle per publisher tick, so one wake-up per tick, not per symbol.
        self._sub = await self.nc.subscribe(f"{self.prefix}.md.>", cb=self._arrived)
        follower = self.follower
        # Ready once every book is complete, the leader's first heartbeat seen when
        # following all (the symbols it names), those it does not serve itself aside.
        while (follower.follow_all and not follower.heartbeats) or (
            sink.incomplete - follower.leader_stale
        ):
            if time.monotonic() > deadline:
                missing = ", ".join(sorted(sink.incomplete)[:10]) or "its heartbeat"
                raise ConfigError(
                    f"no complete books from {self.url} within {self.timeout:g}s (missing "
                    f"{missing}); is `tickwire publish` running with these --symbols?"
                )
            for symbol, updates, trades in self.poll(time.monotonic()):
                sink.publish(symbol, updates, trades)
            await asyncio.sleep(0.005)
        log.info("following %s: epoch %s", self.url, self.follower.epoch)

    async def stop(self) -> None:
        """Close the bus connection and cancel pending requests."""
        self._closing = True
        for task in list(self._tasks):
            task.cancel()
        if self.nc is not None and not self.nc.is_closed:
            try:
                await asyncio.wait_for(self.nc.close(), 2.0)
            except Exception as exc:  # closing a broken link may fail in many ways
                log.debug("NATS close: %s", exc)

    # -- per tick ------------------------------------------------------------------------

    def poll(self, now: float) -> Sequence[Batch]:
        """Run queued replies and bus messages through the follower; return its batches."""
        follower = self.follower
        assert follower is not None
        if self._replies or self._failed:
            replies, self._replies = self._replies, []
            for data in replies:
                try:
                    follower.snapshot(decode_snapshot(data))
                except msgspec.DecodeError:
                    self.bad_messages += 1
            failed, self._failed = self._failed, []
            for symbol in failed:
                follower.snapshot_failed(symbol)
        if self._inbox:
            inbox, self._inbox = self._inbox, []
            self._inbox_bytes = 0
            message = follower.message
            for data in inbox:
                try:
                    msg = decode_bus(data)
                except msgspec.DecodeError as exc:
                    follower.bad_message(exc)
                    continue
                message(msg)
        if follower.requests:
            for symbol in follower.requests:
                self._spawn(self._request(symbol))
            follower.requests.clear()
        if not follower.out:
            return ()
        return follower.hand_over(now)

    def burst(self, now: float) -> None:
        """Bursts belong to the publisher (``kill -USR1`` it)."""
        log.info("burst ignored: the flow comes from the bus")

    def stats(self) -> dict[str, Any]:
        """Bus counters and the follower's gap/restore/epoch counters."""
        f = self.follower
        return {
            "kind": "nats",
            "url": self.url,
            "epoch": f.epoch if f else None,
            "messages": self.messages,
            "bytes": self.bytes,
            "updates": self.generated,
            "bad_messages": self.bad_messages + (f.bad_messages if f else 0),
            "dropped": self.dropped,
            "disconnects": self.disconnects,
            "reconnects": self.reconnects,
            "snapshot_requests": self.snapshot_requests,
            "gaps": f.gaps if f else 0,
            "duplicates": f.duplicates if f else 0,
            "restores": f.restores if f else 0,
            "revalidated": f.revalidated if f else 0,
            "epoch_changes": f.epoch_changes if f else 0,
            "states": {s: st.value for s, st in f.state.items()} if f else {},
            "added": f.added if f else 0,
            "leader_stale": sorted(f.leader_stale) if f else [],
        }

    # -- callbacks and tasks -------------------------------------------------------------

    async def _request(self, symbol: str) -> None:
        nc = self.nc
        assert nc is not None
        self.snapshot_requests += 1
        try:
            reply = await nc.request(
                snapshot_subject(self.prefix, symbol), b"", timeout=REQUEST_TIMEOUT
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # timeout, no responders, connection lost
            log.info("snapshot of %s: %s; asking again", symbol, type(exc).__name__)
            await asyncio.sleep(RETRY_DELAY)
            self._failed.append(symbol)
            return
        if not reply.data:
            log.error("the publisher does not serve %s", symbol)
            await asyncio.sleep(RETRY_DELAY * 10)
            self._failed.append(symbol)
            return
        self._replies.append(reply.data)
        if self._wake is not None:
            self._wake()

    async def _arrived(self, msg: Msg) -> None:
        data = msg.data
        size = len(data)
        self.messages += 1
        self.bytes += size
        if self._inbox_bytes + size > MAX_INBOX_BYTES:
            # The tick loop stopped taking the bus: drop, and let the seqs show the
            # hole (the follower recovers from the next state or a snapshot).
            self.dropped += 1
            return
        self._inbox.append(data)
        self._inbox_bytes += size
        if self._wake is not None:
            self._wake()

    def on_arrival(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` whenever a bus message arrives (the gateway's tick loop)."""
        self._wake = callback

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _disconnected(self) -> None:
        if self._closing:
            return
        self.disconnects += 1
        log.warning("NATS disconnected: books suspended until the stream proves intact")
        if self.follower is not None:
            self.follower.disconnected()

    async def _reconnected(self) -> None:
        self.reconnects += 1
        log.warning("NATS reconnected to %s", self.nc.connected_url if self.nc else "?")

    async def _error(self, exc: Exception) -> None:
        log.debug("NATS error: %s", exc)
