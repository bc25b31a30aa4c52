"""The ``tickwire`` command: ``serve``, ``publish``, ``record``, ``config``, ``token``,
``report`` (and, from the SDK, ``watch`` and ``bench``).

The options of ``serve``, ``publish`` and ``record`` are declared once, in
:mod:`tickwire.settings`; this module reads the file and the environment for them,
hands the resolved values to the commands and reloads ``serve`` on ``SIGHUP``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from . import settings
from .exceptions import ConfigError
from .logs import configure_logging, set_level
from .simulator import parse_symbols

if TYPE_CHECKING:
    from .server import Gateway, GatewayConfig

__all__ = ["main"]

log = logging.getLogger("tickwire.config")

#: Symbols served and published when ``--symbols`` is not given.
DEFAULT_SYMBOLS = "BTC-USD,ETH-USD,SOL-USD"


def _settings_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], command: str, help_text: str
) -> None:
    """A command whose options are settings (tickwire.settings): flags, file, environment."""
    p = sub.add_parser(
        command,
        help=help_text,
        description=f"{help_text}. Every option can also be set in the --config file or "
        "the environment (TICKWIRE_<SECTION>_<KEY>); precedence: flag > environment > "
        "file > default. See docs/configuration.md.",
    )
    p.add_argument(
        "--config",
        metavar="FILE",
        default=None,
        help=f"TOML configuration file (also {settings.CONFIG_ENV}=FILE); "
        "`tickwire config example` writes one",
    )
    settings.add_arguments(p, command)


def _security_config(args: argparse.Namespace) -> dict[str, Any]:
    """The GatewayConfig fields of the ``[security]`` and ``[limits]`` settings."""
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
        "sim_users": list(args.sim_users),
        "sim_order_fraction": args.sim_order_fraction,
        "limits": Limits(
            max_connections_per_ip=args.max_connections_per_ip,
            handshakes_per_s=args.handshakes_per_ip,
            handshake_burst=args.handshake_burst,
            handshake_timeout_s=args.handshake_timeout,
            max_messages_per_s=args.max_messages_per_s,
            message_burst=args.message_burst,
            idle_timeout_s=args.idle_timeout,
            allowed_origins=list(args.allowed_origin),
            trusted_proxies=list(args.trusted_proxy),
            exempt=list(args.per_ip_exempt),
        ),
    }


# -- the ingest protocol (docs/ingest.md) ------------------------------------------------


def _ingest_source(args: argparse.Namespace) -> tuple[list[str], Any]:
    """The symbols and the source of ``publish --ingest``."""
    from .sources.ingest import IngestSource

    symbols = parse_symbols(",".join(args.symbols)) if args.symbols else []
    source = IngestSource(
        args.ingest,
        symbols,
        prefix=args.ingest_prefix or args.bus_prefix,
        silent_after=args.ingest_silent_after,
        core={"auto": None, "c": True, "python": False}[args.market_core],
    )
    return symbols, source


# -- symbols --------------------------------------------------------------------------------


def _symbols(spec: list[str] | None, source: str) -> list[str]:
    """Resolve ``--symbols``: given, else a recording's own, else the default three.

    A bus or ingest source without ``--symbols`` gets none: it serves what its leader
    (or its source) has, and follows symbols added later.
    """
    if spec is not None:
        return parse_symbols(",".join(spec))
    if source == "-" or source.startswith(("nats://", "tls://", "ingest+", "ingest:")):
        return []
    from .sources.venue import is_venue_spec

    if is_venue_spec(source):
        raise ConfigError(f"--source {source}: name the symbols to follow with --symbols")
    from .tardis import is_tardis_spec

    if is_tardis_spec(source):
        return []  # the files' own symbols, found as they are read
    if source != "sim" and not source.startswith(("nats://", "tls://")):
        from .sources.replay import read_recording

        header, _ = read_recording(source.removeprefix("replay:"))
        names = [str(s) for s in header.get("symbols", [])]
        if names:
            return names
    return parse_symbols(DEFAULT_SYMBOLS)


def _gateway_config(args: argparse.Namespace) -> GatewayConfig:
    """The gateway's options from the resolved ``serve`` settings."""
    from .server import GatewayConfig

    admin_port, admin_optional = _admin_port(args.admin_port, args.port)
    return GatewayConfig(
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
        report_path=args.report,
        report_window_s=args.report_window,
        report_storm=args.report_storm,
        faults_file=args.faults,
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
        replay_symbol_map=list(args.replay_symbol_map),
        bus_prefix=args.bus_prefix,
        source_timeout_s=args.source_timeout,
        ingest_silent_s=args.ingest_silent_after,
        venue_rest=args.venue_rest,
        venue_depth=args.venue_depth,
        venue_idle_timeout_s=args.venue_idle_timeout,
        resume_wait_s=args.resume_wait,
        reuse_port=args.reuse_port,
        deflate=args.deflate,
        deflate_level=args.deflate_level,
        **_security_config(args),
    )


def _serve(args: argparse.Namespace, loader: _Loader) -> int:
    from . import hotpath
    from .server import Gateway

    if args.workers < 1:
        raise ConfigError("--workers must be at least 1")
    if args.workers > 1:
        return _supervise(args)
    config = _gateway_config(args)

    async def run() -> None:
        gateway = Gateway(config)
        gateway.on_hangup = _Reloader(gateway, loader, args.resolved).reload
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


class _Reloader:
    """``SIGHUP``: resolve the settings again and apply what can change while serving.

    The same command line on top of the file and the environment read again; the
    settings marked ``reload`` are applied (:meth:`Gateway.apply_config`), every other
    change is logged with why it needs a restart. A configuration that fails its checks
    is logged and the running one kept, whole.
    """

    def __init__(self, gateway: Gateway, loader: _Loader, running: settings.Resolved) -> None:
        self.gateway = gateway
        self.loader = loader
        self.running = running

    def reload(self) -> None:
        try:
            plan = settings.reload_plan(self.running, self.loader.load())
            config = _gateway_config(_namespace(plan.merged, self.loader))
        except ConfigError as exc:
            log.error("reload failed, keeping the running configuration: %s", exc)
            return
        set_level(plan.merged["admin.log_level"])
        self.gateway.apply_config(config)
        self.running = plan.merged
        if not plan.applied and not plan.skipped:
            log.info("reload: no setting changed")
        for setting, old, new in plan.applied:
            log.info("reload: %s", settings.change_line(setting, old, new))
        for setting, old, new in plan.skipped:
            log.warning("reload: %s", settings.change_line(setting, old, new))


def _supervise(args: argparse.Namespace) -> int:
    """``serve --workers N``: run N gateway processes on one port (supervisor.py)."""
    import asyncio

    from .server.supervisor import Supervisor

    admin_port, _ = _admin_port(args.admin_port, args.port)
    if admin_port == 0:
        raise ConfigError("--admin-port 0 cannot be shared by workers; give a port or off")
    if args.report:
        raise ConfigError(
            "--report FILE with --workers: every worker would write the same file; read each "
            "worker's /api/v1/report instead (docs/connectivity-testing.md)"
        )
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


def _publish(args: argparse.Namespace) -> int:
    import json

    from . import hotpath
    from .publisher import Publisher

    source_spec = "sim" if args.replay is None else args.replay
    from .tardis import is_tardis_spec

    if args.replay is not None and is_tardis_spec(args.replay):
        raise ConfigError(
            "publish --replay takes tickwire recordings; replay tardis.dev CSVs with "
            "`tickwire serve --source tardis:PATH` (docs/venue-feeds.md)"
        )
    from .sources.venue import is_venue_spec

    venue = is_venue_spec(args.source)
    if args.source != "sim" and not venue:
        raise ConfigError(
            "publish --source takes a venue feed (binance+wss://, okx+wss://, kraken+wss://...); "
            "a recording is --replay FILE, the ingest protocol --ingest nats://..."
        )
    if venue:
        if args.replay is not None or args.ingest is not None:
            raise ConfigError("--source, --replay and --ingest are three sources: give one")
        if not args.symbols:
            raise ConfigError(f"--source {args.source}: name the symbols to follow with --symbols")
        from .sources.venue import VenueSource

        symbols = parse_symbols(",".join(args.symbols))
        source: Any = VenueSource(
            args.source,
            symbols,
            rest=args.venue_rest,
            depth=args.venue_depth,
            timeout=args.source_timeout,
            idle_timeout=args.venue_idle_timeout,
        )
        feed = f"from {args.source} "
    elif args.ingest is not None:
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
    if not venue:
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


def _record(args: argparse.Namespace) -> int:
    import uvloop

    from .protocol import CHANNEL_KINDS
    from .record import record

    kinds = tuple(args.kinds)
    if not kinds or any(k not in CHANNEL_KINDS for k in kinds):
        raise ConfigError(f"--kinds must name some of {','.join(CHANNEL_KINDS)}")
    if args.duration < 0:
        raise ConfigError("--duration must be >= 0")
    from .sources.venue import is_venue_spec

    if is_venue_spec(args.source):
        from .record import record_venue

        if not args.symbols:
            raise ConfigError(f"--source {args.source}: name the symbols to record with --symbols")
        symbols = parse_symbols(",".join(args.symbols))
        uvloop.run(
            record_venue(
                args.source,
                args.out,
                symbols,
                rest=args.venue_rest,
                depth=args.venue_depth,
                duration=args.duration,
                book_wait=args.source_timeout,
            )
        )
        return 0
    if args.url is None:
        raise ConfigError(
            "tickwire record needs the gateway's URL (ws://HOST:PORT/ws), or a venue feed "
            "with --source binance+wss://..., okx+wss://... or kraken+wss://..."
        )
    symbols = parse_symbols(",".join(args.symbols or [DEFAULT_SYMBOLS]))
    uvloop.run(record(args.url, args.out, symbols, kinds=kinds, duration=args.duration))
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


def _report_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "report",
        help="print a connectivity report (serve --report FILE, or a live gateway's admin URL)",
        description="Print the connectivity report as tables: each client's connections, "
        "the faults it was given and what it did next. SOURCE is the JSON file "
        "`tickwire serve --report FILE` wrote, or a gateway's admin URL "
        "(http://HOST:PORT, its /api/v1/report is read). See docs/connectivity-testing.md.",
    )
    p.add_argument("source", metavar="FILE|URL", help="report JSON file or admin URL")
    p.add_argument("--json", action="store_true", help="print the JSON instead of tables")
    p.add_argument("--width", type=int, default=140, help="table width in columns")


def _report(args: argparse.Namespace) -> int:
    import json
    import urllib.error
    import urllib.request

    from .faults.report import render_summary

    source: str = args.source
    try:
        if source.startswith(("http://", "https://")):
            url = source.rstrip("/")
            if not url.endswith("/api/v1/report"):
                url += "/api/v1/report"
            with urllib.request.urlopen(url, timeout=10) as response:
                data = json.loads(response.read())
        else:
            with open(source, encoding="utf-8") as f:
                data = json.load(f)
    except urllib.error.HTTPError as exc:
        sys.stderr.write(f"tickwire report: {source}: HTTP {exc.code}: {exc.read()[:200]!r}\n")
        return 1
    except (OSError, ValueError) as exc:
        sys.stderr.write(f"tickwire report: cannot read {source}: {exc}\n")
        return 1
    if not isinstance(data, dict) or "faults" not in data:
        sys.stderr.write(f"tickwire report: {source} is not a tickwire report\n")
        return 1
    if args.json:
        sys.stdout.write(json.dumps(data, indent=1) + "\n")
    else:
        sys.stdout.write(render_summary(data, width=args.width))
    return 0


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


class _Loader:
    """Resolves one command's settings from its command line, the environment and the
    file (the I/O around :func:`tickwire.settings.resolve`); again on each reload."""

    def __init__(
        self, command: str | None, args: argparse.Namespace, environ: Mapping[str, str]
    ) -> None:
        self.command = command
        self.given = {
            s.dest: getattr(args, s.dest)
            for s in settings.for_command(command)
            if hasattr(args, s.dest)
        }
        self.environ = environ
        self.path: str | None = args.config
        self.path_from = "--config"
        if self.path is None and environ.get(settings.CONFIG_ENV):
            self.path = environ[settings.CONFIG_ENV]
            self.path_from = settings.CONFIG_ENV

    def load(self) -> settings.Resolved:
        """Read the file (if any) and resolve; raise ConfigError on any mistake."""
        data = None
        if self.path is not None:
            try:
                with open(self.path, "rb") as f:
                    text = f.read().decode("utf-8")
            except OSError as exc:
                raise ConfigError(
                    f"{self.path_from} {self.path}: cannot read: {exc.strerror}"
                ) from None
            except UnicodeDecodeError:
                raise ConfigError(f"{self.path}: not UTF-8 text") from None
            data = settings.parse_toml(text, self.path)
        resolved = settings.resolve(
            self.command,
            flags=self.given,
            env=self.environ,
            file=data,
            file_name=self.path or "config file",
        )
        _check_files(resolved)
        return resolved


def _check_files(resolved: settings.Resolved) -> None:
    """Every file a setting names (certificates, keys, secrets) must be readable now."""
    for setting in resolved.settings():
        path = resolved[setting.name]
        if not setting.path or path is None:
            continue
        try:
            with open(path, "rb") as f:
                content = f.read()
        except OSError as exc:
            raise ConfigError(
                f"{resolved.where(setting.name)}: cannot read {path!r}: {exc.strerror}"
            ) from None
        if setting.name == "security.jwt_secret_file":
            if len(content.strip()) < settings.MIN_SECRET_BYTES:
                raise ConfigError(
                    f"{resolved.where(setting.name)}: expected a secret of at least "
                    f"{settings.MIN_SECRET_BYTES} bytes in {path!r}"
                )
        elif setting.name == "security.jwt_public_key":
            from .auth import TokenVerifier

            try:
                TokenVerifier(public_key=content)
            except ConfigError as exc:
                why = str(exc).removeprefix("--jwt-public-key: ")
                raise ConfigError(f"{resolved.where(setting.name)}: {path!r}: {why}") from None
    cert, key = "security.tls_cert", "security.tls_key"
    if resolved.values.get(cert) is not None and resolved.values.get(key) is not None:
        import ssl

        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
                resolved[cert], resolved[key]
            )
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"{resolved.describe(cert)} and {resolved.describe(key)}: expected a PEM "
                f"certificate chain and its private key ({exc})"
            ) from None


def _namespace(resolved: settings.Resolved, loader: _Loader) -> argparse.Namespace:
    """The resolved settings as the attributes the commands read (``args.port``)."""
    return argparse.Namespace(
        **resolved.by_dest(), command=resolved.command, config=loader.path, resolved=resolved
    )


def _config_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "config",
        help="the configuration: effective values (show), an example file, the reference",
    )
    cmds = p.add_subparsers(dest="config_command", required=True)
    show = cmds.add_parser(
        "show",
        help="print the effective configuration and where each value came from",
        description="Print the effective configuration as TOML, each value commented "
        "with its origin (default, file, env, flag), secrets masked. It runs every check "
        "serve does: a mistake exits with status 2 and one line naming it.",
    )
    show.add_argument("--config", metavar="FILE", default=None, help="TOML configuration file")
    show.add_argument(
        "--for",
        dest="for_command",
        choices=settings.COMMANDS,
        default=None,
        help="only the settings of this command, with its checks (default: every setting)",
    )
    settings.add_arguments(show, None)
    for name, what in (
        ("example", "a commented example file: every setting at its default"),
        ("docs", "docs/configuration.md, generated from the declarations"),
    ):
        c = cmds.add_parser(name, help=f"write {what}")
        c.add_argument("-o", "--out", metavar="FILE", default=None, help="(default: stdout)")


def _config(args: argparse.Namespace) -> int:
    if args.config_command == "show":
        loader = _Loader(args.for_command, args, os.environ)
        text = settings.render_show(loader.load())
    elif args.config_command == "example":
        text = settings.render_example()
    else:
        text = settings.render_docs()
    if getattr(args, "out", None):
        try:
            with open(args.out, "w", encoding="utf-8") as f:
                f.write(text)
        except OSError as exc:
            raise ConfigError(f"--out {args.out}: cannot write: {exc.strerror}") from None
    else:
        sys.stdout.write(text)
    return 0


def _fail(command: str, exc: ConfigError, json_logs: bool) -> int:
    """Report a configuration mistake once (one line, or one JSON log record): exit 2."""
    if json_logs:
        logging.getLogger("tickwire.config").error("%s", exc)
    else:
        sys.stderr.write(f"tickwire {command}: error: {exc}\n")
        sys.stderr.flush()
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tickwire`` command."""
    parser = argparse.ArgumentParser(prog="tickwire", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _settings_parser(sub, "serve", "run the gateway with its embedded market simulator")
    _settings_parser(sub, "publish", "run a market (simulator or recording) and publish it to NATS")
    _settings_parser(sub, "record", "write what a gateway streams as NDJSON (for replay)")
    _config_parser(sub)
    _bench_parser(sub)
    _watch_parser(sub)
    _token_parser(sub)
    _report_parser(sub)
    raw_argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(raw_argv)
    command = args.command
    json_logs = False
    try:
        loader = None
        if command in settings.COMMANDS:
            loader = _Loader(command, args, os.environ)
            args = _namespace(loader.load(), loader)
        args.raw_argv = raw_argv
        json_logs = bool(getattr(args, "log_json", False))
        configure_logging(getattr(args, "log_level", "WARNING"), json_logs)
        if command == "serve":
            assert loader is not None
            return _serve(args, loader)
        if command == "publish":
            return _publish(args)
        if command == "record":
            return _record(args)
        if command == "config":
            return _config(args)
        if command == "bench":
            from .loadtest.command import bench_main

            return bench_main(args)
        if command == "watch":
            return _watch(args)
        if command == "token":
            return _token(args)
        if command == "report":
            return _report(args)
    except ConfigError as exc:
        return _fail(command, exc, json_logs)
    except KeyboardInterrupt:
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
