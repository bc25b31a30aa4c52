"""``tickwire watch SYMBOL``: a live terminal view of one verified book (rich).

The view is built by :class:`WatchView` from a :class:`~tickwire.client.Client`'s state
alone (book, counters, lag, recent trades), so it can be rendered and tested without a
terminal; :func:`watch` only runs the client and refreshes a ``rich.live.Live``.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime

from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from ..protocol import Trade
from .connection import Client
from .events import Event, SyncState, TradesReceived

__all__ = ["DEPTH", "WatchView", "watch"]

#: Levels shown per side.
DEPTH = 10

#: Trades shown, newest first.
TRADES_SHOWN = 10

_STATE_STYLE = {SyncState.LIVE: "bold green", SyncState.SYNCING: "yellow", SyncState.STALE: "red"}


class WatchView:
    """Everything ``tickwire watch`` shows, computed from a client.

    Args:
        client: a client subscribed to ``book.<symbol>`` and ``trades.<symbol>``.
        symbol: the symbol to show.
        clock: monotonic seconds (injected for tests).
    """

    def __init__(
        self, client: Client, symbol: str, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.client = client
        self.symbol = symbol
        self.clock = clock
        self.trades: deque[Trade] = deque(maxlen=TRADES_SHOWN)
        self.started = clock()
        self._rate_mark = (self.started, 0)
        self.rate = 0.0

    def on_event(self, event: Event) -> None:
        """Collect trades as they arrive (pass as the client's ``on_event``)."""
        if isinstance(event, TradesReceived):
            self.trades.extend(event.trades)

    def updates(self) -> int:
        """Book updates plus trades applied so far on this symbol."""
        total = 0
        for kind in ("book", "trades"):
            ch = self.client.protocol.channels.get(f"{kind}.{self.symbol}")
            if ch is not None:
                total += ch.counters.updates
        return total

    def _update_rate(self) -> None:
        now = self.clock()
        mark_time, mark_count = self._rate_mark
        if now - mark_time >= 1.0:
            count = self.updates()
            self.rate = (count - mark_count) / (now - mark_time)
            self._rate_mark = (now, count)

    def render(self) -> RenderableType:
        """Build the whole screen: header, ladder, trades and counters."""
        self._update_rate()
        return Group(self._header(), self._ladder(), self._trades(), self._counters())

    def _header(self) -> Text:
        book_name = f"book.{self.symbol}"
        ch = self.client.protocol.channels[book_name]
        book = ch.book
        spread = book.spread()
        p50, p99 = self.client.lag(book_name)
        text = Text()
        text.append(f" {self.symbol} ", style="bold reverse")
        text.append(f"  {ch.state.value.upper()}", style=_STATE_STYLE[ch.state])
        text.append(f"  seq {ch.position if ch.position is not None else '-'}")
        text.append(f"  spread {spread if spread is not None else '-'}")
        text.append(f"  {self.rate:,.0f} updates/s")
        text.append(f"  lag p50 {_ms(p50)} p99 {_ms(p99)}")
        return text

    def _ladder(self) -> Table:
        book = self.client.book(self.symbol)
        bids, asks = book.bids(DEPTH), book.asks(DEPTH)
        table = Table(title=f"top {DEPTH} levels", expand=False, show_edge=True)
        table.add_column("bid size", justify="right")
        table.add_column("bid", justify="right", style="green")
        table.add_column("ask", justify="left", style="red")
        table.add_column("ask size", justify="left")
        for i in range(DEPTH):
            bid = bids[i] if i < len(bids) else ("", "")
            ask = asks[i] if i < len(asks) else ("", "")
            table.add_row(bid[1], bid[0], ask[0], ask[1])
        return table

    def _trades(self) -> Table:
        table = Table(title="last trades", expand=False)
        table.add_column("time (UTC)")
        table.add_column("side")
        table.add_column("price", justify="right")
        table.add_column("qty", justify="right")
        for trade in reversed(self.trades):
            when = datetime.fromtimestamp(trade.ts / 1e9, UTC).strftime("%H:%M:%S.%f")[:-3]
            style = "green" if trade.side == "buy" else "red"
            table.add_row(when, Text(trade.side, style=style), trade.price, trade.qty)
        return table

    def _counters(self) -> Text:
        gaps = checksums = resyncs = snapshots = 0
        for ch in self.client.protocol.channels.values():
            c = ch.counters
            gaps += c.gaps
            checksums += c.checksum_failures
            resyncs += c.resyncs
            snapshots += c.snapshots
        stats = self.client.stats
        return Text(
            f"gaps {gaps}  checksum failures {checksums}  resyncs {resyncs}  "
            f"snapshots {snapshots}  reconnects {stats.reconnects}  "
            f"watchdog {stats.watchdog_timeouts}  epoch {self.client.epoch or '-'}"
        )


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} ms"


async def watch(
    symbol: str,
    url: str,
    *,
    duration: float = 0.0,
    refresh: float = 4.0,
    console: Console | None = None,
    encoding: str = "json",
    compression: str | None = None,
) -> int:
    """Show the live book of ``symbol`` until interrupted or ``duration`` seconds pass.

    Args:
        symbol: the symbol to show (its book, trades and ticker are subscribed).
        url: the gateway's WebSocket URL.
        duration: stop after this many seconds; 0 runs until Ctrl-C.
        refresh: screen refreshes per second.
        console: where to draw (default: the terminal).
        encoding, compression: the wire to ask for (see :class:`Client`).

    Returns:
        The exit status: 0.

    Raises:
        OSError: the gateway cannot be reached.
        RequestError: the gateway does not serve ``symbol``.
    """
    from rich.live import Live

    console = console or Console()
    channels = [f"book.{symbol}", f"trades.{symbol}", f"ticker.{symbol}"]
    client = Client(url, channels, events=False, encoding=encoding, compression=compression)
    view = WatchView(client, symbol)
    client.on_event = view.on_event
    await client.start()
    deadline = time.monotonic() + duration if duration > 0 else None
    try:
        with Live(view.render(), console=console, refresh_per_second=refresh) as live:
            while deadline is None or time.monotonic() < deadline:
                await asyncio.sleep(1 / refresh)
                live.update(view.render())
    finally:
        await client.close()
    elapsed = time.monotonic() - view.started
    if not console.is_terminal:
        console.line()  # Live's last frame ends without a newline off a terminal
    console.print(
        f"watched {symbol} for {elapsed:.1f} s: {view.updates()} updates, " + str(view._counters())
    )
    return 0
