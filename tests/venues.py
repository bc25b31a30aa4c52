"""Helpers for the venue-dialect tests: a TLS gateway, a native recorder, interop runs.

The third-party clients (ccxt, cryptofeed) run in the interop virtualenv
(``make interop``) as scripts under ``tests/interop/``; each prints one JSON object per
line. A :class:`NativeRecorder` reads the same gateway over the native protocol at the
same time and keeps the book at every ``seq`` and every trade by id, so a venue
client's book can be compared with tickwire's at the same update id.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import re
import ssl
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import websockets
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from helpers import ServerProcess, interop_python
from tickwire.book import Book

_DASHBOARD = re.compile(r"dashboard on http://[\d.]+:(\d+)/")


def self_signed(directory: Path) -> tuple[Path, Path]:
    """Write a certificate for 127.0.0.1 (and its key); return their paths."""
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


class VenueGateway:
    """A running gateway for venue tests: its WebSocket and admin (REST) ports."""

    def __init__(self, srv: ServerProcess, admin_port: int, cafile: Path | None) -> None:
        self.srv = srv
        self.port = srv.port
        self.admin_port = admin_port
        self.cafile = cafile
        self.scheme = srv.scheme

    @property
    def ws(self) -> str:
        """``ws://`` or ``wss://127.0.0.1:PORT`` (no path)."""
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def ssl(self) -> ssl.SSLContext | None:
        if self.cafile is None:
            return None
        return ssl.create_default_context(cafile=str(self.cafile))


def start_venue_gateway(
    server_factory: Callable[..., ServerProcess],
    tmp_path: Path,
    *args: str,
    tls: bool = True,
) -> VenueGateway:
    """Start ``tickwire serve`` with an admin port (and TLS: cryptofeed needs wss)."""
    extra: list[str] = ["--admin-port", "0"]
    cafile = None
    if tls:
        cafile, key = self_signed(tmp_path)
        extra += ["--tls-cert", str(cafile), "--tls-key", str(key)]
    srv = server_factory(*extra, *args)
    assert srv.proc is not None and srv.proc.stdout is not None
    line = srv.proc.stdout.readline()
    m = _DASHBOARD.search(line)
    assert m, f"no dashboard line: {line!r}"
    return VenueGateway(srv, int(m.group(1)), cafile)


def dec(value: Any) -> Decimal:
    """A price or quantity from any client (string, float, Decimal) as a Decimal."""
    return Decimal(str(value))


def levels(pairs: Any) -> dict[Decimal, Decimal]:
    """Levels ``[[price, qty], ...]`` as ``{price: qty}`` Decimals (zeros dropped)."""
    out = {}
    for pair in pairs:
        price, qty = dec(pair[0]), dec(pair[1])
        if qty:
            out[price] = qty
    return out


class NativeRecorder:
    """Reads one symbol's book and trades over the native protocol, checking them.

    ``books[seq]`` is the whole book after message ``seq`` (bids, asks as Decimal
    dicts); ``by_checksum[crc]`` the seqs whose book has that top-10 checksum (Kraken's,
    which carries no seq); ``trades[id]`` is each trade as ``(price, qty, side)``. The
    chain and every checksum are verified as they arrive; a break fails :meth:`run`.
    """

    def __init__(self, gateway: VenueGateway, symbol: str) -> None:
        self.gateway = gateway
        self.symbol = symbol
        self.books: dict[int, tuple[dict[Decimal, Decimal], dict[Decimal, Decimal]]] = {}
        self.by_checksum: dict[int, list[int]] = {}
        self.trades: dict[int, tuple[Decimal, Decimal, str]] = {}
        self.seq = -1
        self.ready = asyncio.Event()
        self.moved = asyncio.Event()  # set at every book message
        self._stop = asyncio.Event()

    def _keep(self, book: Book) -> None:
        self.books[self.seq] = (levels(book.bids()), levels(book.asks()))
        self.by_checksum.setdefault(book.checksum(), []).append(self.seq)
        self.moved.set()

    async def run(self) -> None:
        url = f"{self.gateway.ws}/ws"
        book = Book()
        trade_seq = -1
        async with websockets.connect(url, ssl=self.gateway.ssl(), max_size=None) as ws:
            channels = [f"book.{self.symbol}", f"trades.{self.symbol}"]
            await ws.send(json.dumps({"op": "subscribe", "channels": channels, "id": 1}))
            while not self._stop.is_set():
                try:
                    raw = await asyncio.wait_for(ws.recv(), 0.2)
                except TimeoutError:
                    continue
                msg = json.loads(raw)
                kind, ch = msg.get("type"), msg.get("ch", "")
                if kind == "snapshot" and ch.startswith("book."):
                    book.load(msg["bids"], msg["asks"])
                    assert book.checksum() == msg["checksum"]
                    self.seq = msg["seq"]
                    self._keep(book)
                    self.ready.set()
                elif kind == "snapshot":
                    trade_seq = msg["seq"]
                    for t in msg["trades"]:
                        self.trades[t["id"]] = (dec(t["price"]), dec(t["qty"]), t["side"])
                elif kind == "delta":
                    assert msg["prev_seq"] == self.seq, (msg["prev_seq"], self.seq)
                    for u in msg["updates"]:
                        book.apply(u["side"], u["price"], u["qty"])
                    assert book.checksum() == msg["checksum"]
                    self.seq = msg["seq"]
                    self._keep(book)
                elif kind == "trades":
                    assert msg["prev_seq"] == trade_seq, (msg["prev_seq"], trade_seq)
                    for t in msg["trades"]:
                        self.trades[t["id"]] = (dec(t["price"]), dec(t["qty"]), t["side"])
                    trade_seq = msg["seq"]

    def stop(self) -> None:
        self._stop.set()

    def assert_book(
        self,
        seq: int,
        bids: dict[Decimal, Decimal],
        asks: dict[Decimal, Decimal],
        depth: int | None = None,
    ) -> None:
        """The client's book at ``seq`` equals the native one (its top ``depth``)."""
        assert seq in self.books, f"no native book at seq {seq} (recorded up to {self.seq})"
        nb, na = self.books[seq]
        if depth is not None:
            nb = dict(sorted(nb.items(), reverse=True)[:depth])
            na = dict(sorted(na.items())[:depth])
            bids = dict(sorted(bids.items(), reverse=True)[:depth])
            asks = dict(sorted(asks.items())[:depth])
        assert bids == nb, f"bids differ at seq {seq}"
        assert asks == na, f"asks differ at seq {seq}"


async def run_client(script: str, *args: str, limit_s: float = 90.0) -> list[dict[str, Any]]:
    """Run ``tests/interop/<script>`` in the interop virtualenv; its JSON lines.

    Fails with the script's stderr when it exits non-zero or outlives ``limit_s``.
    """
    path = str(Path(__file__).with_name("interop") / script)
    proc = await asyncio.create_subprocess_exec(
        interop_python(),
        path,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), limit_s)
    except TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
        raise AssertionError(
            f"{script} did not finish in {limit_s}s: {err.decode()[-3000:]}"
        ) from None
    assert proc.returncode == 0, f"{script} exited {proc.returncode}: {err.decode()[-3000:]}"
    return [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]


async def beside_recorder(
    gateway: VenueGateway,
    symbol: str,
    script: str,
    *args: str,
    limit_s: float = 90.0,
    linger_s: float = 0.0,
) -> tuple[NativeRecorder, list[dict[str, Any]]]:
    """Run a client script while a :class:`NativeRecorder` reads ``symbol``.

    ``linger_s``: keep recording that long after the script ends (a venue without ids
    gives no seq to wait for).
    """
    rec = NativeRecorder(gateway, symbol)
    task = asyncio.create_task(rec.run())
    try:
        await asyncio.wait_for(rec.ready.wait(), 10)
        lines = await run_client(script, *args, limit_s=limit_s)
        # The client may have seen a seq the recorder has not read yet.
        wanted = max((line.get("seq") or -1 for line in lines), default=-1)
        while rec.seq < wanted:
            rec.moved.clear()
            await asyncio.wait_for(rec.moved.wait(), 5)
        await asyncio.sleep(linger_s)
    finally:
        rec.stop()
        await task
    return rec, lines
