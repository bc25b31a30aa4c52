"""The dashboard's connectivity-report panel, in a real headless browser.

A gateway keeping a report, one client that ignores a bad checksum: the panel appears
and lists that fault as never noticed. (A gateway without a report hides the panel and
never asks for it: tests/test_dashboard.py checks such pages log no error.)
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from pathlib import Path
from typing import Any

import websockets

sys.path.insert(0, str(Path(__file__).parent))

from test_dashboard import Server, browser, open_dashboard, start_admin_server  # noqa: E402

__all__ = ["browser"]  # the fixture, shared with the dashboard tests


def test_the_panel_lists_a_fault_the_client_never_noticed(
    browser: Any, server_factory: Server
) -> None:
    srv, base = start_admin_server(
        server_factory,
        *("--symbols", "BTC-USD", "--rate", "300", "--test-faults", "--report-window", "0.5"),
    )

    async def lazy_client() -> None:
        async with websockets.connect(f"{srv.url}?client=lazy", close_timeout=1) as lazy:
            await lazy.send(json.dumps({"op": "subscribe", "channels": ["book.BTC-USD"]}))
            await lazy.recv()
            async with websockets.connect(srv.url) as tester:
                fault = {"op": "fault", "channels": ["book.BTC-USD"], "fault": "checksum"}
                await tester.send(json.dumps(fault))
                await tester.recv()
            await asyncio.sleep(1.0)  # past the window, still connected

    # Playwright's sync API runs an event loop in this thread: the client gets its own.
    thread = threading.Thread(target=lambda: asyncio.run(lazy_client()))
    thread.start()
    thread.join(20)
    page, requests, errors = open_dashboard(browser, base)
    try:
        page.wait_for_selector("#report:not([hidden])", timeout=10_000)
        page.wait_for_selector("#report-table tr.never", timeout=10_000)
        row = page.inner_text("#report-table tr.never")
        assert "checksum" in row and "lazy" in row and "BTC-USD" in row
        assert "1 never noticed" in page.inner_text("#report-totals")
        state = page.evaluate("window.tickwire.report")
        assert state["faults"][0]["client"] == "lazy"
        assert errors == []
    finally:
        page.close()
