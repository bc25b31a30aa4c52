"""The ``tickwire`` command: ``serve`` (and, from the SDK, ``watch`` and ``bench``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .exceptions import ConfigError
from .logs import configure_logging
from .simulator import parse_symbols

__all__ = ["main"]


def _serve_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve", help="run the gateway with its embedded market simulator")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8765, help="WebSocket port (0: any free)")
    p.add_argument(
        "--symbols",
        default="BTC-USD,ETH-USD,SOL-USD",
        help="comma-separated symbols, or a count N for SYM0..SYM{N-1}",
    )
    p.add_argument("--rate", type=float, default=200.0, help="book updates per second per symbol")
    p.add_argument("--seed", type=int, default=1, help="simulator seed (deterministic flow)")
    p.add_argument(
        "--batch-ms",
        type=float,
        default=1.0,
        help="tick: a channel's updates within it share one frame (0: one each)",
    )
    p.add_argument(
        "--history-mb", type=float, default=4.0, help="resume history kept per channel, in MiB"
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


def _serve(args: argparse.Namespace) -> int:
    import uvloop

    from .server import Gateway, GatewayConfig

    admin_port, admin_optional = _admin_port(args.admin_port, args.port)
    config = GatewayConfig(
        host=args.host,
        port=args.port,
        symbols=parse_symbols(args.symbols),
        rate=args.rate,
        seed=args.seed,
        batch_ms=args.batch_ms,
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
    )

    async def run() -> None:
        gateway = Gateway(config)
        await gateway.start()
        print(
            f"tickwire: serving {len(config.symbols)} symbols at {config.rate:g} updates/s "
            f"each on ws://{config.host}:{gateway.port}/ws (epoch {gateway.engine.epoch})",
            flush=True,
        )
        if gateway.admin is not None:
            print(
                f"tickwire: dashboard on {gateway.admin.url} "
                "(also /metrics /healthz /readyz /api/v1/book/SYMBOL)",
                flush=True,
            )
        await gateway.run()

    uvloop.run(run())
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


def _watch(args: argparse.Namespace) -> int:
    import uvloop

    from .client.watch import watch
    from .exceptions import RequestError

    if args.refresh <= 0 or args.duration < 0:
        raise ConfigError("--refresh must be positive and --duration >= 0")
    try:
        return uvloop.run(
            watch(args.symbol, args.url, duration=args.duration, refresh=args.refresh)
        )
    except (OSError, RequestError) as exc:
        sys.stderr.write(f"tickwire watch: cannot watch {args.symbol} at {args.url}: {exc}\n")
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tickwire`` command."""
    parser = argparse.ArgumentParser(prog="tickwire", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)
    _bench_parser(sub)
    _watch_parser(sub)
    args = parser.parse_args(argv)
    configure_logging(getattr(args, "log_level", "WARNING"), getattr(args, "log_json", False))
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "bench":
            from .loadtest.command import bench_main

            return bench_main(args)
        if args.command == "watch":
            return _watch(args)
    except ConfigError as exc:
        parser.error(str(exc))
    except KeyboardInterrupt:
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
