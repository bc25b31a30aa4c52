"""Options of ``tickwire serve``: one dataclass, validated on construction."""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field

from ..auth import TokenVerifier
from ..exceptions import ConfigError
from ..limits import Limits
from ..pacing import MAX_PASS_SHARE

__all__ = ["GatewayConfig"]


@dataclass
class GatewayConfig:
    """Options of ``tickwire serve``; see ``tickwire serve --help`` for each."""

    host: str = "127.0.0.1"
    port: int = 8765
    symbols: list[str] = field(default_factory=lambda: ["BTC-USD", "ETH-USD", "SOL-USD"])
    rate: float = 200.0
    seed: int = 1
    market_core: str = "auto"
    batch_ms: float = 1.0
    # "pause": wait batch_ms after each clock pass ends (the peers' ``sleep(tick)``
    # loop); "clock": passes start batch_ms apart, however long each took.
    tick_pacing: str = "pause"
    # Once a pass takes longer than batch_ms (the writes are the bottleneck), passes
    # may take this share of the core: the next starts took/pass_share after the last
    # began (1: no spacing beyond the pacing). The rest stays for requests, handshakes
    # and pings, and each write carries a longer batch (tickwire.pacing).
    pass_share: float = MAX_PASS_SHARE
    history_bytes: int = 2 << 20
    heartbeat_s: float = 1.0
    ping_interval_s: float = 20.0
    ping_timeout_s: float = 20.0
    max_message_bytes: int = 64 << 10
    max_subscriptions: int = 1024
    max_bad_requests: int = 100
    burst_every_s: float = 0.0
    burst_factor: float = 10.0
    burst_seconds: float = 2.0
    max_seconds: float = 0.0
    stats_path: str | None = None
    test_faults: bool = False
    # The connectivity report (docs/connectivity-testing.md): written here at exit;
    # kept (and served at /api/v1/report) also without a file when faults are in use.
    report_path: str | None = None
    report_window_s: float = 10.0
    report_storm: int = 5
    # A fault scenario (TOML, docs/connectivity-testing.md), loaded at start and on SIGHUP.
    faults_file: str | None = None
    # Slow consumers: per-connection write-buffer watermarks and hard budget, the
    # server-wide cap, how long a connection may stay paused, and how long a closed
    # slow consumer may take to drain before it is aborted.
    high_watermark_bytes: int = 256 << 10
    low_watermark_bytes: int = 64 << 10
    max_buffer_bytes: int = 4 << 20
    max_total_buffer_bytes: int = 512 << 20
    stall_timeout_s: float = 30.0
    slow_close_grace_s: float = 5.0
    # SO_SNDBUF of accepted sockets (0: kernel autotuning, up to tcp_wmem's 4 MiB, which
    # would hide a slow reader from the watermarks for seconds of stale data).
    sndbuf_bytes: int = 256 << 10
    # Market source (docs/scaling.md): "sim" (embedded), "nats://HOST:PORT" (follow a
    # `tickwire publish`), or an NDJSON recording path played at replay_speed, or
    # tardis.dev CSVs ("tardis:PATH,PATH" or *.csv / *.csv.gz paths).
    source: str = "sim"
    replay_speed: str = "1"
    # tardis CSVs: FILE_SYMBOL=SERVED renames (docs/venue-feeds.md).
    replay_symbol_map: list[str] = field(default_factory=list)
    bus_prefix: str = "tickwire"
    source_timeout_s: float = 30.0
    # An ingest source (source "ingest+nats://..."): seconds without a message after
    # which a symbol is reported silent (docs/ingest.md).
    ingest_silent_s: float = 5.0
    # A venue source (source "binance+wss://..."): the venue's REST base (Binance's
    # depth snapshots) and Kraken's book depth (docs/venue-feeds.md).
    venue_rest: str | None = None
    venue_depth: int = 0
    # Its data watchdog: seconds without a frame before the connection is replaced
    # (0: the venue's default, tickwire.dialects.decode.IDLE_TIMEOUTS).
    venue_idle_timeout_s: float = 0.0
    # A resume ahead of this gateway (from a faster one on the same bus) waits this long.
    resume_wait_s: float = 1.0
    # SO_REUSEPORT: several gateway processes share the port (tickwire serve --workers).
    reuse_port: bool = False
    # Admin HTTP listener (metrics, health, REST snapshots, dashboard): None is off, 0
    # any free port; with admin_optional a port already taken only logs a warning.
    admin_host: str | None = None
    admin_port: int | None = None
    admin_optional: bool = False
    # Hostile clients (docs/security.md): per-IP, per-connection and handshake limits;
    # the token verifier of private channels (None: no login possible); TLS files
    # (both or neither: wss://); the simulator's synthetic users (orders.<user>, fed
    # only when a verifier exists) and the share of book updates that become theirs.
    limits: Limits = field(default_factory=Limits)
    verifier: TokenVerifier | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    sim_users: list[str] = field(default_factory=lambda: ["alice", "bob", "carol"])
    sim_order_fraction: float = 0.01
    # permessage-deflate (RFC 7692) for clients that offer it; off by default (market
    # data is CPU-bound, docs/benchmarks.md "Encodings"), and its zlib level.
    deflate: bool = False
    deflate_level: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.low_watermark_bytes <= self.high_watermark_bytes:
            raise ConfigError("need 0 <= --low-watermark-kb <= --high-watermark-kb")
        if self.max_buffer_bytes < self.high_watermark_bytes:
            raise ConfigError("--max-buffer-kb must be at least --high-watermark-kb")
        if self.max_total_buffer_bytes < self.max_buffer_bytes:
            raise ConfigError("--max-total-buffer-mb must be at least --max-buffer-kb")
        if self.tick_pacing not in ("pause", "clock"):
            raise ConfigError("--tick-pacing is pause or clock")
        if not 0.05 <= self.pass_share <= 1:
            raise ConfigError("--pass-share must be within 0.05 and 1")
        if self.stall_timeout_s <= 0:
            raise ConfigError("--stall-timeout must be positive")
        if self.sndbuf_bytes < 0:
            raise ConfigError("--sndbuf-kb must be >= 0")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("--tls-cert and --tls-key go together")

    def ssl_context(self) -> ssl.SSLContext | None:
        """The server TLS context of ``tls_cert``/``tls_key``, or None for plain ws://.

        Raises:
            ConfigError: the files cannot be read or do not hold a matching pair.
        """
        if self.tls_cert is None or self.tls_key is None:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            ctx.load_cert_chain(self.tls_cert, self.tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"--tls-cert/--tls-key: {exc}") from None
        return ctx
