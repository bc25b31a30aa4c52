"""Test helpers: run a real ``tickwire serve`` process on 127.0.0.1 and talk to it."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

#: Scalable time unit for test timeouts (set TICKWIRE_TEST_MS to slow everything down).
MS = float(os.environ.get("TICKWIRE_TEST_MS", "1")) / 1000

#: Seconds a server may take to exit after SIGTERM before the test fails
#: (TICKWIRE_TEST_STOP_TIMEOUT: the harness test's inner run shortens it).
STOP_TIMEOUT = float(os.environ.get("TICKWIRE_TEST_STOP_TIMEOUT", "10"))

_SERVING = re.compile(r"(wss?)://([\d.]+):(\d+)/ws \(epoch (\S+)\)")


class ServerHung(AssertionError):
    """The server did not exit after SIGTERM (it was killed)."""


@dataclass
class ServerProcess:
    """A ``tickwire serve`` subprocess; ``port`` 0 picks a free port on first start."""

    args: list[str] = field(default_factory=list)
    port: int = 0
    proc: subprocess.Popen[str] | None = None
    epoch: str = ""
    stats: dict[str, Any] | None = None
    #: Everything the server wrote to stderr, once :meth:`stop` returned.
    stderr: str = ""
    #: What the server wrote to stdout after its serving line, once :meth:`stop` returned.
    stdout: str = ""
    #: "wss" when the server was started with --tls-cert.
    scheme: str = "ws"
    #: A traceback in the server's stderr fails :meth:`stop` unless a test expects one.
    tracebacks_allowed: bool = False

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}/ws"

    def start(self, timeout: float = 15.0) -> ServerProcess:
        cmd = [
            sys.executable,
            "-m",
            "tickwire",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--max-seconds",
            "300",
            *self.args,
        ]
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        line = ""
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line and self.proc.poll() is not None:
                break
            m = _SERVING.search(line)
            if m:
                self.scheme = m.group(1)
                self.port = int(m.group(3))
                self.epoch = m.group(4)
                return self
        code = self.proc.poll()
        err = self.proc.stderr.read() if self.proc.stderr else ""
        self.kill()
        # A negative exit code is the signal that ended it (-9: killed from outside).
        raise RuntimeError(f"server did not start (exit {code}): {line!r} {err[-2000:]}")

    def stop(self, timeout: float = STOP_TIMEOUT) -> dict[str, Any] | None:
        """SIGTERM, wait, and return the JSON stats line printed at exit.

        Raises :class:`ServerHung` (after killing it) when the server does not exit
        within ``timeout`` of SIGTERM, and fails when its stderr holds a traceback (an
        exception the I/O layer logged and survived), unless ``tracebacks_allowed``.
        """
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise ServerHung(f"the server did not exit within {timeout:g}s of SIGTERM") from None
        self.proc = None
        self.stdout = out
        self.stderr = err
        for line in reversed(err.splitlines()):
            if line.startswith("{"):
                self.stats = json.loads(line)
                break
        if not self.tracebacks_allowed:
            assert "Traceback" not in err, f"the server logged a traceback:\n{err[-4000:]}"
        return self.stats

    def kill(self) -> None:
        """SIGKILL the server: no close frames, no stats."""
        if self.proc is not None:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
            self.proc = None


# -- WebSocket frames by hand (RFC 6455 §5.2), for raw-socket tests ---------------------

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def client_frame(
    opcode: int, payload: bytes, *, fin: bool = True, mask: bytes = b"\x37\xfa\x21\x3d"
) -> bytes:
    """Return one masked client frame (clients must mask, RFC 6455 §5.3)."""
    n = len(payload)
    head = bytes(((0x80 if fin else 0) | opcode,))
    if n < 126:
        head += bytes((0x80 | n,))
    elif n < 65536:
        head += bytes((0x80 | 126,)) + n.to_bytes(2, "big")
    else:
        head += bytes((0x80 | 127,)) + n.to_bytes(8, "big")
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


def parse_server_frames(buf: bytearray) -> list[tuple[int, bool, bytes]]:
    """Consume complete unmasked frames from ``buf``: ``[(opcode, fin, payload)]``."""
    out: list[tuple[int, bool, bytes]] = []
    while len(buf) >= 2:
        first, second = buf[0], buf[1]
        assert not second & 0x80, "server frames must not be masked"
        n = second & 0x7F
        offset = 2
        if n == 126:
            if len(buf) < 4:
                break
            n, offset = int.from_bytes(buf[2:4], "big"), 4
        elif n == 127:
            if len(buf) < 10:
                break
            n, offset = int.from_bytes(buf[2:10], "big"), 10
        if len(buf) < offset + n:
            break
        out.append((first & 0x0F, bool(first & 0x80), bytes(buf[offset : offset + n])))
        del buf[: offset + n]
    return out


def frame_payload(frame: bytes) -> bytes:
    """Return the payload of one complete server frame (as built by the hub)."""
    buf = bytearray(frame)
    frames = parse_server_frames(buf)
    assert len(frames) == 1 and not buf, "not exactly one frame"
    return frames[0][2]


class HandshakeRefused(ConnectionError):
    """The server answered the upgrade request with ``status`` instead of 101."""

    def __init__(self, status: int, head: str) -> None:
        super().__init__(f"handshake failed: {head!r}")
        self.status = status
        self.head = head


class RawClient:
    """A WebSocket client on a plain socket: sends hand-built frames, reads raw frames.

    It never answers pings by itself, which is how the ping-timeout test plays a dead
    peer.
    """

    def __init__(
        self,
        port: int,
        path: str = "/ws",
        timeout: float = 5.0,
        *,
        headers: dict[str, str] | None = None,
        source: str | None = None,
    ) -> None:
        import base64
        import socket

        self.sock = socket.create_connection(
            ("127.0.0.1", port), timeout=timeout, source_address=(source, 0) if source else None
        )
        key = base64.b64encode(os.urandom(16)).decode()
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self.sock.sendall(
            (
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                f"Sec-WebSocket-Version: 13\r\n{extra}\r\n"
            ).encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError(f"handshake failed: {head!r}")
            head += chunk
        status, _, rest = head.partition(b"\r\n\r\n")
        self.status = int(status.split(b" ", 2)[1]) if status.startswith(b"HTTP/") else 0
        if self.status != 101:
            self.sock.close()
            raise HandshakeRefused(self.status, status.decode("latin-1"))
        self.buf = bytearray(rest)
        self.frames: list[tuple[int, bool, bytes]] = []

    def send(self, opcode: int, payload: bytes, *, fin: bool = True) -> None:
        self.sock.sendall(client_frame(opcode, payload, fin=fin))

    def send_text(self, text: str | bytes) -> None:
        self.send(OP_TEXT, text.encode() if isinstance(text, str) else text)

    def recv_frame(self, timeout: float = 5.0) -> tuple[int, bool, bytes] | None:
        """Return the next frame, or None when the server closed the TCP connection."""
        deadline = time.monotonic() + timeout
        while not self.frames:
            self.frames.extend(parse_server_frames(self.buf))
            if self.frames:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no frame from the server")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                return None
            except TimeoutError:
                raise TimeoutError("no frame from the server") from None
            if not chunk:
                return None
            self.buf.extend(chunk)
        return self.frames.pop(0)

    def recv_json(self, timeout: float = 5.0) -> dict[str, Any]:
        """Return the next text message as a dict (skipping pings)."""
        while True:
            frame = self.recv_frame(timeout)
            assert frame is not None, "connection closed"
            if frame[0] == OP_TEXT:
                msg: dict[str, Any] = json.loads(frame[2])
                return msg
            assert frame[0] in (OP_PING, OP_PONG), f"unexpected frame {frame!r}"

    def wait_close(self, timeout: float = 5.0) -> tuple[int | None, bytes, bool]:
        """Read until the server's close frame; return ``(code, reason, tcp_closed)``.

        Text frames before the close are skipped. ``code`` is None when the TCP
        connection ended without a close frame.
        """
        deadline = time.monotonic() + timeout
        while True:
            frame = self.recv_frame(max(deadline - time.monotonic(), 0.001))
            if frame is None:
                return None, b"", True
            if frame[0] == OP_CLOSE:
                payload = frame[2]
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
                # After the close frame the server ends the TCP connection.
                closed = self.recv_frame(max(deadline - time.monotonic(), 0.001)) is None
                return code, payload[2:], closed

    def close(self) -> None:
        self.sock.close()


# -- verifying a stream the way a client must ---------------------------------------------


class StreamChecker:
    """Applies server messages per channel and asserts every integrity rule on the way.

    Book: snapshot loads the book; each delta must chain (``prev_seq`` == last ``seq``),
    carry ``seq - prev_seq == len(updates)`` (no conflation expected in tests), and its
    checksum must equal the rebuilt book's. Trades: chained, ids consecutive and ending at
    ``seq``. Ticker: chained. Heartbeat: ``seq`` equals the last applied seq.
    """

    def __init__(self, *, allow_conflation: bool = False) -> None:
        from tickwire.book import Book

        self._book_cls = Book
        # A conflated (merged) delta spans more seqs than it has updates; a conflated
        # ticker skips seqs. Both still chain by prev_seq.
        self.allow_conflation = allow_conflation
        self.conflated = 0
        self.seq: dict[str, int] = {}
        self.books: dict[str, Book] = {}
        self.snapshots: dict[str, dict[str, Any]] = {}
        self.deltas = 0
        self.updates = 0
        self.heartbeats = 0
        self.trades = 0

    def apply(self, msg: dict[str, Any]) -> None:
        kind = msg["type"]
        if kind in ("ack", "pong"):
            return
        assert kind != "error", msg
        ch = msg["ch"]
        if kind == "snapshot":
            self.snapshots[ch] = msg
            self.seq[ch] = msg["seq"]
            if ch.startswith("book."):
                book = self.books[ch] = self._book_cls()
                book.load(msg["bids"], msg["asks"])
                assert book.checksum() == msg["checksum"], f"{ch}: snapshot checksum"
            return
        assert ch in self.seq, f"{ch}: {kind} before snapshot"
        if kind == "heartbeat":
            assert msg["seq"] == self.seq[ch], f"{ch}: heartbeat seq {msg} vs {self.seq[ch]}"
            self.heartbeats += 1
            return
        assert msg["prev_seq"] == self.seq[ch], f"{ch}: gap {self.seq[ch]} -> {msg}"
        if kind == "delta":
            span = msg["seq"] - msg["prev_seq"]
            if span != len(msg["updates"]) and self.allow_conflation:
                assert span > len(msg["updates"]), msg
                self.conflated += 1
            else:
                assert span == len(msg["updates"]) > 0, msg
            book = self.books[ch]
            for u in msg["updates"]:
                assert isinstance(u["ts"], int) and u["ts"] > 10**18
                book.apply(u["side"], u["price"], u["qty"])
            assert book.checksum() == msg["checksum"], f"{ch}: checksum at {msg['seq']}"
            self.deltas += 1
            self.updates += len(msg["updates"])
        elif kind == "trades":
            ids = [t["id"] for t in msg["trades"]]
            assert ids == list(range(msg["prev_seq"] + 1, msg["seq"] + 1)), msg
            self.trades += len(ids)
        else:
            assert kind == "ticker", msg
            assert msg["seq"] == msg["prev_seq"] + 1 or (
                self.allow_conflation and msg["seq"] > msg["prev_seq"]
            ), msg
        self.seq[ch] = msg["seq"]


# -- a healthy client beside an attack ------------------------------------------------------

#: What the healthy client follows: a book (prev_seq chain and every checksum), the
#: trades of the same symbol (ids contiguous) and its ticker (seqs chained).
HEALTHY_CHANNELS = ("book.A", "trades.A", "ticker.A")


@dataclass
class HealthyReport:
    """What the healthy client read, and for how long."""

    checker: Any
    #: Seconds from its first delta to its last read (the attack and ``after``).
    seconds: float
    #: Book updates per second per symbol the server was started with (``--rate``).
    rate: float
    tickers: int = 0


def server_rate(srv: ServerProcess) -> float:
    """The ``--rate`` a server was started with (book updates per second per symbol)."""
    args = srv.args
    return float(args[args.index("--rate") + 1]) if "--rate" in args else 200.0


def run_beside_healthy_client(
    srv: ServerProcess,
    bad: Callable[[], Any],
    *,
    after: float = 1.0,
    stall: float = 5.0,
    floor: float = 0.25,
) -> Any:
    """Run blocking ``bad()`` while a healthy client streams; return ``bad()``'s result.

    The healthy client (on 127.0.0.1) subscribes to :data:`HEALTHY_CHANNELS`, waits for
    20 deltas, then starts ``bad()`` in a thread and reads **continuously** for the
    whole of it and ``after`` seconds more, applying every message to a
    :class:`StreamChecker` (every ``prev_seq``, every checksum, every trade id, every
    ticker seq). It fails when:

    - any message breaks the chain or a checksum (the checker's assertion);
    - the server closes its connection, or sends nothing for ``stall`` seconds
      (heartbeats come every second even on a quiet channel);
    - it received fewer than ``floor`` x ``--rate`` x (seconds read) book updates: a
      server that stopped streaming for part of the attack falls short;
    - the server process is no longer running afterwards.
    """
    rate = server_rate(srv)

    async def healthy(ready: asyncio.Event, done: asyncio.Event) -> HealthyReport:
        import websockets

        checker = StreamChecker()
        tickers = 0
        async with websockets.connect(srv.url, max_queue=None, close_timeout=2) as ws:
            channels = json.dumps(list(HEALTHY_CHANNELS))
            await ws.send(f'{{"op":"subscribe","channels":{channels}}}')
            start = 0.0
            end: float | None = None
            while True:
                now = time.monotonic()
                if end is None and done.is_set():
                    end = now + after
                if end is not None and now >= end:
                    break
                left = stall if end is None else min(stall, end - now)
                try:
                    raw = await asyncio.wait_for(ws.recv(), left)
                except TimeoutError:
                    if end is not None and time.monotonic() >= end - 0.001:
                        break
                    raise AssertionError(
                        f"the server stopped streaming: nothing for {stall:g}s "
                        f"after {checker.updates} updates"
                    ) from None
                except websockets.ConnectionClosed as exc:
                    raise AssertionError(
                        f"the server closed the healthy client ({exc!r}) "
                        f"after {checker.updates} updates"
                    ) from None
                msg = json.loads(raw)
                checker.apply(msg)
                tickers += msg["type"] == "ticker"
                if not ready.is_set() and checker.deltas >= 20 and len(checker.seq) == 3:
                    start = time.monotonic()
                    ready.set()
        return HealthyReport(checker, time.monotonic() - start, rate, tickers)

    async def run() -> tuple[Any, HealthyReport]:
        ready, done = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(healthy(ready, done))
        waiting = asyncio.create_task(ready.wait())
        await asyncio.wait({task, waiting}, timeout=15, return_when=asyncio.FIRST_COMPLETED)
        if not ready.is_set():
            waiting.cancel()
            if task.done():
                task.result()  # its failure, if it failed
            task.cancel()
            raise AssertionError("the healthy client got no stream within 15 s")
        try:
            result = await asyncio.to_thread(bad)
        finally:
            done.set()
        return result, await task

    result, report = asyncio.run(run())
    checker = report.checker
    assert set(checker.seq) == set(HEALTHY_CHANNELS), checker.seq
    want = floor * rate * report.seconds
    assert checker.updates >= want, (
        f"the healthy client got {checker.updates} book updates in {report.seconds:.1f}s "
        f"at --rate {rate:g}: fewer than {want:.0f}; the server stopped streaming"
    )
    assert report.tickers > 0 and checker.deltas > 20
    assert srv.proc is None or srv.proc.poll() is None, "the server died during the attack"
    return result


# -- the interop virtualenv: third-party implementations to compare with --------------------

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INTEROP_DIR = os.path.join(ROOT, "tests", "interop")


def interop_python() -> str:
    """The Python of ``.venv-interop`` (ccxt, cryptofeed, order_book; ``make interop``).

    ``TICKWIRE_INTEROP_VENV`` points elsewhere (``make test INTEROP=...`` sets it).

    Fails (never skips) when it is missing: ``make test`` builds it, and a comparison
    with an independent implementation that silently did not run proves nothing.
    """
    import pytest

    venv = os.environ.get("TICKWIRE_INTEROP_VENV", os.path.join(ROOT, ".venv-interop"))
    python = os.path.join(venv, "bin", "python")
    if not os.access(python, os.X_OK):
        pytest.fail(f"{python} is missing: run `make interop` (make test does)")
    return python


def run_interop(
    script: str, *args: str, input: str | None = None, timeout: float = 120.0
) -> subprocess.CompletedProcess[str]:
    """Run ``tests/interop/<script>`` (or a path) in the interop virtualenv; check it.

    Returns the completed process (text mode); fails the test with its stderr when it
    exits non-zero.
    """
    path = script if os.path.isabs(script) else os.path.join(INTEROP_DIR, script)
    done = subprocess.run(
        [interop_python(), path, *args],
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )
    assert done.returncode == 0, f"{script} exited {done.returncode}: {done.stderr[-3000:]}"
    return done
