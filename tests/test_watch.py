"""``tickwire watch`` in a pseudo-terminal against a live server, and its view offline."""

from __future__ import annotations

import asyncio
import os
import pty
import re
import select
import subprocess
import sys
import time

from rich.console import Console

from helpers import ServerProcess
from tickwire.book import Book
from tickwire.client import Client, TradesReceived
from tickwire.client.watch import DEPTH, WatchView
from tickwire.protocol import Trade

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")
LEVEL = re.compile(r"│\s+(\d+\.\d{4}) │\s+(\d+\.\d{2}) │ (\d+\.\d{2})\s+│ (\d+\.\d{4})\s+│")


def run_in_pty(args: list[str], seconds: float) -> str:
    """Run a command with a pty as its terminal and return everything it drew."""
    master, slave = pty.openpty()
    env = dict(os.environ, COLUMNS="120", LINES="50", TERM="xterm-256color")
    proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, env=env)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + seconds + 20
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        assert proc.wait(timeout=10) == 0, b"".join(chunks)[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return ANSI.sub("", b"".join(chunks).decode("utf-8", "replace"))


def test_watch_in_a_terminal_shows_a_live_book(server: ServerProcess) -> None:
    cmd = [sys.executable, "-m", "tickwire", "watch", "BTC-USD", "--url", server.url]
    screen = run_in_pty([*cmd, "--duration", "3", "--refresh", "4"], 3)
    assert "BTC-USD" in screen and "LIVE" in screen
    assert "bid size" in screen and "ask size" in screen and "last trades" in screen
    # The ladder: bid prices fall and ask prices rise, every bid below every ask.
    last_frame = screen[screen.rindex("top 10 levels") :]
    levels = LEVEL.findall(last_frame)
    assert len(levels) >= 5
    bids = [float(b) for _, b, _, _ in levels]
    asks = [float(a) for _, _, a, _ in levels]
    assert bids == sorted(bids, reverse=True) and asks == sorted(asks) and bids[0] < asks[0]
    assert re.search(r"updates/s\s+lag p50 \d+\.\d+ ms p99 \d+\.\d+ ms", screen)
    summary = re.search(r"watched BTC-USD for [\d.]+ s: (\d+) updates, gaps (\d+)", screen)
    assert summary and int(summary.group(1)) > 100 and summary.group(2) == "0"


def test_watch_reports_an_unknown_symbol(server: ServerProcess) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "tickwire", "watch", "NOPE", "--url", server.url],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 1
    assert "cannot watch NOPE" in out.stderr


def test_view_renders_a_book_without_a_terminal() -> None:
    client = Client("ws://127.0.0.1:1/ws", ["book.X", "trades.X"])
    ch = client.channel("book.X")
    book: Book = ch.book
    book.load([(f"{100 - i}.00", "1.0000") for i in range(15)], [("101.00", "2.5000")])
    now = [0.0]
    view = WatchView(client, "X", clock=lambda: now[0])
    trade = Trade(7, "100.50", "0.3000", "sell", 1_700_000_000 * 10**9)
    view.on_event(TradesReceived("trades.X", "X", 7, [trade]))
    console = Console(width=100, record=True, force_terminal=False)
    console.print(view.render())
    text = console.export_text()
    assert "100.00" in text and "101.00" in text and "spread 1.00" in text
    assert f"{100 - DEPTH + 1}.00" in text and f"{100 - DEPTH}.00" not in text
    assert "22:13:20.000" in text and "sell" in text and "SYNCING" in text
    asyncio.run(client.close())
