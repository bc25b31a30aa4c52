"""Shared fixtures: real tickwire servers on 127.0.0.1, stopped after each test."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from helpers import ServerProcess


@pytest.fixture
def server_factory() -> Iterator[Callable[..., ServerProcess]]:
    """Start servers with extra CLI args: ``server_factory("--rate", "1000")``."""
    started: list[ServerProcess] = []

    def start(*args: str) -> ServerProcess:
        srv = ServerProcess(list(args)).start()
        started.append(srv)
        return srv

    yield start
    # A server that ignores SIGTERM (a graceful-shutdown hang) or logged a traceback
    # fails the test that started it; every server is stopped either way.
    failures = []
    for srv in started:
        try:
            srv.stop()
        except Exception as exc:  # ServerHung, a traceback, or stop() itself failing
            failures.append(f"{type(exc).__name__}: {exc}")
        finally:
            srv.kill()
    if failures:
        pytest.fail("\n".join(failures))


@pytest.fixture
def server(server_factory: Callable[..., ServerProcess]) -> ServerProcess:
    """A server with 3 symbols at 500 updates/s each and test faults enabled."""
    return server_factory("--symbols", "BTC-USD,ETH-USD,SOL-USD", "--rate", "500", "--test-faults")
