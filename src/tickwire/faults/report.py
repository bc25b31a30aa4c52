"""The connectivity report: what each client did after each fault it was given (Sans-I/O).

The gateway tells a :class:`Report` about the few moments that show how a client
behaves -- a connection opened or closed, a subscription made or dropped, a venue REST
request -- and the fault engine tells it about every fault it applied
(:meth:`Report.fault`). None of it happens per delivered message: a gateway with no
report pays nothing, one with a report pays a list append per request or connection.

From those events :meth:`Report.summary` derives, per fault:

- **detected**: the client reacted after the fault: it resubscribed the symbol's book
  (a native subscribe or resume, a venue join, also a repeated one), fetched a REST
  depth snapshot of the symbol, or reconnected (a new connection of the same client);
- **recovered** / ``time_to_book_s``: when it next held a book that is *provably*
  right, by its venue's rule (:data:`RECOVERY_RULES`);
- **storm**: more than ``storm_count`` reconnects or snapshot requests by the client
  within ``storm_window_s`` after the fault;
- **never_noticed**: a fault that needs a resync (:data:`NEEDS_RESYNC`) after which the
  connection stayed open for ``notice_window_s`` and the client did not react.

A *client* is recognised across its connections and REST requests by
:func:`client_key`: the name it gives (``?client=NAME`` on its URL, or an
``X-Tickwire-Client`` header), else its address and User-Agent. Times are monotonic
seconds passed in by the caller; ``wall`` times only label the JSON.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CLOSES",
    "NEEDS_RESYNC",
    "REACTION_NEEDED",
    "RECOVERY_RULES",
    "SNAPSHOT_PATHS",
    "ClientEvent",
    "ConnRecord",
    "FaultRecord",
    "Report",
    "client_key",
    "render_summary",
]

#: Fault kinds after which a correct client must resync its book (a client that keeps
#: its connection and does not is reported as having never noticed the fault).
NEEDS_RESYNC = frozenset({"gap", "checksum", "reorder", "stale_snapshot", "stall"})

#: Fault kinds that end the connection: the expected reaction is a reconnect.
CLOSES = frozenset({"disconnect", "max_connection_age", "maintenance"})

#: Fault kinds a client must react to: resync, reconnect, or (``rate_limit``) back off.
REACTION_NEEDED = NEEDS_RESYNC | CLOSES | {"rate_limit"}

#: How each venue's client proves its book right again after a fault.
RECOVERY_RULES = {
    "native": "a subscribe or resume of the book channel after the fault (snapshot or "
    "replayed history, checked by seq and checksum)",
    "binance": "a REST depth snapshot fetched after the fault while a diff-depth stream "
    "of the symbol is already subscribed (its lastUpdateId is continued by that stream), "
    "and not itself a faulted answer",
    "okx": "a (re)subscription of the symbol's book after the fault: OKX sends a fresh "
    "snapshot in-band",
    "kraken": "a (re)subscription of the symbol's book after the fault: Kraken sends a "
    "fresh snapshot in-band",
}

#: Venue REST paths (after the venue prefix) that are book snapshots.
SNAPSHOT_PATHS = {
    "binance": ("/api/v3/depth",),
    "okx": ("/api/v5/market/books",),
    "kraken": ("/0/public/Depth",),
}

#: A rate-limited client that asks again sooner than this (without a Retry-After to
#: compare with) did not back off.
RATE_LIMIT_PAUSE_S = 1.0

#: Events kept per client (oldest dropped first): hours of a storming client.
MAX_EVENTS = 20_000
#: Clients told apart; later ones share the key ``"(other clients)"``.
MAX_CLIENTS = 10_000
OTHERS = "(other clients)"
#: Connections remembered; past it the oldest closed ones are forgotten.
MAX_CONNS = 100_000
#: Faults kept; later ones are counted in ``totals.faults_dropped`` only.
MAX_FAULTS = 100_000


def client_key(peer: str, user_agent: str, name: str | None = None) -> str:
    """Who a connection or request belongs to: its given name, else host + User-Agent.

    ``peer`` is ``host:port`` (the port differs on every connection and is dropped).
    """
    if name:
        return name
    host = peer.rsplit(":", 1)[0] if peer.count(":") == 1 else peer.rpartition(":")[0]
    return f"{host or peer} {user_agent or '-'}"


@dataclass(slots=True)
class ClientEvent:
    """One thing a client did: ``open``, ``close``, ``sub``, ``unsub`` or ``rest``."""

    t: float
    what: str
    client: str
    conn: int | None
    venue: str
    symbol: str | None = None
    target: str = ""
    book: bool = False
    ok: bool = True


@dataclass(slots=True)
class ConnRecord:
    """One connection as the report saw it."""

    id: int
    venue: str
    path: str
    peer: str
    user_agent: str
    client: str
    opened: float
    opened_wall: float
    closed: float | None = None
    close_code: int | None = None
    closed_by: str | None = None
    reason: str = ""
    #: Live subscriptions: target -> (symbol, is a book).
    subscriptions: dict[str, tuple[str | None, bool]] = field(default_factory=dict)
    subscribed: list[str] = field(default_factory=list)
    faults: list[int] = field(default_factory=list)

    def live_at(self, t: float) -> bool:
        return self.opened <= t and (self.closed is None or self.closed >= t)


@dataclass(slots=True)
class FaultRecord:
    """One fault applied (``conn`` None: gateway-wide) and what it was."""

    n: int
    conn: int | None
    kind: str
    t: float
    wall: float
    venue: str
    symbol: str | None
    channel: str | None
    client: str | None
    detail: dict[str, Any]
    #: The books it concerns: its symbol, else those its connection had.
    symbols: tuple[str, ...] = ()
    #: A REST fault's answer (the request it was applied to): not a reaction to it.
    answered: ClientEvent | None = None


class Report:
    """Everything the gateway saw clients do around the faults it applied.

    Args:
        notice_window_s: how long a client may take to react to a fault that needs a
            resync before the fault counts as never noticed (if it kept the connection).
        storm_window_s, storm_count: a client storms when it makes more than
            ``storm_count`` reconnects, or more than ``storm_count`` snapshot requests,
            within any ``storm_window_s``.
    """

    def __init__(
        self,
        *,
        notice_window_s: float = 10.0,
        storm_window_s: float = 10.0,
        storm_count: int = 5,
    ) -> None:
        self.notice_window_s = notice_window_s
        self.storm_window_s = storm_window_s
        self.storm_count = storm_count
        self.conns: dict[int, ConnRecord] = {}
        # Each client's events in time order (a client's reactions are its own).
        self.events: dict[str, list[ClientEvent]] = {}
        self.faults: list[FaultRecord] = []
        self.faults_dropped = 0
        # REST faults reported before the request they answer (claimed by rest()).
        self._pending_rest: list[FaultRecord] = []
        # Counters for metrics (monotonic, never derived).
        self.opens = 0
        self.refusals = 0
        self.closes = 0
        self.subscribes = 0
        self.rest_requests = 0
        self.snapshot_requests = 0
        self._wall_offset = 0.0

    # -- what the gateway reports --------------------------------------------------------

    def opened(
        self,
        conn_id: int,
        venue: str,
        path: str,
        peer: str,
        user_agent: str,
        name: str | None,
        now: float,
        wall: float = 0.0,
    ) -> None:
        """A WebSocket connection was accepted (``venue`` "native" for the native one)."""
        client = self._key(client_key(peer, user_agent, name))
        if len(self.conns) >= MAX_CONNS:
            gone = next((k for k, c in self.conns.items() if c.closed is not None), None)
            if gone is not None:
                del self.conns[gone]
        self.conns[conn_id] = ConnRecord(
            conn_id, venue, path, peer, user_agent, client, now, wall or now
        )
        if wall:
            self._wall_offset = wall - now
        self.opens += 1
        self._log(ClientEvent(now, "open", client, conn_id, venue))

    def refused(
        self,
        conn_id: int,
        venue: str,
        path: str,
        user_agent: str,
        name: str | None,
        status: int | None,
        now: float,
        wall: float = 0.0,
    ) -> None:
        """A handshake was refused (a fault): an attempt that never became a connection.

        The peer is not known at the handshake, so an unnamed client is matched by its
        User-Agent among the clients seen (when exactly one has it).
        """
        client = name
        if not client:
            suffix = " " + (user_agent or "-")
            known = [k for k in self.events if k.endswith(suffix)]
            client = known[0] if len(known) == 1 else f"?{suffix}"
        client = self._key(client)
        rec = ConnRecord(conn_id, venue, path, "?", user_agent, client, now, wall or now)
        rec.closed = now
        rec.close_code = status
        rec.closed_by = "refused"
        self.conns[conn_id] = rec
        self.refusals += 1
        self._log(ClientEvent(now, "open", client, conn_id, venue))
        self._log(ClientEvent(now, "close", client, conn_id, venue))

    def subscribed(
        self, conn_id: int, target: str, symbol: str | None, book: bool, now: float
    ) -> None:
        """``conn_id`` subscribed to ``target`` (a native channel or a venue stream),
        also again to one it has (a resubscribe), or resumed it."""
        rec = self.conns.get(conn_id)
        if rec is None:
            return
        rec.subscriptions[target] = (symbol, book)
        if target not in rec.subscribed and len(rec.subscribed) < 64:
            rec.subscribed.append(target)
        self.subscribes += 1
        self._log(ClientEvent(now, "sub", rec.client, conn_id, rec.venue, symbol, target, book))

    def unsubscribed(self, conn_id: int, target: str, now: float) -> None:
        """``conn_id`` left ``target``."""
        rec = self.conns.get(conn_id)
        if rec is None:
            return
        symbol = rec.subscriptions.pop(target, (None, False))[0]
        self._log(ClientEvent(now, "unsub", rec.client, conn_id, rec.venue, symbol, target))

    def closed(self, conn_id: int, code: int | None, by: str, reason: str, now: float) -> None:
        """``conn_id`` ended: ``by`` "server" or "client" (or "network": no close frame)."""
        rec = self.conns.get(conn_id)
        if rec is None or rec.closed is not None:
            return
        rec.closed = now
        rec.close_code = code
        rec.closed_by = by
        rec.reason = reason[:120]
        self.closes += 1
        self._log(ClientEvent(now, "close", rec.client, conn_id, rec.venue))

    def rest(
        self,
        venue: str,
        path: str,
        symbol: str | None,
        peer: str,
        user_agent: str,
        name: str | None,
        status: int,
        now: float,
    ) -> None:
        """A venue REST request (on the admin port) was answered with ``status``."""
        client = self._key(client_key(peer, user_agent, name))
        snapshot = path in SNAPSHOT_PATHS.get(venue, ())
        self.rest_requests += 1
        if snapshot:
            self.snapshot_requests += 1
        ev = ClientEvent(now, "rest", client, None, venue, symbol, path, snapshot, status == 200)
        self._log(ev)
        if self._pending_rest:
            for f in self._pending_rest:
                f.client = client
                f.answered = ev
                if not f.symbols and symbol is not None:
                    f.symbol = symbol
                    f.symbols = (symbol,)
                ev.ok = False  # a refused or stale answer proves nothing
            self._pending_rest.clear()

    def fault(
        self, conn_id: int | None, kind: str, detail: Mapping[str, object], now: float
    ) -> None:
        """The fault engine applied fault ``kind`` to ``conn_id`` (None: gateway-wide).

        ``detail`` names what was done, and where known the ``symbol`` (or
        ``channel``) and ``venue``. A fault on a connection without a symbol (a
        ``stall``, a ``disconnect``) concerns every book the connection had. A REST
        fault (``conn_id`` None, ``scope``/``where`` "rest", or a ``peer`` named) is
        the answer to the REST request reported next (:meth:`rest`) -- or, with a
        ``peer`` (and ``user_agent``), to that client's latest one: a stale or refused
        answer never counts as a recovery.
        """
        if len(self.faults) >= MAX_FAULTS:
            self.faults_dropped += 1
            return
        rec = self.conns.get(conn_id) if conn_id is not None else None
        symbol = _text(detail.get("symbol"))
        channel = _text(detail.get("channel"))
        if symbol is None and channel is not None and "." in channel:
            symbol = channel.partition(".")[2]
        if symbol is not None:
            symbols: tuple[str, ...] = (symbol,)
        elif rec is not None:
            symbols = tuple(
                sorted({sym for sym, book in rec.subscriptions.values() if book and sym})
            )
        else:
            symbols = ()
        venue = _text(detail.get("venue")) or (rec.venue if rec is not None else "*")
        client = rec.client if rec is not None else None
        if client is None and detail.get("peer"):
            client = self._key(
                client_key(
                    str(detail["peer"]),
                    str(detail.get("user_agent") or ""),
                    _text(detail.get("client")),
                )
            )
        n = len(self.faults)
        record = FaultRecord(
            n,
            conn_id,
            kind,
            now,
            now + self._wall_offset,
            venue,
            symbol,
            channel,
            client,
            {k: v for k, v in detail.items() if isinstance(v, (str, int, float, bool))},
            symbols,
        )
        self.faults.append(record)
        if rec is not None and len(rec.faults) < 1000:
            rec.faults.append(n)
        rest_fault = "rest" in (detail.get("scope"), detail.get("where"))
        if client is None and conn_id is None and rest_fault:
            self._pending_rest.append(record)  # the request about to be reported
        elif (
            client is not None
            and conn_id is None
            and (rest_fault or kind in ("stale_snapshot", "rate_limit"))
        ):
            # The REST answer it describes is the client's latest one (of the symbol).
            for ev in reversed(self.events.get(client, ())):
                if ev.what == "rest" and (symbol is None or ev.symbol == symbol):
                    ev.ok = False
                    record.answered = ev
                    break

    def _key(self, key: str) -> str:
        """``key``, or the shared key once :data:`MAX_CLIENTS` clients are known."""
        if key in self.events or len(self.events) < MAX_CLIENTS:
            return key
        return OTHERS

    def _log(self, ev: ClientEvent) -> None:
        log = self.events.get(ev.client)
        if log is None:
            log = self.events[ev.client] = []
        log.append(ev)
        if len(log) > MAX_EVENTS + MAX_EVENTS // 4:
            del log[: MAX_EVENTS // 4]  # the oldest quarter, at once (amortised)

    # -- derivation ------------------------------------------------------------------------

    def _client_events(self, f: FaultRecord) -> list[ClientEvent]:
        """What the fault's client did from the fault on (not the answer it spoiled)."""
        assert f.client is not None
        log = self.events.get(f.client, [])
        start = bisect.bisect_left(log, f.t, key=_time)
        return [ev for ev in log[start:] if ev is not f.answered]

    def _connected_before(self, client: str, t: float) -> bool:
        """True if ``client`` had a connection before ``t`` (a later one reconnects)."""
        for ev in self.events.get(client, ()):
            if ev.t >= t:
                return False
            if ev.what == "open":
                return True
        return False

    def _storm(self, client: str, start: float, end: float) -> dict[str, Any]:
        """Reconnects and snapshot requests of ``client`` in ``[start, end]``, peak rates.

        A snapshot request is a REST depth request, or a book subscription of a symbol
        the client had subscribed before (a resubscribe: OKX, Kraken and the native
        protocol answer it with a snapshot); a first subscription is not one.
        """
        opens: list[float] = []
        snaps: list[float] = []
        booked: set[str | None] = set()
        connected = False
        for ev in self.events.get(client, ()):
            if ev.t > end:
                break
            again = False
            if ev.what == "sub" and ev.book:
                again = ev.symbol in booked
                booked.add(ev.symbol)
            first = ev.what == "open" and not connected
            connected = connected or ev.what == "open"
            if ev.t < start:
                continue
            if ev.what == "open" and not first:  # a client's first connection is none
                opens.append(ev.t)
            elif (ev.what == "rest" and ev.book) or again:
                snaps.append(ev.t)
        w = self.storm_window_s
        peak_opens = _peak(opens, w)
        peak_snaps = _peak(snaps, w)
        return {
            "reconnects": len(opens),
            "snapshot_requests": len(snaps),
            "peak_reconnects_per_s": round(peak_opens / w, 3),
            "peak_snapshots_per_s": round(peak_snaps / w, 3),
            "storm": peak_opens > self.storm_count or peak_snaps > self.storm_count,
        }

    def _fault_outcome(self, f: FaultRecord, now: float) -> dict[str, Any]:
        rec = self.conns.get(f.conn) if f.conn is not None else None
        out: dict[str, Any] = {
            "n": f.n,
            "kind": f.kind,
            "at_s": round(f.t - self._origin(), 3),
            "wall": round(f.wall, 3),
            "conn": f.conn,
            "venue": f.venue,
            "symbol": f.symbol,
            "symbols": list(f.symbols),
            "channel": f.channel,
            "client": f.client,
            "detail": f.detail,
        }
        if f.client is None:
            out.update(
                detected=None, reaction=None, recovered=None, never_noticed=False, storm=None
            )
            return out
        events = self._client_events(f)
        if not self._connected_before(f.client, f.t):
            # A client's first connection is not a reconnect (a REST fault at start-up).
            first = next((ev for ev in events if ev.what == "open"), None)
            events = [ev for ev in events if ev is not first]
        reaction: ClientEvent | None = None
        how = None
        for ev in events:
            if ev.what == "open":
                how = "reconnected"
            elif ev.what == "sub" and ev.book and ev.symbol in f.symbols:
                how = "resubscribed"
            elif ev.what == "rest" and ev.book and ev.symbol in f.symbols:
                how = "rest_snapshot"
            else:
                continue
            reaction = ev
            break
        closed_after = (
            rec is not None and rec.closed is not None and rec.closed >= f.t
        )  # the connection the fault hit ended after it
        out["reaction"] = how
        out["reaction_s"] = round(reaction.t - f.t, 3) if reaction is not None else None
        if rec is not None and closed_after:
            assert rec.closed is not None
            out["closed_after_s"] = round(rec.closed - f.t, 3)
            out["closed_by"] = rec.closed_by
            out["close_code"] = rec.close_code
        reconnect = next((ev for ev in events if ev.what == "open"), None)
        out["reconnected_after_s"] = round(reconnect.t - f.t, 3) if reconnect is not None else None
        out["resubscribed"] = any(
            ev.what == "sub" and ev.book and ev.symbol in f.symbols for ev in events
        )
        out["rest_snapshot"] = any(
            ev.what == "rest" and ev.book and ev.symbol in f.symbols for ev in events
        )
        recovered = self._recovered(f, events)
        out["recovered"] = recovered is not None
        out["time_to_book_s"] = round(recovered - f.t, 3) if recovered is not None else None
        out["detected"] = reaction is not None
        out["reaction_needed"] = f.kind in REACTION_NEEDED
        if f.kind == "rate_limit":
            # Backing off: the client's next request of any kind, against Retry-After.
            nxt = next(
                (
                    ev
                    for ev in events
                    if ev.what in ("rest", "open") and (f.conn is None or ev.conn != f.conn)
                ),
                None,
            )  # not the refused handshake itself
            out["next_request_s"] = round(nxt.t - f.t, 3) if nxt is not None else None
            retry = f.detail.get("retry_after")
            if isinstance(retry, (int, float)) and not isinstance(retry, bool):
                out["honoured_retry_after"] = nxt is None or nxt.t - f.t >= retry
            else:
                retry = RATE_LIMIT_PAUSE_S
            # A refusal is noticed by waiting before the next request, not by asking again.
            out["detected"] = out["backed_off"] = nxt is None or nxt.t - f.t >= retry
            out["reaction"] = "backed_off" if out["backed_off"] else "asked_again"
            out["reaction_s"] = out["next_request_s"]
        window_end = f.t + self.notice_window_s
        open_through = rec is None or rec.closed is None or rec.closed > window_end
        late = reaction is None or reaction.t > window_end
        expected = f.kind in NEEDS_RESYNC
        if expected and late and open_through and now >= window_end:
            out["never_noticed"] = True
        else:
            out["never_noticed"] = False
        out["pending"] = expected and reaction is None and now < window_end
        storm = self._storm(f.client, f.t, f.t + max(self.storm_window_s * 3, 30.0))
        out["storm"] = storm["storm"]
        out["storm_detail"] = storm
        return out

    def _recovered(self, f: FaultRecord, events: list[ClientEvent]) -> float | None:
        """When the client next held a provably right book of every symbol the fault
        concerns (None: not yet, or it concerns no book)."""
        if not f.symbols:
            return None
        if f.detail.get("resynced_in_band"):
            return f.t  # the gateway itself sent the client a fresh snapshot
        worst = f.t
        for symbol in f.symbols:
            t = self._book_right(f, symbol, events)
            if t is None:
                return None
            worst = max(worst, t)
        return worst

    def _book_right(self, f: FaultRecord, symbol: str, events: list[ClientEvent]) -> float | None:
        if f.venue == "binance":
            for ev in events:
                if ev.what == "rest" and ev.book and ev.ok and ev.symbol == symbol:
                    if self._streaming(f.client, symbol, ev.t):
                        return ev.t
            return None
        for ev in events:
            if ev.what == "sub" and ev.book and ev.symbol == symbol:
                return ev.t
        return None

    def _streaming(self, client: str | None, symbol: str | None, t: float) -> bool:
        """True if ``client`` holds a live book stream of ``symbol`` at ``t``."""
        live: dict[int, bool] = {}
        for ev in self.events.get(client or "", ()):
            if ev.t > t:
                break
            if ev.conn is None:
                continue
            if ev.what == "sub" and ev.book and _same_symbol(ev.symbol, symbol):
                live[ev.conn] = True
            elif ev.what == "unsub" and _same_symbol(ev.symbol, symbol):
                live.pop(ev.conn, None)
            elif ev.what == "close":
                live.pop(ev.conn, None)
        return bool(live)

    def _origin(self) -> float:
        if self.conns:
            return min(
                [c.opened for c in self.conns.values()] + [f.t for f in self.faults] or [0.0]
            )
        return min((f.t for f in self.faults), default=0.0)

    def summary(self, now: float) -> dict[str, Any]:
        """The report as JSON-ready data: connections, faults with outcomes, clients."""
        outcomes = [self._fault_outcome(f, now) for f in self.faults]
        by_conn: dict[int, list[dict[str, Any]]] = {}
        for out in outcomes:
            if out["conn"] is not None:
                by_conn.setdefault(out["conn"], []).append(out)
        origin = self._origin()
        conns = []
        for rec in self.conns.values():
            conns.append(
                {
                    "id": rec.id,
                    "client": rec.client,
                    "venue": rec.venue,
                    "endpoint": rec.path,
                    "peer": rec.peer,
                    "user_agent": rec.user_agent,
                    "opened_s": round(rec.opened - origin, 3),
                    "opened_wall": round(rec.opened_wall, 3),
                    "closed_s": round(rec.closed - origin, 3) if rec.closed is not None else None,
                    "duration_s": round(
                        (rec.closed if rec.closed is not None else now) - rec.opened, 3
                    ),
                    "close_code": rec.close_code,
                    "closed_by": rec.closed_by,
                    "close_reason": rec.reason,
                    "subscribed": list(rec.subscribed),
                    "faults": by_conn.get(rec.id, []),
                }
            )
        clients: dict[str, dict[str, Any]] = {}
        for rec in self.conns.values():
            c = clients.setdefault(
                rec.client,
                {"client": rec.client, "venues": [], "connections": 0, "faults": 0},
            )
            c["connections"] += 1
            if rec.venue not in c["venues"]:
                c["venues"].append(rec.venue)
        for out in outcomes:
            client = out["client"]
            if client is None:
                continue
            c = clients.setdefault(
                client, {"client": client, "venues": [], "connections": 0, "faults": 0}
            )
            c["faults"] += 1
            for flag in ("detected", "recovered", "never_noticed", "storm"):
                if out.get(flag):
                    c[flag] = c.get(flag, 0) + 1
        for client, c in clients.items():
            c.update(self._storm(client, -float("inf"), now))
            c["snapshot_requests"] = sum(
                1 for ev in self.events.get(client, ()) if ev.what == "rest" and ev.book
            )
        return {
            "report": "tickwire connectivity report",
            "rules": {
                "notice_window_s": self.notice_window_s,
                "storm_window_s": self.storm_window_s,
                "storm_count": self.storm_count,
                "needs_resync": sorted(NEEDS_RESYNC),
                "recovery": RECOVERY_RULES,
            },
            "totals": self.totals(now, outcomes),
            "clients": list(clients.values()),
            "connections": conns,
            "faults": outcomes,
        }

    def totals(
        self, now: float, outcomes: Iterable[dict[str, Any]] | None = None
    ) -> dict[str, int]:
        """Counts for metrics and the summary's head."""
        if outcomes is None:
            outcomes = [self._fault_outcome(f, now) for f in self.faults]
        t = {
            "connections": self.opens,
            "refused_handshakes": self.refusals,
            "closes": self.closes,
            "subscribes": self.subscribes,
            "rest_requests": self.rest_requests,
            "snapshot_requests": self.snapshot_requests,
            "faults": 0,
            "faults_dropped": self.faults_dropped,
            "detected": 0,
            "recovered": 0,
            "never_noticed": 0,
            "storms": 0,
        }
        for out in outcomes:
            t["faults"] += 1
            t["detected"] += bool(out.get("detected"))
            t["recovered"] += bool(out.get("recovered"))
            t["never_noticed"] += bool(out.get("never_noticed"))
            t["storms"] += bool(out.get("storm"))
        return t


def _time(ev: ClientEvent) -> float:
    return ev.t


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _same_symbol(a: str | None, b: str | None) -> bool:
    return a is not None and a == b


def _peak(times: list[float], window: float) -> int:
    """The most of ``times`` (sorted) inside any window of ``window`` seconds."""
    best = 0
    lo = 0
    for hi, t in enumerate(times):
        while t - times[lo] > window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


# -- the readable summary (``tickwire report``) ---------------------------------------------


def _yes(value: object) -> str:
    if value is None:
        return "-"
    return "yes" if value else "no"


def _secs(value: object) -> str:
    return f"{value:.2f}s" if isinstance(value, (int, float)) else "-"


def render_summary(data: Mapping[str, Any], width: int = 120) -> str:
    """The report (:meth:`Report.summary` JSON) as text tables for a terminal."""
    import io

    from rich.console import Console
    from rich.table import Table

    buf = io.StringIO()
    console = Console(file=buf, width=width, force_terminal=False, color_system=None)
    totals = data.get("totals", {})
    console.print(
        "tickwire connectivity report: "
        f"{totals.get('connections', 0)} connections, {totals.get('faults', 0)} faults, "
        f"{totals.get('detected', 0)} detected, {totals.get('recovered', 0)} recovered, "
        f"{totals.get('never_noticed', 0)} never noticed, {totals.get('storms', 0)} with a storm"
    )
    clients = Table(title="Clients", show_lines=False)
    for col in (
        "client",
        "venues",
        "conns",
        "faults",
        "detected",
        "recovered",
        "never noticed",
        "snapshots",
        "peak reconnects/s",
        "storm",
    ):
        clients.add_column(col)
    for c in data.get("clients", []):
        clients.add_row(
            str(c.get("client")),
            ",".join(c.get("venues", [])),
            str(c.get("connections", 0)),
            str(c.get("faults", 0)),
            str(c.get("detected", 0)),
            str(c.get("recovered", 0)),
            str(c.get("never_noticed", 0)),
            str(c.get("snapshot_requests", 0)),
            str(c.get("peak_reconnects_per_s", 0)),
            _yes(c.get("storm")),
        )
    console.print(clients)
    faults = Table(title="Faults")
    for col in (
        "#",
        "kind",
        "venue",
        "symbol",
        "conn",
        "client",
        "reaction",
        "after",
        "book right after",
        "never noticed",
        "storm",
    ):
        faults.add_column(col)
    for f in data.get("faults", []):
        faults.add_row(
            str(f.get("n")),
            str(f.get("kind")),
            str(f.get("venue")),
            str(f.get("symbol") or f.get("channel") or "-"),
            str(f.get("conn") if f.get("conn") is not None else "*"),
            str(f.get("client") or "-"),
            str(f.get("reaction") or ("pending" if f.get("pending") else "none")),
            _secs(f.get("reaction_s")),
            _secs(f.get("time_to_book_s")),
            _yes(f.get("never_noticed")),
            _yes(f.get("storm")),
        )
    console.print(faults)
    conns = Table(title="Connections")
    for col in ("id", "venue", "endpoint", "client", "subscribed", "lasted", "closed by", "code"):
        conns.add_column(col)
    for c in data.get("connections", []):
        subs = c.get("subscribed", [])
        conns.add_row(
            str(c.get("id")),
            str(c.get("venue")),
            str(c.get("endpoint"))[:40],
            str(c.get("client"))[:40],
            ", ".join(subs[:4]) + (f" +{len(subs) - 4}" if len(subs) > 4 else ""),
            _secs(c.get("duration_s")),
            str(c.get("closed_by") or "open"),
            str(c.get("close_code") if c.get("close_code") is not None else "-"),
        )
    console.print(conns)
    return buf.getvalue()
