"""The ``tickwire bench`` command line: options, output and exit status.

``cli.py`` only registers the subcommand; everything about it is here so that the
option list, the ``--json`` output and the exit codes sit next to each other.

Exit status: 0 when at least one connection was made (whatever the numbers), 1 when
none could be made, 2 for bad options (argparse).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TextIO

from ..exceptions import ConfigError
from .plan import auto_procs, channel_list
from .report import format_text
from .runner import BenchConfig, run_bench

__all__ = ["add_bench_arguments", "bench_main"]


def _procs(value: str) -> int:
    if value == "auto":
        return 0
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError("--procs must be 'auto' or at least 1")
    return n


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    """Add the options of ``tickwire bench`` to ``p``."""
    p.add_argument("url", help="the feed, e.g. ws://127.0.0.1:8765/ws")
    p.add_argument("--conns", type=int, default=10, help="connections to open (default 10)")
    what = p.add_mutually_exclusive_group()
    what.add_argument(
        "--channels",
        default=None,
        help="comma-separated channels; connection i subscribes channel i mod len",
    )
    what.add_argument(
        "--symbols",
        type=int,
        default=None,
        help="N: subscribe SYM0..SYM{N-1} (as served by 'tickwire serve --symbols N')",
    )
    p.add_argument(
        "--kinds",
        default="book",
        help="channel kinds for --symbols: book, trades, ticker, comma-separated (default book)",
    )
    p.add_argument(
        "--channels-per-conn",
        type=int,
        default=1,
        help="channels each connection subscribes, from its own onwards (default 1)",
    )
    p.add_argument(
        "--duration", type=float, default=10.0, help="seconds measured after the warm-up"
    )
    p.add_argument("--warmup", type=float, default=2.0, help="seconds connected before measuring")
    p.add_argument(
        "--procs",
        type=_procs,
        default=0,
        help="worker processes, or 'auto' (default): one per core but one, up to --conns",
    )
    p.add_argument(
        "--connect-timeout",
        type=float,
        default=10.0,
        help="seconds for each connection's TCP connect and WebSocket handshake",
    )
    p.add_argument(
        "--encoding",
        choices=("json", "msgpack"),
        default="json",
        help="wire encoding each connection asks for (default json; docs/protocol.md)",
    )
    p.add_argument(
        "--deflate",
        action="store_true",
        help="offer permessage-deflate (bytes are counted compressed, as on the wire)",
    )
    p.add_argument(
        "--dialect",
        choices=("binance", "okx", "kraken"),
        default=None,
        help="measure a venue's feed (URL: its WebSocket endpoint) instead of tickwire's",
    )
    p.add_argument(
        "--rest",
        default="",
        help="with --dialect: the venue's REST base (Binance's depth snapshots, e.g. "
        "https://api.binance.com or http://HOST:ADMIN_PORT/binance)",
    )
    p.add_argument(
        "--depth",
        type=int,
        default=0,
        help="with --dialect kraken: the book depth (10, 25, 100, 500, 1000; default 100)",
    )
    p.add_argument(
        "--clock-offset",
        default="0",
        help="with --dialect: the venue's clock minus this host's in ms, or 'auto' to "
        "measure it from the venue's REST time (default 0: the host clock is the venue's)",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    p.add_argument("--no-progress", action="store_true", help="no live progress line on stderr")


def bench_main(
    args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    """Run ``tickwire bench`` with parsed ``args``; return the exit status.

    Raises:
        ConfigError: an option is invalid (the CLI turns it into a usage error).
    """
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    dialect = args.dialect or ""
    if args.channels is None and args.symbols is None:
        # The symbols 'tickwire serve' has by default.
        args.channels = "book.BTC-USD,book.ETH-USD,book.SOL-USD"
    if dialect:
        from .venue import decoder_for

        if args.encoding != "json":
            raise ConfigError("--dialect speaks the venue's JSON: leave --encoding json")
        if args.clock_offset != "auto":
            try:
                float(args.clock_offset)
            except ValueError:
                raise ConfigError("--clock-offset must be milliseconds or 'auto'") from None
    elif args.rest or args.depth or args.clock_offset != "0":
        raise ConfigError("--rest, --depth and --clock-offset need --dialect")
    channels = channel_list(args.channels, args.symbols, args.kinds)
    if dialect:
        decoder_for(dialect, channels, args.depth)  # every channel and the depth valid
    if args.conns < 1:
        raise ConfigError("--conns must be at least 1")
    if args.duration <= 0 or args.warmup < 0 or args.connect_timeout <= 0:
        raise ConfigError("--duration and --connect-timeout must be > 0, --warmup >= 0")
    config = BenchConfig(
        url=args.url,
        channels=channels,
        conns=args.conns,
        procs=args.procs or auto_procs(args.conns),
        duration=args.duration,
        warmup=args.warmup,
        per_conn=args.channels_per_conn,
        connect_timeout=args.connect_timeout,
        progress=not args.no_progress,
        encoding=args.encoding,
        deflate=args.deflate,
        dialect=dialect,
        rest=args.rest,
        depth=args.depth,
        clock_offset=args.clock_offset,
    )
    result = run_bench(config, err)
    if args.json:
        out.write(json.dumps(result.to_json()) + "\n")
        if result.client_bound:
            err.write(format_text(result).splitlines()[-1] + "\n")
    else:
        out.write(format_text(result) + "\n")
    out.flush()
    if result.connected == 0:
        err.write(
            "tickwire bench: no connection could be made"
            + (f": {result.errors[0]}" if result.errors else "")
            + "\n"
        )
        return 1
    return 0
