"""The dashboard in a real headless browser against a live gateway.

Debian's ``/usr/bin/chromium``, driven by Playwright (``executable_path``; Playwright
never downloads a browser here). ``make test`` installs both; without them these tests
skip with the reason -- except under CI, where they must run.

What is checked is what an operator sees: the four time charts hold non-zero data and
actually paint it (coloured pixels on their canvases), the depth chart and the top of
book show the gateway's book (at a verified seq and checksum), the page loads nothing
from anywhere but the gateway, and nothing throws. Each run saves a screenshot to
``artifacts/``.

``python tests/test_dashboard.py [SECONDS]`` runs a gateway with a few streaming
clients for a while and saves ``docs/dashboard.png`` (the README's screenshot).
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from helpers import ServerProcess  # noqa: E402
from tickwire.book import Book  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"

Server = Callable[..., ServerProcess]


def _missing_browser() -> str | None:
    if not os.path.exists(CHROMIUM):
        return f"{CHROMIUM} is missing (make test installs Debian's chromium with apt-get)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[test]')"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    missing = _missing_browser()
    if missing:
        if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
            pytest.fail(f"browser tests must run in CI: {missing}")
        pytest.skip(missing)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


def start_admin_server(
    start: Callable[..., ServerProcess], *args: str
) -> tuple[ServerProcess, str]:
    srv = start("--admin-port", "0", *args)
    assert srv.proc is not None and srv.proc.stdout is not None
    line = srv.proc.stdout.readline()
    assert line.startswith("tickwire: dashboard on http://"), line
    return srv, line.split()[3]


class Streamers:
    """WebSocket clients reading a feed in a background thread, so deliveries flow."""

    def __init__(self, url: str, channels: list[str], count: int, stalled: int = 0) -> None:
        self.url = url
        self.channels = channels
        self.count = count
        self.stalled = stalled
        self.received = 0
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self) -> None:
        from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

        outer = self

        class Reader(WSListener):
            def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
                if frame.msg_type == WSMsgType.TEXT:
                    outer.received += 1

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        request = msgspec.json.encode({"op": "subscribe", "channels": self.channels})
        transports = []
        for _ in range(self.count):
            transport, _ = await ws_connect(Reader, self.url)
            transport.send(WSMsgType.TEXT, request)
            transports.append(transport)
        for _ in range(self.stalled):
            # Readers that stop reading: they lag, conflate, and fill the slow table.
            transport, _ = await ws_connect(Reader, self.url, socket_factory=_small_rcvbuf)
            transport.send(WSMsgType.TEXT, request)
            transports.append(transport)
            await asyncio.sleep(0.5)
            transport.underlying_transport.pause_reading()
        self._ready.set()
        await self._stop.wait()
        for transport in transports:
            transport.disconnect()
        await asyncio.sleep(0.05)

    def __enter__(self) -> Streamers:
        self._thread.start()
        assert self._ready.wait(15), "streaming clients did not connect"
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


def _small_rcvbuf(_url: Any) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return sock


#: Counts the "coloured" pixels of a canvas: series strokes and fills are saturated,
#: axes, grid and background are grey, so only drawn data counts.
COLOURED_PIXELS = """(id) => {
  const canvas = document.querySelector('#' + id + ' canvas');
  const ctx = canvas.getContext('2d');
  const px = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
  let n = 0;
  for (let i = 0; i < px.length; i += 4) {
    const r = px[i], g = px[i + 1], b = px[i + 2];
    if (Math.max(r, g, b) - Math.min(r, g, b) > 40) n++;
  }
  return n;
}"""

TIME_CHARTS = ["chart-deliveries", "chart-bytes", "chart-latency", "chart-connections"]


def open_dashboard(browser: Any, url: str) -> tuple[Any, list[str], list[str]]:
    """A page on ``url``, recording every request and every console/page error."""
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    requests: list[str] = []
    errors: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(url)
    return page, requests, errors


def check_book(book: dict[str, Any]) -> None:
    """The dashboard's book is a real book at its seq: its checksum verifies."""
    rebuilt = Book()
    rebuilt.load(book["bids"], book["asks"])
    assert rebuilt.checksum() == book["checksum"]
    assert Decimal(book["bids"][0][0]) < Decimal(book["asks"][0][0])


def test_dashboard_charts_render_live_data(browser: Any, server_factory: Server) -> None:
    srv, base = start_admin_server(server_factory, "--symbols", "BTC-USD,ETH-USD", "--rate", "300")
    channels = ["book.BTC-USD", "trades.BTC-USD", "book.ETH-USD", "ticker.ETH-USD"]
    with Streamers(srv.url, channels, count=3) as streamers:
        page, requests, errors = open_dashboard(browser, base + "?symbol=BTC-USD")
        page.wait_for_function(
            """() => { const t = window.tickwire;
                return t.connected && t.book && t.depth.x.length > 0 &&
                    t.samples.filter(s => s.deliveries_s > 0 && s.p99_ms > 0).length >= 3; }""",
            timeout=20_000,
        )
        # The state and the page's text in one evaluate: the book moves between calls.
        state = page.evaluate(
            """(selectors) => { const t = window.tickwire; const out = {}, text = {};
                for (const id of Object.keys(t.charts)) out[id] = t.charts[id].data;
                for (const s of selectors) text[s] = document.querySelector(s).innerText;
                return {samples: t.samples, book: t.book, depth: t.depth, data: out,
                        epoch: t.epoch, symbols: t.symbols, text}; }""",
            [
                "#status", "#ready", "#epoch", "#kpi-deliveries", "#kpi-bytes", "#kpi-latency",
                "#kpi-connections", "#tob-bid", "#tob-ask", "#tob-spread", "#book-seq",
            ],
        )  # fmt: skip
        text = state["text"]
        pixels = {cid: page.evaluate(COLOURED_PIXELS, cid) for cid in [*TIME_CHARTS, "chart-depth"]}
        ladder_rows = page.locator("#ladder tbody tr").count()
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)

        # Another symbol: the stream restarts on it and the book follows.
        page.select_option("#symbol", "ETH-USD")
        page.wait_for_function("() => window.tickwire.book.symbol === 'ETH-USD'", timeout=10_000)
        eth, eth_bid = page.evaluate(
            "() => [window.tickwire.book, document.querySelector('#tob-bid').innerText]"
        )
        page.close()
        assert streamers.received > 0

    assert not errors, errors
    origin = base.rstrip("/")
    assert requests and all(url.startswith(origin) for url in requests), requests
    assert state["epoch"] == srv.epoch and state["symbols"] == ["BTC-USD", "ETH-USD"]
    assert text["#status"] == "live" and text["#ready"] == "ready"
    assert text["#epoch"] == srv.epoch

    # Time charts: data points with non-zero values, and pixels painted for them.
    live = [s for s in state["samples"] if s["deliveries_s"] > 0]
    assert len(live) >= 3
    assert all(s["bytes_s"] > 0 and s["connections"] == 3 for s in live[1:])
    for cid in TIME_CHARTS:
        xs, *series = state["data"][cid]
        assert len(xs) >= 3 and all(len(ys) == len(xs) for ys in series), cid
        assert any(y for ys in series for y in ys if y is not None), cid
        assert pixels[cid] > 200, (cid, pixels[cid])
    assert text["#kpi-connections"] == "3"
    assert text["#kpi-deliveries"] != "–" and text["#kpi-latency"] != "– / –"

    # Depth chart: the book's levels, cumulative away from the touch.
    book = state["book"]
    check_book(book)
    depth = state["depth"]
    n_bids, n_asks = len(book["bids"]), len(book["asks"])
    assert len(depth["x"]) == n_bids + n_asks > 10
    assert depth["x"] == sorted(depth["x"])
    bid_cum = [y for y in depth["bids"] if y is not None]
    ask_cum = [y for y in depth["asks"] if y is not None]
    assert len(bid_cum) == n_bids and len(ask_cum) == n_asks
    assert bid_cum == sorted(bid_cum, reverse=True) and ask_cum == sorted(ask_cum)
    assert bid_cum[0] == pytest.approx(sum(float(q) for _, q in book["bids"]))
    assert pixels["chart-depth"] > 500
    # Top of book as shown.
    assert text["#tob-bid"] == book["bids"][0][0] and text["#tob-ask"] == book["asks"][0][0]
    spread = Decimal(book["asks"][0][0]) - Decimal(book["bids"][0][0])
    assert Decimal(text["#tob-spread"]) == spread
    assert int(text["#book-seq"]) == book["seq"]
    assert ladder_rows == 10
    assert eth["symbol"] == "ETH-USD" and eth_bid == eth["bids"][0][0]
    check_book(eth)


def test_depth_chart_shows_the_rest_book(browser: Any, server_factory: Server) -> None:
    """--rate 0: the book stands still, so the page must show exactly the REST book."""
    srv, base = start_admin_server(server_factory, "--symbols", "SOL-USD", "--rate", "0")
    import json
    import urllib.request

    with urllib.request.urlopen(base + "api/v1/book/SOL-USD?depth=50", timeout=10) as resp:
        rest = json.loads(resp.read())
    page, requests, errors = open_dashboard(browser, base)
    page.wait_for_function("() => window.tickwire.book !== null", timeout=15_000)
    book = page.evaluate("() => window.tickwire.book")
    depth = page.evaluate("() => window.tickwire.depth")
    table = page.inner_text("#slow-table tbody")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-depth.png"))
    page.close()

    assert not errors, errors
    assert (book["seq"], book["checksum"], book["epoch"]) == (
        rest["seq"],
        rest["checksum"],
        srv.epoch,
    )
    assert book["bids"] == rest["bids"] and book["asks"] == rest["asks"]
    prices = sorted([float(p) for p, _ in rest["bids"]] + [float(p) for p, _ in rest["asks"]])
    assert depth["x"] == prices
    assert "no lagging subscription" in table


# -- the README's screenshot -------------------------------------------------------------


def _screenshot(seconds: float, out: Path) -> None:
    """Run a gateway with streaming clients for ``seconds`` and capture the dashboard."""
    from playwright.sync_api import sync_playwright

    srv = ServerProcess(
        ["--admin-port", "0", "--symbols", "BTC-USD,ETH-USD,SOL-USD", "--rate", "1000",
         "--burst-every", "30", "--burst-seconds", "5", "--stall-timeout", "600",
         "--ping-interval", "0", "--max-buffer-kb", "65536"]
    ).start()  # fmt: skip
    try:
        assert srv.proc is not None and srv.proc.stdout is not None
        base = srv.proc.stdout.readline().split()[3]
        channels = [f"{k}.{s}" for k in ("book", "trades") for s in ("BTC-USD", "ETH-USD")]
        with (
            Streamers(srv.url, channels, count=12, stalled=2),
            sync_playwright() as p,
        ):
            b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            page = b.new_page(viewport={"width": 1400, "height": 1200})
            page.goto(base + "?symbol=BTC-USD")
            page.wait_for_timeout(seconds * 1000)
            page.select_option("#symbol", "BTC-USD")
            page.wait_for_timeout(1500)
            page.screenshot(path=str(out), full_page=True)
            b.close()
    finally:
        srv.stop()


if __name__ == "__main__":
    target = Path(__file__).resolve().parent.parent / "docs" / "dashboard.png"
    _screenshot(float(sys.argv[1]) if len(sys.argv) > 1 else 60.0, target)
    print(f"saved {target}")
