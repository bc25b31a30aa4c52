"""Chart a peerbench JSONL run: delivered rate, p99 latency and server CPU vs offered rate.

``python bench/peerbench_chart.py /tmp/tickwire-peers.jsonl --png docs/peerbench.png``
also prints a markdown table (delivered, p50/p99, server CPU, CPU per million deliveries,
passes per second, RSS) for ``docs/benchmarks.md``.

``python bench/peerbench_chart.py /tmp/pairs.jsonl --pairs picows_preframed`` summarises
alternating runs at one rate instead: each other server's CPU against the named peer's
run just before it (per-pair ratio, total ratio, mean with a 95% interval).
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from typing import Any

#: Student's t at 97.5% for 1..30 degrees of freedom (a 95% two-sided interval).
_T975 = (12.71, 4.30, 3.18, 2.78, 2.57, 2.45, 2.36, 2.31, 2.26, 2.23, 2.20, 2.18, 2.16,
         2.14, 2.13, 2.12, 2.11, 2.10, 2.09, 2.09, 2.08, 2.07, 2.07, 2.06, 2.06, 2.06,
         2.05, 2.05, 2.05, 2.04)  # fmt: skip


def load(path: str) -> list[dict[str, Any]]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def passes_per_s(r: dict[str, Any]) -> float | None:
    """The server's own count of passes per second (tickwire: ``ticks.per_s``; the
    peers: ``ticks`` over their lifetime), or None (rawfanout reports none)."""
    stats = r.get("server_stats") or {}
    ticks = stats.get("ticks")
    if isinstance(ticks, dict):
        return float(ticks["per_s"])
    if ticks and stats.get("elapsed_s"):
        return float(ticks / stats["elapsed_s"])
    return None


def table(rows: list[dict[str, Any]]) -> str:
    out = [
        "| scen | server | offered upd/s | delivered upd/s | p50 µs | p99 µs | server CPU % "
        "| CPU s per M deliveries | passes/s | RSS MB | MB/s | sustainable |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in sorted(
        rows, key=lambda r: (r["scenario"], r.get("offered_updates_per_s") or 0, r["server"])
    ):
        if r.get("error"):
            out.append(f"| {r['scenario']} | {r['server']} | - | error: {r['error']} |")
            continue
        delivered = r["delivered_updates_per_s"]
        cpu = r["server_cpu_pct"]
        per_m = cpu / 100 / (delivered / 1e6) if delivered else float("nan")
        mbs = r.get("client", {}).get("mbytes_per_s", float("nan"))
        passes = passes_per_s(r)
        out.append(
            f"| {r['scenario']} | {r['server']} | {r['offered_updates_per_s']:,} "
            f"| {delivered:,.0f} | {r['p50_us']:,} | {r['p99_us']:,} | {cpu:.1f} "
            f"| {per_m:.3f} | {'-' if passes is None else f'{passes:,.0f}'} "
            f"| {r['server_rss_mb']:.1f} | {mbs:.1f} | {'yes' if r['sustainable'] else 'NO'} |"
        )
    return "\n".join(out)


def pairs(rows: list[dict[str, Any]], peer: str) -> str:
    """Each server's CPU against ``peer``'s latest run before it, in file order."""
    ratios: dict[str, list[float]] = defaultdict(list)
    sums: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    p99_lower: dict[str, int] = defaultdict(int)
    base: dict[str, Any] | None = None
    for r in rows:
        if r.get("error"):
            continue
        if r["server"] == peer:
            base = r
        elif base is not None:
            name = r["server"]
            ratios[name].append(r["server_cpu_pct"] / base["server_cpu_pct"])
            sums[name][0] += r["server_cpu_pct"]
            sums[name][1] += base["server_cpu_pct"]
            p99_lower[name] += r["p99_us"] < base["p99_us"]
    out = []
    for name, rs in ratios.items():
        mean = statistics.fmean(rs)
        half = (
            _T975[min(len(rs) - 1, len(_T975)) - 1] * statistics.stdev(rs) / len(rs) ** 0.5
            if len(rs) > 1
            else float("nan")
        )
        each = ", ".join(f"{x:.2f}" for x in rs)
        out.append(
            f"{name} / {peer} CPU over {len(rs)} pairs: {each}; in total "
            f"{sums[name][0] / sums[name][1]:.3f}, mean {mean:.3f} "
            f"(95% {mean - half:.3f}-{mean + half:.3f}); p99 lower in {p99_lower[name]}"
        )
    return "\n".join(out)


def chart(rows: list[dict[str, Any]], png: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = sorted({r["scenario"] for r in rows})
    fig, axes = plt.subplots(3, len(scenarios), figsize=(6 * len(scenarios), 10), squeeze=False)
    for col, scen in enumerate(scenarios):
        series: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in rows:
            if r["scenario"] == scen and not r.get("error") and r.get("offered_updates_per_s"):
                series[r["server"]].append(r)
        for server, pts in sorted(series.items()):
            pts.sort(key=lambda r: r["offered_updates_per_s"])
            x = [r["offered_updates_per_s"] for r in pts]
            style = {"linewidth": 2.5} if server.startswith("tickwire") else {"alpha": 0.8}
            axes[0][col].plot(
                x, [r["delivered_updates_per_s"] for r in pts], "o-", label=server, **style
            )
            axes[1][col].plot(x, [r["p99_us"] / 1000 for r in pts], "o-", label=server, **style)
            axes[2][col].plot(x, [r["server_cpu_pct"] for r in pts], "o-", label=server, **style)
        labels = ("delivered updates/s", "p99 latency (ms)", "server CPU % (one core = 100)")
        for row, ylabel in enumerate(labels):
            ax = axes[row][col]
            ax.set_xscale("log")
            if row < 2:
                ax.set_yscale("log")
            else:
                ax.set_ylim(0, 105)
            ax.set_xlabel("offered updates/s")
            ax.set_ylabel(ylabel)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
        axes[0][col].set_title(f"peerbench {scen} (server on 1 core, same run)")
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("jsonl")
    ap.add_argument("--png", default=None)
    ap.add_argument("--pairs", metavar="PEER", help="summarise alternating runs against PEER")
    args = ap.parse_args()
    rows = load(args.jsonl)
    if args.pairs:
        print(pairs(rows, args.pairs))
        return
    print(table(rows))
    if args.png:
        chart(rows, args.png)
        print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
