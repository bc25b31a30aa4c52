"""Fault specifications: one fault's kind, target, schedule and parameters (Sans-I/O).

A fault comes from a scenario file (``tickwire serve --faults scenario.toml``, one
``[[fault]]`` table each) or from the admin API (``POST /api/v1/faults``, the same keys
as one JSON object). :func:`parse_fault` checks one mapping, :func:`parse_scenario` a
whole file; every mistake raises one :class:`~tickwire.exceptions.ScenarioError` that
names the file and line (tomllib reports its syntax errors with a line; the semantic
ones are located here, by finding the ``[[fault]]`` table and the key in the text).
See ``docs/connectivity-testing.md``.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..exceptions import ScenarioError

__all__ = [
    "CLOSE_CODES",
    "CONNECTION_KINDS",
    "GATEWAY_KINDS",
    "KINDS",
    "MESSAGE_KINDS",
    "PROTOCOLS",
    "WINDOW_KINDS",
    "FaultSpec",
    "Scenario",
    "parse_fault",
    "parse_scenario",
]

#: Every fault kind, with one line for the docs and errors.
KINDS: dict[str, str] = {
    "gap": "a book diff/delta is not delivered; the next one exposes the hole",
    "checksum": "a book message carries a wrong checksum (native, OKX, Kraken)",
    "duplicate": "a book message is delivered twice",
    "reorder": "a book message is delivered after the next one of its book",
    "stale_snapshot": "REST depth answers and in-band snapshots N updates old",
    "stall": "the connection stays open and sends nothing (heartbeats optional)",
    "disconnect": "a close with a given code, 1006 an abrupt reset; optionally the "
    "venue's shutdown notice first",
    "max_connection_age": "connections are closed at an age (Binance's 24 h), on a "
    "clock that may run faster",
    "rate_limit": "REST 429 then 418 with Retry-After, refused handshakes, or refused "
    "subscribes with the venue's error",
    "latency": "every frame to a connection is delayed, with jitter",
    "bandwidth": "a connection is served at most N bytes/s",
    "burst": "the market's rate times N for a while (gateway-wide)",
}

#: Faults applied to one book message of a connection.
MESSAGE_KINDS = frozenset({"gap", "checksum", "duplicate", "reorder"})
#: Faults applied to a whole connection at a point in time.
CONNECTION_KINDS = frozenset({"stall", "disconnect"})
#: Faults active during a window (from ``at`` for ``duration``, again every ``every``).
WINDOW_KINDS = frozenset({"stale_snapshot", "rate_limit", "latency", "bandwidth"})
#: Faults applied to the whole gateway at a point in time.
GATEWAY_KINDS = frozenset({"burst"})

#: The protocols a fault may target: the native one and each venue dialect.
PROTOCOLS = ("native", "binance", "okx", "kraken")

#: Close codes a ``disconnect`` may use (1006: no close frame, the TCP connection reset).
CLOSE_CODES = frozenset({1000, 1001, 1006, 1008, 1011, 1012, 1013, 1014}) | frozenset(
    range(4000, 5000)
)

# Keys every fault takes: type, default.
_COMMON: dict[str, tuple[type, Any]] = {
    "kind": (str, None),
    "name": (str, ""),
    "venues": (list, []),
    "share": (float, 1.0),
    "symbols": (list, []),
    "at": (float, 0.0),
    "every": (float, 0.0),
    "count": (int, 0),
    "duration": (float, 0.0),
    "probability": (float, 1.0),
    "seed": (int, 1),
}

# Per kind: key -> (type, default, low, high, choices); low/high None: unbounded.
_Param = tuple[type, Any, float | None, float | None, tuple[str, ...]]
_PARAMS: dict[str, dict[str, _Param]] = {
    "gap": {"messages": (int, 1, 1, 10_000, ())},
    "checksum": {},
    "duplicate": {},
    "reorder": {},
    "stale_snapshot": {
        "updates": (int, 20, 1, 1_000_000, ()),
        "where": (str, "both", None, None, ("rest", "stream", "both")),
    },
    "stall": {
        "seconds": (float, 5.0, 0.001, 86_400, ()),
        "heartbeats": (bool, False, None, None, ()),
    },
    "disconnect": {
        "code": (int, 1001, None, None, ()),
        "notice": (bool, False, None, None, ()),
        "notice_lead": (float, 1.0, 0, 3600, ()),
        "reason": (str, "", None, None, ()),
    },
    "max_connection_age": {
        "age": (float, 86_400.0, 0.001, None, ()),
        "speed": (float, 1.0, 1e-6, None, ()),
        "code": (int, 1001, None, None, ()),
        "notice": (bool, False, None, None, ()),
        "notice_lead": (float, 1.0, 0, 3600, ()),
    },
    "rate_limit": {
        "scope": (str, "rest", None, None, ("rest", "connect", "subscribe")),
        "retry_after": (float, 1.0, 0, 86_400, ()),
        "ban_after": (int, 3, 0, 1_000_000, ()),
        "ban_seconds": (float, 10.0, 0, 86_400 * 3, ()),
    },
    "latency": {
        "delay_ms": (float, 100.0, 0, 600_000, ()),
        "jitter_ms": (float, 0.0, 0, 600_000, ()),
    },
    "bandwidth": {"bytes_per_s": (float, 10_000.0, 1, None, ())},
    "burst": {"factor": (float, 10.0, 0.01, 1000, ()), "seconds": (float, 2.0, 0.001, 86_400, ())},
}  # fmt: skip

_TOP_KEYS = ("name", "description", "seed", "fault")


@dataclass(frozen=True)
class FaultSpec:
    """One fault, checked.

    Attributes:
        kind: one of :data:`KINDS`.
        name: a label for lists and reports (default: the kind).
        venues: the protocols targeted (:data:`PROTOCOLS`; empty: all).
        share: the share of connections targeted, each chosen once with the seed.
        symbols: the tickwire symbols whose book messages (and REST answers) are
            faulted (empty: all).
        at, every, count: the first firing (seconds after the fault is loaded), the
            period of the next ones (0: once), and how many (0: one, or unlimited with
            ``every``). Window kinds open a window at each firing.
        duration: how long a window stays open (0: until cleared); for message kinds
            in random mode, the window of the draws.
        probability: per firing and connection (timed), or per book message (message
            kinds given a probability and no ``every``: random mode).
        seed: makes the targeting and the draws repeatable.
        params: the kind's own parameters, defaults filled in.
        line: where the fault starts in its file (0: not from a file).
    """

    kind: str
    name: str = ""
    venues: tuple[str, ...] = ()
    share: float = 1.0
    symbols: tuple[str, ...] = ()
    at: float = 0.0
    every: float = 0.0
    count: int = 0
    duration: float = 0.0
    probability: float = 1.0
    seed: int = 1
    random_mode: bool = False
    params: Mapping[str, Any] = field(default_factory=dict)
    line: int = 0

    def param(self, key: str) -> Any:
        """The value of one of the kind's parameters."""
        return self.params[key]

    def firings(self) -> int:
        """How many times the fault fires (0: without end)."""
        if self.count:
            return self.count
        return 0 if self.every else 1

    def targets_venue(self, venue: str) -> bool:
        """True when connections of ``venue`` (or ``native``) are targeted."""
        return not self.venues or venue in self.venues

    def as_dict(self) -> dict[str, Any]:
        """The fault as its keys (the admin API's list, the report)."""
        out: dict[str, Any] = {
            "kind": self.kind,
            "name": self.name,
            "venues": list(self.venues),
            "share": self.share,
            "symbols": list(self.symbols),
            "at": self.at,
            "every": self.every,
            "count": self.count,
            "duration": self.duration,
            "probability": self.probability,
            "seed": self.seed,
        }
        out.update(self.params)
        return out


@dataclass(frozen=True)
class Scenario:
    """A scenario file: its name, description and faults."""

    name: str
    description: str
    faults: tuple[FaultSpec, ...]


def _where(source: str, line: int) -> str:
    return f"{source}:{line}: " if line else (f"{source}: " if source else "")


def _typed(key: str, value: Any, kind: type) -> Any:
    """``value`` as ``kind``, or raise ValueError saying what was expected."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{key!r} must be true or false, got {value!r}")
    if kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ValueError(f"{key!r} must be an integer, got {value!r}")
    if kind is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            number = float(value)
            if number != number or number in (float("inf"), float("-inf")):
                raise ValueError(f"{key!r} must be a finite number, got {value!r}")
            return number
        raise ValueError(f"{key!r} must be a number, got {value!r}")
    if kind is str:
        if isinstance(value, str):
            return value
        raise ValueError(f"{key!r} must be a string, got {value!r}")
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise ValueError(f"{key!r} must be a list of strings, got {value!r}")


def _range(key: str, value: float, low: float | None, high: float | None) -> None:
    if low is not None and value < low:
        raise ValueError(f"{key!r} must be at least {low:g}, got {value:g}")
    if high is not None and value > high:
        raise ValueError(f"{key!r} must be at most {high:g}, got {value:g}")


class _KeyError(ValueError):
    """A mistake about one key (its line is looked up in the file)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def _check(raw: Mapping[str, Any]) -> FaultSpec:
    """Build a :class:`FaultSpec` from one mapping; raise :class:`_KeyError`."""
    if not isinstance(raw, Mapping):
        raise _KeyError("", f"a fault must be a table of keys, got {raw!r}")
    kind = raw.get("kind")
    if kind is None:
        raise _KeyError("", f"no 'kind' (one of {', '.join(KINDS)})")
    if not isinstance(kind, str) or kind not in KINDS:
        near = difflib.get_close_matches(str(kind), KINDS, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise _KeyError("kind", f"unknown kind {kind!r}{hint}; one of {', '.join(KINDS)}")
    params = _PARAMS[kind]
    known = {**_COMMON, **{k: (p[0], p[1]) for k, p in params.items()}}
    for key in raw:
        if key not in known:
            near = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise _KeyError(key, f"unknown key {key!r} for a {kind} fault{hint}")
    values: dict[str, Any] = {}
    for key, (typ, default) in known.items():
        if key not in raw:
            values[key] = list(default) if isinstance(default, list) else default
            continue
        try:
            values[key] = _typed(key, raw[key], typ)
        except ValueError as exc:
            raise _KeyError(key, str(exc)) from None
    bounds = (("share", 1.0), ("probability", 1.0), ("at", None), ("every", None))
    for key, high in (*bounds, ("count", None), ("duration", None)):
        try:
            _range(key, values[key], 0, high)
        except ValueError as exc:
            raise _KeyError(key, str(exc)) from None
    for venue in values["venues"]:
        if venue not in PROTOCOLS:
            raise _KeyError("venues", f"unknown venue {venue!r}; one of {', '.join(PROTOCOLS)}")
    for key, (_typ, _default, low, high, choices) in params.items():
        value = values[key]
        if choices and value not in choices:
            raise _KeyError(key, f"{key!r} must be one of {', '.join(choices)}, got {value!r}")
        if isinstance(value, int | float) and not isinstance(value, bool):
            try:
                _range(key, value, low, high)
            except ValueError as exc:
                raise _KeyError(key, str(exc)) from None
    if "code" in params and values["code"] not in CLOSE_CODES:
        raise _KeyError(
            "code",
            f"'code' {values['code']} is not a close code a server sends: 1000, 1001, "
            "1006 (abrupt reset), 1008, 1011, 1012, 1013, 1014 or 4000-4999",
        )
    venues = tuple(values["venues"])
    if kind == "checksum" and venues and set(venues) <= {"binance"}:
        raise _KeyError("venues", "Binance book messages carry no checksum: use gap or reorder")
    if kind == "stale_snapshot" and values["where"] == "stream" and venues == ("binance",):
        raise _KeyError(
            "where", "Binance has no in-band snapshot: use where = 'rest' (its depth endpoint)"
        )
    if kind in WINDOW_KINDS and values["every"] and not values["duration"]:
        raise _KeyError("every", f"a {kind} fault repeated with 'every' needs a 'duration'")
    if values["every"] and values["duration"] > values["every"]:
        raise _KeyError("duration", "'duration' must not be longer than 'every'")
    random_mode = kind in MESSAGE_KINDS and "probability" in raw and "every" not in raw
    common = {k: values[k] for k in _COMMON if k not in ("kind", "venues", "symbols")}
    return FaultSpec(
        kind=kind,
        venues=venues,
        symbols=tuple(values["symbols"]),
        random_mode=random_mode,
        params={k: values[k] for k in params},
        **{**common, "name": common["name"] or kind},
    )


def parse_fault(raw: Mapping[str, Any], source: str = "") -> FaultSpec:
    """Check one fault (an admin API body).

    Raises:
        ScenarioError: what is wrong, naming the key.
    """
    try:
        return _check(raw)
    except _KeyError as exc:
        raise ScenarioError(f"{_where(source, 0)}{exc}") from None


_TABLE = re.compile(r"^\s*\[\[\s*fault\s*\]\]")
_HEADER = re.compile(r"^\s*\[")


def _fault_lines(text: str) -> list[tuple[int, int]]:
    """The (first, last) line numbers (1-based) of each ``[[fault]]`` table."""
    lines = text.splitlines()
    starts = [i + 1 for i, line in enumerate(lines) if _TABLE.match(line)]
    out = []
    for start in starts:
        end = len(lines)
        for j in range(start, len(lines)):  # lines[j] is line j + 1
            if _HEADER.match(lines[j]):
                end = j
                break
        out.append((start, end))
    return out


def _key_line(text: str, key: str, first: int, last: int) -> int:
    """The line of ``key = ...`` between lines ``first`` and ``last``; else ``first``."""
    if key:
        pattern = re.compile(rf"^\s*{re.escape(key)}\s*=")
        for number, line in enumerate(text.splitlines()[first - 1 : last], first):
            if pattern.match(line):
                return number
    return first


def parse_scenario(text: str, source: str = "scenario") -> Scenario:
    """Check a scenario file's text (TOML).

    Top-level keys: ``name``, ``description``, ``seed`` (the default of every fault's
    ``seed``) and the ``[[fault]]`` tables.

    Raises:
        ScenarioError: the first mistake, as ``source:LINE: what is wrong``.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"line (\d+)", str(exc))
        line = int(m.group(1)) if m else 0
        raise ScenarioError(f"{_where(source, line)}not valid TOML: {exc}", line) from None
    for key in data:
        if key not in _TOP_KEYS:
            line = _key_line(text, key, 1, len(text.splitlines()))
            hint = difflib.get_close_matches(key, _TOP_KEYS, n=1)
            extra = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise ScenarioError(
                f"{_where(source, line)}unknown key {key!r}{extra}; a scenario has "
                "name, description, seed and [[fault]] tables",
                line,
            )
    name, description = data.get("name", ""), data.get("description", "")
    seed = data.get("seed", 1)
    for key, value, typ in (("name", name, str), ("description", description, str)):
        if not isinstance(value, typ):
            line = _key_line(text, key, 1, len(text.splitlines()))
            raise ScenarioError(f"{_where(source, line)}{key!r} must be a string", line)
    if not isinstance(seed, int) or isinstance(seed, bool):
        line = _key_line(text, "seed", 1, len(text.splitlines()))
        raise ScenarioError(f"{_where(source, line)}'seed' must be an integer", line)
    tables = data.get("fault", [])
    if not isinstance(tables, list):
        line = _key_line(text, "fault", 1, len(text.splitlines()))
        raise ScenarioError(f"{_where(source, line)}'fault' must be [[fault]] tables", line)
    spans = _fault_lines(text)
    faults = []
    for i, raw in enumerate(tables):
        first, last = spans[i] if i < len(spans) else (0, 0)
        if isinstance(raw, Mapping) and "seed" not in raw:
            raw = {**raw, "seed": seed}
        try:
            spec = _check(raw)
        except _KeyError as exc:
            line = _key_line(text, exc.key, first, last) if first else 0
            label = f"fault {i + 1}" + (
                f" ({raw.get('kind')})" if isinstance(raw, Mapping) and raw.get("kind") else ""
            )
            raise ScenarioError(f"{_where(source, line)}{label}: {exc}", line) from None
        faults.append(_with_line(spec, first))
    return Scenario(name or source, description, tuple(faults))


def _with_line(spec: FaultSpec, line: int) -> FaultSpec:
    from dataclasses import replace

    return replace(spec, line=line)
