"""Record and replay: ``tickwire record`` writes a gateway's stream, a replay source
plays it back into a gateway (or a publisher), and the books come out the same."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers import RawClient, ServerProcess, StreamChecker
from nats_helpers import NatsServer, publisher, stream, subscribe
from tickwire.exceptions import ConfigError
from tickwire.sources.replay import parse_speed, read_recording

SYMBOLS = "AAA,BBB"
CHANNELS = ["book.AAA", "trades.AAA", "book.BBB", "trades.BBB"]


def test_parse_speed() -> None:
    assert parse_speed("1") == 1.0 and parse_speed("x10") == 10.0 and parse_speed("max") == 0
    assert parse_speed("0.5") == 0.5
    for bad in ("0", "-1", "fast", "x"):
        with pytest.raises(ConfigError):
            parse_speed(bad)


def test_not_a_recording_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "x.ndjson"
    path.write_text('{"type":"delta"}\n')
    with pytest.raises(ConfigError, match="not a tickwire recording"):
        read_recording(str(path))


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, StreamChecker]]:
    """Two seconds of a live gateway, recorded; and the books the recorder ended with."""
    path = tmp_path_factory.mktemp("rec") / "feed.ndjson"
    srv = ServerProcess(["--symbols", SYMBOLS, "--rate", "400", "--admin-port", "off"]).start()
    try:
        out = subprocess.run(
            [sys.executable, "-m", "tickwire", "record", srv.url, "--out", str(path)]
            + ["--symbols", SYMBOLS, "--duration", "2"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    finally:
        srv.stop()
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stderr.strip().splitlines()[-1])
    assert summary["messages"] > 100
    checker = StreamChecker()
    lines = path.read_bytes().splitlines()
    header = json.loads(lines[0])
    assert header["type"] == "recording" and header["symbols"] == ["AAA", "BBB"]
    for line in lines[1:]:
        checker.apply(json.loads(line))  # the recording itself is a verified stream
    yield path, checker


def final_snapshots(port: int) -> dict[str, dict[str, Any]]:
    c = RawClient(port)
    subscribe(c, CHANNELS)
    snaps = {}
    for _ in CHANNELS:
        m = c.recv_json()
        snaps[m["ch"]] = m
    c.close()
    return snaps


def assert_same_books(snaps: dict[str, dict[str, Any]], recorded: StreamChecker) -> None:
    for ch in CHANNELS:
        assert snaps[ch]["seq"] == recorded.seq[ch], ch
        if ch.startswith("book."):
            book = recorded.books[ch]
            assert snaps[ch]["bids"] == [list(lv) for lv in book.bids()]
            assert snaps[ch]["asks"] == [list(lv) for lv in book.asks()]
            assert snaps[ch]["checksum"] == book.checksum()


def wait_done(port: int, recorded: StreamChecker, timeout: float) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        snaps = final_snapshots(port)
        if all(snaps[ch]["seq"] == recorded.seq[ch] for ch in CHANNELS):
            return snaps
        if time.monotonic() > deadline:
            return snaps
        time.sleep(0.2)


def test_replay_at_max_speed_ends_with_the_recorded_books_and_seqs(
    recording: tuple[Path, StreamChecker],
) -> None:
    path, recorded = recording
    srv = ServerProcess(["--source", str(path), "--replay-speed", "max"]).start()
    try:
        snaps = wait_done(srv.port, recorded, 10)
        assert_same_books(snaps, recorded)
        trades = snaps["trades.AAA"]["trades"]
        assert trades and trades[-1]["id"] == recorded.seq["trades.AAA"]
    finally:
        stats = srv.stop()
    assert stats is not None and stats["source"]["done"] and stats["source"]["conflated"] == 0


def test_replay_x10_streams_a_verified_feed_to_clients(
    recording: tuple[Path, StreamChecker],
) -> None:
    path, recorded = recording
    srv = ServerProcess(["--source", str(path), "--replay-speed", "x10"]).start()
    try:
        client = RawClient(srv.port)
        subscribe(client, CHANNELS)
        checker = StreamChecker()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(
            checker.seq.get(ch) != recorded.seq[ch] for ch in CHANNELS
        ):
            stream(client, checker, 0.2)
        client.close()
        assert checker.deltas > 10, "the replay was not paced: it was over at subscribe"
        for ch in CHANNELS:
            assert checker.seq[ch] == recorded.seq[ch]
        for ch in ("book.AAA", "book.BBB"):
            assert checker.books[ch] == recorded.books[ch]
    finally:
        srv.stop()


def test_publisher_replays_a_recording_to_gateways_over_nats(
    recording: tuple[Path, StreamChecker],
) -> None:
    path, recorded = recording
    nats = NatsServer().start()
    pub = gw = None
    try:
        pub = publisher(nats.url, "--replay", str(path), "--replay-speed", "max")
        gw = ServerProcess(
            ["--source", nats.url, "--symbols", SYMBOLS, "--admin-port", "off"]
        ).start(timeout=30)
        assert_same_books(wait_done(gw.port, recorded, 10), recorded)
    finally:
        if gw is not None:
            gw.stop()
        if pub is not None:
            pub.stop()
        nats.stop()
