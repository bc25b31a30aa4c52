"""Candles from trades (the venues' klines), against a brute-force aggregation."""

from __future__ import annotations

import random
from decimal import Decimal

import pytest

from tickwire.dialects.candles import INTERVALS, Candles
from tickwire.protocol import Trade

T0 = 1_796_000_000_000  # ms, on a minute boundary


def trades(n: int, seed: int) -> list[Trade]:
    rng = random.Random(seed)
    ms = T0 + 123
    out = []
    for i in range(n):
        ms += rng.choice((0, 3, 40, 700, 2500, 61_000))
        price = f"{100 + rng.randint(-500, 500) / 100:.2f}"
        qty = f"{rng.randint(1, 5000) / 10000:.4f}"
        side = rng.choice(("buy", "sell"))
        out.append(Trade(i + 1, price, qty, side, ms * 1_000_000))  # type: ignore[arg-type]
    return out


def brute(
    ts: list[Trade], step: int
) -> list[tuple[int, str, str, str, str, Decimal, int, int, int]]:
    groups: dict[int, list[Trade]] = {}
    for t in ts:
        ms = t.ts // 1_000_000
        groups.setdefault(ms - ms % step, []).append(t)
    rows = []
    for start, g in sorted(groups.items()):
        prices = [Decimal(t.price) for t in g]
        rows.append(
            (
                start,
                g[0].price,
                str(max(prices)),
                str(min(prices)),
                g[-1].price,
                sum(Decimal(t.qty) for t in g),
                len(g),
                g[0].id,
                g[-1].id,
            )
        )
    return rows


@pytest.mark.parametrize("interval", ["1s", "1m", "3m", "5m", "1h"])
@pytest.mark.parametrize("batch", [1, 7])
def test_candles_equal_a_brute_force_aggregation(interval: str, batch: int) -> None:
    ts = trades(3000, seed=len(interval) * 10 + batch)
    c = Candles()
    for i in range(0, len(ts), batch):
        c.add(ts[i : i + batch])
    got = [
        (k.start, k.open, k.high, k.low, k.close, Decimal(c.volume(k.volume)), k.trades,
         k.first_id, k.last_id)
        for k in c.series(interval, limit=100_000)
    ]  # fmt: skip
    want = brute(ts, INTERVALS[interval])
    if interval == "1s":
        want = want[-3600:]  # the seconds kept
    assert got == want


def test_series_window_and_limit() -> None:
    ts = trades(2000, seed=3)
    c = Candles()
    c.add(ts)
    every = c.series("1m", limit=100_000)
    assert [k.start for k in c.series("1m", limit=5)] == [k.start for k in every[-5:]]
    start = every[3].start
    assert [k.start for k in c.series("1m", start, None, 2)] == [every[3].start, every[4].start]
    assert all(k.start <= every[6].start for k in c.series("1m", None, every[6].start, 1000))
    with pytest.raises(KeyError):
        c.series("7m")


def test_weeks_open_on_monday() -> None:
    monday = 1_795_996_800_000  # 2026-11-30 00:00 UTC, a Monday
    c = Candles()
    c.add([Trade(1, "10.00", "1.0000", "buy", (monday + 3 * 86_400_000) * 1_000_000)])
    (week,) = c.series("1w")
    assert week.start == monday
