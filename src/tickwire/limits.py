"""Limits on what one client may cost the gateway: token buckets and counters (Sans-I/O).

Every limit has a default, a ``tickwire serve`` flag and a documented answer
(``docs/security.md``)::

    limit                            default  flag                        past it
    connections per client IP        100      --max-connections-per-ip    HTTP 429
    handshakes per second per IP     20/s,    --handshakes-per-ip         HTTP 429
                                     burst 40 --handshake-burst
    allowed origins                  any      --allowed-origin (repeat)   HTTP 403
    handshake timeout                5 s      --handshake-timeout         TCP close
    inbound messages per connection  50/s,    --max-messages-per-s        error rate_limited,
                                     burst    --message-burst             then close 4008
                                     200
    subscriptions per connection     1024     --max-subscriptions         error too_many_channels
    frame / message size             64 KiB   --max-message-kb            close 1009
    idle (no subscription, silent)   60 s     --idle-timeout              close 4002

The classes here hold the arithmetic; the I/O layer (:mod:`tickwire.server.guard`,
:mod:`tickwire.server.connection`) reads the clock and passes ``now`` (monotonic seconds)
in. They cost nothing per delivered update: buckets are charged per inbound message and
per handshake, counters per connection opened and closed.

Behind a load balancer every TCP peer is the balancer; :func:`client_address` then takes
the client from ``X-Forwarded-For``, but only when the peer is one of the trusted proxies
(anyone can write that header).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from http import HTTPStatus

from .exceptions import ConfigError

__all__ = [
    "IpLimiter",
    "Limits",
    "OriginPolicy",
    "Refusal",
    "TokenBucket",
    "client_address",
    "is_trusted",
    "parse_networks",
]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass
class Limits:
    """The configurable limits (see the module docstring for each default and answer).

    Attributes:
        max_connections_per_ip: open connections (handshaking or established) per
            client IP; 0 = unlimited.
        handshakes_per_s: sustained upgrade requests per second per client IP; 0 =
            unlimited.
        handshake_burst: upgrade requests one IP may make at once.
        handshake_timeout_s: seconds a TCP connection may take to send its upgrade
            request (slow-loris defence; picows closes it).
        max_messages_per_s: sustained inbound messages per second per connection; 0 =
            unlimited.
        message_burst: inbound messages a connection may send at once.
        idle_timeout_s: seconds a connection may hold no subscription and send nothing;
            0 = never.
        allowed_origins: ``Origin`` values accepted (``fnmatch`` patterns such as
            ``https://*.example.com``); empty = any.
        trusted_proxies: networks whose ``X-Forwarded-For`` is believed.
        exempt: client networks the per-IP limits do not apply to; loopback by default
            (local health checks, sidecars, and loopback benchmarks with thousands of
            connections from one address).
    """

    max_connections_per_ip: int = 100
    handshakes_per_s: float = 20.0
    handshake_burst: int = 40
    handshake_timeout_s: float = 5.0
    max_messages_per_s: float = 50.0
    message_burst: int = 200
    idle_timeout_s: float = 60.0
    allowed_origins: list[str] = field(default_factory=list)
    trusted_proxies: list[str] = field(default_factory=list)
    exempt: list[str] = field(default_factory=lambda: ["127.0.0.0/8", "::1/128"])

    def __post_init__(self) -> None:
        if self.max_connections_per_ip < 0:
            raise ConfigError("--max-connections-per-ip must be >= 0")
        if self.handshakes_per_s < 0 or self.max_messages_per_s < 0:
            raise ConfigError("rates must be >= 0")
        if self.handshake_burst < 1 or self.message_burst < 1:
            raise ConfigError("bursts must be at least 1")
        if self.handshake_timeout_s <= 0:
            raise ConfigError("--handshake-timeout must be positive")
        if self.idle_timeout_s < 0:
            raise ConfigError("--idle-timeout must be >= 0")
        parse_networks(self.trusted_proxies)
        parse_networks(self.exempt)


class TokenBucket:
    """``rate`` tokens per second up to ``burst``; an action takes one.

    The classic shape of exchange rate limits ("5 messages per second"): a client may
    send ``burst`` messages at once, then ``rate`` per second on average.

    Args:
        rate: tokens added per second.
        burst: the bucket's capacity; it starts full.
        now: monotonic seconds at creation.
    """

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.stamp = now

    def take(self, now: float) -> bool:
        """Take one token at ``now``; False (and nothing taken) when the bucket is empty."""
        tokens = self.tokens + (now - self.stamp) * self.rate
        if tokens > self.burst:
            tokens = self.burst
        self.stamp = now
        if tokens < 1.0:
            self.tokens = tokens
            return False
        self.tokens = tokens - 1.0
        return True

    def full(self, now: float) -> bool:
        """True when the bucket would be full at ``now`` (its state can be forgotten)."""
        return self.tokens + (now - self.stamp) * self.rate >= self.burst


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why an upgrade request is refused: the HTTP status and a short reason body."""

    status: HTTPStatus
    reason: str
    #: Seconds after which a retry may succeed (sent as ``Retry-After``), if known.
    retry_after: int | None = None


class IpLimiter:
    """Connections and handshake rate per client IP.

    The I/O layer calls :meth:`opened` when it starts counting a connection against an
    IP (at TCP accept for a direct client, at the upgrade request for one behind a
    trusted proxy), :meth:`handshake` at each upgrade request, and :meth:`closed` when
    a counted connection ends. Memory is bounded: an IP with no open connection and a
    full bucket is forgotten, and at most ``max_tracked`` buckets are kept.

    Args:
        limits: the configured limits.
        max_tracked: handshake buckets kept at most (oldest idle ones dropped first).
    """

    def __init__(self, limits: Limits, max_tracked: int = 65536) -> None:
        self.limits = limits
        self.max_tracked = max_tracked
        self.exempt = parse_networks(limits.exempt)
        self.connections: dict[str, int] = {}
        self.buckets: dict[str, TokenBucket] = {}
        self.refused_connections = 0
        self.refused_handshakes = 0

    def is_exempt(self, ip: str) -> bool:
        """True when the per-IP limits do not apply to ``ip`` (``Limits.exempt``)."""
        return bool(self.exempt) and is_trusted(ip, self.exempt)

    def opened(self, ip: str) -> int:
        """Count one more connection from ``ip``; return how many are open now."""
        n = self.connections.get(ip, 0) + 1
        self.connections[ip] = n
        return n

    def closed(self, ip: str) -> None:
        """Forget one connection from ``ip``."""
        n = self.connections.get(ip, 0) - 1
        if n > 0:
            self.connections[ip] = n
        else:
            self.connections.pop(ip, None)

    def over_connections(self, ip: str) -> bool:
        """True when ``ip`` holds more connections than allowed (this one included)."""
        cap = self.limits.max_connections_per_ip
        return cap > 0 and self.connections.get(ip, 0) > cap

    def handshake(self, ip: str, now: float) -> Refusal | None:
        """Charge one upgrade request from ``ip``; return a refusal when over a limit.

        Checks the connection count first (it was counted by :meth:`opened`), then
        takes a token from the IP's handshake bucket.
        """
        limits = self.limits
        if self.over_connections(ip):
            self.refused_connections += 1
            return Refusal(
                HTTPStatus.TOO_MANY_REQUESTS,
                f"too many connections from one address (max {limits.max_connections_per_ip})",
            )
        if limits.handshakes_per_s <= 0:
            return None
        bucket = self.buckets.get(ip)
        if bucket is None:
            if len(self.buckets) >= self.max_tracked:
                self.prune(now)
            bucket = self.buckets[ip] = TokenBucket(
                limits.handshakes_per_s, limits.handshake_burst, now
            )
        if bucket.take(now):
            return None
        self.refused_handshakes += 1
        wait = max(1, int((1.0 - bucket.tokens) / limits.handshakes_per_s + 0.999))
        return Refusal(
            HTTPStatus.TOO_MANY_REQUESTS,
            f"too many handshakes from one address (max {limits.handshakes_per_s:g}/s)",
            wait,
        )

    def prune(self, now: float) -> None:
        """Drop the buckets that are full again; past ``max_tracked`` drop the oldest."""
        for ip in [ip for ip, b in self.buckets.items() if b.full(now)]:
            del self.buckets[ip]
        while len(self.buckets) >= self.max_tracked:
            del self.buckets[next(iter(self.buckets))]


class OriginPolicy:
    """Which browser origins may open a WebSocket (cross-site WebSocket hijacking).

    A browser always sends ``Origin``; a page on another site could otherwise use a
    visitor's cookies or network position. Non-browser clients send none, and a missing
    ``Origin`` is accepted: it cannot come from a browser page.

    Args:
        allowed: exact origins or ``fnmatch`` patterns (``https://*.example.com``),
            compared case-insensitively; empty allows every origin.
    """

    def __init__(self, allowed: Iterable[str] = ()) -> None:
        self.patterns = [a.strip().lower().rstrip("/") for a in allowed if a.strip()]

    def allows(self, origin: str | None) -> bool:
        """True when a request with this ``Origin`` header (None: absent) may connect."""
        if not self.patterns or origin is None:
            return True
        value = origin.strip().lower().rstrip("/")
        return any(fnmatchcase(value, p) for p in self.patterns)


def parse_networks(specs: Iterable[str]) -> list[Network]:
    """Parse ``--trusted-proxy`` or ``--per-ip-exempt`` values (addresses or networks).

    Raises:
        ConfigError: a value is not an IP address or network.
    """
    out: list[Network] = []
    for spec in specs:
        try:
            out.append(ipaddress.ip_network(spec.strip(), strict=False))
        except ValueError:
            raise ConfigError(f"{spec!r}: not an IP address or network") from None
    return out


def is_trusted(ip: str, proxies: list[Network]) -> bool:
    """True when ``ip`` is in one of the networks ``proxies``."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(addr in net for net in proxies)


def client_address(peer: str, forwarded_for: str | None, proxies: list[Network]) -> str:
    """Return the address the per-IP limits apply to.

    A direct client is its TCP peer. When the peer is a trusted proxy, the client is
    the right-most ``X-Forwarded-For`` entry that is not itself a trusted proxy: entries
    to its left were written by the client and prove nothing.

    Args:
        peer: the TCP peer's IP address.
        forwarded_for: the ``X-Forwarded-For`` header (all of its values joined by
            commas), or None.
        proxies: the trusted proxy networks.
    """
    if not proxies or not forwarded_for or not is_trusted(peer, proxies):
        return peer
    hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
    for hop in reversed(hops):
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            return peer  # garbage in the chain: fall back to the proxy's own address
        if not is_trusted(hop, proxies):
            return hop
    return hops[0] if hops else peer
