"""Configuration: one declaration per setting, three ways to set it, checked at start.

The settings layer (:mod:`tickwire.settings`) is driven directly for every declaration
(flag, environment, file, precedence, each check's message); real ``tickwire serve``
processes on 127.0.0.1 show the same end to end: a port from the file, a rate limit
from the environment, one-line errors with exit status 2, ``config show`` and a
``SIGHUP`` reload observed through a client.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers import HandshakeRefused, RawClient
from tickwire import cli, settings
from tickwire.exceptions import ConfigError
from tickwire.server.gateway import Gateway

ROOT = Path(__file__).resolve().parent.parent
TICKWIRE = [sys.executable, "-m", "tickwire"]
SECRET = "correct-horse-battery-staple-0123456789"
_SERVING = re.compile(r"ws://127\.0\.0\.1:(\d+)/ws \(epoch \S+\)")

# Settings that only resolve together with another (a TLS certificate and its key).
COMPANIONS = {"security.tls_cert": "security.tls_key", "security.tls_key": "security.tls_cert"}


def _clean_env() -> dict[str, str]:
    """The environment without any TICKWIRE_ setting (the tests set their own)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("TICKWIRE_")}


# -- every setting, each way ---------------------------------------------------------------


def _flag_argv(setting: settings.Setting, value: Any) -> list[str]:
    if setting.positional:
        return [value]
    if setting.kind == "bool":
        return [setting.option if value else "--no-" + setting.option[2:]]
    if setting.kind == "list" and setting.repeat:
        return [arg for item in value for arg in (setting.option, item)]
    if setting.kind == "list":
        return [setting.option, ",".join(value)]
    return [setting.option, str(value)]


def _env_text(setting: settings.Setting, value: Any) -> str:
    if setting.kind == "bool":
        return "true" if value else "false"
    if setting.kind == "list":
        return ",".join(value)
    return str(value)


def _command(setting: settings.Setting) -> str | None:
    # Every setting but record's positional URL resolves for "all commands" (None);
    # the URL is record's, whose --out must then be given too.
    return "record" if setting.positional else None


def _set(way: str, names: list[str]) -> settings.Resolved:
    """Resolve with each of ``names`` set to its sample value in one ``way``."""
    chosen = [settings.by_name(n) for n in names]
    command = _command(chosen[0])
    if command == "record":
        chosen.append(settings.by_name("record.out"))
    if way == "flag":
        parser = argparse.ArgumentParser()
        settings.add_arguments(parser, command)
        argv = [a for s in chosen for a in _flag_argv(s, settings.sample(s))]
        return settings.resolve(command, flags=vars(parser.parse_args(argv)))
    if way == "env":
        env = {s.env: _env_text(s, settings.sample(s)) for s in chosen}
        return settings.resolve(command, env=env)
    table: dict[str, dict[str, Any]] = {}
    for s in chosen:
        table.setdefault(s.section, {})[s.key] = settings.sample(s)
    return settings.resolve(command, file=table, file_name="t.toml")


@pytest.mark.parametrize("way", ["flag", "env", "file"])
@pytest.mark.parametrize("name", [s.name for s in settings.SETTINGS])
def test_every_setting_each_way(name: str, way: str) -> None:
    setting = settings.by_name(name)
    value = settings.sample(setting)
    assert value != setting.default, name
    names = [name, *([COMPANIONS[name]] if name in COMPANIONS else [])]
    resolved = _set(way, names)
    expected = value.upper() if setting.upper else value
    assert resolved[name] == expected
    origin = resolved.origins[name]
    assert origin.kind == way
    if way == "env":
        assert origin.detail == setting.env
    elif way == "flag":
        assert origin.detail == setting.option
    # Everything else stays at its default.
    for other in resolved.settings():
        if other.name not in names and other.name != "record.out":
            assert resolved[other.name] == other.default, other.name
            assert resolved.origins[other.name] == settings.DEFAULT


def test_declarations_are_unique_and_complete() -> None:
    names = [s.name for s in settings.SETTINGS]
    assert len(names) == len(set(names))
    for attr in ("option", "dest", "env"):
        values = [getattr(s, attr) for s in settings.SETTINGS]
        assert len(values) == len(set(values)), attr
    sections = {s.name for s in settings.SECTIONS}
    assert {s.section for s in settings.SETTINGS} <= sections
    for s in settings.SETTINGS:
        assert s.help and s.commands and set(s.commands) <= set(settings.COMMANDS)
        assert s.kind in ("str", "int", "float", "bool", "list", "spec")
        if s.default is not None:  # defaults pass their own checks
            settings.resolve(None, file={s.section: {s.key: s.default}})


def test_existing_flags_keep_their_names() -> None:
    """The flags the test suite, the docs and scripts use are all still there."""
    flags = {
        "serve": "--host --port --symbols --rate --seed --market-core --source --replay-speed "
        "--bus-prefix --source-timeout --resume-wait --workers --reuse-port --batch-ms "
        "--tick-pacing --pass-share --history-mb --heartbeat --ping-interval --ping-timeout "
        "--max-message-kb --max-subscriptions --burst-every --burst-factor --burst-seconds "
        "--max-seconds --stats-file --high-watermark-kb --low-watermark-kb --max-buffer-kb "
        "--max-total-buffer-mb --stall-timeout --sndbuf-kb --deflate --deflate-level "
        "--test-faults --log-level --log-json --admin-port --admin-host --tls-cert "
        "--tls-key --jwt-secret --jwt-secret-file --jwt-public-key --jwt-leeway --sim-users "
        "--sim-order-fraction --max-connections-per-ip --handshakes-per-ip "
        "--handshake-burst --handshake-timeout --max-messages-per-s --message-burst "
        "--idle-timeout --allowed-origin --trusted-proxy --per-ip-exempt",
        "publish": "--nats --symbols --rate --seed --market-core --replay --replay-speed "
        "--bus-prefix --tick-ms --tick-pacing --burst-every --burst-factor --burst-seconds "
        "--max-seconds --log-level",
        "record": "URL --out --symbols --kinds --duration",
    }
    for command, names in flags.items():
        declared = {s.option for s in settings.for_command(command)}
        assert set(names.split()) <= declared, command


# -- precedence ------------------------------------------------------------------------------


def test_precedence_flag_env_file_default() -> None:
    file = {"listen": {"port": 1111}, "limits": {"max_messages_per_s": 7}}
    env = {"TICKWIRE_LISTEN_PORT": "2222"}
    both = settings.resolve("serve", flags={"port": "3333"}, env=env, file=file)
    assert both["listen.port"] == 3333
    assert str(both.origins["listen.port"]) == "flag --port"
    no_flag = settings.resolve("serve", env=env, file=file, file_name="tw.toml")
    assert no_flag["listen.port"] == 2222
    assert str(no_flag.origins["listen.port"]) == "env TICKWIRE_LISTEN_PORT"
    assert no_flag["limits.max_messages_per_s"] == 7.0
    assert str(no_flag.origins["limits.max_messages_per_s"]) == "file tw.toml"
    only_file = settings.resolve("serve", file=file, file_name="tw.toml")
    assert only_file["listen.port"] == 1111
    assert settings.resolve("serve")["listen.port"] == 8765


def test_flags_do_not_mask_the_file_with_their_defaults() -> None:
    """argparse defaults are suppressed: an absent flag leaves the file's value."""
    parser = argparse.ArgumentParser()
    settings.add_arguments(parser, "serve")
    given = vars(parser.parse_args(["--rate", "5"]))
    assert given == {"rate": "5"}
    resolved = settings.resolve(
        "serve", flags=given, file={"listen": {"port": 9}, "faults": {"enabled": True}}
    )
    assert (resolved["listen.port"], resolved["faults.enabled"]) == (9, True)
    # A boolean set in the file can be turned off again on the command line.
    off = settings.resolve(
        "serve",
        flags=vars(parser.parse_args(["--no-test-faults"])),
        file={"faults": {"enabled": True}},
    )
    assert off["faults.enabled"] is False


def test_a_list_on_the_command_line_replaces_the_files() -> None:
    file = {"security": {"allowed_origins": ["https://a.example"]}}
    parser = argparse.ArgumentParser()
    settings.add_arguments(parser, "serve")
    given = vars(parser.parse_args(["--allowed-origin", "https://b.example"]))
    resolved = settings.resolve("serve", flags=given, file=file)
    assert resolved["security.allowed_origins"] == ["https://b.example"]


# -- each check's message --------------------------------------------------------------------

ERRORS: list[tuple[dict[str, Any], str]] = [
    (
        {"file": {"limits": {"max_mesages_per_s": 3}}},
        "tw.toml: unknown key [limits] max_mesages_per_s; did you mean max_messages_per_s?",
    ),
    (
        {"file": {"listen": {"max_messages_per_s": 3}}},
        "tw.toml: unknown key [listen] max_messages_per_s; "
        "did you mean [limits] max_messages_per_s?",
    ),
    (
        {"file": {"admin": {"admin_port": 9100}}},
        "tw.toml: unknown key [admin] admin_port; did you mean [admin] port?",
    ),
    (
        {"file": {"faults": {"test-faults": True}}},
        "tw.toml: unknown key [faults] test-faults; did you mean [faults] enabled?",
    ),
    (
        {"file": {"limit": {}}},
        "tw.toml: unknown section [limit]; did you mean [limits]? (sections: listen, market, "
        "pacing, slow_consumers, limits, security, admin, faults, dialects, record)",
    ),
    (
        {"file": {"port": 8000}},
        "tw.toml: unknown key 'port' at the top level (settings go in sections such as "
        "[listen]); did you mean [listen] port?",
    ),
    (
        {"file": {"dialects": {"kraken": True}}},
        "tw.toml: unknown key [dialects] kraken: [dialects] has no settings yet",
    ),
    (
        {"file": {"listen": {"port": "8000"}}},
        "tw.toml: [listen] port: expected an integer in 0..65535, got '8000'",
    ),
    (
        {"file": {"listen": {"port": 70000}}},
        "tw.toml: [listen] port: expected an integer in 0..65535, got 70000",
    ),
    (
        {"file": {"limits": {"max_messages_per_s": -1}}},
        "tw.toml: [limits] max_messages_per_s: expected a number >= 0, got -1.0",
    ),
    (
        {"file": {"faults": {"enabled": "yes"}}},
        "tw.toml: [faults] enabled: expected true or false, got 'yes'",
    ),
    (
        {"file": {"pacing": {"tick_pacing": "fast"}}},
        "tw.toml: [pacing] tick_pacing: expected one of pause, clock, got 'fast'",
    ),
    (
        {"file": {"pacing": {"pass_share": 2}}},
        "tw.toml: [pacing] pass_share: expected a number in 0.05..1, got 2.0",
    ),
    (
        {"file": {"slow_consumers": {"stall_timeout": 0}}},
        "tw.toml: [slow_consumers] stall_timeout: expected a number > 0, got 0.0",
    ),
    (
        {"file": {"security": {"trusted_proxies": ["10.0.0.0/8", "lb"]}}},
        "tw.toml: [security] trusted_proxies: expected IP addresses or networks (CIDR); "
        '\'lb\' is neither, got ["10.0.0.0/8", "lb"]',
    ),
    (
        {"file": {"admin": {"port": "next"}}},
        "tw.toml: [admin] port: expected a port 0..65535, auto or off, got 'next'",
    ),
    (
        {"file": {"market": {"replay_speed": "fast"}}},
        "tw.toml: [market] replay_speed: expected a number, xN (N times faster) or max, got 'fast'",
    ),
    (
        {"env": {"TICKWIRE_LISTEN_PORT": "http"}},
        "TICKWIRE_LISTEN_PORT: expected an integer in 0..65535, got 'http'",
    ),
    (
        {"env": {"TICKWIRE_LISTEN_DEFLATE": "maybe"}},
        "TICKWIRE_LISTEN_DEFLATE: expected true or false (1/0, yes/no, on/off), got 'maybe'",
    ),
    (
        {"env": {"TICKWIRE_LIMITS_MAX_MESAGES_PER_S": "3"}},
        "unknown environment variable TICKWIRE_LIMITS_MAX_MESAGES_PER_S; "
        "did you mean TICKWIRE_LIMITS_MAX_MESSAGES_PER_S?",
    ),
    (
        {"env": {"TICKWIRE_LIMITS_NOTHING": "3"}},
        "unknown environment variable TICKWIRE_LIMITS_NOTHING",
    ),
    (
        {"flags": {"max_messages_per_s": "fast"}},
        "--max-messages-per-s: expected a number >= 0, got 'fast'",
    ),
    (
        {"flags": {"rate": "nan"}},
        "--rate: expected a number >= 0, got 'nan'",
    ),
    (
        {"flags": {"low_watermark_kb": "512"}, "file": {}},
        "[slow_consumers] low_watermark_kb = 512.0 (flag --low-watermark-kb) is above "
        "[slow_consumers] high_watermark_kb = 256.0 (default): expected the low watermark "
        "at most the high one",
    ),
    (
        {"file": {"slow_consumers": {"max_buffer_kb": 100}}},
        "[slow_consumers] high_watermark_kb = 256.0 (default) is above "
        "[slow_consumers] max_buffer_kb = 100.0 (file tw.toml): expected the high watermark "
        "at most the per-connection budget",
    ),
    (
        {"env": {"TICKWIRE_SLOW_CONSUMERS_MAX_TOTAL_BUFFER_MB": "1"}},
        "[slow_consumers] max_buffer_kb = 4096.0 (default) is above "
        "[slow_consumers] max_total_buffer_mb = 1.0 (env "
        "TICKWIRE_SLOW_CONSUMERS_MAX_TOTAL_BUFFER_MB): expected the per-connection budget "
        "at most the server-wide cap",
    ),
    (
        {"file": {"security": {"tls_key": "key.pem"}}},
        "[security] tls_key = 'key.pem' (file tw.toml) without [security] tls_cert: "
        "expected a certificate and its key together, or neither",
    ),
    (
        {"flags": {"tls_cert": "cert.pem"}},
        "[security] tls_cert = 'cert.pem' (flag --tls-cert) without [security] tls_key: "
        "expected a certificate and its key together, or neither",
    ),
    (
        {"env": {"TICKWIRE_SECURITY_JWT_SECRET": SECRET}, "flags": {"jwt_secret_file": "s"}},
        "[security] jwt_secret = *** (env TICKWIRE_SECURITY_JWT_SECRET) and "
        "[security] jwt_secret_file = 's' (flag --jwt-secret-file): expected one of them, "
        "not both",
    ),
    (
        {"env": {"TICKWIRE_SECURITY_JWT_SECRET": "short-secret"}},
        "TICKWIRE_SECURITY_JWT_SECRET: expected a secret of at least 32 bytes",
    ),
    (
        {"file": {"security": {"jwt_secret": 12345}}},
        "tw.toml: [security] jwt_secret: expected a string",
    ),
    (
        {"flags": {"market_core": "c", "batch_ms": "0"}},
        "[market] market_core = 'c' (flag --market-core) with [pacing] batch_ms = 0.0 "
        "(flag --batch-ms): expected batch_ms > 0 (the compiled core makes a batch per tick)",
    ),
    (
        {"flags": {"workers": "2", "admin_port": "0"}},
        "[admin] port = '0' (flag --admin-port) with [listen] workers = 2 (flag --workers): "
        "expected a fixed port or off (an any-free-port admin listener cannot be shared by "
        "workers)",
    ),
]


@pytest.mark.parametrize(("given", "message"), ERRORS, ids=[m[:48] for _, m in ERRORS])
def test_each_check_says_where_and_what(given: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        settings.resolve(
            "serve",
            flags=given.get("flags"),
            env=given.get("env"),
            file=given.get("file"),
            file_name="tw.toml",
        )
    assert str(caught.value) == message
    assert SECRET not in str(caught.value) and "short-secret" not in str(caught.value)


def test_required_settings_name_every_way() -> None:
    with pytest.raises(ConfigError) as caught:
        settings.resolve("publish")
    assert str(caught.value) == (
        "[market] nats is required by tickwire publish: give the flag --nats, "
        "TICKWIRE_MARKET_NATS or nats in [market]"
    )
    ok = settings.resolve("publish", env={"TICKWIRE_MARKET_NATS": "nats://127.0.0.1:1"})
    assert ok["market.nats"] == "nats://127.0.0.1:1"


def test_an_empty_variable_unsets_a_setting_without_default() -> None:
    env = {"TICKWIRE_SECURITY_TLS_CERT": "", "TICKWIRE_MARKET_SYMBOLS": " "}
    resolved = settings.resolve("serve", env=env)
    assert resolved["security.tls_cert"] is None and resolved["market.symbols"] is None
    assert resolved.origins["security.tls_cert"] == settings.DEFAULT
    # Settings with a default take the empty value as given: an empty list here.
    exempt = settings.resolve("serve", env={"TICKWIRE_LIMITS_PER_IP_EXEMPT": ""})
    assert exempt["limits.per_ip_exempt"] == []


def test_other_tickwire_variables_are_left_alone() -> None:
    env = {"TICKWIRE_TEST_MS": "3", "TICKWIRE_NO_CORE": "1", "TICKWIRE_SOMETHING_ELSE": "x"}
    assert settings.resolve("serve", env=env)["listen.port"] == 8765


def test_toml_syntax_error_names_the_file() -> None:
    with pytest.raises(ConfigError, match=r"^tw.toml: not valid TOML: .*line 2"):
        settings.parse_toml("[listen]\nport = \n", "tw.toml")


# -- the commands, end to end ----------------------------------------------------------------


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TICKWIRE, *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**_clean_env(), **(env or {})},
    )


def test_bad_configuration_exits_2_with_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "tw.toml"
    cfg.write_text("[limits]\nmax_mesages_per_s = 3\n")
    cases = [
        (
            ["serve", "--config", str(cfg)],
            {},
            f"{cfg}: unknown key [limits] max_mesages_per_s; did you mean max_messages_per_s?",
        ),
        (
            ["serve", "--port", "0"],
            {"TICKWIRE_LISTEN_PORT": "http", "TICKWIRE_CONFIG": str(tmp_path / "none.toml")},
            f"TICKWIRE_CONFIG {tmp_path / 'none.toml'}: cannot read: No such file or directory",
        ),
        (
            ["serve", "--port", "0", "--jwt-secret-file", str(tmp_path / "missing")],
            {},
            f"--jwt-secret-file: cannot read '{tmp_path / 'missing'}': No such file or directory",
        ),
        (
            ["serve", "--port", "0", "--jwt-secret", "too-short"],
            {},
            "--jwt-secret: expected a secret of at least 32 bytes",
        ),
        (
            ["publish", "--log-level", "LOUD"],
            {},
            "--log-level: expected one of DEBUG, INFO, WARNING, ERROR, CRITICAL, got 'LOUD'",
        ),
    ]
    for argv, env, message in cases:
        out = run_cli(*argv, env=env)
        assert out.returncode == 2, (argv, out.stderr)
        assert out.stderr == f"tickwire {argv[0]}: error: {message}\n", argv
        assert "Traceback" not in out.stderr and "too-short" not in out.stderr


def test_unusable_keys_are_refused_at_start(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a key\n")
    cfg = tmp_path / "tw.toml"
    cfg.write_text(f'[security]\njwt_public_key = "{junk}"\n')
    out = run_cli("serve", "--port", "0", "--config", str(cfg))
    assert out.returncode == 2
    assert out.stderr.startswith(
        f"tickwire serve: error: {cfg}: [security] jwt_public_key: '{junk}': not a PEM public key"
    )
    out = run_cli("serve", "--port", "0", env={"TICKWIRE_SECURITY_TLS_CERT": str(junk)})
    assert out.stderr.startswith("tickwire serve: error: [security] tls_cert = ")
    out = run_cli("serve", "--port", "0", "--tls-cert", str(junk), "--tls-key", str(junk))
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert out.stderr.startswith(
        f"tickwire serve: error: [security] tls_cert = '{junk}' (flag --tls-cert) and "
        f"[security] tls_key = '{junk}' (flag --tls-key): expected a PEM certificate chain "
        "and its private key ("
    )


def test_short_secret_file_is_refused_without_echo(tmp_path: Path) -> None:
    secret = tmp_path / "jwt.secret"
    secret.write_text("hunter2\n")
    out = run_cli("serve", "--port", "0", env={"TICKWIRE_SECURITY_JWT_SECRET_FILE": str(secret)})
    assert out.returncode == 2
    assert out.stderr == (
        "tickwire serve: error: TICKWIRE_SECURITY_JWT_SECRET_FILE: expected a secret of at "
        f"least 32 bytes in '{secret}'\n"
    )
    assert "hunter2" not in out.stderr


def test_config_show_sources_and_masking(tmp_path: Path) -> None:
    cfg = tmp_path / "tw.toml"
    cfg.write_text(
        '[listen]\nport = 9100\n[limits]\nmax_messages_per_s = 7\n[security]\njwt_secret = "'
        + SECRET
        + '"\n'
    )
    out = run_cli(
        "config",
        "show",
        "--config",
        str(cfg),
        "--rate",
        "5",
        env={"TICKWIRE_LIMITS_MESSAGE_BURST": "9"},
    )
    assert out.returncode == 0, out.stderr
    assert SECRET not in out.stdout
    lines: dict[str, str] = {}
    section = ""
    for line in out.stdout.splitlines():
        if line.startswith("["):
            section = line.strip("[]")
        elif "=" in line:
            lines[f"{section}.{line.split('=')[0].strip()}"] = line
    file = re.escape(str(cfg))
    assert re.fullmatch(rf"port = 9100 +# file {file}", lines["listen.port"])
    assert re.fullmatch(r'port = "auto" +# default', lines["admin.port"])
    assert re.fullmatch(r"rate = 5\.0 +# flag --rate", lines["market.rate"])
    assert re.fullmatch(
        r"message_burst = 9 +# env TICKWIRE_LIMITS_MESSAGE_BURST", lines["limits.message_burst"]
    )
    assert re.fullmatch(r"handshake_burst = 40 +# default", lines["limits.handshake_burst"])
    assert re.fullmatch(rf'jwt_secret = "\*\*\*" +# file {file}', lines["security.jwt_secret"])
    # The output is TOML itself (secrets masked): it reads back to the same values.
    shown = tomllib.loads(out.stdout)
    assert shown["listen"]["port"] == 9100 and shown["market"]["rate"] == 5.0
    # It checks what serve checks.
    bad = run_cli("config", "show", "--for", "serve", "--low-watermark-kb", "999")
    assert bad.returncode == 2 and "above [slow_consumers] high_watermark_kb" in bad.stderr


def test_config_example_parses_and_holds_the_defaults() -> None:
    out = run_cli("config", "example")
    assert out.returncode == 0, out.stderr
    data = settings.parse_toml(out.stdout, "example")
    resolved = settings.resolve(None, file=data, file_name="example")
    for s in settings.SETTINGS:
        assert resolved[s.name] == s.default, s.name
        assert s.secret or s.default is None or resolved.origins[s.name].kind == "file"
    assert out.stdout == settings.render_example()


def test_docs_are_generated_from_the_declarations() -> None:
    committed = (ROOT / "docs" / "configuration.md").read_text()
    assert committed == settings.render_docs(), (
        "docs/configuration.md is stale: tickwire config docs -o docs/configuration.md"
    )
    for s in settings.SETTINGS:
        assert f"`{s.env}`" in committed


def test_shipped_example_is_what_make_run_serves() -> None:
    path = ROOT / "examples" / "tickwire.toml"
    resolved = settings.resolve(
        "serve", file=settings.parse_toml(path.read_text(), str(path)), file_name=str(path)
    )
    assert resolved["listen.port"] == 8765 and resolved["admin.port"] == "8766"
    assert resolved["market.symbols"] == ["BTC-USD", "ETH-USD", "SOL-USD"]
    assert resolved["market.rate"] == 200.0 and resolved["market.burst_every"] == 30.0
    assert resolved["admin.log_level"] == "INFO"
    makefile = (ROOT / "Makefile").read_text()
    assert "serve --config examples/tickwire.toml" in makefile


# Settings that reach no GatewayConfig field by themselves (the log format, the
# supervisor's worker count, a leeway without keys).
OUTSIDE_GATEWAY_CONFIG = {"admin.log_json", "listen.workers", "security.jwt_leeway"}


def test_reloadable_settings_are_what_the_gateway_applies() -> None:
    """A setting marked reload changes only GatewayConfig fields Gateway.apply_config takes."""
    base = cli._gateway_config(argparse.Namespace(**settings.resolve("serve").by_dest()))
    for s in settings.for_command("serve"):
        if s.name in COMPANIONS or s.path:
            continue
        resolved = settings.resolve("serve", file={s.section: {s.key: settings.sample(s)}})
        changed = cli._gateway_config(argparse.Namespace(**resolved.by_dest()))
        fields = {
            f.name
            for f in dataclasses.fields(changed)
            if getattr(changed, f.name) != getattr(base, f.name)
        }
        if s.reload:
            assert fields <= set(Gateway.RELOADABLE), (s.name, fields)
        elif s.name not in OUTSIDE_GATEWAY_CONFIG:
            assert fields and not fields <= set(Gateway.RELOADABLE), (s.name, fields)


def test_reload_plan_applies_and_keeps() -> None:
    running = settings.resolve("serve")
    new = settings.resolve(
        "serve",
        file={"limits": {"max_messages_per_s": 5}, "listen": {"port": 9000}},
        file_name="tw.toml",
    )
    plan = settings.reload_plan(running, new)
    assert [s.name for s, _, _ in plan.applied] == ["limits.max_messages_per_s"]
    assert [s.name for s, _, _ in plan.skipped] == ["listen.port"]
    assert plan.merged["listen.port"] == 8765
    assert plan.merged["limits.max_messages_per_s"] == 5.0
    lines = [settings.change_line(*c) for c in (*plan.applied, *plan.skipped)]
    assert lines == [
        "reloaded [limits] max_messages_per_s: 50.0 -> 5.0",
        "not reloaded [listen] port: 8765 -> 9000: needs a restart (the listener is set up "
        "at start); keeping 8765",
    ]


# -- real servers ----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Served:
    """A ``tickwire serve`` whose stderr is read as it comes (for the reload's log)."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [*TICKWIRE, "serve", "--max-seconds", "120", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**_clean_env(), **(env or {})},
            start_new_session=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.stderr: list[str] = []
        assert self.proc.stderr is not None and self.proc.stdout is not None
        threading.Thread(target=self._pump, args=(self.proc.stderr,), daemon=True).start()
        deadline = time.monotonic() + 20
        self.port = 0
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            match = _SERVING.search(line)
            if match:
                self.port = int(match.group(1))
                return
            if not line and self.proc.poll() is not None:
                break
        self.stop()
        raise RuntimeError(f"server did not start: {''.join(self.stderr)}")

    def _pump(self, stream: Any) -> None:
        for line in stream:
            self.stderr.append(line)
            self.lines.put(line)

    def wait_for(self, text: str, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {text!r} in stderr: {''.join(self.stderr)}")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if text in line:
                return line

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


@pytest.fixture
def served() -> Iterator[list[Served]]:
    started: list[Served] = []
    yield started
    for srv in started:
        srv.stop()


def _pings(client: RawClient, n: int) -> list[str]:
    """Send ``n`` pings at once; return each answer's type (pong or the error code)."""
    for i in range(n):
        client.send_text(f'{{"op":"ping","id":{i}}}')
    out = []
    for _ in range(n):
        msg = client.recv_json()
        out.append(msg["type"] if msg["type"] == "pong" else msg.get("code", msg["type"]))
    return out


def test_port_from_file_rate_limit_from_env(tmp_path: Path, served: list[Served]) -> None:
    port = _free_port()
    cfg = tmp_path / "tw.toml"
    cfg.write_text(
        f'[listen]\nport = {port}\n[market]\nsymbols = ["A"]\nrate = 10.0\n'
        "[limits]\nmax_messages_per_s = 1000\nmessage_burst = 1000\n"
    )
    env = {"TICKWIRE_LIMITS_MAX_MESSAGES_PER_S": "0.1", "TICKWIRE_LIMITS_MESSAGE_BURST": "3"}
    srv = Served(["--config", str(cfg), "--admin-port", "off"], env)
    served.append(srv)
    assert srv.port == port
    client = RawClient(port)
    assert _pings(client, 5) == ["pong"] * 3 + ["rate_limited"] * 2
    client.close()


def test_sighup_reloads_limits_and_keeps_the_rest(tmp_path: Path, served: list[Served]) -> None:
    cfg = tmp_path / "tw.toml"
    base = '[market]\nsymbols = ["A"]\nrate = 10.0\n[admin]\nlog_level = "INFO"\n'
    cfg.write_text(base + "[limits]\nmax_messages_per_s = 1000\nmessage_burst = 1000\n")
    srv = Served(["--config", str(cfg), "--port", "0", "--admin-port", "off"])
    served.append(srv)
    client = RawClient(srv.port)
    assert _pings(client, 8) == ["pong"] * 8

    # A stricter limit, allowed origins, and a change that needs a restart.
    cfg.write_text(
        base.replace("rate = 10.0", "rate = 20.0")
        + "[limits]\nmax_messages_per_s = 0.1\nmessage_burst = 2\n"
        + '[security]\nallowed_origins = ["https://ok.example"]\n'
    )
    srv.proc.send_signal(signal.SIGHUP)
    assert "reloaded [limits] max_messages_per_s: 1000.0 -> 0.1" in srv.wait_for(
        "max_messages_per_s"
    )
    assert "reloaded [limits] message_burst: 1000 -> 2" in srv.wait_for("message_burst")
    line = srv.wait_for("[market] rate")
    assert "not reloaded [market] rate: 10.0 -> 20.0: needs a restart" in line
    assert "WARNING" in line
    # The open connection takes the new limit at once, and so does a new one.
    assert _pings(client, 4) == ["pong"] * 2 + ["rate_limited"] * 2
    fresh = RawClient(srv.port)
    assert _pings(fresh, 3) == ["pong"] * 2 + ["rate_limited"]
    fresh.close()
    assert 'reloaded [security] allowed_origins: [] -> ["https://ok.example"]' in "".join(
        srv.stderr
    )
    with pytest.raises(HandshakeRefused) as refused:
        RawClient(srv.port, headers={"Origin": "https://evil.example"})
    assert refused.value.status == 403
    RawClient(srv.port, headers={"Origin": "https://ok.example"}).close()

    # A bad file is reported and the running configuration kept.
    cfg.write_text(base + "[limits]\nmax_messages_per_s = -5\n")
    srv.proc.send_signal(signal.SIGHUP)
    line = srv.wait_for("reload failed")
    assert line.rstrip().endswith(
        f"reload failed, keeping the running configuration: {cfg}: [limits] "
        "max_messages_per_s: expected a number >= 0, got -5.0"
    )
    assert "ERROR" in line
    other = RawClient(srv.port)
    assert _pings(other, 3) == ["pong"] * 2 + ["rate_limited"]
    other.close()
    client.close()
    srv.stop()
    assert srv.proc.returncode == 0
    assert "Traceback" not in "".join(srv.stderr)


def test_sighup_reaches_every_worker(tmp_path: Path, served: list[Served]) -> None:
    """The --workers supervisor passes SIGHUP on; each worker reloads the same file."""
    cfg = tmp_path / "tw.toml"
    base = '[listen]\nworkers = 2\n[market]\nsymbols = ["A"]\nrate = 5.0\n'
    cfg.write_text(base + '[admin]\nport = "off"\nlog_level = "INFO"\n')
    srv = Served(["--config", str(cfg), "--port", "0"])
    served.append(srv)
    cfg.write_text(base + '[admin]\nport = "off"\nlog_level = "INFO"\n[faults]\nenabled = true\n')
    srv.proc.send_signal(signal.SIGHUP)
    srv.wait_for("reloaded [faults] enabled: false -> true")
    srv.wait_for("reloaded [faults] enabled: false -> true")
    client = RawClient(srv.port)
    client.send_text('{"op":"fault","id":1,"channels":["book.A"],"fault":"drop"}')
    reply = client.recv_json()
    while reply["type"] not in ("ack", "error"):
        reply = client.recv_json()
    assert reply["type"] == "ack", reply
    client.close()
