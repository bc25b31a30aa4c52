"""Test helpers: run a real ``tickwire serve`` process on 127.0.0.1 and talk to it."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

#: Scalable time unit for test timeouts (set TICKWIRE_TEST_MS to slow everything down).
MS = float(os.environ.get("TICKWIRE_TEST_MS", "1")) / 1000

_SERVING = re.compile(r"ws://([\d.]+):(\d+)/ws \(epoch (\S+)\)")


@dataclass
class ServerProcess:
    """A ``tickwire serve`` subprocess; ``port`` 0 picks a free port on first start."""

    args: list[str] = field(default_factory=list)
    port: int = 0
    proc: subprocess.Popen[str] | None = None
    epoch: str = ""
    stats: dict[str, Any] | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

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
                self.port = int(m.group(2))
                self.epoch = m.group(3)
                return self
        err = self.proc.stderr.read() if self.proc.stderr else ""
        self.kill()
        raise RuntimeError(f"server did not start: {line!r} {err[-2000:]}")

    def stop(self, timeout: float = 10.0) -> dict[str, Any] | None:
        """SIGTERM, wait, and return the JSON stats line printed at exit."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            _, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        self.proc = None
        for line in reversed(err.splitlines()):
            if line.startswith("{"):
                self.stats = json.loads(line)
                break
        return self.stats

    def kill(self) -> None:
        """SIGKILL the server: no close frames, no stats."""
        if self.proc is not None:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
            self.proc = None
