"""The compatibility table: ccxt.pro and cryptofeed, unmodified, under tickwire's faults.

For each scenario it starts one gateway (TLS, an admin port, ``--report``), runs the six
clients at once -- ccxt.pro and cryptofeed on Binance, OKX and Kraken, each keeping a
BTC-USDT order book the way its documentation shows (``tests/interop/report_clients.py``,
in the interop virtualenv) -- then reads the gateway's connectivity report and tabulates,
per fault x client x venue: was it detected, was the book recovered, how long until the
client again held a provably right book, and did it storm.

    .venv/bin/python bench/connectivity.py                      # every scenario, docs updated
    .venv/bin/python bench/connectivity.py --scenario upstream-hole --seconds 15 --no-docs

Scenarios: every ``scenarios/NAME.toml`` (served with ``tickwire serve --faults FILE``;
the five the issue names are listed even when their file is missing), and
``upstream-hole``, built in: one native book message dropped under every venue stream
(``--test-faults``), which the gateway answers by closing Binance diff subscribers
(1011) and resnapshotting OKX and Kraken ones. A scenario whose file is missing is
reported as not run.

The table replaces what lies between the ``compat:begin`` / ``compat:end`` markers in
docs/connectivity-testing.md; ``--json FILE`` also keeps every report.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import ipaddress
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
#: The issue's named scenarios; every other ``scenarios/*.toml`` is run as well.
NAMED = ("binance-24h", "snapshot-race", "silent-stall", "maintenance", "gap-storm")
SCENARIOS = tuple(
    dict.fromkeys([*NAMED, *sorted(p.stem for p in (ROOT / "scenarios").glob("*.toml"))])
)
BUILTIN = ("upstream-hole",)
CLIENTS = [(c, v) for v in ("binance", "okx", "kraken") for c in ("ccxt", "cryptofeed")]
SYMBOL = "BTC-USDT"
DOC = ROOT / "docs" / "connectivity-testing.md"
BEGIN, END = "<!-- compat:begin -->", "<!-- compat:end -->"
_SERVING = re.compile(r"(wss?)://([\d.]+):(\d+)/ws")
_ADMIN = re.compile(r"dashboard on http://[\d.]+:(\d+)/")


def interop_python() -> str:
    venv = os.environ.get("TICKWIRE_INTEROP_VENV", str(ROOT / ".venv-interop"))
    python = os.path.join(venv, "bin", "python")
    if not os.access(python, os.X_OK):
        sys.exit(f"{python} is missing: run `make interop`")
    return python


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key (cryptofeed only dials wss://)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class Gateway:
    """``tickwire serve`` for one scenario, with its report."""

    def __init__(self, scenario: str, workdir: Path, seconds: float) -> None:
        self.scenario = scenario
        self.report_path = workdir / f"{scenario}.report.json"
        cert, key = self_signed(workdir)
        self.cafile = cert
        args = [
            *("--host", "127.0.0.1", "--port", "0", "--admin-port", "0"),
            *("--symbols", SYMBOL, "--rate", "200"),
            *("--tls-cert", str(cert), "--tls-key", str(key)),
            *("--report", str(self.report_path), "--max-seconds", str(seconds + 60)),
        ]
        if scenario in BUILTIN:
            args.append("--test-faults")
        else:
            args += ["--faults", str(ROOT / "scenarios" / f"{scenario}.toml")]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tickwire", "serve", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        m = _SERVING.search(line)
        if m is None:
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise RuntimeError(f"gateway for {scenario} did not start: {line!r} {err[-2000:]}")
        self.ws = f"{m.group(1)}://127.0.0.1:{m.group(3)}"
        m = _ADMIN.search(self.proc.stdout.readline())
        assert m is not None, "no admin port"
        self.http = f"http://127.0.0.1:{m.group(1)}"

    def report(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.http}/api/v1/report", timeout=10) as response:
            return dict(json.loads(response.read()))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


async def run_client(gw: Gateway, client: str, venue: str, seconds: float) -> dict[str, Any]:
    script = ROOT / "tests" / "interop" / "report_clients.py"
    proc = await asyncio.create_subprocess_exec(
        interop_python(),
        str(script),
        *(client, venue, gw.ws, gw.http, str(gw.cafile), SYMBOL, f"{seconds:g}"),
        f"{client}-{venue}",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), seconds + 60)
    except TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
    lines = [json.loads(x) for x in out.decode().splitlines() if x.startswith("{")]
    summary = next((x for x in lines if x.get("kind") == "summary"), None)
    return {
        "client": client,
        "venue": venue,
        "exit": proc.returncode,
        "summary": summary,
        "stderr": err.decode()[-1500:] if proc.returncode else "",
    }


async def inject_hole(gw: Gateway, delay: float) -> None:
    """The built-in fault: one dropped native book message, after ``delay`` seconds."""
    import ssl

    import websockets

    await asyncio.sleep(delay)
    ctx = ssl.create_default_context(cafile=str(gw.cafile))
    async with websockets.connect(f"{gw.ws}/ws?client=compat", ssl=ctx) as ws:
        request = {"op": "fault", "channels": [f"book.{SYMBOL}"], "fault": "drop", "id": 1}
        await ws.send(json.dumps(request))
        await asyncio.wait_for(ws.recv(), 5)


async def run_scenario(scenario: str, seconds: float, workdir: Path) -> dict[str, Any]:
    if scenario not in BUILTIN and not (ROOT / "scenarios" / f"{scenario}.toml").exists():
        return {"scenario": scenario, "skipped": f"scenarios/{scenario}.toml is missing"}
    gw = Gateway(scenario, workdir, seconds)
    try:
        jobs = [run_client(gw, c, v, seconds) for c, v in CLIENTS]
        if scenario == "upstream-hole":
            jobs.append(inject_hole(gw, min(seconds / 2, 8.0)))  # type: ignore[arg-type]
        results = await asyncio.gather(*jobs)
        report = gw.report()
    finally:
        gw.stop()
    clients = [r for r in results if r]
    return {"scenario": scenario, "seconds": seconds, "clients": clients, "report": report}


def rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per fault kind x client x venue of one scenario."""
    scenario = result["scenario"]
    if "skipped" in result:
        return [{"scenario": scenario, "skipped": result["skipped"]}]
    names = {f"{c}-{v}": (c, v) for c, v in CLIENTS}
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for f in result["report"]["faults"]:
        client, venue = names.get(f.get("client") or "", ("other", "-"))
        groups.setdefault((f["kind"], client, venue), []).append(f)
    ran = {(r["client"], r["venue"]): r for r in result["clients"]}
    out = []
    for (kind, client, venue), faults in sorted(groups.items()):
        times = [f["time_to_book_s"] for f in faults if f.get("time_to_book_s") is not None]
        waits = [f["next_request_s"] for f in faults if f.get("next_request_s") is not None]
        summary = (ran.get((client, venue)) or {}).get("summary") or {}
        out.append(
            {
                "scenario": scenario,
                "fault": kind,
                "client": client,
                "venue": venue,
                "faults": len(faults),
                "needed": any(f.get("reaction_needed") for f in faults),
                "detected": sum(bool(f.get("detected")) for f in faults),
                "recovered": sum(bool(f.get("recovered")) for f in faults),
                "never_noticed": sum(bool(f.get("never_noticed")) for f in faults),
                "median_s": round(statistics.median(times), 2) if times else None,
                "max_s": round(max(times), 2) if times else None,
                "storm": any(f.get("storm") for f in faults),
                "reactions": sorted({f.get("reaction") or "none" for f in faults}),
                "next_request_s": round(min(waits), 2) if waits else None,
                "failed": failure(ran.get((client, venue))),
                "books": summary.get("books"),
                "errors": summary.get("error_count"),
            }
        )
    for client, venue in CLIENTS:
        if not any(r["client"] == client and r["venue"] == venue for r in out):
            summary = (ran.get((client, venue)) or {}).get("summary") or {}
            out.append(
                {
                    "scenario": scenario,
                    "fault": "(none applied)",
                    "client": client,
                    "venue": venue,
                    "faults": 0,
                    "books": summary.get("books"),
                    "errors": summary.get("error_count"),
                    "failed": failure(ran.get((client, venue))),
                }
            )
    return out


def failure(run: dict[str, Any] | None) -> str | None:
    """How a client run ended badly (its exit status and last error line), or None."""
    if run is None or run["exit"] == 0:
        return None
    lines = [x for x in run["stderr"].splitlines() if x.strip()]
    return f"exited {run['exit']}: {lines[-1][:100] if lines else ''}"


def markdown(all_rows: list[dict[str, Any]], seconds: float) -> str:
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"Produced by `bench/connectivity.py` on {stamp}: ccxt 4.5.90 and cryptofeed 2.4.1"
        f" (tests/interop/requirements.txt), {seconds:g} s per scenario, one BTC-USDT book"
        " per client. `n/N`: faults of that kind the client was given, and how many were"
        " detected / recovered (n/a: a fault that needs no reaction); *time to book*:"
        " median and worst seconds from the fault to a provably right book (rules above).",
        "",
        "| scenario | fault | client | venue | detected | recovered | never noticed |"
        " time to book (median / max) | storm | reaction |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in all_rows:
        if "skipped" in r:
            lines.append(f"| {r['scenario']} | not run: {r['skipped']} | | | | | | | | |")
            continue
        if not r["faults"]:
            note = r["failed"] or f"books: {r['books']}"
            lines.append(
                f"| {r['scenario']} | {r['fault']} | {r['client']} | {r['venue']} | - | - | - |"
                f" - | - | {note.replace('|', '/')} |"
            )
            continue
        n = r["faults"]
        detected = f"{r['detected']}/{n}" if r["needed"] else "n/a"
        ttb = "-" if r["median_s"] is None else f"{r['median_s']:.2f} / {r['max_s']:.2f} s"
        lines.append(
            f"| {r['scenario']} | {r['fault']} | {r['client']} | {r['venue']} |"
            f" {detected} | {r['recovered']}/{n} | {r['never_noticed']}/{n} | {ttb} |"
            f" {'yes' if r['storm'] else 'no'} | {reaction_note(r)} |"
        )
    return "\n".join(lines) + "\n"


def reaction_note(r: dict[str, Any]) -> str:
    note = ", ".join(r["reactions"])
    if r["fault"] == "rate_limit" and r["next_request_s"] is not None:
        note += f"; asked again after {r['next_request_s']:.2f} s at the soonest"
    if r["books"] == 0:
        note += "; never held a book"
    if r["failed"]:
        note += f"; {r['failed']}"
    return note.replace("|", "/")


def write_doc(table: str, doc: Path) -> None:
    text = doc.read_text() if doc.exists() else ""
    block = f"{BEGIN}\n{table}{END}"
    if BEGIN in text and END in text:
        head, _, rest = text.partition(BEGIN)
        _, _, tail = rest.partition(END)
        text = head + block + tail
    else:
        text = text.rstrip("\n") + "\n\n## Compatibility table\n\n" + block + "\n"
    doc.write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--scenario",
        action="append",
        choices=(*SCENARIOS, *BUILTIN),
        help="run this scenario (repeat; default: all)",
    )
    parser.add_argument("--seconds", type=float, default=30.0, help="client run per scenario")
    parser.add_argument("--doc", type=Path, default=DOC, help="markdown file to update")
    parser.add_argument("--no-docs", action="store_true", help="print the table only")
    parser.add_argument("--json", type=Path, default=None, help="also write every report here")
    parser.add_argument(
        "--from-json", type=Path, default=None, help="tabulate a --json file again (no run)"
    )
    args = parser.parse_args()
    scenarios = args.scenario or [*SCENARIOS, *BUILTIN]
    results = []
    if args.from_json is not None:
        results = json.loads(args.from_json.read_text())
        scenarios = []
        args.seconds = float(results[0].get("seconds", args.seconds)) if results else 0
    with tempfile.TemporaryDirectory() as tmp:
        for scenario in scenarios:
            started = time.monotonic()
            result = asyncio.run(run_scenario(scenario, args.seconds, Path(tmp)))
            took = time.monotonic() - started
            print(f"{scenario}: {result.get('skipped') or f'{took:.0f}s'}", file=sys.stderr)
            results.append(result)
    table = markdown([r for result in results for r in rows(result)], args.seconds)
    sys.stdout.write(table)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1))
    if not args.no_docs:
        write_doc(table, args.doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
