"""Limits (Sans-I/O, time passed in), private channels in the hub, synthetic accounts."""

from __future__ import annotations

from decimal import Decimal
from http import HTTPStatus

import pytest

from helpers import frame_payload
from tickwire.engine import Engine
from tickwire.exceptions import ConfigError
from tickwire.hub import RECENT_ORDERS, Hub
from tickwire.limits import (
    IpLimiter,
    Limits,
    OriginPolicy,
    TokenBucket,
    client_address,
    parse_networks,
)
from tickwire.protocol import Orders, Snapshot, decode_message
from tickwire.simulator import MarketSimulator, SyntheticAccounts

# -- token bucket ------------------------------------------------------------------------


def test_token_bucket_burst_then_rate() -> None:
    bucket = TokenBucket(rate=5, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert not bucket.take(0.1)  # 0.5 tokens
    assert bucket.take(0.2)  # 1.0 token
    assert not bucket.take(0.2)
    # Never more than the burst, however long the pause.
    assert bucket.full(100.0)
    assert sum(bucket.take(100.0) for _ in range(10)) == 3


# -- per-IP limits -----------------------------------------------------------------------


def test_connections_per_ip() -> None:
    ips = IpLimiter(Limits(max_connections_per_ip=2, handshakes_per_s=0))
    for _ in range(2):
        ips.opened("10.0.0.1")
        assert ips.handshake("10.0.0.1", 0.0) is None
    ips.opened("10.0.0.1")
    refusal = ips.handshake("10.0.0.1", 0.0)
    assert refusal is not None and refusal.status == HTTPStatus.TOO_MANY_REQUESTS
    ips.opened("10.0.0.2")
    assert ips.handshake("10.0.0.2", 0.0) is None  # other addresses are unaffected
    ips.closed("10.0.0.1")
    assert ips.handshake("10.0.0.1", 0.0) is None
    for _ in range(5):
        ips.closed("10.0.0.1")
    assert "10.0.0.1" not in ips.connections
    assert ips.refused_connections == 1


def test_handshake_rate_per_ip_with_retry_after() -> None:
    ips = IpLimiter(Limits(max_connections_per_ip=0, handshakes_per_s=2, handshake_burst=3))
    assert [ips.handshake("a", 0.0) is None for _ in range(4)] == [True, True, True, False]
    refusal = ips.handshake("a", 0.0)
    assert refusal is not None and refusal.retry_after == 1
    assert ips.handshake("b", 0.0) is None
    assert ips.handshake("a", 0.5) is None  # refilled at 2/s
    assert ips.refused_handshakes == 2


def test_handshake_buckets_are_bounded() -> None:
    ips = IpLimiter(Limits(handshakes_per_s=1, handshake_burst=1), max_tracked=100)
    for i in range(1000):
        ips.handshake(f"10.0.{i // 256}.{i % 256}", float(i))
    assert len(ips.buckets) <= 100


def test_exempt_and_config_checks() -> None:
    ips = IpLimiter(Limits())
    assert ips.is_exempt("127.0.0.1") and ips.is_exempt("::1") and not ips.is_exempt("10.1.1.1")
    assert not IpLimiter(Limits(exempt=[])).is_exempt("127.0.0.1")
    for bad in (
        {"max_connections_per_ip": -1},
        {"handshake_burst": 0},
        {"handshake_timeout_s": 0},
        {"idle_timeout_s": -1},
        {"max_messages_per_s": -1},
        {"trusted_proxies": ["nope"]},
    ):
        with pytest.raises(ConfigError):
            Limits(**bad)  # type: ignore[arg-type]


def test_origin_policy() -> None:
    assert OriginPolicy().allows("https://evil.example")
    policy = OriginPolicy(["https://app.example.com", "https://*.example.org/"])
    assert policy.allows(None)  # not a browser
    assert policy.allows("https://APP.example.com")
    assert policy.allows("https://x.example.org")
    assert not policy.allows("https://app.example.com.evil.net")
    assert not policy.allows("http://app.example.com")
    assert not policy.allows("null")


def test_client_address_trusts_only_configured_proxies() -> None:
    proxies = parse_networks(["10.0.0.0/8"])
    # Direct clients: the header is whatever the client wrote.
    assert client_address("203.0.113.5", "1.2.3.4", proxies) == "203.0.113.5"
    # Behind the balancer: the right-most address that is not a proxy.
    assert client_address("10.0.0.2", "1.2.3.4, 198.51.100.7, 10.0.0.9", proxies) == (
        "198.51.100.7"
    )
    assert client_address("10.0.0.2", None, proxies) == "10.0.0.2"
    assert client_address("10.0.0.2", "garbage", proxies) == "10.0.0.2"
    assert client_address("10.0.0.2", "10.0.0.3", proxies) == "10.0.0.3"
    assert client_address("10.0.0.2", "1.2.3.4", []) == "10.0.0.2"


# -- private channels in the hub ---------------------------------------------------------


class Sub:
    def __init__(self) -> None:
        self.outbox: list[bytes] = []
        self.channels: dict[str, object] = {}
        self.slow: dict[str, object] = {}
        self.deliver = None

    def messages(self) -> list[object]:
        out = [decode_message(frame_payload(f)) for f in self.outbox]
        self.outbox.clear()
        return out


def _event(n: int) -> tuple[str, str, str, str, str, str, str, int]:
    return (f"o{n}", "BTC-USD", "new", "buy", "100.00", "1.0000", "1.0000", n)


def test_private_channel_sequence_snapshot_and_resume() -> None:
    hub = Hub(Engine(["BTC-USD"]))
    hub.publish_orders("alice", [_event(1), _event(2)])
    ch = hub.private_channel("alice")
    assert ch.seq == 2 and "orders.alice" not in hub.channels  # kept apart from market data
    sub = Sub()
    hub.subscribe(sub, ch)  # type: ignore[arg-type]
    (snap,) = sub.messages()
    assert isinstance(snap, Snapshot) and snap.seq == 2 and snap.orders is not None
    assert [o.id for o in snap.orders] == [1, 2]
    hub.publish_orders("alice", [_event(3)])
    hub.publish_orders("alice", [])
    hub.publish_orders("bob", [_event(4)])  # another user's channel: alice sees nothing
    (msg,) = sub.messages()
    assert isinstance(msg, Orders) and (msg.prev_seq, msg.seq) == (2, 3)
    assert msg.orders[0].id == 3 and msg.orders[0].order == "o3"
    # Resume from history, as for trades.
    again = Sub()
    assert hub.subscribe(again, ch, hub.engine.epoch, 0)  # type: ignore[arg-type]
    replay = again.messages()
    assert [(m.prev_seq, m.seq) for m in replay] == [(0, 2), (2, 3)]  # type: ignore[attr-defined]
    # Heartbeats cover private channels; market resets leave them alone.
    hub.heartbeats(100.0)
    assert [type(m).__name__ for m in sub.messages()] == ["Heartbeat"]
    hub.reset("new-epoch")
    assert not ch.stale and ch.seq == 3
    for n in range(RECENT_ORDERS + 5):
        hub.publish_orders("alice", [_event(n)])
    assert len(ch.recent) == RECENT_ORDERS


# -- synthetic accounts ------------------------------------------------------------------


def _run(accounts: SyntheticAccounts | None, seconds: int = 20) -> tuple[list[object], int]:
    sim = MarketSimulator(["BTC-USD", "ETH-USD"], rate=1000, seed=3)
    sim.clock = iter(range(10**18, 10**19, 1000)).__next__
    sim.accounts = accounts
    public = []
    for _ in range(seconds * 100):
        public.append(sim.generate(10))
    return public, sim.generated


def test_accounts_do_not_change_the_public_flow() -> None:
    events: dict[str, list[tuple[str, ...]]] = {}

    def emit(user: str, batch: list[tuple[str, str, str, str, str, str, str, int]]) -> None:
        events.setdefault(user, []).extend(batch)  # type: ignore[arg-type]

    accounts = SyntheticAccounts(["alice", "bob"], fraction=0.05, emit=emit)
    with_accounts = _run(accounts)
    assert with_accounts == _run(None)
    assert set(events) == {"alice", "bob"} and accounts.events > 100
    # Each order's life is coherent: new, fills that add up, then done (left 0) or open.
    for user, evs in events.items():
        orders: dict[str, Decimal] = {}
        for oid, _symbol, event, _side, _price, qty, left, _ts in evs:
            assert oid.startswith(f"{user}-")
            if event == "new":
                assert oid not in orders and qty == left
                orders[oid] = Decimal(left)
                continue
            assert oid in orders, f"{event} of unknown order {oid}"
            if event == "fill":
                assert Decimal(left) == orders[oid] - Decimal(qty) >= 0
            else:
                assert event == "cancel" and left == "0" and Decimal(qty) == orders[oid]
            orders[oid] = Decimal(left)
            if orders[oid] == 0:
                del orders[oid]
        assert len(orders) <= accounts.max_open
    kinds = {e[2] for evs in events.values() for e in evs}
    assert kinds == {"new", "fill", "cancel"}


def test_accounts_config() -> None:
    with pytest.raises(ConfigError):
        SyntheticAccounts([])
    with pytest.raises(ConfigError):
        SyntheticAccounts(["a"], fraction=2)
