"""Private channels, tokens, origins, proxies and TLS against a real server.

Every case runs beside a healthy client that must keep its whole ``book.A``,
``trades.A`` and ``ticker.A`` stream (:func:`helpers.run_beside_healthy_client`),
except the TLS one, whose healthy client is itself on ``wss://``. Tokens are signed
here with the same secret or key the server was given; the server's stderr is searched
for every token at the end: tokens must never be logged.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import websockets
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from helpers import (
    HandshakeRefused,
    RawClient,
    ServerProcess,
    StreamChecker,
    run_beside_healthy_client,
)
from test_bad_input import still_open
from tickwire.auth import make_token
from tickwire.protocol import CloseCode, ErrorCode

Factory = Callable[..., ServerProcess]
SECRET = b"tickwire-test-secret-0123456789abcdef"
BASE = ("--symbols", "A,B", "--rate", "500")


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "jwt.secret"
    path.write_bytes(SECRET)
    return path


def token(user: str, ttl: float = 60.0, secret: bytes = SECRET) -> str:
    return make_token(user, ttl=ttl, secret=secret)


def bearer(tok: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tok}"}


def reply(raw: RawClient, rid: object) -> dict[str, Any]:
    """The ack or error answering request ``rid`` (channel messages skipped)."""
    while True:
        msg = raw.recv_json()
        if msg["type"] in ("ack", "error") and msg.get("id") == rid:
            return msg


def follow_orders(raw: RawClient, user: str, want: int) -> list[dict[str, Any]]:
    """Subscribe to ``orders.<user>`` and return ``want`` order events, checking the chain."""
    raw.send_text(json.dumps({"op": "subscribe", "channels": [f"orders.{user}"], "id": "o"}))
    ack = reply(raw, "o")
    assert ack["type"] == "ack", ack
    seq = None
    events: list[dict[str, Any]] = []
    deadline = time.monotonic() + 20
    while len(events) < want and time.monotonic() < deadline:
        msg = raw.recv_json()
        if msg.get("ch") != f"orders.{user}":
            continue
        if msg["type"] == "snapshot":
            seq = msg["seq"]
            assert all(o["id"] <= seq for o in msg["orders"])
        elif msg["type"] == "orders":
            assert msg["prev_seq"] == seq, "gap on a private channel"
            ids = [o["id"] for o in msg["orders"]]
            assert ids == list(range(msg["prev_seq"] + 1, msg["seq"] + 1))
            seq = msg["seq"]
            events.extend(msg["orders"])
        else:
            assert msg["type"] == "heartbeat" and msg["seq"] == seq
    assert len(events) >= want
    return events


def test_private_channels_end_to_end(server_factory: Factory, secret_file: Path) -> None:
    srv = server_factory(
        *BASE,
        "--jwt-secret-file",
        str(secret_file),
        "--sim-order-fraction",
        "0.3",
        "--log-level",
        "DEBUG",
    )
    tokens = {
        "alice": token("alice"),
        "bob": token("bob"),
        "expired": token("alice", ttl=-10),
        "forged": token("alice", secret=b"not-the-server-secret-0123456789ab"),
    }

    def scenario() -> dict[str, Any]:
        out: dict[str, Any] = {}
        # 1. Token at connect (header): own channel streams, another user's is refused.
        alice = RawClient(srv.port, headers=bearer(tokens["alice"]))
        events = follow_orders(alice, "alice", 5)
        assert {e["event"] for e in events} <= {"new", "fill", "cancel"}
        assert all(e["order"].startswith("alice-") for e in events)
        alice.send_text('{"op":"subscribe","channels":["orders.bob"],"id":2}')
        out["other_user"] = reply(alice, 2)
        alice.close()
        # 2. No token: private channels need a login; public data does not.
        anon = RawClient(srv.port)
        anon.send_text('{"op":"subscribe","channels":["orders.alice"],"id":1}')
        out["anonymous"] = reply(anon, 1)
        for name in ("forged", "expired"):
            anon.send_text(json.dumps({"op": "login", "token": tokens[name], "id": name}))
            out[name] = reply(anon, name)
        anon.send_text(json.dumps({"op": "login", "token": tokens["bob"], "id": "bob"}))
        out["login"] = reply(anon, "bob")
        events = follow_orders(anon, "bob", 3)
        assert all(e["order"].startswith("bob-") for e in events)
        anon.send_text(json.dumps({"op": "login", "token": tokens["alice"], "id": "switch"}))
        out["switch"] = reply(anon, "switch")
        anon.send_text('{"op":"subscribe","channels":["orders.alice"],"id":3}')
        out["after_switch"] = reply(anon, 3)
        out["alive"] = still_open(anon)
        anon.close()
        # 3. Token in the query string; bad tokens at connect are refused with 401.
        query = RawClient(srv.port, path=f"/ws?token={tokens['alice']}")
        follow_orders(query, "alice", 1)
        query.close()
        out["refused"] = []
        for name in ("forged", "expired"):
            with pytest.raises(HandshakeRefused) as info:
                RawClient(srv.port, headers=bearer(tokens[name]))
            out["refused"].append(info.value.status)
        return out

    out = run_beside_healthy_client(srv, scenario)
    assert out["other_user"]["code"] == ErrorCode.FORBIDDEN
    assert out["anonymous"]["code"] == ErrorCode.AUTH_REQUIRED
    assert out["forged"]["code"] == ErrorCode.AUTH_FAILED
    assert out["expired"]["code"] == ErrorCode.TOKEN_EXPIRED
    assert out["login"]["type"] == "ack" and out["login"]["channels"] == ["orders.bob"]
    assert out["switch"]["code"] == ErrorCode.FORBIDDEN
    assert out["after_switch"]["code"] == ErrorCode.FORBIDDEN
    assert out["alive"] and out["refused"] == [401, 401]
    stats = srv.stop()
    assert stats is not None and stats["security"]["logins"] == 1
    # Tokens are never logged, whole or in part (the signature is the secret part).
    log = srv.stderr
    assert "logged in as bob" in log  # DEBUG/INFO logging was on
    for tok in tokens.values():
        assert tok not in log and tok.rsplit(".", 1)[1] not in log


def test_es256_tokens(server_factory: Factory, tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = tmp_path / "jwt.pub.pem"
    pem.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    srv = server_factory(*BASE, "--jwt-public-key", str(pem), "--sim-order-fraction", "0.3")

    def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        raw = RawClient(srv.port)
        try:
            # An HS256 token is refused: this server holds no secret.
            raw.send_text(json.dumps({"op": "login", "token": token("carol"), "id": 1}))
            hs = reply(raw, 1)
            good = make_token("carol", ttl=60, private_key=key)
            raw.send_text(json.dumps({"op": "login", "token": good, "id": 2}))
            ack = reply(raw, 2)
            follow_orders(raw, "carol", 3)
            return hs, ack
        finally:
            raw.close()

    hs, ack = run_beside_healthy_client(srv, scenario)
    assert hs["code"] == ErrorCode.AUTH_FAILED and "algorithm" in hs["message"]
    assert ack["channels"] == ["orders.carol"]


def test_expired_token_closes_the_connection_unless_refreshed(
    server_factory: Factory, secret_file: Path
) -> None:
    srv = server_factory(*BASE, "--jwt-secret-file", str(secret_file))

    def scenario() -> tuple[int | None, bool]:
        short = RawClient(srv.port)
        kept = RawClient(srv.port)
        try:
            for raw in (short, kept):
                raw.send_text(json.dumps({"op": "login", "token": token("bob", 2), "id": 1}))
                assert reply(raw, 1)["type"] == "ack"
                raw.send_text('{"op":"subscribe","channels":["orders.bob","ticker.A"]}')
            # Refresh one of them before its token expires.
            kept.send_text(json.dumps({"op": "login", "token": token("bob", 60), "id": 2}))
            assert reply(kept, 2)["type"] == "ack"
            code, _, _ = short.wait_close(timeout=8)
            return code, still_open(kept)
        finally:
            short.close()
            kept.close()

    code, alive = run_beside_healthy_client(srv, scenario)
    assert code == CloseCode.AUTH_EXPIRED and alive


def test_login_without_configured_keys(server_factory: Factory) -> None:
    srv = server_factory(*BASE)

    def scenario() -> tuple[dict[str, Any], dict[str, Any], int]:
        raw = RawClient(srv.port)
        try:
            raw.send_text(json.dumps({"op": "login", "token": token("alice"), "id": 1}))
            login = reply(raw, 1)
            raw.send_text('{"op":"subscribe","channels":["orders.alice"],"id":2}')
            sub = reply(raw, 2)
        finally:
            raw.close()
        with pytest.raises(HandshakeRefused) as info:
            RawClient(srv.port, headers=bearer(token("alice")))
        return login, sub, info.value.status

    login, sub, status = run_beside_healthy_client(srv, scenario)
    assert login["code"] == sub["code"] == ErrorCode.AUTH_REQUIRED
    assert status == 401


def test_allowed_origins(server_factory: Factory) -> None:
    srv = server_factory(*BASE, "--allowed-origin", "https://app.example.com")

    def scenario() -> list[int]:
        statuses = []
        for headers in (
            {"Origin": "https://evil.example.net"},
            {"Origin": "https://app.example.com"},
            {},
        ):
            try:
                RawClient(srv.port, headers=headers).close()
                statuses.append(101)
            except HandshakeRefused as exc:
                statuses.append(exc.status)
        return statuses

    assert run_beside_healthy_client(srv, scenario) == [403, 101, 101]


def test_forwarded_for_behind_a_trusted_proxy(server_factory: Factory) -> None:
    # The test client plays the load balancer (127.0.0.1, trusted).
    srv = server_factory(
        *BASE,
        "--trusted-proxy",
        "127.0.0.1",
        "--per-ip-exempt",
        "",
        "--max-connections-per-ip",
        "2",
    )

    def scenario() -> list[int]:
        statuses = []
        held = []
        for client in ("198.51.100.7", "198.51.100.7", "198.51.100.7", "198.51.100.8"):
            try:
                held.append(RawClient(srv.port, headers={"X-Forwarded-For": client}))
                statuses.append(101)
            except HandshakeRefused as exc:
                statuses.append(exc.status)
        for raw in held:
            raw.close()
        return statuses

    # The healthy client sends no X-Forwarded-For: it counts as the proxy itself.
    assert run_beside_healthy_client(srv, scenario) == [101, 101, 429, 101]


# -- TLS -----------------------------------------------------------------------------------


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_tls_serves_wss(server_factory: Factory, tmp_path: Path, secret_file: Path) -> None:
    cert, key = _self_signed(tmp_path)
    srv = server_factory(
        *BASE,
        "--tls-cert",
        str(cert),
        "--tls-key",
        str(key),
        "--jwt-secret-file",
        str(secret_file),
        "--sim-order-fraction",
        "0.3",
    )
    assert srv.url.startswith("wss://")
    trusting = ssl.create_default_context(cafile=str(cert))

    async def run() -> tuple[StreamChecker, int]:
        checker = StreamChecker()
        orders = 0
        async with websockets.connect(
            srv.url, ssl=trusting, additional_headers=bearer(token("alice"))
        ) as ws:
            await ws.send('{"op":"subscribe","channels":["book.A","trades.A","orders.alice"]}')
            while checker.deltas < 100 or orders < 2:
                msg = json.loads(await asyncio.wait_for(ws.recv(), 10))
                if msg.get("ch") == "orders.alice":
                    orders += msg["type"] == "orders"
                else:
                    checker.apply(msg)
        # A client that does not trust the certificate is refused; plain ws:// fails.
        with pytest.raises(ssl.SSLCertVerificationError):
            await websockets.connect(srv.url)
        # Refused, not left hanging: a TimeoutError (an OSError too) fails this test.
        plain = srv.url.replace("wss", "ws", 1)
        try:
            await asyncio.wait_for(websockets.connect(plain), 5)
        except TimeoutError:
            raise AssertionError("plain ws:// to the TLS port hung instead of failing") from None
        except (websockets.exceptions.InvalidMessage, ConnectionError) as exc:
            refused = exc
        else:
            raise AssertionError("plain ws:// to the TLS port was served")
        assert refused is not None
        return checker, orders

    checker, orders = asyncio.run(run())
    assert checker.deltas >= 100 and set(checker.seq) == {"book.A", "trades.A"}
    assert orders >= 2
