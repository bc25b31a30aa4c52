"""Replay tardis.dev CSV datasets (``--source tardis:PATH[,PATH...]``) as a market source.

The files (``.csv`` or ``.csv.gz``; an ``incremental_book_L2`` file, a ``trades`` file,
a ``book_snapshot_25`` file, in any combination, for one or many symbols) are read as
streams and merged by ``local_timestamp`` (:mod:`tickwire.tardis`); the model decides
what is served. Pacing, pause, resume, speed and seek follow one
:class:`~tickwire.replayclock.ReplayClock` shared by every client
(``docs/venue-feeds.md``).

A seek re-reads: forward, from where the replay is; backward, from the start of the
files. Either way the events up to the target are applied to the model only, a few
hundred thousand per tick (the symbols are stale meanwhile), then the gateway starts a
new epoch and loads each symbol's book at the target: every client gets a snapshot in
the new epoch, never the intermediate states.
"""

from __future__ import annotations

import csv
import gzip
import io
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import IO, TYPE_CHECKING, Any, cast

import msgspec

from ..engine import new_epoch
from ..exceptions import ConfigError, ReplayControlError
from ..replayclock import ReplayClock, format_time
from ..tardis import (
    BOOK,
    PROBLEMS,
    TOP,
    Event,
    Invalidate,
    Problem,
    Publish,
    Restore,
    TardisModel,
    merge,
    read_events,
)
from . import Batch, Sink

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

__all__ = ["SEEK_EVENTS_PER_POLL", "TardisSource"]

log = logging.getLogger("tickwire.replay")

#: Updates one poll may emit at ``max`` speed (one tick's work).
MAX_UPDATES_PER_POLL = 20_000

#: Events a seek applies per tick (to the model only: no encode, no fan-out).
SEEK_EVENTS_PER_POLL = 200_000

#: Before opening the port, events of the first ``LOOKAHEAD_NS`` of data are read ahead
#: to learn the symbols (each is created stale and served from its first snapshot).
LOOKAHEAD_NS = 1_000_000_000
LOOKAHEAD_EVENTS = 100_000


class _File:
    """One CSV file opened for reading: its rows and how far it has been read."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self.raw: IO[bytes] = open(path, "rb")  # noqa: SIM115 -- closed by close()
            self.size = os.fstat(self.raw.fileno()).st_size
            magic = self.raw.read(2)
            self.raw.seek(0)
        except OSError as exc:
            raise ConfigError(f"cannot read {path!r}: {exc.strerror}") from None
        binary: IO[bytes] = (
            cast(IO[bytes], gzip.GzipFile(fileobj=self.raw)) if magic == b"\x1f\x8b" else self.raw
        )
        self.text = io.TextIOWrapper(binary, encoding="utf-8", errors="replace", newline="")
        self.truncated = False

    def rows(self) -> Iterator[list[str]]:
        reader = csv.reader(self.text)
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                row = [f"unreadable CSV: {exc}"]
            except (EOFError, OSError) as exc:  # a truncated or corrupt .gz
                self.truncated = True
                log.error("%s ends early after line %d: %s", self.path, reader.line_num, exc)
                return
            yield row

    @property
    def progress(self) -> float:
        try:
            return round(self.raw.tell() / self.size, 4) if self.size else 1.0
        except (OSError, ValueError):
            return 1.0

    def close(self) -> None:
        self.text.close()
        self.raw.close()


class TardisSource:
    """Plays tardis.dev CSVs into a sink at ``speed`` (0: max), under a replay clock.

    Args:
        paths: the files (``.csv`` or ``.csv.gz``).
        speed: 1 = recorded speed, 10 = ten times faster, 0 = max.
        symbols: serve only these (after ``symbol_map``); empty: every symbol found.
        symbol_map: file symbol -> served symbol.

    Raises:
        ConfigError: a file cannot be read or is not a tardis.dev CSV.
    """

    def __init__(
        self,
        paths: Sequence[str],
        speed: float = 1.0,
        symbols: Sequence[str] = (),
        symbol_map: dict[str, str] | None = None,
    ) -> None:
        if not paths:
            raise ConfigError("--source tardis: needs at least one file")
        self.paths = list(paths)
        self.symbol_map = dict(symbol_map or {})
        self.symbols = frozenset(symbols)
        self.clock = ReplayClock(speed)
        self.layouts: list[str] = []
        self._files: list[_File] = []
        self._stream: Iterator[Event | Problem] = iter(())
        self._open()  # validates every header now: a wrong file is a start-up error
        self.model = self._new_model()
        self._next: Event | Problem | None = None
        self._sink: Sink | None = None
        self._seek_to: int | None = None
        self._seeks = 0
        #: The time of the last event the model applied (a seek before it re-reads).
        self._applied = -1
        self.generated = 0
        self.skipped = 0
        self.events = 0
        self.done = False

    # -- the Source protocol -------------------------------------------------------------

    async def start(self, sink: Sink) -> None:
        """Learn the symbols of the first second of data and load the first snapshots."""
        self._sink = sink
        for symbol in list(sink.engine.symbols):
            if symbol not in sink.incomplete:
                sink.invalidate(symbol)  # served from its first snapshot, not empty
        ahead: list[Event | Problem] = []
        first: int | None = None
        while len(ahead) < LOOKAHEAD_EVENTS:
            item = next(self._stream, None)
            if item is None:
                break
            ahead.append(item)
            if isinstance(item, Problem):
                continue
            if first is None:
                first = item.local_ns
            if self.model.known(item.symbol) and item.symbol not in sink.engine.symbols:
                sink.add_symbol(item.symbol)
            if item.local_ns > first + LOOKAHEAD_NS:
                break
        self._stream = _chain(ahead, self._stream)
        if first is None:
            log.warning("tardis replay: no rows in %s", ", ".join(self.paths))
            self.done = True
            return
        now = time.monotonic()
        self.clock.start(first, now)
        for batch in self._play(first):
            sink.publish(*batch)

    def poll(self, now: float) -> Iterator[Batch]:
        """The events due at ``now`` (a seek in progress: a step of it, nothing sent)."""
        if self._seek_to is not None:
            self._seek_step(now)
            return iter(())
        if self.done:
            return iter(())
        return self._play(self.clock.due(now))

    def on_arrival(self, callback: Callable[[], None]) -> None:
        """Polled on the clock: nothing arrives by itself."""

    def burst(self, now: float) -> None:
        """Recorded data's flow is what it is."""
        log.info("burst ignored: replaying %s", ",".join(self.paths))

    async def stop(self) -> None:
        """Close the files."""
        for f in self._files:
            f.close()

    def stats(self) -> dict[str, Any]:
        """Progress, counters and data problems."""
        model = self.model
        return {
            "kind": "tardis",
            "paths": self.paths,
            "speed": self.clock.speed or "max",
            "events": self.events,
            "updates": model.updates,
            "trades": model.trades,
            "problems": dict(model.problems),
            "stale": sorted(s for s, st in model.states.items() if not st.serving),
            "dropped_updates": sum(st.dropped for st in model.states.values()),
            "skipped_symbols": sorted(model.skipped_symbols)[:100],
            "seeks": self._seeks,
            "done": self.done,
        }

    def metrics(self) -> Iterator[Metric]:
        """Prometheus metrics (the gateway's /metrics): data problems by kind, stale
        symbols, and where the shared clock stands."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        problems = CounterMetricFamily(
            "tickwire_replay_problems",
            "Data problems found in the replayed files, by kind (docs/venue-feeds.md).",
            labels=["kind"],
        )
        for kind in PROBLEMS:
            problems.add_metric([kind], float(self.model.problems.get(kind, 0)))
        yield problems
        yield GaugeMetricFamily(
            "tickwire_replay_stale_symbols",
            "Symbols not served because their book is known wrong (until a snapshot).",
            float(sum(not st.serving for st in self.model.states.values())),
        )
        position = self.clock.position
        yield GaugeMetricFamily(
            "tickwire_replay_position_seconds",
            "Data time of the last event played (seconds since the epoch).",
            (position or 0) / 1e9,
        )
        yield GaugeMetricFamily(
            "tickwire_replay_paused", "1 while the replay is paused.", float(self.clock.paused)
        )

    # -- replay control (the admin API) ----------------------------------------------------

    def replay_state(self, now: float) -> dict[str, Any]:
        """Where the replay stands: the shared clock, speed, pause, seek, file progress."""
        return {
            "kind": "tardis",
            **self.clock.state(now),
            "seeking": self._seek_to is not None,
            "done": self.done,
            "files": [
                {"path": f.path, "layout": layout, "progress": f.progress, "truncated": f.truncated}
                for f, layout in zip(self._files, self.layouts, strict=True)
            ],
            "problems": dict(self.model.problems),
        }

    def pause(self, now: float) -> None:
        self.clock.pause(now)

    def resume(self, now: float) -> None:
        self.clock.resume(now)

    def set_speed(self, speed: float, now: float) -> None:
        self.clock.set_speed(speed, now)

    def seek(self, target_ns: int, now: float) -> None:
        """Go to data time ``target_ns``: done over the next ticks (:attr:`seeking`)."""
        position = self.clock.position
        if target_ns < self._applied:
            # Backward: from the start of the files, counters and logs kept.
            for f in self._files:
                f.close()
            try:
                self._open()
            except ConfigError as exc:
                self.done = True
                raise ReplayControlError(f"cannot re-read the files: {exc}", 409) from None
            old = self.model
            model = self.model = self._new_model()
            model.counted_until = max(old.counted_until, position or -1, self._applied)
            model.problems, model.seen = old.problems, old.seen
            model.updates, model.trades = old.updates, old.trades
            self._next = None
            self._applied = -1
            self.done = False
        self._seek_to = target_ns
        self._seeks += 1
        sink = self._sink
        if sink is not None:
            for symbol in sink.engine.symbols:
                sink.invalidate(symbol)
        log.info("replay: seeking to %s", format_time(target_ns))

    @property
    def seeking(self) -> bool:
        return self._seek_to is not None

    # -- internals -----------------------------------------------------------------------

    def _new_model(self) -> TardisModel:
        model = TardisModel(incremental=BOOK in self.layouts, symbols=self.symbols)
        for f, layout in zip(self._files, self.layouts, strict=True):
            if layout == BOOK or (layout == TOP and BOOK not in self.layouts):
                model.note_book_file(f.path)
        return model

    def _open(self) -> None:
        files: list[_File] = []
        layouts: list[str] = []
        streams = []
        try:
            for path in self.paths:
                f = _File(path)
                files.append(f)
                layout, events = read_events(path, f.rows(), self.symbol_map)
                layouts.append(layout)
                streams.append(events)
        except ConfigError:
            for f in files:
                f.close()
            raise
        self._files, self.layouts = files, layouts
        self._stream = merge(streams)

    def _peek(self) -> Event | Problem | None:
        if self._next is None:
            self._next = next(self._stream, None)
        return self._next

    def _play(self, due: float) -> Iterator[Batch]:
        sink = self._sink
        assert sink is not None
        model = self.model
        clock = self.clock
        budget = MAX_UPDATES_PER_POLL
        while budget > 0:
            item = self._peek()
            if item is None:
                self._finish()
                return
            if item.local_ns > due:
                return
            self._next = None
            self._applied = item.local_ns
            self.events += 1
            budget -= 1
            actions, fresh = model.apply(item)
            for problem in fresh:
                self._log(problem)
            if not isinstance(item, Problem):
                clock.played(item.local_ns)
            for action in actions:
                if isinstance(action, Publish):
                    n = len(action.updates) + len(action.trades)
                    budget -= n
                    self.generated += len(action.updates)
                    yield action.symbol, action.updates, action.trades
                elif isinstance(action, Restore):
                    self._restore(action.snap)
                elif isinstance(action, Invalidate):
                    if action.symbol in sink.engine.symbols:
                        sink.invalidate(action.symbol)

    def _restore(self, snap: Any) -> None:
        sink = self._sink
        assert sink is not None
        if snap.symbol not in sink.engine.symbols:
            sink.add_symbol(snap.symbol)
        sink.restore(msgspec.structs.replace(snap, epoch=sink.engine.epoch))

    def _seek_step(self, now: float) -> None:
        target = self._seek_to
        assert target is not None
        model = self.model
        for _ in range(SEEK_EVENTS_PER_POLL):
            item = self._peek()
            if item is None or item.local_ns > target:
                break
            self._next = None
            self._applied = item.local_ns
            self.events += 1
            _, fresh = model.apply(item)
            for problem in fresh:
                self._log(problem)
        else:
            return  # more next tick
        # At the target: a new epoch, every book as the data has it then.
        sink = self._sink
        assert sink is not None
        self._seek_to = None
        model.counted_until = max(model.counted_until, target)
        sink.reset(new_epoch())
        for symbol in model.serving():
            self._restore(model.engine.export(symbol))
        self.clock.seek(target, now)
        self.done = self._peek() is None
        log.info(
            "replay: at %s (epoch %s), %d symbols served",
            format_time(target),
            sink.engine.epoch,
            len(model.serving()),
        )

    def _finish(self) -> None:
        if not self.done:
            self.done = True
            log.info(
                "replay of %s done: %d events, problems %s",
                ",".join(self.paths),
                self.events,
                self.model.problems or "none",
            )

    def _log(self, problem: Problem) -> None:
        log.warning(
            "replay data problem %s%s: %s (further ones of this kind and symbol are only "
            "counted; the symbol is stale until its next snapshot where the book is affected)",
            problem.kind,
            f" on {problem.symbol}" if problem.symbol else "",
            problem.detail,
        )


def _chain(
    first: list[Event | Problem], rest: Iterator[Event | Problem]
) -> Iterator[Event | Problem]:
    yield from first
    yield from rest
