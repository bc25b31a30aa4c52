"""The fault engine's I/O side: timers, targeted connections, REST and handshakes.

A gateway started without ``--faults`` (and without ``--test-faults``) has no
:class:`FaultManager` at all: ``Gateway.faults`` is None, checked once per connection
(at connect and disconnect), per handshake, per inbound message and per REST answer,
never per delivery. With one, only the connections a fault targets pay: their
``write`` (which the hub's direct fan-out and the tick's outbox writes both call) is
replaced by :meth:`_Target.write`, which runs the Sans-I/O
:class:`~tickwire.faults.wire.FrameFilter` and :class:`~tickwire.faults.wire.Pacer`;
every other connection keeps its transport's own ``write`` and gets the hub's shared
bytes untouched. See ``docs/connectivity-testing.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import socket
import struct
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..codec import frame_message
from ..dialects import fault_hooks, venue_of
from ..dialects.rest import RestResponse
from ..exceptions import ScenarioError
from ..faults import ActiveFault, FaultListener, FaultSpec, parse_scenario
from ..faults.spec import MESSAGE_KINDS
from ..faults.stale import StaleBook
from ..faults.wire import NATIVE, FrameFilter, Pacer, ProtocolHooks
from ..framing import text_frame
from ..protocol import Heartbeat, Snapshot
from .connection import Connection

if TYPE_CHECKING:
    from .gateway import Gateway

__all__ = ["FaultManager", "load_scenario"]

log = logging.getLogger("tickwire.faults")

#: Seconds between two looks at the schedules (firings, windows, held frames).
PERIOD = 0.02

# Kinds whose effect is in the frames a connection is written (its write is wrapped).
_WRITE_KINDS = MESSAGE_KINDS | {"stall", "latency", "bandwidth", "stale_snapshot"}


def load_scenario(path: str) -> list[FaultSpec]:
    """Read and check a scenario file.

    Raises:
        ScenarioError: the file cannot be read, or names the line of its first mistake.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"--faults {path}: cannot read it: {exc}") from None
    return list(parse_scenario(text, path).faults)


def venue_of_connection(conn: Connection) -> str:
    """``native``, or the venue a :class:`VenueConnection` speaks."""
    session = getattr(conn, "session", None)
    return str(session.venue) if session is not None else "native"


def hooks_of(venue: str) -> ProtocolHooks:
    """The fault hooks of a protocol."""
    return NATIVE if venue == "native" else fault_hooks(venue)


class _Target:
    """A connection some fault targets: its original ``write``, filter and pacer."""

    def __init__(self, manager: FaultManager, conn: Connection, venue: str) -> None:
        self.manager = manager
        self.conn = conn
        self.venue = venue
        hooks = hooks_of(venue)
        bind = getattr(hooks, "for_session", None)
        if bind is not None:  # hooks that read the connection's own streams
            hooks = bind(getattr(conn, "session", None))
        self.hooks: ProtocolHooks = hooks
        self.raw: Callable[[bytes], object] = conn.write
        feed = manager.gateway.feed
        self.filter = FrameFilter(
            self.hooks,
            lambda: feed.markets,
            lambda fault, detail: manager.emit(conn.id, fault, detail),
            functools.partial(manager.stale_inband, self.hooks),
            conn.id,
        )
        self.pacer: Pacer | None = None
        self.faults: set[int] = set()
        #: The latency/bandwidth faults already reported as applied.
        self.paced: set[int] = set()
        self.wrapped = False
        self.paused = False
        self._timer: asyncio.TimerHandle | None = None

    def wrap(self) -> None:
        """Route the connection's writes through :meth:`write` from now on."""
        if self.wrapped or self.conn.closed:
            return
        self.wrapped = True
        self.raw = self.conn.write
        self.conn.write = self.write
        self.conn.update_delivery()

    def write(self, data: bytes) -> object:
        now = time.monotonic()
        flt = self.filter
        if flt.busy(now):
            try:
                data = flt.process(data, now)
            except Exception:  # never let a fault take the fan-out down: pass it on
                self.manager.failed("filter")
            if not data:
                return None
        pacer = self.pacer
        if pacer is not None and pacer.active:
            pacer.push(data, now)
            self._schedule(now)
            self._watermarks()
            return None
        return self.raw(data)

    def heartbeats(self, now: float) -> None:
        """A stalled native connection's made-up heartbeats that are due (in its wire)."""
        beats = self.filter.beats(now)
        if not beats or self.conn.closed:
            return
        hub = self.manager.gateway.hub
        data = b"".join(
            frame_message(self.conn.wire, Heartbeat(ch, seq), hub.deflater) for ch, seq in beats
        )
        pacer = self.pacer
        if pacer is not None and pacer.active:
            pacer.push(data, now)
            self._schedule(now)
            return
        self.raw(data)

    def _schedule(self, now: float) -> None:
        pacer = self.pacer
        if self._timer is not None or pacer is None or not pacer.queue:
            return
        delay = max(0.0, pacer.queue[0][0] - now)
        self._timer = asyncio.get_running_loop().call_later(delay, self._drain)

    def reschedule(self, now: float) -> None:
        """The pacer's times changed: wake at its new first one."""
        self.cancel()
        self._schedule(now)

    def _drain(self) -> None:
        self._timer = None
        pacer = self.pacer
        if pacer is None or self.conn.closed:
            return
        now = time.monotonic()
        data, _next = pacer.due(now)
        if data:
            self.raw(data)
        self._watermarks()
        self._schedule(now)

    def _watermarks(self) -> None:
        """A paced backlog counts as the connection's write buffer (slow consumers)."""
        pacer = self.pacer
        if pacer is None:
            return
        cfg = self.manager.gateway.config
        if not self.paused and pacer.size > cfg.high_watermark_bytes:
            self.paused = True
            self.conn.pause_writing()
        elif self.paused and pacer.size < cfg.low_watermark_bytes:
            self.paused = False
            self.conn.resume_writing()

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class _Ban:
    """A REST client's 429s in a row, and its 418 ban."""

    __slots__ = ("strikes", "until")

    def __init__(self) -> None:
        self.strikes = 0
        self.until = 0.0


class FaultManager:
    """The gateway's faults: loaded from a scenario and the admin API, applied live."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.faults: dict[int, ActiveFault] = {}
        self._ids = itertools.count(1)
        self.targets: dict[int, _Target] = {}
        self.opened: dict[int, float] = {}
        self.stale_books: dict[str, StaleBook] = {}
        self.bans: dict[str, _Ban] = {}
        self.scenario_path: str | None = None
        self.applied_total = 0
        self._task: asyncio.Task[None] | None = None
        self._next_roll = 0.0
        self._failed: set[str] = set()

    @property
    def listener(self) -> FaultListener | None:
        return self.gateway.fault_listener

    def failed(self, where: str) -> None:
        """An unexpected error inside the fault engine: logged once per place."""
        if where not in self._failed:
            self._failed.add(where)
            log.exception("faults: %s failed (logged once; the frame is passed on)", where)

    # -- the list ----------------------------------------------------------------------

    def load(self, path: str) -> int:
        """(Re)load the scenario file: its faults replace the file's previous ones.

        Raises:
            ScenarioError: the file is unreadable or wrong (the running faults stay).
        """
        specs = load_scenario(path)
        for fault in [f for f in self.faults.values() if f.origin == "file"]:
            self.remove(fault.id)
        now = time.monotonic()
        for spec in specs:
            self.add(spec, now, "file")
        self.scenario_path = path
        log.info("faults: %d loaded from %s", len(specs), path)
        return len(specs)

    def add(self, spec: FaultSpec, now: float | None = None, origin: str = "api") -> ActiveFault:
        """Load one fault now; connections already open are considered at once."""
        now = time.monotonic() if now is None else now
        served = self.gateway.engine.symbols
        unknown = [symbol for symbol in spec.symbols if symbol not in served]
        if unknown:
            log.warning(
                "faults: %s names symbols not served (yet): %s", spec.name, ", ".join(unknown)
            )
        fault = ActiveFault(next(self._ids), spec, now, origin)
        self.faults[fault.id] = fault
        if spec.kind == "stale_snapshot":
            self._prime(fault)
        for conn in list(self.gateway.connections.values()):
            self._consider(conn, fault, now)
        self._ensure_task()
        return fault

    def remove(self, fault_id: int) -> bool:
        """Stop a fault; what it already did stays done."""
        fault = self.faults.pop(fault_id, None)
        if fault is None:
            return False
        for target in self.targets.values():
            flt = target.filter
            flt.armed = [entry for entry in flt.armed if entry[0] is not fault]
            flt.random = [f for f in flt.random if f is not fault]
            flt.stale = [f for f in flt.stale if f is not fault]
            target.faults.discard(fault_id)
        self._pace(time.monotonic())
        return True

    def clear(self) -> int:
        """Stop every fault; return how many there were."""
        ids = list(self.faults)
        for fault_id in ids:
            self.remove(fault_id)
        self.bans.clear()  # back to normal: REST bans are lifted too
        return len(ids)

    def stats(self) -> dict[str, Any]:
        """For the exit stats: the scenario, faults loaded, applications by kind."""
        by_kind: dict[str, int] = {}
        for fault in self.faults.values():
            by_kind[fault.spec.kind] = by_kind.get(fault.spec.kind, 0) + fault.applied
        return {
            "scenario": self.scenario_path,
            "loaded": len(self.faults),
            "applied": self.applied_total,
            "applied_by_kind": by_kind,
            "targeted_connections": len(self.targets),
        }

    def listing(self) -> list[dict[str, Any]]:
        """Every loaded fault with its counters (the admin API's GET)."""
        now = time.monotonic()
        return [fault.as_dict(now) for fault in self.faults.values()]

    # -- connections -------------------------------------------------------------------

    def connected(self, conn: Connection) -> None:
        """A connection opened: the faults that target it are set up."""
        now = time.monotonic()
        self.opened[conn.id] = now
        for fault in list(self.faults.values()):
            self._consider(conn, fault, now)

    def disconnected(self, conn: Connection) -> None:
        self.opened.pop(conn.id, None)
        target = self.targets.pop(conn.id, None)
        if target is not None:
            target.cancel()

    def _target(self, conn: Connection, venue: str) -> _Target:
        target = self.targets.get(conn.id)
        if target is None:
            target = self.targets[conn.id] = _Target(self, conn, venue)
        return target

    def _consider(self, conn: Connection, fault: ActiveFault, now: float) -> None:
        """Set up what ``fault`` does to ``conn`` for as long as it is loaded."""
        spec = fault.spec
        kind = spec.kind
        if (kind in MESSAGE_KINDS and not spec.random_mode) or kind in (
            "stall",
            "disconnect",
            "burst",
        ):
            return  # point faults: a connection is targeted when one fires (_fire)
        if kind == "rate_limit" and spec.params["scope"] != "subscribe":
            return  # per request or handshake
        if kind == "stale_snapshot" and spec.params["where"] == "rest":
            return
        venue = venue_of_connection(conn)
        if kind == "stale_snapshot" and venue == "binance":
            return  # Binance has no in-band snapshot (its REST depth is faulted)
        if not fault.targets(conn.id, venue):
            return
        fault.targeted += 1
        fault.connections.add(conn.id)
        target = self._target(conn, venue)
        target.faults.add(fault.id)
        if kind in _WRITE_KINDS:
            target.wrap()
        if spec.random_mode:
            target.filter.random.append(fault)
        elif kind == "stale_snapshot":
            target.filter.stale.append(fault)
        elif kind == "max_connection_age":
            base = max(self.opened.get(conn.id, now), fault.first())
            delay = max(0.0, base + float(spec.params["age"]) / float(spec.params["speed"]) - now)
            asyncio.get_running_loop().call_later(delay, self._age_out, conn, fault)
        elif kind in ("latency", "bandwidth"):
            self._pace(now)

    # -- the periodic look -------------------------------------------------------------

    def _ensure_task(self) -> None:
        if self._task is None or self._task.done():
            with contextlib.suppress(RuntimeError):
                self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                self.step(time.monotonic())
            except Exception:  # a fault must never take the gateway down
                log.exception("faults: step failed")
            await asyncio.sleep(PERIOD)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for target in self.targets.values():
            target.cancel()

    def step(self, now: float) -> None:
        """Fire what is due, open and close windows, release held frames."""
        for fault in list(self.faults.values()):
            spec = fault.spec
            if spec.random_mode:
                self._random_window(fault, now)
            elif spec.kind in MESSAGE_KINDS or spec.kind in ("stall", "disconnect", "burst"):
                for _ in range(fault.due(now)):
                    self._fire(fault, now)
        self._pace(now)
        if now >= self._next_roll:
            self._next_roll = now + 0.25
            for fault in self.faults.values():
                if fault.spec.kind == "stale_snapshot" and fault.window_open(now):
                    self._prime(fault)
        for target in list(self.targets.values()):
            held = target.filter.release(now)
            if held and not target.conn.closed:
                target.raw(held)
            if target.filter.frozen:
                target.heartbeats(now)

    def _random_window(self, fault: ActiveFault, now: float) -> None:
        """A random-mode fault draws only while its window is open."""
        is_open = fault.window_open(now)
        for target in self.targets.values():
            if fault.id not in target.faults:
                continue
            flt = target.filter
            listed = fault in flt.random
            if is_open and not listed:
                flt.random.append(fault)
            elif not is_open and listed:
                flt.random.remove(fault)

    def _pace(self, now: float) -> None:
        """Set each targeted connection's pacer from the open latency/bandwidth windows."""
        for target in self.targets.values():
            delay = jitter = rate = 0.0
            for fault_id in target.faults:
                fault = self.faults.get(fault_id)
                if fault is None or fault.spec.kind not in ("latency", "bandwidth"):
                    continue
                if not fault.window_open(now):
                    continue
                params = fault.spec.params
                if fault.spec.kind == "latency":
                    delay = max(delay, float(params["delay_ms"]) / 1000)
                    jitter = max(jitter, float(params["jitter_ms"]) / 1000)
                else:
                    cap = float(params["bytes_per_s"])
                    rate = cap if not rate else min(rate, cap)
                pacer = target.pacer
                if pacer is None:
                    target.pacer = pacer = Pacer(functools.partial(fault.rng.uniform, -1.0, 1.0))
                if fault.id not in target.paced:
                    target.paced.add(fault.id)
                    fault.applied += 1
                    self.emit(target.conn.id, fault, {**params, "action": "paced"})
            pacer = target.pacer
            if pacer is not None:
                if pacer.set(now, delay, jitter, rate):
                    target.reschedule(now)

    def _fire(self, fault: ActiveFault, now: float) -> None:
        spec = fault.spec
        if spec.kind == "burst":
            self._burst(fault, now)
            return
        for conn in list(self.gateway.connections.values()):
            venue = venue_of_connection(conn)
            if conn.closed or not fault.targets(conn.id, venue) or not fault.draw():
                continue
            fault.connections.add(conn.id)
            if spec.kind in MESSAGE_KINDS:
                target = self._target(conn, venue)
                target.wrap()
                target.filter.arm(fault)
            elif spec.kind == "stall":
                target = self._target(conn, venue)
                target.wrap()
                seconds = float(spec.params["seconds"])
                heartbeats = bool(spec.params["heartbeats"])
                interval = self.gateway.hub.heartbeat_interval
                target.filter.stall(now + seconds, heartbeats, now, interval)
                fault.applied += 1
                self.emit(conn.id, fault, {"seconds": seconds, "heartbeats": heartbeats})
            else:
                self._disconnect(conn, fault, venue)

    def _burst(self, fault: ActiveFault, now: float) -> None:
        params = fault.spec.params
        factor, seconds = float(params["factor"]), float(params["seconds"])
        source = self.gateway.source
        simulator = getattr(source, "simulator", None)
        if simulator is not None:
            simulator.start_burst(now, factor, seconds)
        else:
            source.burst(now)
        fault.applied += 1
        self.emit(None, fault, {"factor": factor, "seconds": seconds})

    # -- closes ------------------------------------------------------------------------

    def _disconnect(self, conn: Connection, fault: ActiveFault, venue: str) -> None:
        params = fault.spec.params
        code = int(params["code"])
        reason = str(params.get("reason") or "") or (
            "connection reset" if code == 1006 else f"fault {fault.spec.name}"
        )
        notice = None
        if params.get("notice"):
            session = getattr(conn, "session", None)
            notice = hooks_of(venue).notice(session, time.time_ns() // 1_000_000)
        target = self.targets.get(conn.id)
        raw = target.raw if target is not None else conn.write
        fault.applied += 1
        self.emit(conn.id, fault, {"code": code, "notice": notice is not None, "reason": reason})
        lead = float(params.get("notice_lead", 0.0))
        if notice is not None:
            raw(text_frame(notice))
            if lead > 0:
                asyncio.get_running_loop().call_later(lead, self.close, conn, code, reason)
                return
        self.close(conn, code, reason)

    def _age_out(self, conn: Connection, fault: ActiveFault) -> None:
        if fault.id not in self.faults or conn.closed:
            return
        self._disconnect(conn, fault, venue_of_connection(conn))

    def close(self, conn: Connection, code: int, reason: str) -> None:
        """Close ``conn`` with ``code``; 1006: reset the TCP connection, no close frame."""
        if conn.closed or conn.transport is None:
            return
        if code != 1006:
            conn.fail(code, reason)
            return
        closes = self.gateway.closes_by_code
        closes[1006] = closes.get(1006, 0) + 1
        underlying = conn.transport.underlying_transport
        sock = underlying.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.closed = True
        conn.deliver = None
        conn.drop_subscriptions()
        conn.transport.disconnect(graceful=False)

    # -- requests ----------------------------------------------------------------------

    def _limits(self, scope: str, venue: str, now: float) -> list[ActiveFault]:
        return [
            f
            for f in self.faults.values()
            if f.spec.kind == "rate_limit"
            and f.spec.params["scope"] == scope
            and f.spec.targets_venue(venue)
            and f.window_open(now)
        ]

    def refuse_message(self, conn: Connection, data: bytes) -> bool:
        """True when ``conn``'s subscribe is refused by a ``rate_limit`` (answered)."""
        target = self.targets.get(conn.id)
        if target is None or not target.faults:
            return False
        lowered = data.lower()
        if b"subscribe" not in lowered.replace(b"unsubscribe", b""):
            return False
        now = time.monotonic()
        for fault in self._limits("subscribe", target.venue, now):
            if fault.id in target.faults and fault.draw():
                fault.applied += 1
                self.emit(conn.id, fault, {"scope": "subscribe", "action": "refused"})
                conn.reply_rate_limited("subscribe refused: too many requests (fault)")
                return True
        return False

    def refuse_handshake(self, path: str, conn_id: int) -> RestResponse | None:
        """The HTTP answer refusing a WebSocket handshake (``rate_limit`` connect)."""
        found = venue_of(path.split("?", 1)[0])
        venue = found[0] if found else "native"
        now = time.monotonic()
        for fault in self._limits("connect", venue, now):
            if fault.targets(conn_id, venue) and fault.draw():
                fault.applied += 1
                retry = float(fault.spec.params["retry_after"])
                self.emit(conn_id, fault, {"scope": "connect", "status": 429, "retry_after": retry})
                return hooks_of(venue).rest_limited(429, retry, 0)
        return None

    def refuse_rest(self, venue: str, client: str, path: str) -> RestResponse | None:
        """The venue's over-the-limit answer to a REST request, or None (served)."""
        now = time.monotonic()
        key = f"{venue}|{client}"
        ban = self.bans.get(key)
        hooks = hooks_of(venue)
        if ban is not None and now < ban.until:
            left = ban.until - now
            until_ms = time.time_ns() // 1_000_000 + int(left * 1000)
            self._emit_rest(None, venue, path, 418, client, left)
            return hooks.rest_limited(418, left, until_ms)
        for fault in self._limits("rest", venue, now):
            if fault.spec.share < 1 and fault.rng.random() >= fault.spec.share:
                continue
            if not fault.draw():
                continue
            params = fault.spec.params
            ban = self.bans.setdefault(key, _Ban())
            ban.strikes += 1
            fault.applied += 1
            ban_after = int(params["ban_after"])
            if ban_after and ban.strikes > ban_after:
                ban.strikes = 0
                ban.until = now + float(params["ban_seconds"])
                until_ms = time.time_ns() // 1_000_000 + int(float(params["ban_seconds"]) * 1000)
                self._emit_rest(fault, venue, path, 418, client, float(params["ban_seconds"]))
                return hooks.rest_limited(418, float(params["ban_seconds"]), until_ms)
            retry = float(params["retry_after"])
            self._emit_rest(fault, venue, path, 429, client, retry)
            return hooks.rest_limited(429, retry, 0)
        if ban is not None and not self._limits("rest", venue, now):
            ban.strikes = 0
        return None

    def _emit_rest(
        self,
        fault: ActiveFault | None,
        venue: str,
        path: str,
        status: int,
        client: str,
        retry_after: float,
    ) -> None:
        """Tell the listener of a refused REST request (``retry_after``: what the
        answer's ``Retry-After`` asked the client to wait, in seconds)."""
        detail: dict[str, object] = {"scope": "rest", "venue": venue, "path": path}
        detail.update(status=status, client=client, retry_after=retry_after)
        if fault is not None:
            self.emit(None, fault, detail)
        elif self.listener is not None:
            self.listener.fault(None, "rate_limit", {**detail, "fault": None}, time.monotonic())

    # -- stale snapshots ---------------------------------------------------------------

    def _book(self, symbol: str) -> StaleBook:
        book = self.stale_books.get(symbol)
        if book is None:
            book = self.stale_books[symbol] = StaleBook()
        return book

    def _current(
        self, symbol: str
    ) -> Callable[[], tuple[int, Sequence[Sequence[str]], Sequence[Sequence[str]]]]:
        def current() -> tuple[int, Sequence[Sequence[str]], Sequence[Sequence[str]]]:
            snap = self.gateway.book_snapshot(symbol)
            return snap.seq, snap.bids or [], snap.asks or []

        return current

    def _replay(self, symbol: str) -> Callable[[int], list[bytes] | None]:
        hub = self.gateway.hub
        ch = hub.channels[f"book.{symbol}"]
        return lambda since: hub.replay(ch, since)

    def _stale_at(self, symbol: str, updates: int) -> tuple[int, int, Any] | None:
        """``(stale seq, live seq, book)`` about ``updates`` behind ``symbol``'s stream."""
        hub = self.gateway.hub
        ch = hub.channels.get(f"book.{symbol}")
        if ch is None:
            return None
        live = ch.seq
        seq, book = self._book(symbol).at(
            live - updates, self._current(symbol), self._replay(symbol)
        )
        return seq, live, book

    def _prime(self, fault: ActiveFault) -> None:
        """Keep the stale books of ``fault``'s symbols rolling (and start them)."""
        updates = int(fault.spec.params["updates"])
        symbols = fault.spec.symbols or tuple(self.gateway.engine.symbols)
        for symbol in symbols:
            if symbol in self.gateway.engine.symbols:
                self._stale_at(symbol, updates)

    def stale_rest(self, venue: str, symbol: str, depth: int | None) -> Snapshot | None:
        """A stale REST book for ``symbol`` (a ``stale_snapshot`` fault), or None."""
        now = time.monotonic()
        for fault in self.faults.values():
            spec = fault.spec
            if spec.kind != "stale_snapshot" or spec.params["where"] == "stream":
                continue
            if not spec.targets_venue(venue) or not fault.symbol(symbol):
                continue
            if not fault.window_open(now):
                continue
            if spec.share < 1 and fault.rng.random() >= spec.share:
                continue
            if not fault.draw():
                continue
            found = self._stale_at(symbol, int(spec.params["updates"]))
            if found is None:
                return None
            seq, live, book = found
            fault.applied += 1
            self.emit(
                None,
                fault,
                {"symbol": symbol, "seq": seq, "stream_seq": live, "where": "rest", "venue": venue},
            )
            return Snapshot(
                f"book.{symbol}",
                seq,
                self.gateway.engine.epoch,
                bids=book.bids(depth),
                asks=book.asks(depth),
                checksum=book.checksum(),
            )
        return None

    def stale_inband(
        self, hooks: ProtocolHooks, payload: bytes, symbol: str, seq: int | None, updates: int
    ) -> tuple[bytes, int] | None:
        """An in-band snapshot ``payload`` replaced by one ``updates`` older."""
        if seq is None:  # Kraken's carry none: the stream is at the channel's seq
            ch = self.gateway.hub.channels.get(f"book.{symbol}")
            if ch is None:
                return None
            seq = ch.seq
        stale_seq, book = self._book(symbol).at(
            seq - updates, self._current(symbol), self._replay(symbol)
        )
        if stale_seq >= seq:
            return None
        body = hooks.stale_snapshot(payload, stale_seq, book)
        return (body, stale_seq) if body is not None else None

    # -- the listener ------------------------------------------------------------------

    def emit(self, conn_id: int | None, fault: ActiveFault, detail: Mapping[str, object]) -> None:
        """Tell the listener (the report) of one application of ``fault``."""
        self.applied_total += 1
        log.debug("fault %d %s on %s: %s", fault.id, fault.spec.kind, conn_id, dict(detail))
        listener = self.listener
        if listener is None:
            return
        full = {"fault": fault.id, "name": fault.spec.name, **detail}
        if "venue" not in full:
            target = self.targets.get(conn_id) if conn_id is not None else None
            full["venue"] = target.venue if target is not None else self._venue_of(conn_id)
        try:
            listener.fault(conn_id, fault.spec.kind, full, time.monotonic())
        except Exception:
            log.exception("fault listener failed")

    def _venue_of(self, conn_id: int | None) -> str | None:
        conn = self.gateway.connections.get(conn_id) if conn_id is not None else None
        return venue_of_connection(conn) if conn is not None else None
