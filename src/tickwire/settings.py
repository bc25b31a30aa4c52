"""Every setting of ``tickwire serve``, ``publish`` and ``record``, declared once (Sans-I/O).

Each :class:`Setting` below is the single declaration of one option: its section and
key in the configuration file, its command-line flag, its environment variable, its
type, default, range or choices, its help text, whether it is a secret and whether a
running gateway can take a new value on ``SIGHUP``. From the table :data:`SETTINGS`
come:

* the ``argparse`` options of each command (:func:`add_arguments`), with their
  defaults suppressed, so that a value the command line did not give can come from
  the environment or the file;
* the configuration file (TOML, read with :mod:`tomllib` by the I/O layer), whose
  sections are :data:`SECTIONS`: ``[limits] max_messages_per_s = 20``;
* the environment: ``TICKWIRE_<SECTION>_<KEY>``, e.g. ``TICKWIRE_LIMITS_MAX_MESSAGES_PER_S``;
* ``tickwire config show`` / ``example`` / ``docs`` (:func:`render_show`,
  :func:`render_example`, :func:`render_docs`) and ``docs/configuration.md``.

Precedence: command line > environment > file > built-in default (:func:`resolve`).
Every mistake raises one :class:`~tickwire.exceptions.ConfigError` that names where
the value came from (the file and key, the variable or the flag) and what is expected;
a secret's value is never part of a message.

Adding a setting is one line in :data:`SETTINGS` (plus, for the gateway to use it, the
line in ``cli.py`` that hands it to :class:`~tickwire.server.GatewayConfig`).
Nothing here reads a file, the environment or a clock: the callers pass them in.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import math
import textwrap
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .exceptions import ConfigError
from .pacing import MAX_PASS_SHARE

__all__ = [
    "COMMANDS",
    "SECTIONS",
    "SETTINGS",
    "Origin",
    "ReloadPlan",
    "Resolved",
    "Section",
    "Setting",
    "add_arguments",
    "by_name",
    "change_line",
    "for_command",
    "parse_toml",
    "reload_plan",
    "render_docs",
    "render_example",
    "render_show",
    "resolve",
    "sample",
]

#: The commands whose options are settings.
COMMANDS = ("serve", "publish", "record")

#: Environment variable naming the configuration file when ``--config`` is not given.
CONFIG_ENV = "TICKWIRE_CONFIG"

#: Shown instead of a secret's value.
MASK = "***"

#: Shortest HS256 secret accepted (the same rule as :data:`tickwire.auth.MIN_SECRET_BYTES`).
MIN_SECRET_BYTES = 32

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
CHANNEL_KINDS = ("book", "trades", "ticker")


@dataclass(frozen=True, slots=True)
class Section:
    """A table of the configuration file.

    Attributes:
        name: the table's name (``[limits]``) and the ``TICKWIRE_<NAME>_`` prefix.
        title: a heading for the docs and ``--help``.
        doc: where the section's behaviour is explained.
        restart: why its settings need a restart, unless one says otherwise.
    """

    name: str
    title: str
    doc: str = ""
    restart: str = "needs a restart"


SECTIONS = (
    Section("listen", "listening and the WebSocket", "docs/protocol.md",
            "needs a restart (the listener is set up at start)"),
    Section("market", "market and source", "docs/scaling.md",
            "needs a restart (the market and its source are built at start)"),
    Section("pacing", "pacing of the tick loop", "docs/architecture.md",
            "needs a restart (the tick loop reads it at start)"),
    Section("slow_consumers", "slow consumers", "docs/slow-consumers.md",
            "needs a restart (set on each connection as it opens)"),
    Section("limits", "limits per client", "docs/security.md",
            "needs a restart (fixed in the listener at start)"),
    Section("security", "TLS, tokens, origins and proxies", "docs/security.md",
            "needs a restart (keys and certificates are loaded at start)"),
    Section("admin", "admin listener, logs and lifetime", "docs/operations.md",
            "needs a restart (set up at start)"),
    Section("faults", "fault injection (tests only)", "docs/connectivity-testing.md"),
    Section("dialects", "exchange dialects", "docs/dialects.md"),
    Section("record", "tickwire record", "docs/scaling.md",
            "applies to the next tickwire record"),
)  # fmt: skip

_SECTION_BY_NAME = {s.name: s for s in SECTIONS}


@dataclass(frozen=True, slots=True)
class Setting:
    """One option, declared once.

    Attributes:
        section, key: where it lives in the file (``[section] key``).
        kind: ``str``, ``int``, ``float``, ``bool``, ``list`` (of strings: comma-separated
            on the command line and in the environment, an array or a comma-separated
            string in the file) or ``spec`` (text, or a number in the file).
        default: the built-in default (None: not set).
        help: one sentence for ``--help`` and the docs.
        commands: the commands taking it.
        flag: its command-line option (default ``--<key with dashes>``).
        low, high: the range, inclusive; ``above``: ``low`` itself excluded.
        choices: the values accepted (of each item, for a list); case-insensitive
            for ``upper`` settings, which are stored upper-case.
        check: extra validation: returns what is expected, or None when the value is
            fine.
        secret: never shown nor echoed (``config show`` prints ``***``).
        path: a file that must be readable at start (checked by the I/O layer).
        reload: a running gateway applies a new value on ``SIGHUP``.
        restart: why a new value needs a restart (default: the section's reason).
        repeat: the flag is given once per list item (``--allowed-origin A
            --allowed-origin B``) rather than comma-separated.
        positional: a positional argument rather than a flag.
        required: the commands that cannot run without it.
        sample: a valid value other than the default, for tests and docs (derived
            when None).
    """

    section: str
    key: str
    kind: str
    default: Any
    help: str
    commands: tuple[str, ...] = ("serve",)
    flag: str = ""
    low: float | None = None
    high: float | None = None
    above: bool = False
    choices: tuple[str, ...] = ()
    upper: bool = False
    check: Callable[[Any], str | None] | None = None
    secret: bool = False
    path: bool = False
    reload: bool = False
    restart: str = ""
    repeat: bool = False
    positional: bool = False
    required: tuple[str, ...] = ()
    sample: Any = None
    metavar: str | None = None

    @property
    def name(self) -> str:
        """``section.key``: the setting's unique name."""
        return f"{self.section}.{self.key}"

    @property
    def option(self) -> str:
        """The command-line option (``--max-messages-per-s``, or ``URL`` positional)."""
        if self.positional:
            return self.key.upper()
        return self.flag or "--" + self.key.replace("_", "-")

    @property
    def dest(self) -> str:
        """The attribute of the parsed arguments (as ``argparse`` names it)."""
        if self.positional:
            return self.key
        return self.option[2:].replace("-", "_")

    @property
    def env(self) -> str:
        """The environment variable: ``TICKWIRE_<SECTION>_<KEY>``."""
        return f"TICKWIRE_{self.section}_{self.key}".upper()

    @property
    def title(self) -> str:
        """``[section] key``, as messages and docs name it."""
        return f"[{self.section}] {self.key}"

    @property
    def restart_reason(self) -> str:
        return self.restart or _SECTION_BY_NAME[self.section].restart

    def expected(self) -> str:
        """What a valid value looks like, in words."""
        if self.kind == "bool":
            return "true or false"
        if self.kind == "list":
            if self.choices:
                return "a list of " + ", ".join(self.choices)
            return "a list of strings (comma-separated outside the file)"
        if self.kind == "spec":
            return "a string or a number"
        if self.choices:
            return "one of " + ", ".join(self.choices)
        if self.kind in ("int", "float"):
            noun = "an integer" if self.kind == "int" else "a number"
            if self.low is not None and self.high is not None:
                if self.above:
                    return f"{noun} above {_num(self.low)} and at most {_num(self.high)}"
                return f"{noun} in {_num(self.low)}..{_num(self.high)}"
            if self.low is not None:
                return f"{noun} {'>' if self.above else '>='} {_num(self.low)}"
            if self.high is not None:
                return f"{noun} <= {_num(self.high)}"
            return noun
        return "a string"


def _num(x: float) -> str:
    return f"{x:g}"


# -- checks of single values -------------------------------------------------------------


def _admin_port(value: Any) -> str | None:
    text = str(value).strip().lower()
    if text in ("auto", "off"):
        return None
    if text.isdigit() and 0 <= int(text) <= 65535:
        return None
    return "a port 0..65535, auto or off"


def _replay_speed(value: Any) -> str | None:
    text = str(value).strip().lower()
    if text == "max":
        return None
    try:
        speed = float(text.removeprefix("x"))
    except ValueError:
        return "a number, xN (N times faster) or max"
    if not speed > 0 or math.isinf(speed):
        return "a positive number, xN or max"
    return None


def _symbol_map(value: Any) -> str | None:
    for item in value:
        raw, eq, served = str(item).partition("=")
        if not eq or not raw.strip() or not served.strip():
            return f"FILE_SYMBOL=SERVED pairs; {item!r} is not one"
    return None


def _networks(value: Any) -> str | None:
    for spec in value:
        try:
            ipaddress.ip_network(spec.strip(), strict=False)
        except ValueError:
            return f"IP addresses or networks (CIDR); {spec!r} is neither"
    return None


def _symbols(value: Any) -> str | None:
    if value is None:
        return None
    items = [v.strip() for v in value if v.strip()]
    if len(items) == 1 and items[0].isdigit():
        return None if int(items[0]) >= 1 else "a symbol count of at least 1"
    if not items:
        return "symbols like BTC-USD,ETH-USD or a count"
    if len(set(items)) != len(items):
        return "symbols without repeats"
    return None


def _secret(value: Any) -> str | None:
    if value is not None and len(str(value).encode()) < MIN_SECRET_BYTES:
        return f"a secret of at least {MIN_SECRET_BYTES} bytes"
    return None


# -- the declarations ----------------------------------------------------------------------

_SP = ("serve", "publish")
_ALL = ("serve", "publish", "record")
S = Setting

#: Every setting, in the order of the docs. One line (one call) each.
# fmt: off
SETTINGS: tuple[Setting, ...] = (
    # [listen]
    S("listen", "host", "str", "127.0.0.1", "address to listen on", flag="--host"),
    S("listen", "port", "int", 8765, "WebSocket port (0: any free)", low=0, high=65535),
    S("listen", "workers", "int", 1, "gateway processes sharing the port (SO_REUSEPORT), supervised", low=1, restart="needs a restart (the supervisor starts its workers once)"),
    S("listen", "reuse_port", "bool", False, "listen with SO_REUSEPORT (set on each worker by --workers)"),
    S("listen", "ping_interval", "float", 20.0, "seconds between WebSocket pings to an idle peer (0: off)", low=0),
    S("listen", "ping_timeout", "float", 20.0, "seconds to wait for the pong before closing", low=0),
    S("listen", "deflate", "bool", False, "accept permessage-deflate from clients that offer it (off: market data is CPU-bound; JSON and msgpack are always available by subprotocol)", reload=True),
    S("listen", "deflate_level", "int", 1, "zlib level of compressed frames (1: the fastest)", low=1, high=9, metavar="1..9", restart="needs a restart (the hub's compressors are made at start)"),
    # [market]
    S("market", "source", "str", "sim", "sim (embedded simulator), nats://HOST:PORT (follow `tickwire publish`), ingest+nats://HOST:PORT or ingest:FILE or - (the ingest protocol, docs/ingest.md), binance+wss://, okx+wss:// or kraken+wss://HOST/PATH (a venue's public feed, docs/venue-feeds.md; record: record it; publish: publish it to NATS, the only --source publish takes), an NDJSON recording to replay, or tardis.dev CSVs to replay: tardis:PATH[,PATH...] or paths ending in .csv/.csv.gz (docs/venue-feeds.md)", commands=("serve", "record", "publish"), sample="nats://127.0.0.1:4222"),
    S("market", "venue_rest", "str", None, "a venue source's REST base, for Binance's depth snapshots (https://api.binance.com, or a gateway's http://HOST:ADMIN_PORT/binance)", commands=("serve", "record", "publish"), sample="https://api.binance.com"),
    S("market", "venue_idle_timeout", "float", 0.0, "a venue source's data watchdog: seconds without any frame from the venue (data, heartbeat or the answer to its application ping) after which its symbols go stale and the connection is replaced (0: the venue's default, Binance 30, OKX 30, Kraken 10)", commands=("serve", "publish"), low=0),
    S("market", "venue_depth", "int", 0, "a Kraken source's book depth: 10, 25, 100, 500 or 1000 (0: 100)", commands=("serve", "record", "publish"), low=0),
    S("market", "nats", "str", None, "publish: the NATS URL to publish to, e.g. nats://127.0.0.1:4222", commands=("publish",), required=("publish",), sample="nats://127.0.0.1:4222"),
    S("market", "replay", "str", None, "publish: this NDJSON recording instead of the simulator", commands=("publish",), sample="recording.ndjson"),
    S("market", "symbols", "list", None, "comma-separated symbols, or a count N for SYM0..SYM{N-1} (default BTC-USD,ETH-USD,SOL-USD; a replay: the recording's)", commands=_ALL, check=_symbols, sample=["BTC-USD", "ETH-USD"]),
    S("market", "rate", "float", 200.0, "book updates per second per symbol", commands=_SP, low=0),
    S("market", "seed", "int", 1, "simulator seed (deterministic flow)", commands=_SP),
    S("market", "market_core", "str", "auto", "the implementation of the simulator and of the ingest book: c (compiled: the same messages at a fraction of the CPU), python, or auto (c when built and usable)", commands=_SP, choices=("auto", "c", "python")),
    S("market", "replay_speed", "spec", "1", "replay pace: 1 = as recorded, x10 = ten times faster, max = as fast as possible", commands=_SP, check=_replay_speed, sample="x10"),
    S("market", "replay_symbol_map", "list", [], "tardis CSV replay: serve a file's symbol under another name, FILE_SYMBOL=SERVED pairs (e.g. BTCUSDT=BTC-USDT)", commands=("serve",), check=_symbol_map, sample=["BTCUSDT=BTC-USDT"]),
    S("market", "bus_prefix", "str", "tickwire", "NATS subject prefix", commands=_SP),
    S("market", "ingest", "str", None, "publish: take the market from any process publishing the ingest protocol on this NATS (nats://HOST:PORT) instead of the simulator; --symbols (optional) limits the symbols accepted", commands=("publish",), sample="nats://127.0.0.1:4222"),
    S("market", "ingest_prefix", "str", None, "publish: subject prefix of PREFIX.ingest.<SYMBOL> (default: --bus-prefix)", commands=("publish",), sample="tickwire"),
    S("market", "ingest_silent_after", "float", 5.0, "ingest: seconds without a message after which a symbol's source is reported silent (log, metric, stats)", commands=_SP, low=0),
    S("market", "source_timeout", "float", 30.0, "seconds to wait at start for the bus and every book", commands=("serve", "record", "publish"), low=0),
    S("market", "resume_wait", "float", 1.0, "with a bus: seconds a resume ahead of this gateway waits for it to catch up", low=0),
    S("market", "burst_every", "float", 0.0, "seconds between automatic bursts of the simulator (0: none)", commands=_SP, low=0),
    S("market", "burst_factor", "float", 10.0, "rate multiplier in a burst", commands=_SP, low=0),
    S("market", "burst_seconds", "float", 2.0, "length of a burst, in seconds", commands=_SP, low=0),
    S("market", "sim_users", "list", ["alice", "bob", "carol"], "simulator users with orders on orders.<user> (only with JWT keys; '' none)"),
    S("market", "sim_order_fraction", "float", 0.01, "share of size-adding book updates that become a simulated user's order", low=0, high=1),
    # [pacing]
    S("pacing", "batch_ms", "float", 1.0, "tick: a channel's updates within it share one frame (0: one each)", low=0),
    S("pacing", "tick_ms", "float", 1.0, "publish: batching period per symbol, in ms (at least 0.1 is used)", commands=("publish",), low=0),
    S("pacing", "tick_pacing", "str", "pause", "pause: wait a period (batch_ms, tick_ms) after each pass, as the peer servers' sleep loops do (passes stretch with the work, so writes get fewer under load); clock: start a pass every period, however long the last one took", commands=_SP, choices=("pause", "clock")),
    S("pacing", "pass_share", "float", MAX_PASS_SHARE, "once a pass outlasts --batch-ms (write-bound), the share of the core passes may take: the next starts that much later, with longer batches per write (1: never spaced beyond the pacing)", low=0.05, high=1),
    S("pacing", "heartbeat", "float", 1.0, "seconds of silence before a channel sends a heartbeat", low=0, above=True, reload=True),
    # [slow_consumers]
    S("slow_consumers", "high_watermark_kb", "float", 256.0, "per-connection write buffer past which books and tickers conflate, in KiB", low=0),
    S("slow_consumers", "low_watermark_kb", "float", 64.0, "write buffer below which a conflated connection catches up, in KiB", low=0),
    S("slow_consumers", "max_buffer_kb", "float", 4096.0, "hard per-connection budget: past it, close 4001 (slow consumer), in KiB", low=0, reload=True),
    S("slow_consumers", "max_total_buffer_mb", "float", 512.0, "server-wide cap on buffered bytes; past it the largest buffers close, in MiB", low=0, reload=True),
    S("slow_consumers", "stall_timeout", "float", 30.0, "seconds a connection may stay over the high watermark before close 4001", low=0, above=True, reload=True),
    S("slow_consumers", "sndbuf_kb", "float", 256.0, "kernel send buffer per connection, in KiB (0: kernel autotuning, up to MiBs)", low=0),
    S("slow_consumers", "history_mb", "float", 2.0, "resume history kept per channel, in MiB", low=0, restart="needs a restart (the history rings are sized at start)"),
    # [limits]
    S("limits", "max_connections_per_ip", "int", 100, "open connections per client address, past it HTTP 429 (0: unlimited)", low=0, reload=True),
    S("limits", "handshakes_per_ip", "float", 20.0, "WebSocket handshakes per second per client address, past it HTTP 429 (0: unlimited)", low=0, reload=True),
    S("limits", "handshake_burst", "int", 40, "handshakes one address may make at once", low=1, reload=True),
    S("limits", "handshake_timeout", "float", 5.0, "seconds a connection may take to send its upgrade request", low=0, above=True, reload=True),
    S("limits", "max_messages_per_s", "float", 50.0, "inbound messages per second per connection: error rate_limited, then close 4008 (0: unlimited)", low=0, reload=True),
    S("limits", "message_burst", "int", 200, "inbound messages a connection may send at once", low=1, reload=True),
    S("limits", "idle_timeout", "float", 60.0, "close 4002 a connection without subscription silent this long (0: never)", low=0, reload=True),
    S("limits", "max_subscriptions", "int", 1024, "channels one connection may subscribe to", low=1, reload=True),
    S("limits", "max_message_kb", "float", 64.0, "largest client frame or message accepted, in KiB", low=0, above=True),
    S("limits", "per_ip_exempt", "list", ["127.0.0.0/8", "::1/128"], "networks the per-IP limits skip (default loopback; '' none)", check=_networks, reload=True, sample=["10.0.0.0/8"]),
    # [security]
    S("security", "tls_cert", "str", None, "PEM certificate chain: serve wss://", path=True, sample="cert.pem"),
    S("security", "tls_key", "str", None, "PEM private key of tls_cert", path=True, sample="key.pem"),
    S("security", "jwt_secret", "str", None, "HS256 shared secret for private channels (>= 32 bytes; on the command line it is visible in ps: prefer jwt_secret_file or the environment)", secret=True, check=_secret, sample="s" * 32),
    S("security", "jwt_secret_file", "str", None, "file holding the HS256 secret", path=True, sample="jwt.secret"),
    S("security", "jwt_public_key", "str", None, "PEM EC P-256 public key: accept ES256 tokens", path=True, sample="jwt.pub"),
    S("security", "jwt_leeway", "float", 0.0, "seconds of clock skew allowed on exp", low=0),
    S("security", "allowed_origins", "list", [], "accept browser Origin (fnmatch pattern; repeat the flag); others get HTTP 403 (empty: any)", flag="--allowed-origin", repeat=True, reload=True, sample=["https://*.example.com"]),
    S("security", "trusted_proxies", "list", [], "address or CIDR of a load balancer whose X-Forwarded-For is believed (repeat the flag)", flag="--trusted-proxy", repeat=True, check=_networks, reload=True, sample=["10.0.0.1"]),
    # [admin]
    S("admin", "port", "spec", "auto", "admin HTTP port: dashboard, /metrics, /healthz, /readyz, /api/v1/book/SYM (auto: --port + 1, off when --port is 0; 0: any free port; off: none)", flag="--admin-port", check=_admin_port, sample="9100"),
    S("admin", "host", "str", None, "address of the admin listener (default: --host)", flag="--admin-host", sample="0.0.0.0"),
    S("admin", "log_level", "str", "WARNING", "DEBUG, INFO, WARNING, ERROR or CRITICAL", commands=_SP, choices=LOG_LEVELS, upper=True, reload=True),
    S("admin", "log_json", "bool", False, "log one JSON object per line (ts, level, logger, msg, conn, peer)", restart="needs a restart (the log format is set at start)"),
    S("admin", "stats_file", "str", None, "also write the exit stats JSON here", reload=True, sample="stats.json"),
    S("admin", "metrics_port", "int", None, "publish: serve Prometheus metrics (tickwire_ingest_*, tickwire_publisher_*) on this port", commands=("publish",), low=0, high=65535, sample=9101),
    S("admin", "max_seconds", "float", 0.0, "exit by itself after this many seconds (0: run until signalled)", commands=_SP, low=0),
    # [faults]
    S("faults", "enabled", "bool", False, "accept {'op':'fault'} requests that corrupt the stream, and faults posted to the admin API's /api/v1/faults (tests only)", flag="--test-faults", reload=True),
    S("faults", "file", "str", None, "scenario of scripted venue-level faults (TOML, docs/connectivity-testing.md), checked at start and read again on SIGHUP; also enables the admin API's /api/v1/faults", flag="--faults", reload=True, sample="scenarios/gap-storm.toml"),
    S("faults", "report", "str", None, "keep the connectivity report (each client's connections, subscriptions, faults and reactions; GET /api/v1/report) and write it here as JSON at exit (`tickwire report FILE` prints it)", flag="--report", sample="report.json"),
    S("faults", "report_window", "float", 10.0, "report: seconds a client may take to react to a gap, bad checksum, reorder, stale snapshot or stall before the fault counts as never noticed (if it kept its connection)", low=0, above=True),
    S("faults", "report_storm", "int", 5, "report: a client storms when it makes more than this many reconnects, or snapshot requests, within 10 s", low=1),
    # [dialects]: none yet.
    # [record]
    S("record", "url", "str", None, "gateway WebSocket URL, e.g. ws://127.0.0.1:8765/ws (or record a venue with --source binance+wss://...)", commands=("record",), positional=True, sample="ws://127.0.0.1:8765/ws"),
    S("record", "out", "str", None, "NDJSON file to write", commands=("record",), required=("record",), sample="out.ndjson"),
    S("record", "kinds", "list", list(CHANNEL_KINDS), "channel kinds to record, comma-separated", commands=("record",), choices=CHANNEL_KINDS, sample=["book"]),
    S("record", "duration", "float", 0.0, "seconds to record (0: until Ctrl-C)", commands=("record",), low=0),
)
# fmt: on

del S

_BY_NAME = {s.name: s for s in SETTINGS}
_BY_ENV = {s.env: s for s in SETTINGS}


def by_name(name: str) -> Setting:
    """The setting called ``section.key``."""
    return _BY_NAME[name]


def for_command(command: str | None) -> list[Setting]:
    """The settings ``command`` takes (all of them for None)."""
    return [s for s in SETTINGS if command is None or command in s.commands]


# -- where a value came from ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a value came from: ``default``, ``file``, ``env`` or ``flag``, and which."""

    kind: str
    detail: str = ""

    def __str__(self) -> str:
        return self.kind if not self.detail else f"{self.kind} {self.detail}"


DEFAULT = Origin("default")


def _where(setting: Setting, origin: Origin) -> str:
    """How an error message names the place a value came from."""
    if origin.kind == "file":
        return f"{origin.detail}: {setting.title}"
    if origin.kind in ("env", "flag"):
        return origin.detail
    return f"{setting.title} (default)"


def _shown(setting: Setting, value: Any) -> str:
    if setting.secret:
        return MASK
    return _toml(value) if not isinstance(value, str) else repr(value)


def _bad(setting: Setting, origin: Origin, raw: Any, expected: str | None = None) -> ConfigError:
    got = "" if setting.secret else f", got {_shown(setting, raw)}"
    return ConfigError(f"{_where(setting, origin)}: expected {expected or setting.expected()}{got}")


# -- values from text (flags, environment) and from TOML -----------------------------------

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


def _from_text(setting: Setting, raw: str, origin: Origin) -> Any:
    kind = setting.kind
    text = raw.strip()
    if kind == "bool":
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise _bad(setting, origin, raw, "true or false (1/0, yes/no, on/off)")
    if kind == "int":
        try:
            return int(text)
        except ValueError:
            raise _bad(setting, origin, raw) from None
    if kind == "float":
        try:
            value = float(text)
        except ValueError:
            raise _bad(setting, origin, raw) from None
        if not math.isfinite(value):
            raise _bad(setting, origin, raw)
        return value
    if kind == "list":
        return [item.strip() for item in raw.split(",") if item.strip()]
    return raw


def _from_toml(setting: Setting, value: Any, origin: Origin) -> Any:
    kind = setting.kind
    if kind == "bool":
        if isinstance(value, bool):
            return value
    elif kind == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind == "float":
        if isinstance(value, int | float) and not isinstance(value, bool):
            if math.isfinite(value):
                return float(value)
    elif kind == "list":
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return [v.strip() for v in value if v.strip()]
    elif kind == "spec":
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
    elif isinstance(value, str):
        return value
    raise _bad(setting, origin, value)


def _validate(setting: Setting, value: Any, origin: Origin) -> Any:
    """Range, choices and checks of one converted value; returns it (normalised)."""
    if value is None:
        return None
    if setting.upper and isinstance(value, str):
        value = value.strip().upper()
    if setting.kind in ("int", "float"):
        low, high = setting.low, setting.high
        if (low is not None and (value <= low if setting.above else value < low)) or (
            high is not None and value > high
        ):
            raise _bad(setting, origin, value)
    if setting.choices:
        items = value if setting.kind == "list" else [value]
        if setting.kind == "list" and not items:
            raise _bad(setting, origin, value)
        if any(item not in setting.choices for item in items):
            raise _bad(setting, origin, value)
    if setting.check is not None:
        expected = setting.check(value)
        if expected is not None:
            raise _bad(setting, origin, value, expected)
    return value


# -- the file --------------------------------------------------------------------------------


def parse_toml(text: str, name: str) -> dict[str, Any]:
    """Parse a configuration file's text; ``name`` (its path) goes into the message.

    Raises:
        ConfigError: not valid TOML.
    """
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{name}: not valid TOML: {exc}") from None


def _suggest(word: str, options: Iterable[str]) -> str | None:
    found = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return found[0] if found else None


def _file_values(data: Mapping[str, Any], name: str) -> dict[str, tuple[Any, Origin]]:
    """Every setting of the file, converted and checked (the whole file, all commands)."""
    out: dict[str, tuple[Any, Origin]] = {}
    for section, table in data.items():
        if section not in _SECTION_BY_NAME:
            if not isinstance(table, dict):
                owner = _owner(section)
                hint = f"; did you mean {owner.title}?" if owner else ""
                raise ConfigError(
                    f"{name}: unknown key {section!r} at the top level "
                    f"(settings go in sections such as [listen]){hint}"
                )
            close = _suggest(section, _SECTION_BY_NAME)
            hint = f"; did you mean [{close}]?" if close else ""
            known = ", ".join(s.name for s in SECTIONS)
            raise ConfigError(f"{name}: unknown section [{section}]{hint} (sections: {known})")
        if not isinstance(table, dict):
            raise ConfigError(f"{name}: {section} must be a table ([{section}]), not a value")
        keys = {s.key: s for s in SETTINGS if s.section == section}
        for key, value in table.items():
            setting = keys.get(key)
            if setting is None:
                raise ConfigError(_unknown_key(name, section, key, keys))
            origin = Origin("file", name)
            out[setting.name] = (
                _validate(setting, _from_toml(setting, value, origin), origin),
                origin,
            )
    return out


def _owner(key: str) -> Setting | None:
    """The setting a key names by its flag (``admin_port``, ``test-faults``) or its key."""
    flag = key.replace("-", "_")
    for setting in SETTINGS:
        if setting.dest == flag and not setting.positional:
            return setting
    return next((s for s in SETTINGS if s.key == key), None)


def _unknown_key(name: str, section: str, key: str, keys: Mapping[str, Setting]) -> str:
    close = _suggest(key, keys)
    owner = _owner(key)
    if owner is not None:
        # A flag's name (admin_port, test_faults) or a key of another section.
        hint = f"; did you mean {owner.title}?"
    elif close is not None:
        hint = f"; did you mean {close}?"
    else:
        # The right key in the wrong section: name the section it belongs to.
        others = {s.key: s for s in SETTINGS if s.section != section}
        other = _suggest(key, others)
        hint = f"; did you mean {others[other].title}?" if other else ""
    if not keys:
        return f"{name}: unknown key [{section}] {key}: [{section}] has no settings yet"
    return f"{name}: unknown key [{section}] {key}{hint}"


# -- the environment -------------------------------------------------------------------------

#: ``TICKWIRE_*`` variables that are not settings (the test suite's, the config file's).
OTHER_ENV = (CONFIG_ENV, "TICKWIRE_TEST_MS", "TICKWIRE_HYPOTHESIS_EXAMPLES", "TICKWIRE_NO_CORE")


def _env_values(env: Mapping[str, str]) -> dict[str, tuple[Any, Origin]]:
    out: dict[str, tuple[Any, Origin]] = {}
    prefixes = tuple(f"TICKWIRE_{s.name.upper()}_" for s in SECTIONS)
    for var, raw in env.items():
        if not var.startswith("TICKWIRE_") or var in OTHER_ENV:
            continue
        setting = _BY_ENV.get(var)
        if setting is None:
            close = difflib.get_close_matches(var, list(_BY_ENV), n=1, cutoff=0.8)
            if close or var.startswith(prefixes):
                hint = f"; did you mean {close[0]}?" if close else ""
                raise ConfigError(f"unknown environment variable {var}{hint}")
            continue  # someone else's TICKWIRE_ variable
        if setting.default is None and not raw.strip():
            continue  # VAR= (empty) leaves a setting without a default unset
        origin = Origin("env", var)
        out[setting.name] = (_validate(setting, _from_text(setting, raw, origin), origin), origin)
    return out


# -- the command line ------------------------------------------------------------------------


def add_arguments(parser: Any, command: str | None) -> None:
    """Add the options of ``command`` (every setting's for None) to an argparse parser.

    Defaults are suppressed: the parsed namespace holds only what the command line
    gave, as text (lists: a list of texts; booleans: True or False), for
    :func:`resolve`.
    """
    import argparse

    groups: dict[str, Any] = {}
    for setting in for_command(command):
        if setting.positional and command is None:
            continue
        if setting.section not in groups:
            section = _SECTION_BY_NAME[setting.section]
            groups[setting.section] = parser.add_argument_group(
                f"{section.title} ([{section.name}]; see {section.doc})"
            )
        group = groups[setting.section]
        help_text = setting.help + _default_note(setting)
        kw: dict[str, Any] = {"default": argparse.SUPPRESS, "help": help_text}
        if setting.positional:
            group.add_argument(setting.dest, nargs="?", metavar=setting.option, **kw)
            continue
        if setting.kind == "bool":
            kw["action"] = argparse.BooleanOptionalAction
        elif setting.repeat:
            kw["action"] = "append"
        if setting.metavar:
            kw["metavar"] = setting.metavar
        elif setting.choices and setting.kind != "list":
            kw["metavar"] = "{" + ",".join(setting.choices) + "}"
        group.add_argument(setting.option, dest=setting.dest, **kw)


def _default_note(setting: Setting) -> str:
    """`` (default X; TICKWIRE_..., reloads)`` for ``--help``."""
    notes = []
    value = setting.default
    if value is not None and "default" not in setting.help:
        if setting.kind == "list":
            value = ",".join(value) or "none"
        elif setting.kind == "bool":
            value = "on" if value else "off"
        notes.append(f"default {value}")
    notes.append(setting.env)
    if setting.reload:
        notes.append("reloads on SIGHUP")
    return f" ({'; '.join(notes)})".replace("%", "%%")


# -- resolution ------------------------------------------------------------------------------


@dataclass
class Resolved:
    """The effective configuration of a command: each value and where it came from."""

    command: str | None
    values: dict[str, Any]
    origins: dict[str, Origin]

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    def settings(self) -> list[Setting]:
        return [s for s in SETTINGS if s.name in self.values]

    def by_dest(self) -> dict[str, Any]:
        """The values by argparse attribute name (``args.max_messages_per_s``)."""
        return {s.dest: self.values[s.name] for s in self.settings()}

    def where(self, name: str) -> str:
        """Where the value of ``name`` came from, as error messages say it."""
        return _where(_BY_NAME[name], self.origins[name])

    def describe(self, name: str) -> str:
        """``[section] key = value (from ...)`` for messages; secrets masked."""
        setting = _BY_NAME[name]
        return f"{setting.title} = {_shown(setting, self.values[name])} ({self.origins[name]})"


def resolve(
    command: str | None,
    *,
    flags: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    file: Mapping[str, Any] | None = None,
    file_name: str = "config file",
) -> Resolved:
    """Resolve the settings of ``command``: flag > environment > file > default.

    Args:
        command: ``serve``, ``publish``, ``record``, or None for every setting.
        flags: what the command line gave, by argparse attribute (:func:`add_arguments`).
        env: the environment (only ``TICKWIRE_*`` variables are looked at).
        file: the parsed configuration file (:func:`parse_toml`), or None.
        file_name: its path, for messages.

    Raises:
        ConfigError: the first mistake found, naming where it came from.
    """
    from_file = _file_values(file or {}, file_name)
    from_env = _env_values(env or {})
    given = flags or {}
    values: dict[str, Any] = {}
    origins: dict[str, Origin] = {}
    for setting in for_command(command):
        if setting.dest in given:
            raw = given[setting.dest]
            origin = Origin("flag", setting.option)
            value: Any
            if setting.kind == "bool":
                value = bool(raw)
            elif setting.kind == "list" and setting.repeat:
                value = [v.strip() for v in raw if v.strip()]
            else:
                value = _from_text(setting, raw, origin)
            values[setting.name] = _validate(setting, value, origin)
            origins[setting.name] = origin
        elif setting.name in from_env:
            values[setting.name], origins[setting.name] = from_env[setting.name]
        elif setting.name in from_file:
            values[setting.name], origins[setting.name] = from_file[setting.name]
        else:
            default = setting.default
            values[setting.name] = list(default) if isinstance(default, list) else default
            origins[setting.name] = DEFAULT
    resolved = Resolved(command, values, origins)
    _check_required(resolved)
    for check in _COMBINATIONS:
        check(resolved)
    return resolved


def _check_required(r: Resolved) -> None:
    for setting in r.settings():
        if r.command in setting.required and r.values[setting.name] is None:
            how = "the argument" if setting.positional else "the flag"
            raise ConfigError(
                f"{setting.title} is required by tickwire {r.command}: give {how} "
                f"{setting.option}, {setting.env} or {setting.key} in [{setting.section}]"
            )


def _has(r: Resolved, *names: str) -> bool:
    return all(n in r.values for n in names)


def _order(r: Resolved, low: str, high: str, scale: float, what: str) -> None:
    """Raise unless ``low`` <= ``high`` * ``scale`` (both from the resolved values)."""
    if _has(r, low, high) and r[low] > r[high] * scale:
        raise ConfigError(f"{r.describe(low)} is above {r.describe(high)}: expected {what}")


def _watermarks(r: Resolved) -> None:
    _order(
        r,
        "slow_consumers.low_watermark_kb",
        "slow_consumers.high_watermark_kb",
        1,
        "the low watermark at most the high one",
    )
    _order(
        r,
        "slow_consumers.high_watermark_kb",
        "slow_consumers.max_buffer_kb",
        1,
        "the high watermark at most the per-connection budget",
    )
    _order(
        r,
        "slow_consumers.max_buffer_kb",
        "slow_consumers.max_total_buffer_mb",
        1024,
        "the per-connection budget at most the server-wide cap",
    )


def _pairs(r: Resolved) -> None:
    cert, key = "security.tls_cert", "security.tls_key"
    if _has(r, cert, key) and (r[cert] is None) != (r[key] is None):
        given, missing = (cert, key) if r[cert] is not None else (key, cert)
        raise ConfigError(
            f"{r.describe(given)} without {_BY_NAME[missing].title}: "
            "expected a certificate and its key together, or neither"
        )
    secret, secret_file = "security.jwt_secret", "security.jwt_secret_file"
    if _has(r, secret, secret_file) and r[secret] is not None and r[secret_file] is not None:
        raise ConfigError(
            f"{r.describe(secret)} and {r.describe(secret_file)}: expected one of them, not both"
        )


def _market_core(r: Resolved) -> None:
    core, batch = "market.market_core", "pacing.batch_ms"
    if _has(r, core, batch) and r[core] == "c" and r[batch] <= 0:
        raise ConfigError(
            f"{r.describe(core)} with {r.describe(batch)}: expected batch_ms > 0 "
            "(the compiled core makes a batch per tick)"
        )


def _workers(r: Resolved) -> None:
    workers, port = "listen.workers", "admin.port"
    if _has(r, workers, port) and r[workers] > 1 and str(r[port]).strip() == "0":
        raise ConfigError(
            f"{r.describe(port)} with {r.describe(workers)}: expected a fixed port or off "
            "(an any-free-port admin listener cannot be shared by workers)"
        )


_COMBINATIONS: tuple[Callable[[Resolved], None], ...] = (
    _watermarks,
    _pairs,
    _market_core,
    _workers,
)


# -- reload ----------------------------------------------------------------------------------


@dataclass
class ReloadPlan:
    """What a reload changes: the settings applied, those left for a restart, and the
    configuration to run with (new values where applied, the running ones elsewhere)."""

    applied: list[tuple[Setting, Any, Any]]
    skipped: list[tuple[Setting, Any, Any]]
    merged: Resolved


def change_line(setting: Setting, old: Any, new: Any) -> str:
    """How a reload reports one changed setting (secrets masked)."""
    change = f"{setting.title}: {_shown(setting, old)} -> {_shown(setting, new)}"
    if setting.reload:
        return f"reloaded {change}"
    return f"not reloaded {change}: {setting.restart_reason}; keeping {_shown(setting, old)}"


def reload_plan(running: Resolved, new: Resolved) -> ReloadPlan:
    """Compare the running configuration with a newly resolved one (same command)."""
    applied: list[tuple[Setting, Any, Any]] = []
    skipped: list[tuple[Setting, Any, Any]] = []
    values = dict(running.values)
    origins = dict(running.origins)
    for setting in running.settings():
        old, value = running.values[setting.name], new.values[setting.name]
        if old == value:
            origins[setting.name] = new.origins[setting.name]
            continue
        if setting.reload:
            applied.append((setting, old, value))
            values[setting.name] = value
            origins[setting.name] = new.origins[setting.name]
        else:
            skipped.append((setting, old, value))
    merged = Resolved(running.command, values, origins)
    for check in _COMBINATIONS:
        check(merged)  # e.g. a reloaded budget below a watermark that needs a restart
    return ReloadPlan(applied, skipped, merged)


# -- text: show, example, docs ---------------------------------------------------------------


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(str(value))


def sample(setting: Setting) -> Any:
    """A valid value of ``setting`` other than its default (for tests and examples)."""
    if setting.sample is not None:
        return setting.sample
    default = setting.default
    if setting.kind == "bool":
        return not default
    if setting.choices:
        return next(c for c in setting.choices if c != default)
    if setting.kind in ("int", "float"):
        value = (default or 0) + 1
        if setting.high is not None and value > setting.high:
            value = setting.low if setting.low is not None else default - 1
            if setting.above:
                value = (default + setting.low) / 2
        return int(value) if setting.kind == "int" else float(value)
    if setting.kind == "list":
        return ["x"]
    return f"{default or 'value'}-2"


def render_show(resolved: Resolved) -> str:
    """The effective configuration as TOML, each value commented with its origin."""
    lines = [
        "# tickwire: the effective configuration"
        + (f" of tickwire {resolved.command}" if resolved.command else ""),
        "# (precedence: flag > env > file > default; secrets shown as ***)",
    ]
    rows: list[tuple[str, str]] = []
    section = ""
    for setting in resolved.settings():
        if setting.section != section:
            section = setting.section
            rows.append(("", ""))
            rows.append((f"[{section}]", ""))
        value = resolved.values[setting.name]
        origin = str(resolved.origins[setting.name])
        if value is None:
            rows.append((f"# {setting.key} (not set)", f"# {origin}"))
        else:
            shown = _toml(MASK) if setting.secret else _toml(value)
            rows.append((f"{setting.key} = {shown}", f"# {origin}"))
    width = max(len(left) for left, right in rows if right)
    for left, right in rows:
        lines.append(f"{left:<{width}}  {right}".rstrip() if right else left)
    return "\n".join(lines) + "\n"


def render_example() -> str:
    """A commented example file holding every setting at its default."""
    lines = [
        "# tickwire configuration file (TOML): `tickwire serve --config FILE`.",
        "# Every setting at its built-in default; delete what you do not change.",
        "# Precedence: command-line flag > TICKWIRE_<SECTION>_<KEY> > this file > default.",
        "# One file serves `serve`, `publish` and `record`; each reads the settings it takes.",
        "# Reference: docs/configuration.md (`tickwire config docs`).",
    ]
    for section in SECTIONS:
        settings = [s for s in SETTINGS if s.section == section.name]
        lines += ["", f"# -- {section.title} (see {section.doc})", f"[{section.name}]"]
        if not settings:
            lines.append("# (no settings yet)")
        for setting in settings:
            note = (
                f"{setting.help} [{setting.option}, {setting.env}"
                f"{'' if setting.commands == ('serve',) else '; ' + '/'.join(setting.commands)}"
                f"{'; reloads on SIGHUP' if setting.reload else ''}]"
            )
            lines += textwrap.wrap(note, 88, initial_indent="# ", subsequent_indent="#   ")
            if setting.secret or setting.default is None:
                example = sample(setting) if not setting.secret else "<secret>"
                lines.append(f"# {setting.key} = {_toml(example)}")
            else:
                lines.append(f"{setting.key} = {_toml(setting.default)}")
    return "\n".join(lines) + "\n"


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def _why_not(setting: Setting) -> str:
    """The reload column of a setting that needs a restart: ``no: <why>``."""
    reason = setting.restart_reason
    if "(" in reason and reason.endswith(")"):
        reason = reason[reason.index("(") + 1 : -1]
    return f"no: {reason}"


def render_docs() -> str:
    """``docs/configuration.md``: every setting, generated from :data:`SETTINGS`."""
    out = [
        "# Configuration",
        "",
        "<!-- Generated by `tickwire config docs` from src/tickwire/settings.py;"
        " edit the declarations there, then regenerate (tests/test_config.py checks"
        " that this file is current). -->",
        "",
        "`tickwire serve`, `publish` and `record` read each setting from, in order of precedence:",
        "",
        "1. the command line (`--max-messages-per-s 20`);",
        "2. the environment (`TICKWIRE_LIMITS_MAX_MESSAGES_PER_S=20`: "
        "`TICKWIRE_<SECTION>_<KEY>` in capitals);",
        "3. the configuration file given by `--config FILE` (or `TICKWIRE_CONFIG=FILE`), "
        "TOML with one table per section (`[limits]` then `max_messages_per_s = 20`);",
        "4. the built-in default.",
        "",
        "```sh",
        "tickwire config example > tickwire.toml        # every setting at its default, commented",
        "tickwire serve --config tickwire.toml",
        "TICKWIRE_LISTEN_PORT=9000 tickwire serve --config tickwire.toml --log-level INFO",
        "tickwire config show --config tickwire.toml    # effective values and their origins",
        "kill -HUP <pid>                                # reload what can change at runtime",
        "```",
        "",
        "`make run` serves [examples/tickwire.toml](../examples/tickwire.toml).",
        "",
        "## Checked at start",
        "",
        "Everything is checked before the gateway opens a port, and the first mistake stops "
        "it with one line on stderr and exit status 2 (no traceback), naming where the value "
        "came from and what is expected; a secret's value is never printed:",
        "",
        "```",
        "tickwire serve: error: tw.toml: unknown key [limits] max_mesages_per_s; "
        "did you mean max_messages_per_s?",
        "tickwire serve: error: TICKWIRE_LISTEN_PORT: expected an integer in 0..65535, got 'http'",
        "tickwire serve: error: [slow_consumers] low_watermark_kb = 512.0 (file tw.toml) is "
        "above [slow_consumers] high_watermark_kb = 256.0 (default): expected the low "
        "watermark at most the high one",
        "```",
        "",
        "Also refused: a section or key that does not exist (with a did-you-mean), a "
        "`TICKWIRE_<SECTION>_...` variable that names no setting, a value of the wrong "
        "type or out of range, a TLS certificate without its key (or the reverse), both "
        "`jwt_secret` and `jwt_secret_file`, a JWT secret under 32 bytes, and a "
        "certificate, key or secret file that cannot be read. Lists are TOML arrays in "
        "the file (a comma-separated string also works) and comma-separated in the "
        "environment (an empty variable leaves a setting without a default unset); a list "
        "given on the command line replaces the file's. Booleans "
        "are `true`/`false` in the file, `1/0`, `true/false`, `yes/no`, `on/off` in the "
        "environment, and `--flag`/`--no-flag` on the command line. Paths (certificates, "
        "keys, recordings) are relative to the working directory, not to the file.",
        "",
        "`tickwire config show [--config FILE] [flags...]` prints the effective "
        "configuration as TOML, each value commented with where it came from (`default`, "
        "`file PATH`, `env VAR`, `flag --opt`), secrets as `***`; it checks everything "
        "`serve` would, so it also validates a file before a deploy.",
        "",
        "## Reloading (SIGHUP)",
        "",
        "`kill -HUP` a running `tickwire serve` (or its `--workers` supervisor, which passes "
        "it on) and it reads the same file and environment again, with the same command "
        "line on top, and applies the settings marked *reload* below: limits, log level, "
        "allowed origins and proxies, slow-consumer budgets, test faults. A new rate or "
        "burst applies to open connections at once; a new handshake timeout or origin "
        "list to the next handshakes. It logs each setting it reloaded (INFO) and each "
        "changed one it did not, with the reason (WARNING), then keeps running with the "
        "old value:",
        "",
        "```",
        "INFO tickwire.config: reload: reloaded [limits] max_messages_per_s: 50.0 -> 20.0",
        "WARNING tickwire.config: reload: not reloaded [listen] port: 8765 -> 9000: needs a "
        "restart (the listener is set up at start); keeping 8765",
        "ERROR tickwire.config: reload failed, keeping the running configuration: tw.toml: "
        "[limits] message_burst: expected an integer >= 1, got 0",
        "```",
        "",
        "A file that does not pass the checks is reported (ERROR) and the running "
        "configuration kept, whole. The log level's own default (WARNING) hides the INFO "
        'lines; `log_level = "INFO"` shows them. The *reload* column below says why each '
        "setting that does not reload needs a restart.",
        "",
        "## Settings",
        "",
    ]
    for section in SECTIONS:
        settings = [s for s in SETTINGS if s.section == section.name]
        out += [f"### [{section.name}]: {section.title}", ""]
        doc = section.doc.removeprefix("docs/")
        out += [f"See [{doc}]({doc}).", ""]
        if not settings:
            out += ["No settings yet.", ""]
            continue
        out += [
            "| key | flag | environment | type | default | reload | meaning |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for s in settings:
            default = "(not set)" if s.default is None else f"`{_toml(s.default)}`"
            kind = s.expected()
            if s.commands != ("serve",):
                kind += f"; {'/'.join(s.commands)}"
            if s.required:
                kind += f"; required by {'/'.join(s.required)}"
            extra = " Secret: never shown." if s.secret else ""
            extra += " A file that must be readable." if s.path else ""
            out.append(
                f"| `{s.key}` | `{s.option}` | `{s.env}` | {_md(kind)} | {_md(default)} | "
                f"{'yes' if s.reload else _md(_why_not(s))} | {_md(s.help)}.{extra} |"
            )
        out.append("")
    return "\n".join(out)
