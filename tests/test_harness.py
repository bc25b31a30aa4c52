"""The test harness itself must be able to fail.

A server that ignores SIGTERM (a graceful-shutdown hang) or logs a traceback fails the
test that started it, through the ``server_factory`` fixture's teardown, instead of
being killed or ignored silently. (The healthy client's own failure is shown in
``test_bad_input.py``; the stream checker's in ``test_server.py``.)
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ServerHung, ServerProcess

TESTS = Path(__file__).resolve().parent


def test_stop_fails_when_the_server_ignores_sigterm() -> None:
    srv = ServerProcess(["--symbols", "A", "--rate", "50"]).start()
    assert srv.proc is not None
    pid = srv.proc.pid
    os.kill(pid, signal.SIGSTOP)  # frozen: SIGTERM stays pending
    try:
        with pytest.raises(ServerHung, match="did not exit"):
            srv.stop(timeout=1.0)
    finally:
        srv.kill()
    assert srv.proc is None


def test_stop_fails_on_a_traceback_in_the_servers_stderr() -> None:
    code = (
        "import sys, time\n"
        "try:\n    1 / 0\nexcept ZeroDivisionError:\n"
        "    import traceback; traceback.print_exc()\n"
        "print('ready', flush=True)\n"
        "time.sleep(30)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    srv = ServerProcess(proc=proc)
    with pytest.raises(AssertionError, match="traceback"):
        srv.stop(timeout=10.0)
    assert "ZeroDivisionError" in srv.stderr
    # A test that expects one says so.
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    ServerProcess(proc=proc, tracebacks_allowed=True).stop(timeout=10.0)


TEARDOWN_CASES = """
import os
import signal


def test_hung_at_teardown(server_factory):
    srv = server_factory("--symbols", "A", "--rate", "50")
    os.kill(srv.proc.pid, signal.SIGSTOP)


def test_clean(server_factory):
    server_factory("--symbols", "A", "--rate", "50")
"""


def test_the_fixture_fails_a_test_whose_server_hangs_at_teardown(tmp_path: Path) -> None:
    shutil.copy(TESTS / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_cases.py").write_text(TEARDOWN_CASES)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS), *sys.path]),
        "TICKWIRE_TEST_STOP_TIMEOUT": "2",
    }
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_cases.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "2 passed, 1 error" in done.stdout, done.stdout
    assert "ERROR at teardown of test_hung_at_teardown" in done.stdout, done.stdout
    assert "did not exit within" in done.stdout
