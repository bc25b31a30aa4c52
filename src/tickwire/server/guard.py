"""The handshake guard: per-IP limits, origins and tokens before a WebSocket exists (I/O).

picows hands the listener factory the parsed upgrade request but not the TCP peer, so
the gateway's listening server is built here with a thin subclass of picows'
``WSProtocol`` that remembers the peer at accept. Per connection, in order:

1. **TCP accept** (``connection_made``): a direct client is counted against its IP;
   one far over ``--max-connections-per-ip`` (twice the cap) is dropped at once, so a
   slow-loris flood from one address cannot hold sockets until the handshake timeout.
   picows closes any connection that has not sent its upgrade request within
   ``--handshake-timeout``.
2. **Upgrade request** (:meth:`Guard.upgrade`): the client address is the peer, or
   ``X-Forwarded-For`` behind a trusted proxy (then counted now); refused with HTTP 403
   for an ``Origin`` not allowed, 429 past the connection or handshake-rate limit, 401
   for a token (``Authorization: Bearer`` or ``?token=``) that does not verify. Else
   the gateway's listener factory builds the connection, which gets the client address
   and the token's claims.
3. **Close** (``connection_lost``): the IP's count goes down.

Nothing here runs per delivered update. Tokens are never logged: a refusal logs the
reason only.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from http import HTTPStatus
from typing import Any, Protocol

from picows import (
    WSAutoPingStrategy,
    WSListener,
    WSUpgradeRequest,
    WSUpgradeResponse,
    WSUpgradeResponseWithListener,
)
from picows.picows import WSProtocol  # type: ignore[attr-defined]

from ..auth import Claims, TokenVerifier, token_from_request
from ..exceptions import AuthError
from ..limits import (
    IpLimiter,
    Limits,
    OriginPolicy,
    Refusal,
    TokenBucket,
    client_address,
    is_trusted,
    parse_networks,
)

__all__ = ["Admitted", "Guard", "LogBudget", "create_ws_server"]

log = logging.getLogger("tickwire.server")

ListenerResult = WSListener | WSUpgradeResponseWithListener | None


class Admitted(Protocol):
    """What the guard sets on the listener it admitted (the gateway's Connection)."""

    client_ip: str

    def authenticate(self, claims: Claims) -> None:
        """Adopt the claims of the token presented at connect."""


class Guard:
    """Admission control for upgrade requests (the policy; the clock is read here).

    Args:
        factory: the gateway's listener factory, called for admitted requests.
        limits: the configured limits.
        verifier: the token verifier, or None when no auth is configured (a token at
            connect is then refused with 401: it could never be checked).
    """

    def __init__(
        self,
        factory: Callable[[WSUpgradeRequest], ListenerResult],
        limits: Limits,
        verifier: TokenVerifier | None = None,
    ) -> None:
        self.factory = factory
        self.limits = limits
        self.verifier = verifier
        self.ips = IpLimiter(limits)
        self.origins = OriginPolicy(limits.allowed_origins)
        self.proxies = parse_networks(limits.trusted_proxies)
        #: Refusals by HTTP status (exported in the stats).
        self.refused: dict[int, int] = {}
        #: Bounds picows' per-connection log lines (one ERROR per framing violation).
        self.log_budget = LogBudget()
        self.dropped_at_accept = 0

    def reconfigure(self, limits: Limits) -> None:
        """Adopt new limits while serving (a reload).

        Per-IP counts carry over (each connection remembers the address it was counted
        against); handshake buckets keep their tokens and take the new rate and burst.
        """
        self.limits = limits
        self.ips.limits = limits
        self.ips.exempt = parse_networks(limits.exempt)
        for bucket in self.ips.buckets.values():
            bucket.rate = limits.handshakes_per_s
            bucket.burst = limits.handshake_burst
        self.origins = OriginPolicy(limits.allowed_origins)
        self.proxies = parse_networks(limits.trusted_proxies)

    # -- TCP ------------------------------------------------------------------------------

    def accepted(self, peer_ip: str) -> tuple[str | None, bool]:
        """A TCP connection from ``peer_ip``: return (IP counted or None, keep it)."""
        if self.proxies and is_trusted(peer_ip, self.proxies):
            return None, True  # a trusted proxy: count the real client at the upgrade
        if self.ips.is_exempt(peer_ip):
            return None, True
        n = self.ips.opened(peer_ip)
        cap = self.limits.max_connections_per_ip
        if cap and n > 2 * cap:
            self.dropped_at_accept += 1
            return peer_ip, False
        return peer_ip, True

    def lost(self, counted_ip: str | None) -> None:
        """A connection counted against ``counted_ip`` ended."""
        if counted_ip is not None:
            self.ips.closed(counted_ip)

    # -- HTTP upgrade ---------------------------------------------------------------------

    def upgrade(self, request: WSUpgradeRequest, peer: _Peer) -> ListenerResult:
        """Admit or refuse one upgrade request from ``peer``."""
        headers = request.headers
        ip = peer.counted
        if ip is None:
            forwarded = ",".join(headers.getall("X-Forwarded-For", ())) or None
            ip = client_address(peer.ip, forwarded, self.proxies)
            if not self.ips.is_exempt(ip):
                peer.counted = ip
                self.ips.opened(ip)
        if not self.origins.allows(headers.get("Origin")):
            return self._refuse(ip, Refusal(HTTPStatus.FORBIDDEN, "origin not allowed"))
        if peer.counted is not None:
            refusal = self.ips.handshake(ip, time.monotonic())
            if refusal is not None:
                return self._refuse(ip, refusal)
        claims: Claims | None = None
        token = token_from_request(headers, request.path)
        if token is not None:
            if self.verifier is None:
                return self._refuse(
                    ip, Refusal(HTTPStatus.UNAUTHORIZED, "this server does not accept tokens")
                )
            try:
                claims = self.verifier.verify(token, time.time())
            except AuthError as exc:
                return self._refuse(ip, Refusal(HTTPStatus.UNAUTHORIZED, exc.message))
        result = self.factory(request)
        listener = result.listener if isinstance(result, WSUpgradeResponseWithListener) else result
        if listener is not None and hasattr(listener, "authenticate"):
            admitted: Admitted = listener  # type: ignore[assignment]
            admitted.client_ip = ip
            if claims is not None:
                admitted.authenticate(claims)
        return result

    def _refuse(self, ip: str, refusal: Refusal) -> WSUpgradeResponseWithListener:
        status = int(refusal.status)
        self.refused[status] = self.refused.get(status, 0) + 1
        if self.refused[status] & (self.refused[status] - 1) == 0:
            # Powers of two only: a flood must not turn into a flood of log lines.
            log.info(
                "refused upgrade from %s: %d %s (%d so far)",
                ip,
                status,
                refusal.reason,
                self.refused[status],
                extra={"peer": ip, "http_status": status},
            )
        extra = {"Retry-After": str(refusal.retry_after)} if refusal.retry_after else None
        response = WSUpgradeResponse.create_error_response(
            refusal.status, refusal.reason.encode() + b"\n", extra
        )
        return WSUpgradeResponseWithListener(response, None)

    def stats(self) -> dict[str, Any]:
        """Refusal counters for the exit stats."""
        return {
            "refused_by_status": dict(self.refused),
            "dropped_at_accept": self.dropped_at_accept,
            "refused_connections": self.ips.refused_connections,
            "refused_handshakes": self.ips.refused_handshakes,
            "tracked_ips": len(self.ips.connections),
            "log_lines_suppressed": self.log_budget.suppressed,
        }


class LogBudget(logging.Filter):
    """Let at most ``rate`` picows records per second through (burst ``burst``).

    picows logs every framing violation of a peer at ERROR: without a budget, a client
    sending bad frames in a loop would turn into a log flood. Records of other loggers
    pass untouched; suppressed ones are counted.
    """

    def __init__(self, rate: float = 10.0, burst: int = 50) -> None:
        super().__init__()
        self.bucket = TokenBucket(rate, burst, time.monotonic())
        self.suppressed = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("picows.") or self.bucket.take(time.monotonic()):
            return True
        self.suppressed += 1
        return False


class _Peer:
    """The per-connection listener factory: knows the TCP peer picows does not pass."""

    __slots__ = ("guard", "ip", "counted")

    def __init__(self, guard: Guard) -> None:
        self.guard = guard
        self.ip = "?"
        self.counted: str | None = None

    def __call__(self, request: WSUpgradeRequest) -> ListenerResult:
        return self.guard.upgrade(request, self)


class _GuardedProtocol(WSProtocol):  # type: ignore[misc]
    """picows' server protocol, plus the peer accounting of :class:`Guard`."""

    __slots__ = ("peer",)

    def __init__(self, peer: _Peer, *args: Any) -> None:
        super().__init__(None, None, False, peer, *args)
        self.peer = peer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = self.peer
        name = transport.get_extra_info("peername")
        peer.ip = name[0] if name else "?"
        super().connection_made(transport)
        peer.counted, keep = peer.guard.accepted(peer.ip)
        if not keep:
            transport.abort()  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        peer = self.peer
        peer.guard.lost(peer.counted)
        peer.counted = None


async def create_ws_server(
    guard: Guard,
    host: str | None = None,
    port: int | None = None,
    *,
    disconnect_on_exception: bool = True,
    logger_name: str = "tickwire.picows",
    enable_auto_ping: bool = False,
    auto_ping_idle_timeout: float = 20,
    auto_ping_reply_timeout: float = 20,
    auto_ping_strategy: WSAutoPingStrategy = WSAutoPingStrategy.PING_WHEN_IDLE,
    enable_auto_pong: bool = True,
    max_frame_size: int = 10 * 1024 * 1024,
    read_buffer_init_size: int = 16 * 1024,
    **kwargs: Any,
) -> asyncio.Server:
    """``picows.ws_create_server`` with :class:`Guard` in front of every connection.

    Takes the same arguments (``ssl=`` an :class:`ssl.SSLContext` serves ``wss://``;
    other keyword arguments go to ``loop.create_server``), except that the listener
    factory comes from the guard, and the handshake timeout is the guard's
    ``limits.handshake_timeout_s``, read at each accept (a reload applies it to the
    next connections).
    """
    loop = asyncio.get_running_loop()
    logger = logging.getLogger(f"picows.{logger_name}")
    if logger.getEffectiveLevel() < logging.DEBUG:
        # Below DEBUG picows logs raw request bytes, which carry bearer tokens.
        logger.setLevel(logging.DEBUG)
    # picows logs through a child logger per connection, whose records skip the parent
    # loggers' filters: budget them at the handlers.
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, LogBudget) for f in handler.filters):
            handler.addFilter(guard.log_budget)

    def protocol_factory() -> _GuardedProtocol:
        return _GuardedProtocol(
            _Peer(guard),
            logger,
            disconnect_on_exception,
            guard.limits.handshake_timeout_s,
            enable_auto_ping,
            auto_ping_idle_timeout,
            auto_ping_reply_timeout,
            auto_ping_strategy,
            enable_auto_pong,
            max_frame_size,
            None,
            read_buffer_init_size,
        )

    return await loop.create_server(protocol_factory, host=host, port=port, **kwargs)
