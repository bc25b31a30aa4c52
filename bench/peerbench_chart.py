"""Chart a peerbench JSONL run: delivered rate, p99 latency and server CPU vs offered rate.

``python bench/peerbench_chart.py /tmp/tickwire-peers.jsonl --png docs/peerbench.png``
also prints a markdown table (delivered, p50/p99, server CPU, CPU per million deliveries,
RSS) for ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from typing import Any


def load(path: str) -> list[dict[str, Any]]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def table(rows: list[dict[str, Any]]) -> str:
    out = [
        "| scen | server | offered upd/s | delivered upd/s | p50 µs | p99 µs | server CPU % "
        "| CPU s per M deliveries | RSS MB | MB/s | sustainable |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
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
        out.append(
            f"| {r['scenario']} | {r['server']} | {r['offered_updates_per_s']:,} "
            f"| {delivered:,.0f} | {r['p50_us']:,} | {r['p99_us']:,} | {cpu:.1f} "
            f"| {per_m:.3f} | {r['server_rss_mb']:.1f} | {mbs:.1f} "
            f"| {'yes' if r['sustainable'] else 'NO'} |"
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
    args = ap.parse_args()
    rows = load(args.jsonl)
    print(table(rows))
    if args.png:
        chart(rows, args.png)
        print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
