"""The SDK's I/O layer: one picows connection at a time, reconnects, watchdog, events.

Everything that decides *what* a message means lives in the Sans-I/O core
(:class:`tickwire.client.sync.ClientProtocol`); this module only moves bytes and time:
it connects, feeds each text frame to the core, writes the core's requests, hands events
to the application, and keeps the link alive:

* **reconnect** with capped, fully jittered exponential backoff
  (:class:`~tickwire.client.backoff.Backoff`), resuming every channel from its last
  ``seq`` (the core builds the subscribe with ``epoch`` and ``since``);
* **watchdog**: when no message and no heartbeat arrives for ``watchdog`` seconds, the
  link is treated as dead (a half-open TCP connection never says so by itself) and is
  aborted, which starts a reconnect;
* **clean close**: :meth:`Client.close` sends a normal close frame, waits briefly for
  the server's answer, then ends the iteration;
* **login**: with a ``token`` every connection logs in before it subscribes, and a
  token *provider* is asked for a fresh token before the current one expires (the
  server closes with 4003 otherwise). A refused login ends the client with the
  server's error instead of reconnecting forever with a token that cannot work.

The server's WebSocket pings are answered by picows (auto-pong).

Encodings (``docs/protocol.md``, "Encodings"): ``encoding="msgpack"`` asks for the
``tickwire.v1.msgpack`` subprotocol and ``compression="deflate"`` offers
permessage-deflate. Frames are decoded by what they are, not by what was asked: a text
frame is JSON, a binary frame msgpack, RSV1 means deflated. So a server that declines
an offer (an older one, or one without ``--deflate``) still works; :attr:`Client.wire`
tells what was negotiated.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, fields
from types import TracebackType
from typing import Any

import jwt
from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from ..book import Book
from ..codec import DEFLATE_OFFER, JSON_WIRE, SUBPROTOCOLS, Encoding, Inflater, Wire
from ..exceptions import ConfigError, ConnectionClosed, MessageTooBig, ProtocolError, RequestError
from ..protocol import Ack, Error
from .backoff import Backoff
from .events import Connected, Disconnected, Event, SyncState
from .sync import ChannelSync, ClientProtocol

__all__ = ["Client", "ClientStats"]

log = logging.getLogger("tickwire.client")

#: Largest server frame accepted (a deep snapshot of many levels still fits).
MAX_FRAME = 16 << 20

#: A token, or a callable (plain or async) that returns a currently valid one.
TokenSource = str | Callable[[], str | Awaitable[str]]

#: A login is refreshed this long before the token expires (at most; a short-lived
#: token is refreshed when a quarter of its remaining life is left), and the provider
#: is asked at most once per REFRESH_MIN seconds.
REFRESH_AHEAD = 30.0
REFRESH_MIN = 1.0


@dataclass(slots=True)
class ClientStats:
    """Connection-level counters of a :class:`Client` (all monotonic).

    Attributes:
        connects: connections established (the first one included).
        reconnects: connections established after a lost one.
        connect_failures: connection attempts that failed (refused, timeout, handshake).
        disconnects: connections lost or closed.
        watchdog_timeouts: connections aborted because the link fell silent.
        events_dropped: events discarded because the application did not iterate fast
            enough (``max_queue``); books and counters are never affected.
        callback_errors: exceptions raised by the ``on_event`` callback (logged).
        last_close_code: the close code of the last lost connection (None: no close
            frame, e.g. a dead link).
    """

    connects: int = 0
    reconnects: int = 0
    connect_failures: int = 0
    disconnects: int = 0
    watchdog_timeouts: int = 0
    events_dropped: int = 0
    callback_errors: int = 0
    last_close_code: int | None = None

    def as_dict(self) -> dict[str, int | None]:
        """Return the counters as a plain dict."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


class _Link(WSListener):
    """One WebSocket connection: forwards text messages, records how it ended."""

    def __init__(self, client: Client, done: asyncio.Future[None]) -> None:
        super().__init__()
        self.client = client
        self.done = done
        self.transport: WSTransport | None = None
        self.code: int | None = None
        self.reason = ""
        self._fragments: list[bytes] | None = None
        # (binary, compressed) of the fragmented message being reassembled.
        self._kind = (False, False)
        # Created at the first compressed frame; one zlib stream for the connection.
        self._inflater: Inflater | None = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        msg_type = frame.msg_type
        if msg_type == WSMsgType.TEXT or msg_type == WSMsgType.BINARY:
            binary = msg_type == WSMsgType.BINARY
            if not frame.fin:
                self._fragments = [frame.get_payload_as_bytes()]
                self._kind = (binary, frame.rsv1)
            elif frame.rsv1:
                self._inflate(transport, frame.get_payload_as_memoryview(), binary)
            else:
                # A borrowed view, valid during this call only: the core decodes it now.
                self.client._on_message(self, frame.get_payload_as_memoryview(), binary)
        elif msg_type == WSMsgType.CONTINUATION and self._fragments is not None:
            self._fragments.append(frame.get_payload_as_bytes())
            if frame.fin:
                data = b"".join(self._fragments)
                self._fragments = None
                binary, compressed = self._kind
                if compressed:
                    self._inflate(transport, data, binary)
                else:
                    self.client._on_message(self, data, binary)
        elif msg_type == WSMsgType.CLOSE:
            code = frame.get_close_code()
            self.code = int(code.value) or None  # NO_INFO (0): a close frame without code
            self.reason = frame.get_close_message().decode("utf-8", "replace")
            transport.send_close(code)
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if not self.done.done():
            self.done.set_result(None)

    def _inflate(self, transport: WSTransport, data: bytes | memoryview, binary: bool) -> None:
        """Inflate one permessage-deflate message and hand it to the client."""
        inflater = self._inflater
        if inflater is None:
            inflater = self._inflater = Inflater(MAX_FRAME)
        try:
            message = inflater.inflate(data)
        except MessageTooBig:
            self._fail(transport, WSCloseCode.MESSAGE_TOO_BIG, "message too big")
            return
        except ProtocolError:
            self._fail(transport, WSCloseCode.PROTOCOL_ERROR, "bad permessage-deflate data")
            return
        self.client._on_message(self, message, binary)

    def _fail(self, transport: WSTransport, code: WSCloseCode, reason: str) -> None:
        log.warning("tickwire client: %s; closing", reason)
        self.reason = reason
        transport.send_close(code, reason.encode())
        transport.disconnect()


class Client:
    """A tickwire client: verified local books and streams that heal themselves.

    Use it as an async context manager, iterate it for events, and read books at any
    time::

        async with Client(url, ["book.BTC-USD", "trades.BTC-USD"]) as client:
            async for event in client:
                book = client.book("BTC-USD")

    Args:
        url: the gateway's WebSocket URL, e.g. ``ws://127.0.0.1:8765/ws``.
        channels: channels to subscribe to from the start (``book.SYM``,
            ``trades.SYM``, ``ticker.SYM``; ``orders.USER`` with a ``token``).
        on_event: called synchronously for every event, right after the message was
            applied: inside it, a book is exactly at the event's ``seq``.
        events: False disables the ``async for`` queue (for applications that only
            read books or use ``on_event``).
        max_queue: events kept for ``async for``; past it the oldest are dropped and
            counted in :attr:`ClientStats.events_dropped`.
        reconnect: False ends the client (iteration raises
            :class:`~tickwire.exceptions.ConnectionClosed`) when the connection ends.
        watchdog: seconds without any message or heartbeat after which the link is
            considered dead and reconnected; 0 disables. Keep it above the server's
            heartbeat interval (1 s by default).
        backoff: reconnect delays; default 0.1 s doubling up to 5 s, fully jittered.
        connect_timeout: seconds allowed for the TCP connect plus WebSocket handshake.
        encoding: ``"json"`` (default) or ``"msgpack"``: the wire encoding to ask for
            (subprotocol ``tickwire.v1.<encoding>``).
        compression: None (default) or ``"deflate"``: offer permessage-deflate (the
            server accepts it only when started with ``--deflate``).
        token: log in on every connection (needed for ``orders.<USER>``): a signed
            token, or a callable (plain or async) returning one. A callable is asked
            before every connection (bounded by ``connect_timeout``; a failure is
            raised by :meth:`start`, later retried with backoff) and again before each
            token expires; a plain token ends the client (``token_expired``) once it
            has expired. A login the server refuses ends the client.

    Raises:
        ConfigError: a timeout is negative, or an unknown encoding or compression.
        RequestError: a channel name is malformed (``bad_channel``).
    """

    def __init__(
        self,
        url: str,
        channels: Iterable[str] = (),
        *,
        on_event: Callable[[Event], object] | None = None,
        events: bool = True,
        max_queue: int = 10_000,
        reconnect: bool = True,
        watchdog: float = 5.0,
        backoff: Backoff | None = None,
        connect_timeout: float = 5.0,
        encoding: str = "json",
        compression: str | None = None,
        token: TokenSource | None = None,
    ) -> None:
        if watchdog < 0 or connect_timeout <= 0 or max_queue < 1:
            raise ConfigError("watchdog must be >= 0, connect_timeout and max_queue > 0")
        if encoding not in SUBPROTOCOLS or compression not in (None, "deflate"):
            raise ConfigError("encoding must be json or msgpack, compression None or deflate")
        self.url = url
        self.encoding = Encoding(encoding)
        self.compression = compression
        #: What the server agreed to on the current (or last) connection.
        self.wire: Wire = JSON_WIRE
        self._headers: list[tuple[str, str]] = []
        if self.encoding is not Encoding.JSON:
            self._headers.append(("Sec-WebSocket-Protocol", SUBPROTOCOLS[self.encoding]))
        if compression == "deflate":
            self._headers.append(("Sec-WebSocket-Extensions", DEFLATE_OFFER))
        self.protocol = ClientProtocol()
        self.protocol.add_channels(channels)
        self.on_event = on_event
        self.reconnect = reconnect
        self.watchdog = watchdog
        self.backoff = backoff or Backoff()
        self.connect_timeout = connect_timeout
        self.stats = ClientStats()
        self.token = token
        # Set when the client must stop for good (a refused login): what iteration raises.
        self._fatal: BaseException | None = None
        self._queue_events = events
        self._queue: deque[Event] = deque(maxlen=max_queue)
        self._wake: asyncio.Event | None = None
        self._ended = False
        self._error: BaseException | None = None
        self._link: _Link | None = None
        self._task: asyncio.Task[None] | None = None
        self._ready: asyncio.Future[None] | None = None
        self._closing: asyncio.Event | None = None
        self._waiters: dict[int, asyncio.Future[Ack]] = {}
        self._connect_id: int | None = None
        self._last_rx = 0.0
        # One event per pending wait_until(); all are set whenever something happened.
        self._progress: set[asyncio.Event] = set()

    # -- life --------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, subscribe, and return once the server acknowledged the channels.

        Raises:
            OSError: the first connection attempt failed (wrong URL, no server); later
                failures are retried with backoff instead.
            RequestError: the server refused the initial subscription.
        """
        if self._task is not None:
            raise RuntimeError("Client.start() was already called")
        loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._closing = asyncio.Event()
        self._ready = loop.create_future()
        self._task = asyncio.create_task(self._run(), name=f"tickwire-client {self.url}")
        try:
            await self._ready
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Close the connection cleanly (close code 1000) and end the iteration."""
        if self._closing is None or self._task is None:
            self._end(None)
            return
        self._closing.set()
        link = self._link
        if link is not None and link.transport is not None:
            link.transport.send_close(WSCloseCode.OK, b"client closing")
            # Give the server a moment to answer the close frame, then drop the socket.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(link.done), 1.0)
            link.transport.disconnect(graceful=False)
        if not self._task.done():
            try:
                await asyncio.wait_for(self._task, 5.0)
            except TimeoutError:
                self._task.cancel()
        self._end(None)

    async def __aenter__(self) -> Client:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- subscriptions -----------------------------------------------------------------

    async def subscribe(self, channels: Iterable[str]) -> None:
        """Add channels; when connected, wait for the server's ack.

        Channels already tracked are left alone. While disconnected the channels are
        subscribed by the next reconnect. Bound the wait with ``asyncio.timeout``.

        Raises:
            RequestError: the server refused (``unknown_channel``, ``too_many_channels``)
                or a name is malformed.
        """
        new = self.protocol.add_channels(channels)
        link = self._link
        if not new or link is None or link.transport is None:
            return
        request = self.protocol.subscribe_request(new)
        if request is not None:
            await self._request(link.transport, *request)

    async def unsubscribe(self, channels: Iterable[str]) -> None:
        """Stop receiving channels and forget their local state.

        Raises:
            RequestError: the server refused the request.
        """
        rid, payload = self.protocol.remove_channels(channels)
        link = self._link
        if link is not None and link.transport is not None:
            await self._request(link.transport, rid, payload)

    async def _request(self, transport: WSTransport, rid: int, payload: bytes) -> Ack:
        waiter: asyncio.Future[Ack] = asyncio.get_running_loop().create_future()
        self._waiters[rid] = waiter
        try:
            transport.send(WSMsgType.TEXT, payload)
            return await waiter
        finally:
            self._waiters.pop(rid, None)

    # -- reading state -----------------------------------------------------------------

    @property
    def epoch(self) -> str | None:
        """The server epoch, as last acknowledged (changes when the server restarts)."""
        return self.protocol.epoch

    @property
    def connected(self) -> bool:
        """True while a connection is up."""
        return self._link is not None

    def channel(self, name: str) -> ChannelSync:
        """Return the state of channel ``name``: ``state``, ``position``, ``counters``,
        ``lag``, and its ``book`` / ``trades`` / ``ticker`` / ``orders``.

        Raises:
            KeyError: the channel is not subscribed.
        """
        return self.protocol.channels[name]

    def book(self, symbol: str) -> Book:
        """Return the local book of ``symbol`` (subscribe to ``book.<symbol>`` first).

        The object is updated in place as messages arrive. It is verified while
        ``client.state("book." + symbol)`` is LIVE; otherwise it is the last verified
        state (SYNCING, after a disconnect) or suspect (STALE, being resynced).

        Raises:
            KeyError: ``book.<symbol>`` is not subscribed.
        """
        return self.protocol.channels[f"book.{symbol}"].book

    def state(self, channel: str) -> SyncState:
        """Return the :class:`SyncState` of ``channel``."""
        return self.protocol.channels[channel].state

    def lag(self, channel: str) -> tuple[float | None, float | None]:
        """Return ``(p50, p99)`` of the channel's recent lag (now - ``ts``) in ms."""
        window = self.protocol.channels[channel].lag
        return window.percentile(0.50), window.percentile(0.99)

    def counters(self) -> dict[str, Any]:
        """Return every counter: ``client`` (connection) and one dict per channel."""
        out: dict[str, Any] = {"client": self.stats.as_dict()}
        for name, ch in self.protocol.channels.items():
            out[name] = {"state": ch.state.value, "seq": ch.position, **ch.counters.as_dict()}
        return out

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Wait until ``predicate()`` is true; it is re-checked after every message.

        Bound the wait with ``asyncio.timeout(...)``: the condition may never hold.

        Raises:
            RequestError: the client ended because its login was refused.
            ConnectionClosed: the client ended (closed, or lost without ``reconnect``).
        """
        progress = asyncio.Event()
        self._progress.add(progress)
        try:
            while not predicate():
                if self._ended:
                    raise self._error or ConnectionClosed(self.stats.last_close_code, "ended")
                progress.clear()
                await progress.wait()
        finally:
            self._progress.discard(progress)

    async def wait_live(self, channels: Iterable[str] | None = None) -> None:
        """Wait until every given channel (default: all) is LIVE (bound it with
        ``asyncio.timeout``)."""
        chans = self.protocol.channels
        names = list(chans) if channels is None else list(channels)
        await self.wait_until(
            lambda: all(n in chans and chans[n].state is SyncState.LIVE for n in names)
        )

    # -- iteration ---------------------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[Event]:
        return self

    async def __anext__(self) -> Event:
        while True:
            if self._queue:
                return self._queue.popleft()
            if self._ended or self._wake is None:
                if self._error is not None:
                    raise self._error
                raise StopAsyncIteration
            self._wake.clear()
            await self._wake.wait()

    def _end(self, error: BaseException | None) -> None:
        if not self._ended:
            self._ended = True
            self._error = error
        if self._wake is not None:
            self._wake.set()
        self._notify()

    def _emit(self, events: list[Event]) -> None:
        on_event = self.on_event
        if on_event is not None:
            for event in events:
                try:
                    on_event(event)
                except Exception:
                    self.stats.callback_errors += 1
                    log.exception("tickwire client: on_event callback raised")
        if self._queue_events:
            queue = self._queue
            overflow = len(queue) + len(events) - (queue.maxlen or 0)
            if overflow > 0:
                self.stats.events_dropped += overflow
            queue.extend(events)
            if self._wake is not None:
                self._wake.set()
        self._notify()

    # -- I/O callbacks -----------------------------------------------------------------

    def _on_message(self, link: _Link, data: bytes | memoryview, binary: bool = False) -> None:
        self._last_rx = time.monotonic()
        proto = self.protocol
        proto.receive_data(data, time.time_ns(), binary)
        transport = link.transport
        if transport is not None:
            for payload in proto.data_to_send():
                transport.send(WSMsgType.TEXT, payload)
        replies = proto.replies_received()
        if replies:
            self._resolve(replies)
        events = proto.events_received()
        if events:
            self._emit(events)
        else:
            self._notify()

    def _notify(self) -> None:
        for progress in self._progress:
            progress.set()

    def _resolve(self, replies: list[Ack | Error]) -> None:
        for reply in replies:
            rid = reply.id
            if isinstance(rid, int) and rid in self.protocol.logins:
                self.protocol.logins.discard(rid)
                if isinstance(reply, Error):
                    self._fail(RequestError(reply.code, f"login refused: {reply.message}", rid))
                continue
            if rid == self._connect_id and rid is not None:
                self._connect_id = None
                if isinstance(reply, Ack):
                    # The link proved healthy: the next outage starts from a short delay.
                    self.backoff.reset()
                    self._set_ready(None)
                else:
                    self._set_ready(RequestError(reply.code, reply.message, rid))
            if not isinstance(rid, int):
                if isinstance(reply, Error):
                    log.warning("tickwire client: server error %s: %s", reply.code, reply.message)
                continue
            waiter = self._waiters.get(rid)
            if waiter is None or waiter.done():
                continue
            if isinstance(reply, Ack):
                waiter.set_result(reply)
            else:
                waiter.set_exception(RequestError(reply.code, reply.message, rid))

    def _fail(self, error: BaseException) -> None:
        """Stop for good: ``error`` is raised by :meth:`start` or by the iteration."""
        if self._ready is not None and not self._ready.done():
            self._set_ready(error)
        elif self._fatal is None:
            self._fatal = error
        link = self._link
        if link is not None and link.transport is not None:
            link.transport.send_close(WSCloseCode.OK, b"login refused")
            link.transport.disconnect(graceful=False)
        if self._closing is not None:
            self._closing.set()

    def _set_ready(self, error: BaseException | None) -> None:
        ready = self._ready
        if ready is not None and not ready.done():
            if error is None:
                ready.set_result(None)
            else:
                ready.set_exception(error)

    # -- the connection loop -----------------------------------------------------------

    async def _run(self) -> None:
        assert self._closing is not None
        loop = asyncio.get_running_loop()
        attempt = 0
        try:
            while not self._closing.is_set():
                attempt += 1
                token = None
                if self.token is not None:
                    try:
                        token = await asyncio.wait_for(self._fetch_token(), self.connect_timeout)
                    except Exception as exc:  # the provider's own failure, or its timeout
                        self.stats.connect_failures += 1
                        if self._ready is not None and not self._ready.done():
                            self._set_ready(exc)
                            return
                        log.warning("tickwire client: token provider failed: %r", exc)
                        await self._pause(self.backoff.next_delay())
                        continue
                    if self._closing.is_set():
                        break
                done: asyncio.Future[None] = loop.create_future()
                try:
                    transport, listener = await asyncio.wait_for(
                        ws_connect(
                            functools.partial(_Link, self, done),
                            self.url,
                            websocket_handshake_timeout=self.connect_timeout,
                            max_frame_size=MAX_FRAME,
                            logger_name="tickwire.client.picows",
                            extra_headers=self._headers or None,
                        ),
                        self.connect_timeout,
                    )
                except Exception as exc:  # refused, timeout, handshake (picows WSError)
                    self.stats.connect_failures += 1
                    if self._ready is not None and not self._ready.done():
                        self._set_ready(exc)
                        return
                    log.info("tickwire client: connect to %s failed: %s", self.url, exc)
                    await self._pause(self.backoff.next_delay())
                    continue
                assert isinstance(listener, _Link)
                self.wire = _negotiated(transport)
                await self._serve(transport, listener, attempt, token)
                if not self.reconnect or self._closing.is_set():
                    break
                await self._pause(self.backoff.next_delay())
        finally:
            link_error = self._fatal
            if link_error is None and not (self._closing.is_set() or self.reconnect):
                link_error = ConnectionClosed(self.stats.last_close_code, "connection lost")
            self._end(link_error)

    async def _serve(
        self, transport: WSTransport, link: _Link, attempt: int, token: str | None
    ) -> None:
        """Run one connection from login and subscribe to its end."""
        self._link = link
        stats = self.stats
        stats.connects += 1
        if stats.connects > 1:
            stats.reconnects += 1
        self._last_rx = time.monotonic()
        login = None
        if token is not None:
            # Before the subscribe: the server handles a connection's requests in order.
            transport.send(WSMsgType.TEXT, self.protocol.login_request(token)[1])
            login = asyncio.create_task(self._keep_logged_in(transport, token))
        request = self.protocol.connect_request()
        if request is None:
            self.backoff.reset()
            self._set_ready(None)
        else:
            self._connect_id = request[0]
            transport.send(WSMsgType.TEXT, request[1])
        self._emit([Connected(self.url, attempt)])
        watchdog = asyncio.create_task(self._watchdog(link)) if self.watchdog else None
        try:
            await link.done
        finally:
            for task in (watchdog, login):
                if task is not None:
                    task.cancel()
            self._link = None
            self._connect_id = None
            stats.disconnects += 1
            stats.last_close_code = link.code
            for waiter in self._waiters.values():
                if not waiter.done():
                    waiter.set_exception(ConnectionClosed(link.code, link.reason))
            self.protocol.connection_lost()
            events: list[Event] = [Disconnected(self.url, link.code, link.reason)]
            events.extend(self.protocol.events_received())
            self._emit(events)

    async def _fetch_token(self) -> str:
        """The token given, or the provider's current one (its exceptions propagate)."""
        source = self.token
        if source is None or isinstance(source, str):
            return source or ""
        token = source()
        if inspect.isawaitable(token):
            token = await token
        return token

    async def _keep_logged_in(self, transport: WSTransport, token: str) -> None:
        """Log in again with a fresh token from the provider before ``token`` expires.

        The server answers each login; a refusal ends the client (:meth:`_resolve`). A
        provider that fails, or returns nothing newer, is asked again (at most once per
        :data:`REFRESH_MIN` s) until the old token expires and the server closes the
        connection with 4003; the reconnect then asks it once more.
        """
        if isinstance(self.token, str):
            return  # nothing to refresh with: the server closes with 4003 at expiry
        exp = _expiry(token)
        while exp is not None:
            left = exp - time.time()
            await asyncio.sleep(max(REFRESH_MIN, left - min(REFRESH_AHEAD, left / 4)))
            try:
                fresh = await asyncio.wait_for(self._fetch_token(), self.connect_timeout)
            except Exception as exc:
                log.warning("tickwire client: token provider failed: %r", exc)
                continue
            fresh_exp = _expiry(fresh)
            if fresh_exp is None or fresh_exp <= exp:
                log.warning("tickwire client: the token provider gave no later token")
                continue
            exp = fresh_exp
            transport.send(WSMsgType.TEXT, self.protocol.login_request(fresh)[1])

    async def _watchdog(self, link: _Link) -> None:
        """Abort the link when nothing (data or heartbeat) arrived for ``watchdog`` s."""
        period = self.watchdog / 4
        while True:
            await asyncio.sleep(period)
            silent = time.monotonic() - self._last_rx
            if silent > self.watchdog:
                self.stats.watchdog_timeouts += 1
                log.warning("tickwire client: no data for %.1f s, reconnecting", silent)
                link.reason = f"watchdog: silent for {silent:.1f} s"
                if link.transport is not None:
                    link.transport.disconnect(graceful=False)
                if not link.done.done():
                    link.done.set_result(None)
                return

    async def _pause(self, delay: float) -> None:
        """Sleep ``delay`` seconds, waking early when the client is closed."""
        assert self._closing is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), delay)


def _negotiated(transport: WSTransport) -> Wire:
    """Read the wire the server agreed to from its 101 response headers."""
    headers = transport.response.headers
    encoding = Encoding.JSON
    for enc, name in SUBPROTOCOLS.items():
        if headers.get("Sec-WebSocket-Protocol", "").strip() == name:
            encoding = enc
    deflate = "permessage-deflate" in headers.get("Sec-WebSocket-Extensions", "").lower()
    return Wire(encoding, deflate)


def _expiry(token: str) -> float | None:
    """The ``exp`` of a JWT, unverified (the server verifies); None if unreadable."""
    try:
        return float(jwt.decode(token, options={"verify_signature": False})["exp"])
    except (jwt.PyJWTError, KeyError, TypeError, ValueError):
        return None
