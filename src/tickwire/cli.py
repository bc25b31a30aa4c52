"""The ``tickwire`` command: ``serve``, ``publish``, ``record``, ``token`` (and, from
the SDK, ``watch`` and ``bench``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from .exceptions import ConfigError
from .logs import configure_logging
from .pacing import MAX_PASS_SHARE
from .simulator import parse_symbols

__all__ = ["main"]

#: Symbols served and published when ``--symbols`` is not given.
DEFAULT_SYMBOLS = "BTC-USD,ETH-USD,SOL-USD"


def _serve_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve", help="run the gateway with its embedded market simulator")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8765, help="WebSocket port (0: any free)")
    p.add_argument(
        "--symbols",
        default=None,
        help="comma-separated symbols, or a count N for SYM0..SYM{N-1} "
        f"(default {DEFAULT_SYMBOLS}; a replay: the recording's)",
    )
    p.add_argument("--rate", type=float, default=200.0, help="book updates per second per symbol")
    p.add_argument("--seed", type=int, default=1, help="simulator seed (deterministic flow)")
    _market_core_argument(p)
    scale = p.add_argument_group("sources and scaling out (see docs/scaling.md)")
    scale.add_argument(
        "--source",
        default="sim",
        help="sim (embedded simulator), nats://HOST:PORT (follow `tickwire publish`; "
        "without --symbols: all of its symbols, and those it adds later), "
        "ingest+nats://HOST:PORT (the ingest protocol from any source: docs/ingest.md), "
        "- or ingest:PATH (the ingest protocol as NDJSON from stdin, a file or a pipe), "
        "or an NDJSON recording to replay",
    )
    _replay_speed_argument(scale)
    scale.add_argument("--bus-prefix", default="tickwire", help="NATS subject prefix")
    scale.add_argument(
        "--source-timeout",
        type=float,
        default=30.0,
        help="seconds to wait at start for the bus and every book",
    )
    _ingest_silent_argument(scale)
    scale.add_argument(
        "--resume-wait",
        type=float,
        default=1.0,
        help="with a bus: seconds a resume ahead of this gateway waits for it to catch up",
    )
    scale.add_argument(
        "--workers",
        type=int,
        default=1,
        help="gateway processes sharing the port (SO_REUSEPORT), supervised",
    )
    scale.add_argument(
        "--reuse-port",
        action="store_true",
        help="listen with SO_REUSEPORT (set on each worker by --workers)",
    )
    p.add_argument(
        "--batch-ms",
        type=float,
        default=1.0,
        help="tick: a channel's updates within it share one frame (0: one each)",
    )
    _tick_pacing_argument(p, "--batch-ms")
    p.add_argument(
        "--pass-share",
        type=float,
        default=MAX_PASS_SHARE,
        help="once a pass outlasts --batch-ms (write-bound), the share of the core passes "
        "may take: the next starts that much later, with longer batches per write "
        "(1: never spaced beyond the pacing)",
    )
    p.add_argument(
        "--history-mb", type=float, default=2.0, help="resume history kept per channel, in MiB"
    )
    p.add_argument(
        "--heartbeat",
        type=float,
        default=1.0,
        help="seconds of silence before a channel sends a heartbeat",
    )
    p.add_argument(
        "--ping-interval",
        type=float,
        default=20.0,
        help="seconds between WebSocket pings to an idle peer (0: off)",
    )
    p.add_argument(
        "--ping-timeout",
        type=float,
        default=20.0,
        help="seconds to wait for the pong before closing",
    )
    p.add_argument(
        "--max-message-kb",
        type=float,
        default=64.0,
        help="largest client frame or message accepted, in KiB",
    )
    p.add_argument(
        "--max-subscriptions",
        type=int,
        default=1024,
        help="channels one connection may subscribe to",
    )
    p.add_argument(
        "--burst-every",
        type=float,
        default=0.0,
        help="seconds between automatic bursts of the simulator (0: none)",
    )
    p.add_argument("--burst-factor", type=float, default=10.0, help="rate multiplier in a burst")
    p.add_argument("--burst-seconds", type=float, default=2.0, help="length of a burst")
    p.add_argument(
        "--max-seconds",
        type=float,
        default=0.0,
        help="exit by itself after this many seconds (0: run until signalled)",
    )
    p.add_argument("--stats-file", default=None, help="also write the exit stats JSON here")
    slow = p.add_argument_group("slow consumers (see docs/slow-consumers.md)")
    slow.add_argument(
        "--high-watermark-kb",
        type=float,
        default=256.0,
        help="per-connection write buffer past which books and tickers conflate, in KiB",
    )
    slow.add_argument(
        "--low-watermark-kb",
        type=float,
        default=64.0,
        help="write buffer below which a conflated connection catches up, in KiB",
    )
    slow.add_argument(
        "--max-buffer-kb",
        type=float,
        default=4096.0,
        help="hard per-connection budget: past it, close 4001 (slow consumer), in KiB",
    )
    slow.add_argument(
        "--max-total-buffer-mb",
        type=float,
        default=512.0,
        help="server-wide cap on buffered bytes; past it the largest buffers close, in MiB",
    )
    slow.add_argument(
        "--stall-timeout",
        type=float,
        default=30.0,
        help="seconds a connection may stay over the high watermark before close 4001",
    )
    slow.add_argument(
        "--sndbuf-kb",
        type=float,
        default=256.0,
        help="kernel send buffer per connection, in KiB (0: kernel autotuning, up to MiBs)",
    )
    enc = p.add_argument_group("encodings (see docs/protocol.md, Encodings)")
    enc.add_argument(
        "--deflate",
        action="store_true",
        help="accept permessage-deflate from clients that offer it (off: market data is "
        "CPU-bound; JSON and msgpack are always available by subprotocol)",
    )
    enc.add_argument(
        "--deflate-level",
        type=int,
        default=1,
        choices=range(1, 10),
        metavar="1..9",
        help="zlib level of compressed frames (default 1, the fastest)",
    )
    p.add_argument(
        "--test-faults",
        action="store_true",
        help="accept {'op':'fault'} requests that corrupt the stream (tests only)",
    )
    p.add_argument("--log-level", default="WARNING", help="DEBUG, INFO, WARNING or ERROR")
    p.add_argument(
        "--log-json",
        action="store_true",
        help="log one JSON object per line (ts, level, logger, msg, conn, peer)",
    )
    ops = p.add_argument_group("operations (see docs/operations.md)")
    ops.add_argument(
        "--admin-port",
        default="auto",
        help="admin HTTP port: dashboard, /metrics, /healthz, /readyz, /api/v1/book/SYM "
        "(auto: --port + 1, off when --port is 0; 0: any free port; off: none)",
    )
    ops.add_argument(
        "--admin-host", default=None, help="address of the admin listener (default: --host)"
    )
    _security_arguments(p)


def _security_arguments(p: argparse.ArgumentParser) -> None:
    """``serve`` options of docs/security.md: TLS, tokens, limits, proxies."""
    from .limits import Limits

    d = Limits()
    sec = p.add_argument_group("security and limits (see docs/security.md)")
    sec.add_argument("--tls-cert", default=None, help="PEM certificate chain: serve wss://")
    sec.add_argument("--tls-key", default=None, help="PEM private key of --tls-cert")
    sec.add_argument(
        "--jwt-secret",
        default=None,
        help="HS256 shared secret for private channels (>= 32 bytes; visible in ps: "
        "prefer --jwt-secret-file)",
    )
    sec.add_argument("--jwt-secret-file", default=None, help="file holding the HS256 secret")
    sec.add_argument(
        "--jwt-public-key", default=None, help="PEM EC P-256 public key: accept ES256 tokens"
    )
    sec.add_argument(
        "--jwt-leeway", type=float, default=0.0, help="seconds of clock skew allowed on exp"
    )
    sec.add_argument(
        "--sim-users",
        default="alice,bob,carol",
        help="simulator users with orders on orders.<user> (only with JWT keys; '' none)",
    )
    sec.add_argument(
        "--sim-order-fraction",
        type=float,
        default=0.01,
        help="share of size-adding book updates that become a simulated user's order",
    )
    sec.add_argument(
        "--max-connections-per-ip",
        type=int,
        default=d.max_connections_per_ip,
        help="open connections per client address, past it HTTP 429 (0: unlimited)",
    )
    sec.add_argument(
        "--handshakes-per-ip",
        type=float,
        default=d.handshakes_per_s,
        help="WebSocket handshakes per second per client address, past it HTTP 429",
    )
    sec.add_argument(
        "--handshake-burst",
        type=int,
        default=d.handshake_burst,
        help="handshakes one address may make at once",
    )
    sec.add_argument(
        "--handshake-timeout",
        type=float,
        default=d.handshake_timeout_s,
        help="seconds a connection may take to send its upgrade request",
    )
    sec.add_argument(
        "--max-messages-per-s",
        type=float,
        default=d.max_messages_per_s,
        help="inbound messages per second per connection: error rate_limited, then "
        "close 4008 (0: unlimited)",
    )
    sec.add_argument(
        "--message-burst",
        type=int,
        default=d.message_burst,
        help="inbound messages a connection may send at once",
    )
    sec.add_argument(
        "--idle-timeout",
        type=float,
        default=d.idle_timeout_s,
        help="close 4002 a connection without subscription silent this long (0: never)",
    )
    sec.add_argument(
        "--allowed-origin",
        action="append",
        default=[],
        help="accept browser Origin (fnmatch pattern; repeat); others get HTTP 403",
    )
    sec.add_argument(
        "--trusted-proxy",
        action="append",
        default=[],
        help="address or CIDR of a load balancer whose X-Forwarded-For is believed (repeat)",
    )
    sec.add_argument(
        "--per-ip-exempt",
        default=",".join(d.exempt),
        help="comma-separated networks the per-IP limits skip (default loopback; '' none)",
    )


def _security_config(args: argparse.Namespace) -> dict[str, Any]:
    """The GatewayConfig fields of :func:`_security_arguments`."""
    from .auth import TokenVerifier
    from .limits import Limits

    return {
        "tls_cert": args.tls_cert,
        "tls_key": args.tls_key,
        "verifier": TokenVerifier.from_options(
            secret=args.jwt_secret,
            secret_file=args.jwt_secret_file,
            public_key_file=args.jwt_public_key,
            leeway=args.jwt_leeway,
        ),
        "sim_users": [u.strip() for u in args.sim_users.split(",") if u.strip()],
        "sim_order_fraction": args.sim_order_fraction,
        "limits": Limits(
            max_connections_per_ip=args.max_connections_per_ip,
            handshakes_per_s=args.handshakes_per_ip,
            handshake_burst=args.handshake_burst,
            handshake_timeout_s=args.handshake_timeout,
            max_messages_per_s=args.max_messages_per_s,
            message_burst=args.message_burst,
            idle_timeout_s=args.idle_timeout,
            allowed_origins=args.allowed_origin,
            trusted_proxies=args.trusted_proxy,
            exempt=[n.strip() for n in args.per_ip_exempt.split(",") if n.strip()],
        ),
    }


def _replay_speed_argument(group: argparse._ActionsContainer) -> None:
    group.add_argument(
        "--replay-speed",
        default="1",
        help="replay pace: 1 = as recorded, x10 = ten times faster, max = as fast as possible",
    )


# -- the ingest protocol (docs/ingest.md): its options, kept together ----------------------


def _ingest_silent_argument(p: argparse._ActionsContainer) -> None:
    p.add_argument(
        "--ingest-silent-after",
        type=float,
        default=5.0,
        help="ingest: seconds without a message after which a symbol's source is reported "
        "silent (log, metric, stats)",
    )


def _ingest_arguments(p: argparse.ArgumentParser) -> None:
    """``tickwire publish --ingest URL``: the leading engine takes the ingest protocol."""
    g = p.add_argument_group("ingest protocol (docs/ingest.md)")
    g.add_argument(
        "--ingest",
        default=None,
        help="take the market from any process publishing the ingest protocol on this "
        "NATS (nats://HOST:PORT) instead of the simulator; --symbols (optional) limits "
        "the symbols accepted",
    )
    g.add_argument(
        "--ingest-prefix",
        default=None,
        help="subject prefix of PREFIX.ingest.<SYMBOL> (default: --bus-prefix)",
    )
    _ingest_silent_argument(g)
    g.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve Prometheus metrics (tickwire_ingest_*, tickwire_publisher_*) on this port",
    )


def _ingest_source(args: argparse.Namespace) -> tuple[list[str], Any]:
    """The symbols and the source of ``publish --ingest``."""
    from .sources.ingest import IngestSource

    symbols = parse_symbols(args.symbols) if args.symbols else []
    source = IngestSource(
        args.ingest,
        symbols,
        prefix=args.ingest_prefix or args.bus_prefix,
        silent_after=args.ingest_silent_after,
    )
    return symbols, source


# -- symbols --------------------------------------------------------------------------------


def _symbols(spec: str | None, source: str) -> list[str]:
    """Resolve ``--symbols``: given, else a recording's own, else the default three.

    A bus or ingest source without ``--symbols`` gets none: it serves what its leader
    (or its source) has, and follows symbols added later.
    """
    if spec is not None:
        return parse_symbols(spec)
    if source == "-" or source.startswith(("nats://", "tls://", "ingest+", "ingest:")):
        return []
    if source != "sim" and not source.startswith(("nats://", "tls://")):
        from .sources.replay import read_recording

        header, _ = read_recording(source.removeprefix("replay:"))
        names = [str(s) for s in header.get("symbols", [])]
        if names:
            return names
    return parse_symbols(DEFAULT_SYMBOLS)


def _serve(args: argparse.Namespace) -> int:
    from . import hotpath
    from .server import Gateway, GatewayConfig

    if args.workers < 1:
        raise ConfigError("--workers must be at least 1")
    if args.workers > 1:
        return _supervise(args)
    admin_port, admin_optional = _admin_port(args.admin_port, args.port)
    config = GatewayConfig(
        host=args.host,
        port=args.port,
        symbols=_symbols(args.symbols, args.source),
        rate=args.rate,
        seed=args.seed,
        market_core=args.market_core,
        batch_ms=args.batch_ms,
        tick_pacing=args.tick_pacing,
        pass_share=args.pass_share,
        history_bytes=int(args.history_mb * (1 << 20)),
        heartbeat_s=args.heartbeat,
        ping_interval_s=args.ping_interval,
        ping_timeout_s=args.ping_timeout,
        max_message_bytes=int(args.max_message_kb * 1024),
        max_subscriptions=args.max_subscriptions,
        burst_every_s=args.burst_every,
        burst_factor=args.burst_factor,
        burst_seconds=args.burst_seconds,
        max_seconds=args.max_seconds,
        stats_path=args.stats_file,
        test_faults=args.test_faults,
        high_watermark_bytes=int(args.high_watermark_kb * 1024),
        low_watermark_bytes=int(args.low_watermark_kb * 1024),
        max_buffer_bytes=int(args.max_buffer_kb * 1024),
        max_total_buffer_bytes=int(args.max_total_buffer_mb * (1 << 20)),
        stall_timeout_s=args.stall_timeout,
        sndbuf_bytes=int(args.sndbuf_kb * 1024),
        admin_host=args.admin_host,
        admin_port=admin_port,
        admin_optional=admin_optional,
        source=args.source,
        replay_speed=args.replay_speed,
        bus_prefix=args.bus_prefix,
        source_timeout_s=args.source_timeout,
        ingest_silent_s=args.ingest_silent_after,
        resume_wait_s=args.resume_wait,
        reuse_port=args.reuse_port,
        deflate=args.deflate,
        deflate_level=args.deflate_level,
        **_security_config(args),
    )

    async def run() -> None:
        gateway = Gateway(config)
        await gateway.start()
        feed = config.source
        if config.source == "sim":
            core = gateway.source.stats().get("core") == "c"
            market = "compiled market" if core else "Python market"
            feed = f"at {config.rate:g} updates/s each ({market})"
        count = f"{len(gateway.engine.symbols)} symbols"
        if not config.symbols:
            count += " (and those its source adds)"
        print(
            f"tickwire: serving {count} {feed} "
            f"on {'wss' if config.tls_cert else 'ws'}://{config.host}:{gateway.port}/ws "
            f"(epoch {gateway.engine.epoch})",
            flush=True,
        )
        if gateway.admin is not None:
            print(
                f"tickwire: dashboard on {gateway.admin.url} "
                "(also /metrics /healthz /readyz /api/v1/book/SYMBOL)",
                flush=True,
            )
        await gateway.run()

    hotpath.run(run())
    return 0


def _supervise(args: argparse.Namespace) -> int:
    """``serve --workers N``: run N gateway processes on one port (supervisor.py)."""
    import asyncio

    from .server.supervisor import Supervisor

    admin_port, _ = _admin_port(args.admin_port, args.port)
    if admin_port == 0:
        raise ConfigError("--admin-port 0 cannot be shared by workers; give a port or off")
    if args.source == "-" or args.source.startswith(("ingest+", "ingest:")):
        raise ConfigError(
            "--workers with an ingest source would number the feed once per worker; put "
            "`tickwire publish --ingest` in front and serve --source nats://... (docs/ingest.md)"
        )
    raw = list(args.raw_argv)
    argv = raw[raw.index("serve") + 1 :]
    if args.source == "sim":
        print(
            "tickwire: note: with the embedded simulator every worker runs its own market "
            "and epoch; use --source nats://... for one feed (docs/scaling.md)",
            file=sys.stderr,
        )

    def announce(port: int, epochs: list[str], pids: list[int]) -> None:
        epoch = epochs[0] if len(set(epochs)) == 1 else "per-worker"
        print(
            f"tickwire: {len(pids)} workers (pids {' '.join(map(str, pids))}) serving "
            f"on ws://{args.host}:{port}/ws (epoch {epoch})",
            flush=True,
        )

    supervisor = Supervisor(
        argv, args.workers, args.host, args.port, admin_port=admin_port, announce=announce
    )
    asyncio.run(supervisor.run())
    return 0


def _publish_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "publish", help="run a market (simulator or recording) and publish it to NATS"
    )
    p.add_argument("--nats", required=True, help="NATS URL, e.g. nats://127.0.0.1:4222")
    p.add_argument(
        "--symbols",
        default=None,
        help=f"symbols or a count (default {DEFAULT_SYMBOLS}; a replay: the recording's)",
    )
    p.add_argument("--rate", type=float, default=200.0, help="book updates per second per symbol")
    p.add_argument("--seed", type=int, default=1, help="simulator seed")
    _market_core_argument(p)
    p.add_argument("--replay", default=None, help="publish this NDJSON recording instead")
    _replay_speed_argument(p)
    p.add_argument("--bus-prefix", default="tickwire", help="NATS subject prefix")
    p.add_argument("--tick-ms", type=float, default=1.0, help="batching period per symbol")
    _tick_pacing_argument(p, "--tick-ms")
    p.add_argument("--burst-every", type=float, default=0.0, help="seconds between bursts")
    p.add_argument("--burst-factor", type=float, default=10.0, help="rate multiplier in a burst")
    p.add_argument("--burst-seconds", type=float, default=2.0, help="length of a burst")
    p.add_argument("--max-seconds", type=float, default=0.0, help="exit after this long")
    p.add_argument("--log-level", default="WARNING", help="DEBUG, INFO, WARNING or ERROR")
    _ingest_arguments(p)


def _tick_pacing_argument(p: argparse.ArgumentParser, period: str) -> None:
    p.add_argument(
        "--tick-pacing",
        choices=("pause", "clock"),
        default="pause",
        help=f"pause: wait {period} after each pass, as the peer servers' sleep loops do "
        f"(passes stretch with the work, so writes get fewer under load); clock: start "
        f"a pass every {period}, however long the last one took",
    )


def _market_core_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--market-core",
        choices=("auto", "c", "python"),
        default="auto",
        help="the simulator's implementation: c (compiled: the same messages at a "
        "fraction of the CPU), python, or auto (c when built and usable)",
    )


def _publish(args: argparse.Namespace) -> int:
    import json

    from . import hotpath
    from .publisher import Publisher

    source_spec = "sim" if args.replay is None else args.replay
    if args.ingest is not None:
        if args.replay is not None:
            raise ConfigError("--ingest and --replay are two sources: give one")
        symbols, source = _ingest_source(args)
    else:
        symbols = _symbols(args.symbols, source_spec)
        source = _publish_source(args, symbols, source_spec)
    publisher = Publisher(
        args.nats,
        symbols,
        source,
        prefix=args.bus_prefix,
        tick_ms=args.tick_ms,
        tick_pacing=args.tick_pacing,
        max_seconds=args.max_seconds,
        metrics_port=args.metrics_port,
    )
    feed = f"from {args.ingest} " if args.ingest is not None else ""

    def ready(pub: Publisher) -> None:
        print(
            f"tickwire: publishing {len(symbols)} symbols {feed}to {args.nats} "
            f"as {args.bus_prefix}.md.<SYMBOL> (epoch {pub.engine.epoch})",
            flush=True,
        )

    hotpath.run(publisher.run(ready))
    sys.stderr.write(json.dumps(publisher.stats()) + "\n")
    return 0


def _publish_source(args: argparse.Namespace, symbols: list[str], source_spec: str) -> Any:
    from .server.config import GatewayConfig
    from .sources import make_source

    return make_source(
        GatewayConfig(
            symbols=symbols,
            rate=args.rate,
            seed=args.seed,
            market_core=args.market_core,
            burst_every_s=args.burst_every,
            burst_factor=args.burst_factor,
            burst_seconds=args.burst_seconds,
            source=source_spec,
            replay_speed=args.replay_speed,
        )
    )


def _record_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("record", help="write what a gateway streams as NDJSON (for replay)")
    p.add_argument("url", help="gateway WebSocket URL, e.g. ws://127.0.0.1:8765/ws")
    p.add_argument("--out", required=True, help="NDJSON file to write")
    p.add_argument("--symbols", default=DEFAULT_SYMBOLS, help="symbols to record")
    p.add_argument(
        "--kinds", default="book,trades,ticker", help="channel kinds to record, comma-separated"
    )
    p.add_argument(
        "--duration", type=float, default=0.0, help="seconds to record (0: until Ctrl-C)"
    )


def _record(args: argparse.Namespace) -> int:
    import uvloop

    from .protocol import CHANNEL_KINDS
    from .record import record

    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    if not kinds or any(k not in CHANNEL_KINDS for k in kinds):
        raise ConfigError(f"--kinds must name some of {','.join(CHANNEL_KINDS)}")
    if args.duration < 0:
        raise ConfigError("--duration must be >= 0")
    uvloop.run(
        record(args.url, args.out, parse_symbols(args.symbols), kinds=kinds, duration=args.duration)
    )
    return 0


def _admin_port(spec: str, ws_port: int) -> tuple[int | None, bool]:
    """Resolve ``--admin-port`` to ``(port or None for off, bind failure tolerated)``.

    ``auto`` puts the admin listener next to a fixed WebSocket port (8765 -> 8766) and
    tolerates that port being taken; with ``--port 0`` (tests, ad-hoc servers) it is
    off, so parallel servers never fight over one admin port.
    """
    value = spec.strip().lower()
    if value == "off":
        return None, False
    if value == "auto":
        return (ws_port + 1, True) if 0 < ws_port < 65535 else (None, False)
    try:
        port = int(value)
    except ValueError:
        raise ConfigError(f"--admin-port must be a port, 'auto' or 'off', not {spec!r}") from None
    if not 0 <= port <= 65535:
        raise ConfigError("--admin-port must be 0..65535")
    return port, False


def _bench_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from .loadtest.command import add_bench_arguments

    p = sub.add_parser(
        "bench",
        help="measure a tickwire feed: deliveries/s, bytes/s, latency, gaps (multi-process)",
    )
    add_bench_arguments(p)


def _watch_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("watch", help="live terminal view of one verified book (the SDK)")
    p.add_argument("symbol", help="symbol to watch, e.g. BTC-USD")
    p.add_argument("--url", default="ws://127.0.0.1:8765/ws", help="gateway WebSocket URL")
    p.add_argument(
        "--duration", type=float, default=0.0, help="exit after this many seconds (0: Ctrl-C)"
    )
    p.add_argument("--refresh", type=float, default=4.0, help="screen refreshes per second")
    p.add_argument(
        "--encoding",
        choices=("json", "msgpack"),
        default="json",
        help="wire encoding to negotiate (default json)",
    )
    p.add_argument("--deflate", action="store_true", help="offer permessage-deflate")


def _watch(args: argparse.Namespace) -> int:
    import uvloop

    from .client.watch import watch
    from .exceptions import RequestError

    if args.refresh <= 0 or args.duration < 0:
        raise ConfigError("--refresh must be positive and --duration >= 0")
    try:
        return uvloop.run(
            watch(
                args.symbol,
                args.url,
                duration=args.duration,
                refresh=args.refresh,
                encoding=args.encoding,
                compression="deflate" if args.deflate else None,
            )
        )
    except (OSError, RequestError) as exc:
        sys.stderr.write(f"tickwire watch: cannot watch {args.symbol} at {args.url}: {exc}\n")
        return 1


def _token_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "token", help="sign a login token for a user (testing private channels by hand)"
    )
    p.add_argument("user", help="the token's sub: orders.<USER> is what it opens")
    key = p.add_mutually_exclusive_group(required=True)
    key.add_argument("--secret-file", help="HS256: the server's --jwt-secret-file")
    key.add_argument("--private-key", help="ES256: the issuer's PEM private key")
    p.add_argument("--ttl", type=float, default=3600.0, help="seconds until it expires")


def _token(args: argparse.Namespace) -> int:
    import jwt

    from .auth import MIN_SECRET_BYTES, make_token
    from .protocol import valid_user

    if not valid_user(args.user):
        raise ConfigError(f"not a valid user id: {args.user!r} (1-64 of A-Z a-z 0-9 _ - . @ :)")
    if not 0 < args.ttl < 1e9:
        raise ConfigError("--ttl must be more than 0 seconds (and finite)")
    path = args.secret_file or args.private_key
    try:
        with open(path, "rb") as f:
            key = f.read()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    if args.secret_file:
        if len(key.strip()) < MIN_SECRET_BYTES:
            raise ConfigError(f"--secret-file: the secret must be {MIN_SECRET_BYTES}+ bytes")
        print(make_token(args.user, ttl=args.ttl, secret=key.strip()))
    else:
        try:
            print(make_token(args.user, ttl=args.ttl, private_key=key))
        except (ValueError, TypeError, AttributeError, jwt.PyJWTError):
            # Not PEM, encrypted, a public key, or not an EC P-256 key.
            raise ConfigError(
                f"--private-key {path}: not an unencrypted PEM EC P-256 private key"
            ) from None
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tickwire`` command."""
    parser = argparse.ArgumentParser(prog="tickwire", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)
    _publish_parser(sub)
    _record_parser(sub)
    _bench_parser(sub)
    _watch_parser(sub)
    _token_parser(sub)
    raw_argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(raw_argv)
    args.raw_argv = raw_argv
    configure_logging(getattr(args, "log_level", "WARNING"), getattr(args, "log_json", False))
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "publish":
            return _publish(args)
        if args.command == "record":
            return _record(args)
        if args.command == "bench":
            from .loadtest.command import bench_main

            return bench_main(args)
        if args.command == "watch":
            return _watch(args)
        if args.command == "token":
            return _token(args)
    except ConfigError as exc:
        parser.error(str(exc))
    except KeyboardInterrupt:
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
