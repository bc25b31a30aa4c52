"""The dialect feed: the native market re-served in venue formats, encoded once (Sans-I/O).

Theory of operation
-------------------
A :class:`Tap` per symbol is an ordinary subscriber of the hub's native channels
(``book.SYM``, ``trades.SYM``, ``ticker.SYM``): it gets the same frames as any client,
decodes each once, and keeps

* the book changes of the current pass, merged by level (``pending``);
* a mirror :class:`~tickwire.book.Book`, settled only when a venue needs the book
  (a checksum, a top-N view, a snapshot);
* the trades and the latest ticker of the pass, and the candles built from the trades.

So the hub and the engine learn nothing about venues, and every source (the embedded
market, the compiled core, a NATS leader, a replay) reaches every venue the same way:
the native feed's ``seq`` numbers become Binance's update ids and OKX's ``seqId``.

Once per pass :meth:`DialectFeed.flush` folds each tap's pending changes into its
:class:`Window` s (one per update interval in use: every pass, 100 ms, 1 s; each holds
the latest quantity of every level changed since it last emitted), and each window that
is due *emits*: every :class:`Stream` on it renders the window **once** (its venue's
:class:`Renderer`) and the very same frame bytes go to all of its subscribers. Trades
and tickers are rendered once per pass, periodic streams (klines, partial depth) on a
timer; :meth:`DialectFeed.clock` streams are timers bound to no symbol (a venue's
heartbeats, the same bytes to every connection on them). A venue stream that needs no
book (Binance's diff depth) costs one dict store per update and one encode per window,
whatever the number of subscribers.

A subscription (:meth:`DialectFeed.join`) first emits its stream's window early, so the
per-subscriber opening frames (an OKX or Kraken snapshot) are exactly at the seq the
stream continues from: no update can fall between the snapshot and the stream.

Slow consumers: :meth:`DialectFeed.pause` takes a paused subscriber off its book and
ticker streams; at the first flush after :meth:`DialectFeed.resume` each of them gets
one catch-up rendered by the venue from the levels changed since it stopped (Binance:
one diff from the first missed ``U`` to the current ``u``; OKX: ``prevSeqId`` = what it
has) or, when that is not possible, what the venue does (a snapshot, or a close).
Trades are never merged: they keep flowing, and the I/O layer closes a connection past
its hard buffer budget, as for native clients.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from typing import Protocol

from ..book import Book
from ..framing import frame_payloads
from ..hub import Channel, Hub, SubscriptionStats
from ..lag import LevelTracker
from ..protocol import (
    BookUpdate,
    Delta,
    Heartbeat,
    Snapshot,
    Ticker,
    Trade,
    Trades,
    decode_message,
)
from .candles import Candles
from .markets import Market, Markets

__all__ = [
    "DialectFeed",
    "DialectSubscriber",
    "Renderer",
    "Stream",
    "Tap",
    "Window",
    "reply",
]

#: Recent trades kept per symbol for the venues' REST ``trades`` endpoints.
RECENT_TRADES = 1000

#: A depth past any book's: a venue catch-up merges whatever its size.
_ANY_SIZE = 1 << 62

#: A book level's key in merged changes: ``(side, price)``, side ``"bid"``/``"ask"``.
LevelKey = tuple[str, str]


class DialectSubscriber(Protocol):
    """What the feed needs from a venue connection.

    ``deliver`` writes frames at once, in order (None once the connection is closing).
    ``streams`` is owned by the feed (the streams this subscriber is on). ``close`` ends
    the connection with a WebSocket close code and reason, after what is already
    written; ``rejected`` counts and logs a request the session answered with an error.
    """

    streams: dict[str, Stream]

    @property
    def deliver(self) -> Callable[[bytes], object] | None: ...

    def close(self, code: int, reason: str) -> None: ...

    def rejected(self, code: str, reason: str) -> None: ...


class FeedObserver(Protocol):
    """Who is told of venue subscriptions (the connectivity report); never per frame."""

    def joined(self, sub: DialectSubscriber, stream: Stream) -> None:
        """``sub`` subscribed to ``stream`` (also again to one it is on)."""

    def left(self, sub: DialectSubscriber, key: str) -> None:
        """``sub`` left stream ``key``."""

    def resynced(self, sub: DialectSubscriber, stream: Stream, closed: bool) -> None:
        """``stream``'s book was replaced upstream: ``sub`` closed, or resnapshotted."""


def reply(sub: DialectSubscriber, frame: bytes) -> None:
    """Write one session reply (an ack, an error, a pong) to ``sub`` at once."""
    deliver = sub.deliver
    if deliver is not None:
        deliver(frame)


class Window:
    """A symbol's book changes merged since the window last emitted.

    Shared by every stream with the same update interval: ``levels`` maps each changed
    ``(side, price)`` to its latest quantity over ``(prev, seq]``.
    """

    __slots__ = ("interval", "due", "prev", "seq", "levels", "streams")

    def __init__(self, interval: float, seq: int, now: float) -> None:
        self.interval = interval
        self.due = now + interval
        self.prev = seq
        self.seq = seq
        self.levels: dict[LevelKey, str] = {}
        self.streams: list[Stream] = []


class Renderer:
    """One venue stream's encoder (subclassed per venue and stream kind).

    Attributes:
        source: what drives it: ``"book"`` (its :attr:`interval` window),
            ``"trades"``, ``"ticker"`` or ``"timer"`` (every :attr:`interval`).
        interval: seconds between emits for ``"book"`` (0: every pass) and ``"timer"``.
        conflates: a paused subscriber skips frames and catches up (books, tickers);
            False: frames keep flowing (trades).
        resyncs: the venue can restart a subscriber's book in-band (a snapshot); when
            False (Binance) a subscriber whose book cannot be continued is closed.
    """

    source = "book"
    interval = 0.0
    conflates = True
    resyncs = True

    def book(self, tap: Tap, window: Window) -> bytes | None:
        """Frames for the window's changes ``(window.prev, window.seq]``."""
        return None

    def trades(self, tap: Tap, trades: list[Trade]) -> bytes | None:
        """Frames for the pass's trades, in order."""
        return None

    def ticker(self, tap: Tap, ticker: Ticker, now: float) -> bytes | None:
        """Frames for a new ticker state."""
        return None

    def timer(self, tap: Tap, now: float) -> bytes | None:
        """Frames for a periodic emit."""
        return None

    def join(self, tap: Tap) -> bytes | None:
        """Frames a new subscriber gets first (a snapshot), at the stream's seq."""
        return None

    def catch_up(
        self, tap: Tap, since: int, levels: list[tuple[LevelKey, str]] | None
    ) -> bytes | None:
        """Frames taking a lagging subscriber from ``since`` to the tap's seq.

        ``levels`` is every level changed since, with its current quantity, or None
        when they are not known (the lag began before the tracking, or the book was
        replaced): only a renderer that :attr:`resyncs` is asked then.
        """
        return None

    def reset(self, tap: Tap, first: bool) -> bytes | None:
        """Frames for every subscriber after the book was loaded or replaced.

        ``first``: the book's first load (subscribers that joined before it waited);
        otherwise the source replaced it after a hole upstream (only a renderer that
        :attr:`resyncs` is asked then; the others' subscribers are closed).
        """
        return None


class Stream:
    """One venue stream of one symbol: its renderer and its subscribers."""

    __slots__ = ("key", "tap", "renderer", "subscribers", "lagging", "held", "window")

    def __init__(self, key: str, tap: Tap, renderer: Renderer) -> None:
        self.key = key
        self.tap = tap
        self.renderer = renderer
        self.subscribers: dict[DialectSubscriber, None] = {}
        # Paused subscribers -> the seq they have (book) or 0 (others).
        self.lagging: dict[DialectSubscriber, int] = {}
        # Laggards of a stream that cannot resync in-band: the levels they may hold.
        self.held: dict[DialectSubscriber, set[LevelKey]] = {}
        self.window: Window | None = None


class Tap:
    """A native subscriber of one symbol's three channels, feeding its venue streams.

    It has the attributes the hub needs of a subscriber (``outbox``, ``channels``,
    ``slow``, ``deliver``), and ``write`` for frames the tick loop flushes from the
    outbox: both take one or more joined native frames.
    """

    __slots__ = (
        "market",
        "outbox",
        "channels",
        "slow",
        "deliver",
        "write",
        "seq",
        "ts",
        "loaded",
        "broken",
        "pending",
        "unsettled",
        "mirror",
        "windows",
        "timers",
        "trade_streams",
        "ticker_streams",
        "new_trades",
        "last_ticker",
        "ticker_new",
        "replaced",
        "first",
        "candles",
        "recent",
        "touched",
    )

    def __init__(self, market: Market) -> None:
        self.market = market
        self.outbox: list[bytes] = []
        self.channels: dict[str, Channel] = {}
        self.slow: dict[str, SubscriptionStats] = {}
        self.deliver: Callable[[bytes], object] | None = self.receive
        self.write: Callable[[bytes], object] = self.receive
        self.seq = 0  # book seq of the last delta received
        self.ts = 0  # its event time (ns)
        self.loaded = False  # a book snapshot arrived
        self.broken = False  # the native chain broke: a fresh snapshot is due
        self.pending: dict[LevelKey, str] = {}  # this pass's changes
        self.unsettled: dict[LevelKey, str] = {}  # changes not applied to ``mirror``
        self.mirror = Book()
        self.windows: dict[float, Window] = {}
        self.timers: dict[Stream, float] = {}  # timer stream -> next due
        self.trade_streams: list[Stream] = []
        self.ticker_streams: list[Stream] = []
        self.new_trades: list[Trade] = []
        self.last_ticker: Ticker | None = None
        self.ticker_new = False
        self.replaced = False  # the book was loaded or replaced since the last flush
        self.first = True  # ... and that was its first load
        self.candles = Candles()
        self.recent: deque[Trade] = deque(maxlen=RECENT_TRADES)
        # While a book stream has laggards: the levels changed since they stopped.
        self.touched: LevelTracker | None = None

    @property
    def symbol(self) -> str:
        return self.market.symbol

    @property
    def book(self) -> Book:
        """The book at the last folded seq (applies what was not applied yet)."""
        unsettled = self.unsettled
        if unsettled:
            apply = self.mirror.apply
            for (side, price), qty in unsettled.items():
                apply(side, price, qty)
            self.unsettled = {}
        return self.mirror

    # -- native input ------------------------------------------------------------------

    def receive(self, data: bytes) -> None:
        """Take one or more joined native frames (the hub's delivery)."""
        for payload in frame_payloads(data):
            msg = decode_message(payload)
            if isinstance(msg, Delta):
                if self.broken:
                    continue  # until the fresh snapshot asked for
                if msg.prev_seq != self.seq and self.loaded:
                    # Never happens to a subscriber that never lags; if the chain
                    # breaks anyway, the venue streams must not paper over it: the
                    # feed asks the hub for a fresh snapshot (a replacement).
                    self.broken = True
                    continue
                pending = self.pending
                for u in msg.updates:
                    pending[(u.side, u.price)] = u.qty
                if msg.updates:
                    self.ts = msg.updates[-1].ts
                self.seq = msg.seq
            elif isinstance(msg, Trades):
                self.new_trades.extend(msg.trades)
                self.recent.extend(msg.trades)
                self.candles.add(msg.trades)
            elif isinstance(msg, Ticker):
                self.last_ticker = msg
                self.ticker_new = True
            elif isinstance(msg, Snapshot):
                self._snapshot(msg)
            elif not isinstance(msg, Heartbeat):  # pragma: no cover - nothing else comes
                continue

    def _snapshot(self, snap: Snapshot) -> None:
        if snap.bids is not None or snap.asks is not None:
            self.mirror.load(snap.bids or (), snap.asks or ())
            self.unsettled = {}
            self.pending = {}
            self.seq = snap.seq
            for w in self.windows.values():
                w.levels = {}
                w.prev = w.seq = snap.seq
            if self.touched is not None:
                self.touched.clear(snap.seq)
            # A first load serves the subscribers that waited for it; a later one
            # replaces a book the venue streams had described.
            self.replaced = True
            self.first = not self.loaded
            self.loaded = True
            self.broken = False
        elif snap.ticker is not None:
            self.last_ticker = snap.ticker
            self.ticker_new = True

    def fold(self) -> None:
        """Move this pass's changes into the windows and the mirror's backlog."""
        levels = self.pending
        if not levels:
            return
        self.pending = {}
        self.unsettled.update(levels)
        seq = self.seq
        for w in self.windows.values():
            w.levels.update(levels)
            w.seq = seq
        if self.touched is not None:
            self.track(levels, seq)

    def track(self, levels: dict[LevelKey, str], seq: int) -> None:
        """Record merged changes ending at ``seq`` for the laggards.

        Each fold's levels take seqs inside the fold's range, so every laggard (they
        lag from a fold boundary) sees exactly the levels changed after its seq.
        """
        assert self.touched is not None
        ts = self.ts
        updates = [BookUpdate(side, price, qty, ts) for (side, price), qty in levels.items()]  # type: ignore[arg-type]
        bids, asks = self.mirror.depth()
        self.touched.track(updates, seq, bids + asks)


class DialectFeed:
    """Every venue stream of a gateway, fed by one :class:`Tap` per symbol.

    Args:
        hub: the gateway's hub (taps subscribe to its native channels).
    """

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.markets = Markets(hub.engine.symbols)
        self.taps: dict[str, Tap] = {}
        self.streams: dict[str, Stream] = {}
        self.paused: dict[DialectSubscriber, float] = {}
        self.catching_up: list[DialectSubscriber] = []
        # Timer streams bound to no symbol (a venue's heartbeats): their tap is never
        # subscribed to the hub, and only its timers are used.
        self.clocks = Tap(Market("*"))
        # Counters: frames and bytes written to venue subscribers, renders.
        self.frames_out = 0
        self.bytes_out = 0
        self.renders = 0
        self.conflated = 0
        # Told of joins, leaves and resyncs when set (the gateway's report).
        self.observer: FeedObserver | None = None

    def stats(self) -> dict[str, object]:
        """Counters since start (the gateway's exit stats, ``venues``)."""
        subscribers: dict[str, int] = {}
        for stream in self.streams.values():
            venue = stream.key.partition("|")[0]
            n = len(stream.subscribers) + len(stream.lagging)
            subscribers[venue] = subscribers.get(venue, 0) + n
        return {
            "taps": len(self.taps),
            "streams": len(self.streams),
            "subscribers": subscribers,
            "renders": self.renders,
            "frames_out": self.frames_out,
            "bytes_out": self.bytes_out,
            "paused": len(self.paused),
            "catch_ups": self.conflated,
        }

    # -- taps --------------------------------------------------------------------------

    def refresh_markets(self) -> Markets:
        """The markets, including symbols the hub serves since the last call.

        Every venue request starts here. The first one makes every symbol's tap follow
        its trades from then on (the candles and recent trades venues serve): a gateway
        that no venue client uses pays nothing for the dialects.
        """
        symbols = self.hub.engine.symbols
        if len(symbols) != len(self.markets):
            self.markets.update(symbols)
        if len(self.taps) < len(self.markets):
            for market in self.markets:
                if market.symbol not in self.taps:
                    self.tap(market, ("trades",))
        return self.markets

    def tap(self, market: Market, kinds: Iterable[str] = ("book", "trades", "ticker")) -> Tap:
        """The tap of ``market``, subscribed to the native channels ``kinds``."""
        tap = self.taps.get(market.symbol)
        if tap is None:
            tap = self.taps[market.symbol] = Tap(market)
        hub = self.hub
        for kind in kinds:
            name = f"{kind}.{market.symbol}"
            if name not in tap.channels:
                hub.subscribe(tap, hub.channels[name])
        if tap.outbox:
            frames, tap.outbox = tap.outbox, []
            tap.receive(b"".join(frames))
        return tap

    # -- streams -----------------------------------------------------------------------

    def stream(self, key: str, market: Market, make: Callable[[], Renderer]) -> Stream:
        """The stream ``key`` of ``market``, created with ``make()`` if new."""
        stream = self.streams.get(key)
        if stream is not None:
            return stream
        renderer = make()
        kinds = {"book": ("book",), "trades": ("trades",), "ticker": ("ticker",)}.get(
            renderer.source, ("book", "trades", "ticker")
        )
        tap = self.tap(market, kinds)
        stream = self.streams[key] = Stream(key, tap, renderer)
        if renderer.source == "book":
            w = tap.windows.get(renderer.interval)
            if w is None:
                tap.fold()
                w = tap.windows[renderer.interval] = Window(renderer.interval, tap.seq, 0.0)
                w.due = 0.0
            w.streams.append(stream)
            stream.window = w
        elif renderer.source == "trades":
            tap.trade_streams.append(stream)
        elif renderer.source == "ticker":
            tap.ticker_streams.append(stream)
        else:
            tap.timers[stream] = 0.0
        return stream

    def clock(self, key: str, make: Callable[[], Renderer]) -> Stream:
        """The timer stream ``key`` bound to no symbol, created with ``make()`` if new.

        Its renderer's :meth:`Renderer.timer` runs every ``interval`` while the stream
        has subscribers (a venue's heartbeats: the same bytes to every connection).
        """
        stream = self.streams.get(key)
        if stream is None:
            renderer = make()
            stream = self.streams[key] = Stream(key, self.clocks, renderer)
            self.clocks.timers[stream] = 0.0
        return stream

    def join(self, sub: DialectSubscriber, stream: Stream) -> bool:
        """Add ``sub`` to ``stream`` and write it the stream's opening frames.

        Returns False if it was already on the stream (nothing is sent twice: a venue
        client may repeat a subscribe for a live stream).
        """
        if self.observer is not None:
            self.observer.joined(sub, stream)
        if stream.key in sub.streams:
            return False
        tap = stream.tap
        if stream.window is not None:
            # Emit what the window holds, so the opening frames are at its seq.
            self._emit_now(tap, stream.window)
        sub.streams[stream.key] = stream
        if sub in self.paused and stream.renderer.conflates:
            stream.lagging[sub] = -1
        else:
            frames = stream.renderer.join(tap)
            if frames:
                self._write(sub, frames)
            stream.subscribers[sub] = None
        return True

    def leave(self, sub: DialectSubscriber, key: str) -> bool:
        """Take ``sub`` off stream ``key``; False if it was not on it."""
        stream = sub.streams.pop(key, None)
        if stream is None:
            return False
        if self.observer is not None:
            self.observer.left(sub, key)
        stream.subscribers.pop(sub, None)
        stream.lagging.pop(sub, None)
        stream.held.pop(sub, None)
        self._untrack(stream.tap)
        return True

    def drop(self, sub: DialectSubscriber) -> None:
        """Forget ``sub`` (its connection closed)."""
        for key in list(sub.streams):
            self.leave(sub, key)
        self.paused.pop(sub, None)

    # -- per pass ----------------------------------------------------------------------

    def flush(self, now: float) -> None:
        """Render and send what is due on every tap (call once per pass)."""
        for tap in self.taps.values():
            if tap.broken:
                self._resubscribe(tap)
            tap.fold()
            if tap.replaced:
                tap.replaced = False
                self._replaced(tap)
            for w in tap.windows.values():
                if w.seq > w.prev and now >= w.due:
                    self._emit(tap, w)
                    w.due = _next_due(w.due, w.interval, now)
            if tap.new_trades:
                trades, tap.new_trades = tap.new_trades, []
                for stream in tap.trade_streams:
                    if stream.subscribers:
                        self._send(stream, stream.renderer.trades(tap, trades))
            if tap.ticker_new:
                tap.ticker_new = False
                ticker = tap.last_ticker
                if ticker is not None:
                    for stream in tap.ticker_streams:
                        if stream.subscribers:
                            self._send(stream, stream.renderer.ticker(tap, ticker, now))
            if tap.timers:
                for stream, due in tap.timers.items():
                    if now >= due:
                        tap.timers[stream] = _next_due(due, stream.renderer.interval, now)
                        if stream.subscribers and tap.loaded:
                            self._send(stream, stream.renderer.timer(tap, now))
        clocks = self.clocks
        for stream, due in clocks.timers.items():
            if now >= due:
                clocks.timers[stream] = _next_due(due, stream.renderer.interval, now)
                if stream.subscribers:
                    self._send(stream, stream.renderer.timer(clocks, now))
        if self.catching_up:
            subs, self.catching_up = self.catching_up, []
            for sub in subs:
                if sub not in self.paused:
                    self._catch_up(sub)

    def _resubscribe(self, tap: Tap) -> None:
        """Ask the hub for a fresh book snapshot (a repeated subscribe starts over)."""
        hub = self.hub
        hub.subscribe(tap, hub.channels[f"book.{tap.symbol}"])
        if tap.outbox:
            frames, tap.outbox = tap.outbox, []
            tap.receive(b"".join(frames))

    def _emit_now(self, tap: Tap, w: Window) -> None:
        """Emit what ``w`` holds now, due or not (a join, a catch-up)."""
        tap.fold()
        if w.seq > w.prev:
            self._emit(tap, w)

    def _emit(self, tap: Tap, w: Window) -> None:
        rendered = [
            (stream, stream.renderer.book(tap, w)) for stream in w.streams if stream.subscribers
        ]
        # Advance first: a write may cross a subscriber's high watermark, and the pause
        # must record the seq this window takes it to.
        w.prev = w.seq
        w.levels = {}
        for stream, frames in rendered:
            self._send(stream, frames)

    def _send(self, stream: Stream, frames: bytes | None) -> None:
        if not frames:
            return
        self.renders += 1
        subs = stream.subscribers
        n = len(subs)
        for sub in tuple(subs):
            deliver = sub.deliver
            if deliver is not None:
                deliver(frames)
        self.frames_out += n
        self.bytes_out += n * len(frames)

    def _write(self, sub: DialectSubscriber, frames: bytes) -> None:
        deliver = sub.deliver
        if deliver is not None:
            deliver(frames)
            self.frames_out += 1
            self.bytes_out += len(frames)

    def _replaced(self, tap: Tap) -> None:
        """The tap's book was replaced (a hole upstream): every book stream resyncs."""
        for w in tap.windows.values():
            for stream in w.streams:
                if not tap.first:
                    for sub in stream.lagging:
                        stream.lagging[sub] = -1
                observer = self.observer
                if not tap.first and not stream.renderer.resyncs:
                    for sub in (*stream.subscribers, *stream.lagging):
                        if observer is not None:
                            observer.resynced(sub, stream, True)
                        sub.close(1011, "the book was resynchronised upstream; reconnect")
                else:
                    if observer is not None and not tap.first:
                        for sub in stream.subscribers:
                            observer.resynced(sub, stream, False)
                    self._send(stream, stream.renderer.reset(tap, tap.first))

    # -- slow consumers ----------------------------------------------------------------

    def pause(self, sub: DialectSubscriber, now: float) -> None:
        """Stop sending ``sub`` book and ticker frames: its connection is backed up."""
        if sub in self.paused:
            return
        self.paused[sub] = now
        for stream in sub.streams.values():
            if stream.renderer.conflates and sub in stream.subscribers:
                del stream.subscribers[sub]
                w = stream.window
                stream.lagging[sub] = w.prev if w is not None else 0
                tap = stream.tap
                if w is not None and not stream.renderer.resyncs:
                    # Every level it may hold: the book now, and any changed since
                    # its seq (its book is at ``w.prev``, the mirror may be past it).
                    book = tap.book
                    held = {("bid", p) for p, _ in book.bids()}
                    held.update(("ask", p) for p, _ in book.asks())
                    held.update(w.levels)
                    stream.held[sub] = held
                if w is not None and tap.touched is None:
                    tap.fold()
                    # Every window got the same folds since its ``prev``: the oldest
                    # one holds every change a laggard of any window may miss.
                    oldest = min(tap.windows.values(), key=lambda x: x.prev)
                    tap.touched = LevelTracker(oldest.prev)
                    if oldest.levels:
                        tap.track(oldest.levels, oldest.seq)

    def resume(self, sub: DialectSubscriber) -> None:
        """Let ``sub`` catch up at the next flush: its buffer drained."""
        if self.paused.pop(sub, None) is not None:
            self.catching_up.append(sub)

    def _catch_up(self, sub: DialectSubscriber) -> None:
        for stream in list(sub.streams.values()):
            if sub in self.paused:
                return  # paused again by a catch-up's write: the rest keep lagging
            if sub not in stream.lagging:
                continue
            since = stream.lagging.pop(sub)
            tap = stream.tap
            w = stream.window
            if w is not None:
                self._emit_now(tap, w)
                levels: list[tuple[LevelKey, str]] | None = None
                touched = tap.touched
                if since == w.prev:
                    levels = []
                elif since >= 0 and touched is not None:
                    # Venues have no smaller catch-up to prefer: any size merges.
                    merged = touched.merged_since(since, _ANY_SIZE)
                    if merged is not None:
                        levels = [((u.side, u.price), u.qty) for u in merged]
                self._untrack(tap)
                held = stream.held.pop(sub, None)
                if levels is None and held is not None and since >= 0:
                    levels = _whole_book(tap.book, held)
                if levels is None and not stream.renderer.resyncs:
                    sub.close(1008, "slow consumer: the stream cannot be caught up; reconnect")
                    return
                frames = stream.renderer.catch_up(tap, since, levels)
            else:
                ticker = tap.last_ticker
                frames = stream.renderer.ticker(tap, ticker, 0.0) if ticker else None
            self.conflated += 1
            # Back on the stream before the write: if the write pauses it again, the
            # pause records the seq this catch-up takes it to.
            stream.subscribers[sub] = None
            if frames:
                self._write(sub, frames)

    def _untrack(self, tap: Tap) -> None:
        """Stop tracking changed levels when no book stream of ``tap`` has a laggard."""
        if tap.touched is None:
            return
        for w in tap.windows.values():
            for stream in w.streams:
                if stream.lagging:
                    return
        tap.touched = None


def _whole_book(book: Book, held: set[LevelKey]) -> list[tuple[LevelKey, str]]:
    """Changes taking any book whose levels are among ``held`` to ``book``: every level
    of ``book``, and a delete for each held level it no longer has.

    The catch-up of a laggard whose changes were not tracked (they outgrew the book) on
    a venue with no in-band snapshot: quantities are absolute, and deleting a level a
    client does not hold is a no-op for venue clients.
    """
    levels: list[tuple[LevelKey, str]] = [(("bid", p), q) for p, q in book.bids()]
    levels += [(("ask", p), q) for p, q in book.asks()]
    now = {key for key, _ in levels}
    levels += [(key, "0") for key in held if key not in now]
    return levels


def _next_due(due: float, interval: float, now: float) -> float:
    """The next emit after one due at ``due``: one interval on, or from ``now`` if late."""
    due += interval
    return due if due > now else now + interval
