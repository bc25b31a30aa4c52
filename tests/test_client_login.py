"""The SDK's login and private ``orders.<USER>`` channel against a real server.

The server signs nothing: tokens are made here with the secret it was given
(``--jwt-secret-file``), and the simulator's synthetic accounts (``--sim-order-fraction``)
give alice and bob orders that rest, fill and cancel.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from helpers import ServerProcess
from test_client import Proxy, fast_backoff, wait
from tickwire.auth import make_token
from tickwire.client import Client, Disconnected, Event, OrdersReceived, SyncState
from tickwire.exceptions import RequestError
from tickwire.protocol import CloseCode, ErrorCode

Factory = Callable[..., ServerProcess]
SECRET = b"tickwire-test-secret-0123456789abcdef"


@pytest.fixture
def auth_server(server_factory: Factory, tmp_path: Path) -> ServerProcess:
    secret = tmp_path / "jwt.secret"
    secret.write_bytes(SECRET)
    return server_factory(
        "--symbols", "A,B", "--rate", "800", "--jwt-secret-file", str(secret),
        "--jwt-leeway", "0", "--sim-order-fraction", "0.5",
    )  # fmt: skip


class Tokens:
    """A token provider that counts how often it was asked (and fails when told to)."""

    def __init__(self, user: str, ttl: float, fail_calls: tuple[int, ...] = ()) -> None:
        self.user = user
        self.ttl = ttl
        self.fail_calls = fail_calls
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.calls in self.fail_calls:
            raise ConnectionError("token issuer unreachable")
        return make_token(self.user, ttl=self.ttl, secret=SECRET)


def order_ids(events: list[Event], channel: str) -> list[int]:
    """Ids of the order events delivered as news (not snapshot history), in order."""
    return [
        o.id
        for e in events
        if isinstance(e, OrdersReceived) and e.channel == channel and not e.snapshot
        for o in e.orders
    ]


def test_orders_follow_after_login_and_resume_after_a_cut(auth_server: ServerProcess) -> None:
    async def run() -> None:
        proxy = Proxy(auth_server.port)
        await proxy.start()
        # The issuer is down when the client first tries to reconnect: it retries.
        tokens = Tokens("alice", 60, fail_calls=(2,))
        events: list[Event] = []
        client = Client(
            f"ws://127.0.0.1:{proxy.port}/ws",
            ["orders.alice", "book.A"],
            on_event=events.append,
            backoff=fast_backoff(),
            token=tokens,
        )
        try:
            await client.start()
            orders = client.channel("orders.alice")
            await wait(client, lambda: len(order_ids(events, "orders.alice")) >= 10)
            assert all(o.order.startswith("alice-") for o in orders.orders)
            proxy.cut()
            await wait(client, lambda: client.stats.reconnects >= 1)
            before = len(order_ids(events, "orders.alice"))
            await wait(client, lambda: len(order_ids(events, "orders.alice")) > before + 10)
            ids = order_ids(events, "orders.alice")
            assert ids == list(range(ids[0], ids[0] + len(ids)))  # nothing lost in the cut
            assert orders.state is SyncState.LIVE and orders.position == ids[-1]
            counters = orders.counters
            assert counters.snapshots == 1 and counters.trades_missed == counters.gaps == 0
            assert tokens.calls == 3 and client.stats.connect_failures == 1
        finally:
            await client.close()
            await proxy.close()

    asyncio.run(run())


def test_short_lived_tokens_are_refreshed_without_a_disconnect(
    auth_server: ServerProcess,
) -> None:
    async def run() -> None:
        # 6 s tokens: the client logs in again at 4.5 s, 1.5 s before the expiry (the
        # server checks every 0.5 s), a margin a loaded machine does not eat.
        ttl = 6.0
        tokens = Tokens("bob", ttl)
        events: list[Event] = []
        client = Client(auth_server.url, ["orders.bob"], on_event=events.append, token=tokens)
        async with client:
            start = time.monotonic()
            # Wait for two refreshes and past the first token's expiry (and a sweep):
            # the server would have closed with 4003 (AUTH_EXPIRED) had the client not
            # logged in again.
            while tokens.calls < 3 or time.monotonic() - start < ttl + 1:
                assert time.monotonic() - start < 4 * ttl, f"{tokens.calls} token calls"
                await asyncio.sleep(0.1)
            assert client.stats.disconnects == 0 and client.state("orders.bob") is SyncState.LIVE
        assert tokens.calls >= 3
        ids = order_ids(events, "orders.bob")
        assert len(ids) > 10 and ids == list(range(ids[0], ids[0] + len(ids)))

    asyncio.run(run())


@pytest.mark.parametrize(
    ("ttl", "secret", "code"),
    [(-10, SECRET, ErrorCode.TOKEN_EXPIRED), (60, b"x" * 40, ErrorCode.AUTH_FAILED)],
)
def test_a_refused_login_fails_start_with_the_servers_reason(
    auth_server: ServerProcess, ttl: float, secret: bytes, code: str
) -> None:
    async def run() -> None:
        token = make_token("alice", ttl=ttl, secret=secret)
        client = Client(auth_server.url, ["orders.alice"], token=token)
        with pytest.raises(RequestError) as info:
            await asyncio.wait_for(client.start(), 10)
        assert info.value.code == code and "login refused" in str(info.value)
        assert client.stats.connects == 1  # no retry with a token that cannot work

    asyncio.run(run())


def test_a_plain_token_that_expires_ends_the_client_instead_of_looping(
    auth_server: ServerProcess,
) -> None:
    async def run() -> None:
        token = make_token("alice", ttl=2, secret=SECRET)
        client = Client(auth_server.url, ["orders.alice"], backoff=fast_backoff(), token=token)
        await client.start()
        closes = []
        with pytest.raises(RequestError) as info:
            async with asyncio.timeout(15):
                async for event in client:
                    if isinstance(event, Disconnected):
                        closes.append(event.code)
        assert info.value.code == ErrorCode.TOKEN_EXPIRED
        # The server closed the first connection at expiry; the one retry was refused.
        assert closes[0] == CloseCode.AUTH_EXPIRED and client.stats.connects == 2
        with pytest.raises(RequestError):  # nothing will ever come: waiting says so
            await asyncio.wait_for(client.wait_live(), 5)
        await client.close()

    asyncio.run(run())


def test_a_provider_of_expired_tokens_fails_start_once(auth_server: ServerProcess) -> None:
    async def run() -> None:
        tokens = Tokens("alice", -10)
        client = Client(auth_server.url, ["book.A"], token=tokens)
        with pytest.raises(RequestError) as info:
            await asyncio.wait_for(client.start(), 10)
        assert info.value.code == ErrorCode.TOKEN_EXPIRED and tokens.calls == 1

    asyncio.run(run())


def test_a_failing_or_hanging_token_provider_fails_start(auth_server: ServerProcess) -> None:
    def failing() -> str:
        raise PermissionError("vault unreachable")

    async def hanging() -> str:
        await asyncio.sleep(3600)
        return ""

    async def run() -> None:
        client = Client(auth_server.url, ["orders.alice"], token=failing)
        with pytest.raises(PermissionError, match="vault unreachable"):
            await asyncio.wait_for(client.start(), 10)
        client = Client(auth_server.url, ["orders.alice"], token=hanging, connect_timeout=0.5)
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(client.start(), 10)
        # The client's connect_timeout raised it, not this test's outer wait_for (10 s).
        assert time.monotonic() - start < 5
        assert client.stats.connects == 0  # no socket was opened for it

    asyncio.run(run())


def test_tickwire_token_signs_what_the_server_accepts(
    auth_server: ServerProcess, tmp_path: Path
) -> None:
    secret = tmp_path / "jwt.secret"
    secret.write_bytes(SECRET + b"\n")
    tickwire = [sys.executable, "-m", "tickwire", "token"]
    out = subprocess.run(
        [*tickwire, "carol", "--secret-file", str(secret), "--ttl", "60"],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout.strip()  # fmt: skip

    async def run() -> None:
        # Without a login the subscribe to orders.carol would be refused (auth_required).
        async with Client(auth_server.url, ["orders.carol"], token=out) as client:
            await wait(client, lambda: client.state("orders.carol") is SyncState.LIVE)

    asyncio.run(run())
    short = tmp_path / "short.secret"
    short.write_bytes(b"too short")
    public = tmp_path / "public.pem"
    public.write_bytes(
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    for args, why in [
        (["carol", "--secret-file", str(short)], "32+ bytes"),
        (["carol", "--private-key", str(public)], "not an unencrypted PEM EC P-256 private key"),
        (["a b", "--secret-file", str(secret)], "not a valid user id"),
        (["carol", "--secret-file", str(secret), "--ttl", "0"], "--ttl must be more than 0"),
    ]:
        bad = subprocess.run([*tickwire, *args], capture_output=True, text=True, timeout=30)
        assert bad.returncode == 2 and why in bad.stderr, (args, bad.stderr)


def test_my_orders_example_runs(auth_server: ServerProcess, tmp_path: Path) -> None:
    secret = tmp_path / "jwt.secret"
    secret.write_bytes(SECRET)
    example = Path(__file__).resolve().parent.parent / "examples" / "my_orders.py"
    out = subprocess.run(
        [sys.executable, str(example), "alice", "--url", auth_server.url]
        + ["--secret-file", str(secret), "--count", "5"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout.splitlines()  # fmt: skip
    ids = [int(line.split()[0][1:]) for line in out if line.startswith("#")]
    assert len(ids) >= 5 and ids == list(range(ids[0], ids[0] + len(ids)))
    assert all(" alice-" in line for line in out if line.startswith("#"))
