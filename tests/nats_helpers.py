"""Test helpers for the bus: a real ``nats-server`` and ``tickwire publish`` processes.

``nats-server`` is the Debian package (``make test`` installs it when missing). Every
process here listens on 127.0.0.1, on a free port, and is stopped by its fixture.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from helpers import RawClient, StreamChecker

NATS_BIN = shutil.which("nats-server") or (
    "/usr/sbin/nats-server" if os.path.exists("/usr/sbin/nats-server") else None
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listens on {port}")


@dataclass
class NatsServer:
    """A real nats-server on 127.0.0.1; :meth:`restart` keeps the port."""

    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> NatsServer:
        if NATS_BIN is None:
            pytest.fail("nats-server is not installed: run `make test` (it installs it)")
        self.port = self.port or free_port()
        self.proc = subprocess.Popen(
            [NATS_BIN, "-a", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_port(self.port)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
            self.proc = None

    def restart(self, down: float = 0.5) -> None:
        self.stop()
        time.sleep(down)
        self.start()


@dataclass
class Proc:
    """A tickwire subprocess started with ``args``, ready once ``ready`` matches stdout."""

    args: list[str]
    ready: str
    proc: subprocess.Popen[str] | None = None
    match: re.Match[str] | None = None
    stderr: str = ""
    env: dict[str, str] = field(default_factory=dict)
    #: A traceback in its stderr fails :meth:`stop` unless a test expects one.
    tracebacks_allowed: bool = False

    def start(self, timeout: float = 30.0) -> Proc:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tickwire", *self.args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
            env={**os.environ, **self.env},
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        pattern = re.compile(self.ready)
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line and self.proc.poll() is not None:
                break
            m = pattern.search(line)
            if m:
                self.match = m
                return self
        self.kill()
        raise RuntimeError(f"{self.args[0]} did not start: {self.stderr[-2000:]}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self, timeout: float = 15.0) -> str:
        """SIGTERM, wait; return stderr."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
            try:
                _, self.stderr = self.proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise
            self.proc = None
            if not self.tracebacks_allowed:
                assert "Traceback" not in self.stderr, (
                    f"{self.args[0]} logged a traceback:\n{self.stderr[-4000:]}"
                )
        return self.stderr

    def kill(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
            _, self.stderr = self.proc.communicate(timeout=10)
            self.proc = None


def publisher(nats_url: str, *args: str) -> Proc:
    """Start ``tickwire publish``; ``.match.group(1)`` is its epoch."""
    return Proc(
        ["publish", "--nats", nats_url, "--max-seconds", "120", *args],
        r"publishing .* \(epoch (\S+)\)",
    ).start()


def subscribe(client: RawClient, channels: list[str], **extra: Any) -> dict[str, Any]:
    """Send a subscribe and return its ack."""
    import json

    client.send_text(json.dumps({"op": "subscribe", "channels": channels, "id": 1, **extra}))
    ack = client.recv_json()
    assert ack["type"] == "ack", ack
    return ack


def stream(client: RawClient, checker: StreamChecker, seconds: float) -> list[dict[str, Any]]:
    """Apply everything ``client`` receives for ``seconds`` to ``checker``; return it."""
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            msg = client.recv_json(timeout=max(deadline - time.monotonic(), 0.01))
        except TimeoutError:
            break
        checker.apply(msg)
        out.append(msg)
    return out
