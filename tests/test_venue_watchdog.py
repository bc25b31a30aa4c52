"""The venue source's data watchdog and its use of shutdown notices
(docs/venue-feeds.md, "Under faults"): a real upstream gateway whose faults are posted
to its admin API, and real follower gateways (``serve --source VENUE+ws://...``)
watched by a native recorder, the SDK and ``/readyz`` (:class:`Watch`).

Seen to fail with the watchdog broken on purpose (``Watchdog.expired`` always false:
the stall test never sees the symbols stale) and with the notice ignored (the notice
test counts no shutdown notice and a backoff before the reconnect)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from helpers import ServerProcess
from test_venue_faults import (
    PATHS,
    SYMBOL,
    VENUES,
    Watch,
    _api,
    _faults,
    _post_all,
    _same_books_as_upstream,
)
from tickwire.dialects.decode import IDLE_TIMEOUTS, Watchdog
from venues import VenueGateway, start_venue_gateway

IDLE = 1.0


def _gateways(
    server_factory: Callable[..., ServerProcess], tmp_path: Path, rate: str, idle: float = IDLE
) -> tuple[VenueGateway, list[Watch]]:
    from concurrent.futures import ThreadPoolExecutor

    up = start_venue_gateway(
        server_factory, tmp_path, "--symbols", SYMBOL, "--rate", rate, "--test-faults", tls=False
    )

    def follower(venue: str) -> VenueGateway:
        extra = ["--venue-rest", f"{up.http}/binance"] if venue == "binance" else []
        return start_venue_gateway(
            server_factory,
            tmp_path,
            "--symbols",
            SYMBOL,
            "--source",
            f"{venue}+{up.ws}{PATHS[venue]}",
            "--source-timeout",
            "10",
            "--venue-idle-timeout",
            str(idle),
            *extra,
            tls=False,
        )

    with ThreadPoolExecutor(len(VENUES)) as pool:
        gws = list(pool.map(follower, VENUES))
    return up, [Watch(v, gw) for v, gw in zip(VENUES, gws, strict=True)]


def test_watchdog_decides_from_the_times_given() -> None:
    dog = Watchdog(10.0, now=100.0)
    assert not dog.expired(109.9) and dog.expired(110.0)
    dog.seen(109.0)
    assert not dog.expired(118.9) and dog.expired(119.0)
    # The application ping at a third of the timeout (or the keepalive, if sooner),
    # then again a third later if nothing answered.
    assert not dog.ping_due(112.3, 15.0) and dog.ping_due(112.4, 15.0)
    assert not dog.ping_due(115.0, 15.0) and dog.ping_due(115.8, 15.0)
    assert dog.ping_due(200.0, 3.0)  # a keepalive sooner than a third
    assert not Watchdog(0.0, now=0.0).expired(1e9)  # 0: off
    assert set(IDLE_TIMEOUTS) == set(VENUES)


def test_a_stall_without_heartbeats_makes_the_books_stale_then_they_recover(
    server_factory: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    """Every follower's upstream connection goes silent for 4 s (WebSocket pings still
    answered): within the 1 s watchdog (plus the polls) the symbol is stale, the SDK on
    the follower never sees a wrong book, the connection is replaced and the book
    recovers to the upstream's long before the stall would have ended."""
    up, watches = _gateways(server_factory, tmp_path, "300")

    async def run() -> dict[str, dict[str, Any]]:
        for w in watches:
            await w.start()
        stall = {"kind": "stall", "at": 0.2, "seconds": 4.0, "heartbeats": False}
        stall.update(share=1.0, venues=list(VENUES), name="watchdog-stall")
        (fid,) = await _post_all(up, [stall])
        await asyncio.sleep(0.2 + IDLE + 1.0)
        for w in watches:
            assert w.stale_seen > 0, f"{w.venue}: not stale {IDLE + 1} s into the stall"
        for w in watches:
            await w.recovered(limit=3.0)  # well before the 4 s stall ends
        listed = [f for f in await _faults(up) if f["id"] == fid]
        assert listed and listed[0]["applied"] >= 1, listed
        await _same_books_as_upstream(up, watches)
        for w in watches:
            await w.stop()  # every seq and checksum the SDK and the recorder got verified
        return {w.venue: await w.source() for w in watches}

    srcs = asyncio.run(run())
    print("watchdog stall:", {v: (s["idle_timeouts"], s["connects"]) for v, s in srcs.items()})
    for venue, src in srcs.items():
        assert src["idle_timeouts"] == 1, (venue, src)
        assert src["connects"] == 2 and src["holes"].get("disconnect") == 1, (venue, src)


def test_a_quiet_healthy_market_is_not_declared_dead(
    server_factory: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    """An upstream changing its book once every few seconds: OKX answers the
    application ping, Kraken sends its heartbeats, so a 2 s watchdog stays quiet;
    Binance has neither -- silence is all it can go by -- and is not asserted."""
    up, watches = _gateways(server_factory, tmp_path, "0.2", idle=2.0)
    okx_kraken = [w for w in watches if w.venue != "binance"]

    async def run() -> dict[str, dict[str, Any]]:
        for w in okx_kraken:
            await w.start()
        await asyncio.sleep(7.0)
        for w in okx_kraken:
            await w.stop()
        return {w.venue: await w.source() for w in okx_kraken}

    srcs = asyncio.run(run())
    for venue, src in srcs.items():
        assert src["idle_timeouts"] == 0 and src["connects"] == 1, (venue, src)
    for w in okx_kraken:
        assert w.stale_seen == 0, w.venue


def test_a_shutdown_notice_replaces_the_connection_before_the_close(
    server_factory: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    """A 1001 close with each venue's shutdown notice 1 s before (the notice at 0.2 s,
    the close at 1.2 s): the follower reacts to the notice (reconnects at once)
    instead of waiting for the close."""
    up, watches = _gateways(server_factory, tmp_path, "300")

    async def run() -> dict[str, dict[str, Any]]:
        for w in watches:
            await w.start()
        close = {"kind": "disconnect", "at": 0.2, "code": 1001, "notice": True}
        close.update(notice_lead=1.0, venues=list(VENUES), name="watchdog-notice")
        await _post_all(up, [close])
        # The notice goes out at 0.2 s, the close at 1.2 s: halfway, every follower is
        # on its second connection already.
        await asyncio.sleep(0.7)
        for w in watches:
            src = await w.source()
            assert src["connects"] == 2 and src["connected"], (w.venue, src)
        await asyncio.sleep(1.3)
        for w in watches:
            await w.recovered(limit=5.0)
        await _api(up, "DELETE", "/api/v1/faults")
        await _same_books_as_upstream(up, watches)
        for w in watches:
            await w.stop()
        return {w.venue: await w.source() for w in watches}

    srcs = asyncio.run(run())
    print(
        "notice:", {v: (s["shutdown_notices"], s["connects"], s["holes"]) for v, s in srcs.items()}
    )
    for venue, src in srcs.items():
        # One notice, one replacement; the close found the old connection gone.
        assert src["shutdown_notices"] == 1, (venue, src)
        assert src["connects"] == 2 and src["holes"] == {"disconnect": 1}, (venue, src)


def test_a_kraken_stall_with_heartbeats_is_a_quiet_channel_not_a_dead_one(
    server_factory: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    """Decided: Kraken's heartbeats say the link is alive and the channel quiet, which
    a follower cannot tell from a venue withholding data -- so the 1 s watchdog does
    not fire through a 2.5 s stall with heartbeats (same connection throughout); what
    was lost shows when data resumes (a checksum failure if the top 10 moved) and is
    resynced in band, and the SDK never sees a wrong book."""
    up, watches = _gateways(server_factory, tmp_path, "300")
    (w,) = [w for w in watches if w.venue == "kraken"]

    async def run() -> dict[str, Any]:
        await w.start()
        stall = {"kind": "stall", "at": 0.2, "seconds": 2.5, "heartbeats": True}
        stall.update(share=1.0, venues=["kraken"], name="watchdog-heartbeats")
        (fid,) = await _post_all(up, [stall])
        await asyncio.sleep(3.2)
        listed = [f for f in await _faults(up) if f["id"] == fid]
        assert listed and listed[0]["applied"] == 1, listed
        await w.recovered(limit=5.0)
        await _same_books_as_upstream(up, [w])
        await w.stop()
        return await w.source()

    src = asyncio.run(run())
    assert src["idle_timeouts"] == 0 and src["connects"] == 1, src
    assert "disconnect" not in src["holes"], src
