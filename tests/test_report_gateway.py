"""The connectivity report end to end: a real gateway, real clients, real faults.

The faults are the gateway's ``--test-faults`` ones (a dropped message, a wrong
checksum on a native channel); what the report says about the clients that got them is
read from ``/api/v1/report``, ``/metrics``, the ``--report`` file and ``tickwire report``.
The third-party clients (ccxt.pro, cryptofeed) run unmodified in the interop virtualenv
(``tests/interop/report_clients.py``), all six at once.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import websockets

from helpers import ServerProcess, interop_python
from tickwire.client import Client
from venues import VenueGateway, start_venue_gateway


def get_json(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def report(gw: VenueGateway) -> dict[str, Any]:
    status, body = get_json(f"{gw.http}/api/v1/report")
    assert status == 200, body
    return body  # type: ignore[no-any-return]


def scrape(gw: VenueGateway) -> str:
    with urllib.request.urlopen(f"{gw.http}/metrics", timeout=5) as response:
        assert response.status == 200
        return str(response.read().decode())


async def inject(gw: VenueGateway, channel: str, fault: str) -> None:
    async with websockets.connect(f"{gw.ws}/ws?client=tester", ssl=gw.ssl()) as ws:
        await ws.send(json.dumps({"op": "fault", "channels": [channel], "fault": fault, "id": 1}))
        reply = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert reply["type"] == "ack", reply


async def until(predicate: Callable[[], bool], limit_s: float, what: str) -> None:
    deadline = time.monotonic() + limit_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


def faults_of(data: dict[str, Any], client: str) -> list[dict[str, Any]]:
    return [f for f in data["faults"] if f["client"] == client]


def test_native_clients_resync_or_never_notice_and_the_report_says_which(
    server_factory: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    out = tmp_path / "report.json"
    gw = start_venue_gateway(
        server_factory,
        tmp_path,
        *("--symbols", "BTC-USD,ETH-USD", "--rate", "400", "--test-faults"),
        *("--report", str(out), "--report-window", "1.5"),
        tls=False,
    )

    async def run() -> None:
        async with Client(f"{gw.ws}/ws?client=sdk", ["book.BTC-USD"]) as sdk:
            await sdk.wait_live()
            # A client that reads but never checks: it keeps its connection.
            async with websockets.connect(
                f"{gw.ws}/ws", additional_headers={"X-Tickwire-Client": "lazy"}, close_timeout=1
            ) as lazy:
                await lazy.send(json.dumps({"op": "subscribe", "channels": ["book.BTC-USD"]}))
                await lazy.recv()
                counters = sdk.channel("book.BTC-USD").counters
                await inject(gw, "book.BTC-USD", "checksum")
                await until(lambda: counters.resyncs >= 1, 5, "the SDK's resync")
                await until(
                    lambda: any(f["never_noticed"] for f in faults_of(report(gw), "lazy")),
                    5,
                    "the lazy client's fault to count as never noticed",
                )
                for _ in range(20):
                    await lazy.recv()  # it is still being fed
                data = report(gw)
                # `tickwire report URL` reads the live gateway.
                live = await asyncio.to_thread(
                    subprocess.run,
                    [sys.executable, "-m", "tickwire", "report", gw.http],
                    capture_output=True,
                    text=True,
                    timeout=30,
                )
                assert live.returncode == 0, live.stderr
                assert "never noticed" in live.stdout and "lazy" in live.stdout
                metrics = await asyncio.to_thread(scrape, gw)
        (sdk_fault,) = faults_of(data, "sdk")
        assert sdk_fault["kind"] == "checksum" and sdk_fault["symbol"] == "BTC-USD"
        assert sdk_fault["venue"] == "native" and sdk_fault["channel"] == "book.BTC-USD"
        assert sdk_fault["detected"] is True and sdk_fault["reaction"] == "resubscribed"
        assert sdk_fault["recovered"] is True and 0 <= sdk_fault["time_to_book_s"] < 2
        assert sdk_fault["never_noticed"] is False and sdk_fault["storm"] is False
        (lazy_fault,) = faults_of(data, "lazy")
        assert lazy_fault["detected"] is False and lazy_fault["never_noticed"] is True
        # The injecting connection subscribed to nothing: it was given no fault.
        assert faults_of(data, "tester") == []
        conns = {c["client"]: c for c in data["connections"]}
        assert conns["sdk"]["venue"] == "native" and conns["sdk"]["endpoint"] == "/ws"
        assert conns["sdk"]["subscribed"] == ["book.BTC-USD"]
        assert conns["tester"]["closed_by"] == "client" and conns["tester"]["close_code"] == 1000
        assert data["totals"]["faults"] == 2 and data["totals"]["never_noticed"] == 1
        assert 'tickwire_report_fault_outcomes{kind="checksum",outcome="never_noticed"} 1.0' in (
            metrics
        )
        assert 'tickwire_report_fault_outcomes{kind="checksum",outcome="recovered"} 1.0' in (
            metrics
        )

    asyncio.run(run())
    gw.srv.stop()
    written = json.loads(out.read_text())
    assert [f["client"] for f in written["faults"]] == ["sdk", "lazy"]
    closed = {c["client"]: c for c in written["connections"]}
    assert closed["sdk"]["closed_by"] == "client"
    shown = subprocess.run(
        [sys.executable, "-m", "tickwire", "report", str(out)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert shown.returncode == 0, shown.stderr
    assert "2 faults, 1 detected, 1 recovered, 1 never noticed" in shown.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "tickwire", "report", str(tmp_path / "missing.json")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert bad.returncode == 1 and "cannot read" in bad.stderr


def test_a_gateway_without_a_report_answers_404(
    server_factory: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    gw = start_venue_gateway(server_factory, tmp_path, "--symbols", "BTC-USD", tls=False)
    status, body = get_json(f"{gw.http}/api/v1/report")
    assert status == 404 and body["error"] == "no_report"
    with urllib.request.urlopen(f"{gw.http}/metrics", timeout=5) as response:
        assert "tickwire_report_" not in response.read().decode()


CLIENTS = [(c, v) for v in ("binance", "okx", "kraken") for c in ("ccxt", "cryptofeed")]


def test_ccxt_and_cryptofeed_on_each_venue_after_an_upstream_hole(
    server_factory: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    """One dropped native message under every venue stream of BTC-USDT: the gateway
    closes Binance diff subscribers (1011, no in-band snapshot) and resnapshots OKX and
    Kraken ones. The report shows the Binance clients reconnect and refetch REST, and
    the others keep their connection with a right book at once."""
    gw = start_venue_gateway(
        server_factory,
        tmp_path,
        *("--symbols", "BTC-USDT", "--rate", "200", "--test-faults"),
        *("--report", str(tmp_path / "report.json"), "--report-window", "3"),
    )
    names = [f"{c}-{v}" for c, v in CLIENTS]

    def ready() -> bool:
        data = report(gw)
        booked = {
            c["client"]
            for c in data["connections"]
            if c["closed_s"] is None and any("depth" in s or "book" in s for s in c["subscribed"])
        }
        snapshots = {c["client"]: c["snapshot_requests"] for c in data["clients"]}
        return set(names) <= booked and all(
            snapshots.get(f"{c}-binance", 0) >= 1 for c in ("ccxt", "cryptofeed")
        )

    def settled() -> bool:
        """Every client was given its fault, and the Binance ones have their book back."""
        faults = report(gw)["faults"]
        hit = {f["client"] for f in faults}
        binance = [f for f in faults if f["venue"] == "binance"]
        return set(names) <= hit and all(f["recovered"] for f in binance)

    async def run() -> list[list[dict[str, Any]]]:
        # At most 40 s each; told to stop (stdin) once the report has what is checked.
        script = str(Path(__file__).with_name("interop") / "report_clients.py")
        procs = [
            await asyncio.create_subprocess_exec(
                interop_python(),
                script,
                *(c, v, gw.ws, gw.http, str(gw.cafile), "BTC-USDT", "40", f"{c}-{v}"),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            for c, v in CLIENTS
        ]
        try:
            await until(ready, 30, "every client's book")
            await asyncio.sleep(1.0)
            await inject(gw, "book.BTC-USDT", "drop")
            await until(settled, 15, "every client's fault, and the Binance books back")
            await asyncio.sleep(0.5)  # books after the recovery
        finally:
            for proc in procs:
                assert proc.stdin is not None
                proc.stdin.write(b"stop\n")
                proc.stdin.close()
        results = []
        for proc in procs:
            out, err = await asyncio.wait_for(proc.communicate(), 20)
            assert proc.returncode == 0, err.decode()[-3000:]
            results.append([json.loads(x) for x in out.decode().splitlines()])
        return results

    results = asyncio.run(run())
    for (client, venue), lines in zip(CLIENTS, results, strict=True):
        (summary,) = [line for line in lines if line["kind"] == "summary"]
        assert summary["books"] > 10, (client, venue, summary)
    data = report(gw)
    for client, venue in CLIENTS:
        name = f"{client}-{venue}"
        faults = faults_of(data, name)
        assert faults, f"{name} was given no fault: {data['faults']}"
        if venue == "binance":
            kinds = {f["kind"] for f in faults}
            assert kinds == {"disconnect"}, (name, faults)
            for f in faults:
                assert f["closed_by"] == "server" and f["close_code"] == 1011, f
                assert f["detected"] is True, f
                assert f["reconnected_after_s"] is not None, f
                assert f["recovered"] is True and f["time_to_book_s"] < 10, f
                assert f["storm"] is False, f
        else:
            for f in faults:
                assert f["kind"] == "upstream_resync" and f["venue"] == venue, f
                assert f["recovered"] is True and f["time_to_book_s"] == 0, f
                assert f["reconnected_after_s"] is None, f  # it kept its connection
                assert f["never_noticed"] is False, f


def post_fault(gw: VenueGateway, fault: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        f"{gw.http}/api/v1/faults", data=json.dumps(fault).encode(), method="POST"
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 201
        return dict(json.loads(response.read()))


def test_the_fault_engine_reports_to_the_report(
    server_factory: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    """Faults from the engine's admin API: a gap, a 1011 close and a refused handshake,
    each attributed to the clients it hit and judged by what they did next."""
    gw = start_venue_gateway(
        server_factory,
        tmp_path,
        *("--symbols", "BTC-USD", "--rate", "300", "--test-faults", "--report-window", "1"),
        tls=False,
    )

    async def run() -> dict[str, Any]:
        async with Client(f"{gw.ws}/ws?client=sdk", ["book.BTC-USD"]) as sdk:
            await sdk.wait_live()
            async with websockets.connect(f"{gw.ws}/ws?client=lazy", close_timeout=1) as lazy:
                await lazy.send(json.dumps({"op": "subscribe", "channels": ["book.BTC-USD"]}))
                await lazy.recv()
                counters = sdk.channel("book.BTC-USD").counters
                await asyncio.to_thread(post_fault, gw, {"kind": "gap", "venues": ["native"]})
                await until(lambda: counters.resyncs >= 1, 5, "the SDK's resync after the gap")
                await asyncio.sleep(1.2)  # past the window: the lazy client never noticed
                close = {"kind": "disconnect", "venues": ["native"], "code": 1011}
                await asyncio.to_thread(post_fault, gw, close)
                await until(lambda: sdk.stats.reconnects >= 1, 5, "the SDK's reconnect")
                await sdk.wait_live()
            limit = {"kind": "rate_limit", "scope": "connect", "duration": 5, "retry_after": 3}
            await asyncio.to_thread(post_fault, gw, limit)
            try:
                async with websockets.connect(f"{gw.ws}/ws?client=probe"):
                    raise AssertionError("the handshake was not refused")
            except websockets.InvalidStatus as exc:
                assert exc.response.status_code == 429
            return await asyncio.to_thread(report, gw)

    data = asyncio.run(run())
    by_kind = {(f["client"], f["kind"]): f for f in data["faults"]}
    gap = by_kind[("sdk", "gap")]
    assert gap["detected"] is True and gap["reaction"] == "resubscribed"
    assert gap["recovered"] is True and gap["never_noticed"] is False
    assert gap["detail"]["name"] == "gap" and gap["detail"]["fault"] >= 1
    assert by_kind[("lazy", "gap")]["never_noticed"] is True
    closed = by_kind[("sdk", "disconnect")]
    assert closed["closed_by"] == "server" and closed["close_code"] == 1011
    assert closed["reaction"] == "reconnected" and closed["recovered"] is True
    assert closed["symbols"] == ["BTC-USD"]  # no symbol in the fault: the books it had
    lazy_closed = by_kind[("lazy", "disconnect")]
    assert lazy_closed["detected"] is False and lazy_closed["never_noticed"] is False
    refused = by_kind[("probe", "rate_limit")]
    (attempt,) = [c for c in data["connections"] if c["id"] == refused["conn"]]
    assert attempt["closed_by"] == "refused" and attempt["close_code"] == 429
    assert data["totals"]["refused_handshakes"] == 1
