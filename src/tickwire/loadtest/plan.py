"""Who subscribes to what, in how many processes (Sans-I/O).

Connection ``i`` (0-based, over the whole run) subscribes ``per_conn`` channels starting
at ``channels[i % len(channels)]``; connections are dealt to worker processes round-robin
(connection ``i`` goes to worker ``i % procs``), so every worker gets the same mix of
channels and the same share of the load.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from ..exceptions import ConfigError
from ..protocol import CHANNEL_KINDS

__all__ = ["MAX_AUTO_PROCS", "auto_procs", "channel_list", "plan"]

#: Most worker processes ``--procs auto`` picks.
MAX_AUTO_PROCS = 16


def channel_list(
    channels: str | None = None, symbols: int | None = None, kinds: str = "book"
) -> list[str]:
    """Return the channels to subscribe, from ``--channels`` or ``--symbols``/``--kinds``.

    Args:
        channels: comma-separated names, e.g. ``"book.SYM0,trades.SYM0"``.
        symbols: a count N meaning ``SYM0`` .. ``SYM{N-1}`` (the names ``tickwire serve
            --symbols N`` uses), each with every kind in ``kinds``.
        kinds: comma-separated channel kinds for ``symbols``.

    Returns:
        The channel names, without duplicates, in the order given.

    Raises:
        ConfigError: neither or both sources given, or an empty/invalid list.
    """
    if (channels is None) == (symbols is None):
        raise ConfigError("give exactly one of --channels and --symbols")
    if channels is not None:
        names = [c.strip() for c in channels.split(",") if c.strip()]
    else:
        assert symbols is not None
        if symbols < 1:
            raise ConfigError("--symbols must be at least 1")
        kind_list = [k.strip() for k in kinds.split(",") if k.strip()]
        for k in kind_list:
            if k not in CHANNEL_KINDS:
                raise ConfigError(f"unknown channel kind {k!r}: use {', '.join(CHANNEL_KINDS)}")
        names = [f"{k}.SYM{i}" for i in range(symbols) for k in kind_list]
    if not names:
        raise ConfigError("no channels to subscribe")
    return list(dict.fromkeys(names))


def auto_procs(conns: int, cpus: int | None = None) -> int:
    """Return the worker count ``--procs auto`` uses.

    One process per core but one, leaving a core to a server on the same host (the
    common loopback case), never more processes than connections, at least one, at
    most :data:`MAX_AUTO_PROCS`. The bench reports its own CPU per process, so a run
    that needed more says so.
    """
    if cpus is None:
        cpus = os.cpu_count() or 1
    return max(1, min(cpus - 1, conns, MAX_AUTO_PROCS))


def plan(
    conns: int, channels: Sequence[str], procs: int, per_conn: int = 1
) -> list[list[list[str]]]:
    """Split the connections among workers.

    Args:
        conns: total connections.
        channels: the channel list (from :func:`channel_list`).
        procs: worker processes (capped at ``conns``).
        per_conn: channels each connection subscribes (capped at ``len(channels)``).

    Returns:
        For each worker, for each of its connections, the channels it subscribes.

    Raises:
        ConfigError: a count below 1.
    """
    if conns < 1 or procs < 1 or per_conn < 1:
        raise ConfigError("--conns, --procs and --channels-per-conn must be at least 1")
    if not channels:
        raise ConfigError("no channels to subscribe")
    procs = min(procs, conns)
    per_conn = min(per_conn, len(channels))
    n = len(channels)
    workers: list[list[list[str]]] = [[] for _ in range(procs)]
    for i in range(conns):
        workers[i % procs].append([channels[(i + j) % n] for j in range(per_conn)])
    return workers
