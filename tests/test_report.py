"""The connectivity report's derivation, Sans-I/O: events in, outcomes out.

Each test feeds :class:`tickwire.faults.report.Report` what a gateway would report
(connections, subscriptions, REST requests, closes, faults) at chosen times and checks
what it concludes: detected, recovered and when, storms, faults never noticed.
"""

from __future__ import annotations

from typing import Any

import pytest

from tickwire.faults.report import Report, client_key, render_summary

UA = "Python/3.11 aiohttp/3.9"


def outcome(report: Report, now: float, n: int = 0) -> dict[str, Any]:
    return report.summary(now)["faults"][n]


def test_client_key_drops_the_port_and_prefers_a_given_name() -> None:
    assert client_key("10.0.0.1:50123", UA) == f"10.0.0.1 {UA}"
    assert client_key("10.0.0.1:50999", UA) == client_key("10.0.0.1:1", UA)
    assert client_key("10.0.0.1:50123", UA, "bot-7") == "bot-7"
    assert client_key("[::1]:4000", "") == "[::1] -"


def test_native_resubscribe_after_a_gap_is_detected_and_recovered() -> None:
    r = Report(notice_window_s=5)
    r.opened(1, "native", "/ws", "127.0.0.1:5000", UA, None, 100.0)
    r.subscribed(1, "book.BTC-USD", "BTC-USD", True, 100.1)
    r.subscribed(1, "trades.BTC-USD", "BTC-USD", False, 100.1)
    r.fault(1, "gap", {"channel": "book.BTC-USD", "venue": "native", "done": "dropped"}, 101.0)
    # A resubscribe of another symbol, or of trades, is not a reaction to this fault.
    r.subscribed(1, "book.ETH-USD", "ETH-USD", True, 101.1)
    r.subscribed(1, "trades.BTC-USD", "BTC-USD", False, 101.2)
    assert outcome(r, 101.3)["detected"] is False
    assert outcome(r, 101.3)["pending"] is True
    r.subscribed(1, "book.BTC-USD", "BTC-USD", True, 101.25)
    out = outcome(r, 102.0)
    assert out["symbol"] == "BTC-USD"
    assert out["detected"] is True and out["reaction"] == "resubscribed"
    assert out["reaction_s"] == 0.25 and out["time_to_book_s"] == 0.25
    assert out["recovered"] is True and out["never_noticed"] is False
    assert out["storm"] is False and out["reconnected_after_s"] is None


def test_a_checksum_fault_ignored_while_connected_is_never_noticed() -> None:
    r = Report(notice_window_s=5)
    r.opened(1, "native", "/ws", "127.0.0.1:5000", UA, None, 100.0)
    r.subscribed(1, "book.BTC-USD", "BTC-USD", True, 100.0)
    r.fault(1, "checksum", {"symbol": "BTC-USD", "venue": "native"}, 101.0)
    assert outcome(r, 105.9)["never_noticed"] is False  # still within the window
    out = outcome(r, 106.0)
    assert out["never_noticed"] is True and out["detected"] is False
    assert out["recovered"] is False and out["time_to_book_s"] is None
    assert r.summary(106.0)["totals"]["never_noticed"] == 1
    # A late resync still counts as detected and recovered, but late: never noticed
    # within the window stays true.
    r.subscribed(1, "book.BTC-USD", "BTC-USD", True, 108.0)
    out = outcome(r, 109.0)
    assert out["detected"] is True and out["time_to_book_s"] == 7.0
    assert out["never_noticed"] is True


def test_a_client_that_closes_is_not_counted_as_never_noticing() -> None:
    r = Report(notice_window_s=5)
    r.opened(1, "native", "/ws", "127.0.0.1:5000", UA, None, 100.0)
    r.subscribed(1, "book.BTC-USD", "BTC-USD", True, 100.0)
    r.fault(1, "gap", {"symbol": "BTC-USD"}, 101.0)
    r.closed(1, 1000, "client", "bye", 102.0)
    out = outcome(r, 200.0)
    assert out["never_noticed"] is False and out["detected"] is False
    assert out["closed_by"] == "client" and out["close_code"] == 1000
    assert out["closed_after_s"] == 1.0
    conn = r.summary(200.0)["connections"][0]
    assert conn["closed_by"] == "client" and conn["duration_s"] == 2.0
    assert conn["subscribed"] == ["book.BTC-USD"] and conn["venue"] == "native"


def test_duplicates_and_latency_need_no_reaction() -> None:
    r = Report(notice_window_s=1)
    r.opened(1, "okx", "/ws/v5/public", "127.0.0.1:5000", UA, None, 0.0)
    r.fault(1, "duplicate", {"symbol": "BTC-USDT"}, 1.0)
    r.fault(1, "latency", {"symbol": "BTC-USDT", "ms": 200}, 1.0)
    for out in r.summary(60.0)["faults"]:
        assert out["never_noticed"] is False and out["pending"] is False
        assert out["detected"] is False
    assert r.summary(60.0)["faults"][1]["detail"] == {"symbol": "BTC-USDT", "ms": 200}


def test_binance_recovers_at_a_rest_snapshot_taken_while_streaming() -> None:
    r = Report(notice_window_s=5)
    r.opened(1, "binance", "/stream/0", "127.0.0.1:5000", UA, None, 0.0)
    r.subscribed(1, "binance|btcusdt@depth@100ms", "BTC-USDT", True, 0.1)
    r.rest("binance", "/api/v3/depth", "BTC-USDT", "127.0.0.1:0", UA, None, 200, 0.2)
    r.fault(1, "disconnect", {"symbol": "BTC-USDT", "venue": "binance", "code": 1011}, 10.0)
    r.closed(1, 1011, "server", "resync", 10.0)
    # The client fetches REST before it resubscribed: that snapshot proves nothing.
    r.rest("binance", "/api/v3/depth", "BTC-USDT", "127.0.0.1:0", UA, None, 200, 10.3)
    r.opened(2, "binance", "/stream/0", "127.0.0.1:5001", UA, None, 10.5)
    r.subscribed(2, "binance|btcusdt@depth@100ms", "BTC-USDT", True, 10.6)
    r.rest("binance", "/api/v3/exchangeInfo", None, "127.0.0.1:0", UA, None, 200, 10.65)
    r.rest("binance", "/api/v3/depth", "BTC-USDT", "127.0.0.1:0", UA, None, 200, 10.7)
    out = outcome(r, 20.0)
    assert out["reaction"] == "rest_snapshot" and out["reaction_s"] == 0.3
    assert out["reconnected_after_s"] == 0.5
    assert out["rest_snapshot"] is True and out["resubscribed"] is True
    assert out["time_to_book_s"] == 0.7
    assert out["closed_by"] == "server" and out["close_code"] == 1011
    client = r.summary(20.0)["clients"][0]
    assert client["connections"] == 2 and client["snapshot_requests"] == 3
    assert client["reconnects"] == 1  # the first connection is not one
    assert client["recovered"] == 1


def test_a_stale_rest_answer_does_not_count_as_recovery() -> None:
    r = Report()
    r.opened(1, "binance", "/ws", "127.0.0.1:5000", UA, None, 0.0)
    r.subscribed(1, "binance|btcusdt@depth@100ms", "BTC-USDT", True, 0.0)
    r.fault(1, "gap", {"symbol": "BTC-USDT", "venue": "binance"}, 1.0)
    r.rest("binance", "/api/v3/depth", "BTC-USDT", "127.0.0.1:0", UA, None, 200, 1.2)
    r.fault(
        None,
        "stale_snapshot",
        {"symbol": "BTC-USDT", "venue": "binance", "peer": "127.0.0.1:0", "user_agent": UA},
        1.2,
    )
    r.rest("binance", "/api/v3/depth", "BTC-USDT", "127.0.0.1:0", UA, None, 429, 1.4)
    assert outcome(r, 3.0)["recovered"] is False  # stale, then refused
    r.rest("binance", "/api/v3/depth", "BTC-USDT", "127.0.0.1:0", UA, None, 200, 2.0)
    out = outcome(r, 3.0)
    assert out["detected"] is True and out["reaction_s"] == 0.2
    assert out["time_to_book_s"] == 1.0
    stale = outcome(r, 3.0, 1)
    assert stale["conn"] is None and stale["client"] == f"127.0.0.1 {UA}"


def test_okx_recovers_at_its_resubscription() -> None:
    r = Report()
    r.opened(1, "okx", "/ws/v5/public", "127.0.0.1:5000", UA, "ccxt-okx", 0.0)
    r.subscribed(1, "okx|books|BTC-USDT", "BTC-USDT", True, 0.0)
    r.fault(1, "checksum", {"symbol": "BTC-USDT", "venue": "okx"}, 5.0)
    r.unsubscribed(1, "okx|books|BTC-USDT", 5.5)
    r.subscribed(1, "okx|books|BTC-USDT", "BTC-USDT", True, 5.6)
    out = outcome(r, 30.0)
    assert out["client"] == "ccxt-okx"
    assert out["reaction"] == "resubscribed" and out["time_to_book_s"] == 0.6


def test_reconnects_past_the_threshold_are_a_storm() -> None:
    r = Report(storm_window_s=10, storm_count=5)
    r.opened(1, "kraken", "/", "127.0.0.1:5000", UA, None, 0.0)
    r.subscribed(1, "kraken|v1|book-10|XBT/USD", "BTC-USD", True, 0.0)
    r.fault(1, "checksum", {"symbol": "BTC-USD", "venue": "kraken"}, 1.0)
    t = 1.0
    for conn in range(2, 9):  # seven reconnects, one every second
        r.closed(conn - 1, 1006, "network", "", t)
        t += 1.0
        r.opened(conn, "kraken", "/", f"127.0.0.1:{5000 + conn}", UA, None, t)
        r.subscribed(conn, "kraken|v1|book-10|XBT/USD", "BTC-USD", True, t)
    out = outcome(r, 30.0)
    assert out["reaction"] == "reconnected" and out["reconnected_after_s"] == 1.0
    assert out["time_to_book_s"] == 1.0
    assert out["storm"] is True
    assert out["storm_detail"]["reconnects"] == 7
    assert out["storm_detail"]["peak_reconnects_per_s"] == 0.7
    assert r.summary(30.0)["totals"]["storms"] == 1

    calm = Report(storm_window_s=10, storm_count=5)
    calm.opened(1, "kraken", "/", "127.0.0.1:5000", UA, None, 0.0)
    calm.fault(1, "checksum", {"symbol": "BTC-USD"}, 1.0)
    for conn in range(2, 5):  # three reconnects: a client backing off
        calm.opened(conn, "kraken", "/", "127.0.0.1:1", UA, None, conn * 3.0)
    assert outcome(calm, 30.0)["storm"] is False


def test_clients_are_told_apart_by_user_agent_and_name() -> None:
    r = Report()
    r.opened(1, "binance", "/stream", "127.0.0.1:5000", "ccxt", None, 0.0)
    r.opened(2, "binance", "/stream", "127.0.0.1:5001", "cryptofeed", None, 0.0)
    r.fault(1, "gap", {"symbol": "BTC-USDT"}, 1.0)
    # The other client's REST fetch is not this one's reaction.
    r.rest("binance", "/api/v3/depth", "BTC-USDT", "127.0.0.1:0", "cryptofeed", None, 200, 1.1)
    assert outcome(r, 2.0)["detected"] is False
    r.rest("binance", "/api/v3/depth", "BTC-USDT", "127.0.0.1:0", "ccxt", None, 200, 1.5)
    assert outcome(r, 2.0)["reaction_s"] == 0.5
    assert {c["client"] for c in r.summary(2.0)["clients"]} == {
        "127.0.0.1 ccxt",
        "127.0.0.1 cryptofeed",
    }


def test_gateway_wide_faults_are_listed_without_a_verdict() -> None:
    r = Report()
    r.fault(None, "burst", {"venue": "*", "factor": 10}, 1.0)
    out = outcome(r, 2.0)
    assert out["conn"] is None and out["detected"] is None and out["never_noticed"] is False


def test_the_summary_renders_as_tables() -> None:
    r = Report(notice_window_s=1)
    r.opened(1, "native", "/ws", "127.0.0.1:5000", UA, "sdk", 0.0)
    r.subscribed(1, "book.BTC-USD", "BTC-USD", True, 0.0)
    r.fault(1, "checksum", {"symbol": "BTC-USD"}, 1.0)
    r.opened(2, "native", "/ws", "127.0.0.1:5001", UA, "lazy", 0.0)
    r.subscribed(2, "book.BTC-USD", "BTC-USD", True, 0.0)
    r.fault(2, "checksum", {"symbol": "BTC-USD"}, 1.0)
    r.subscribed(1, "book.BTC-USD", "BTC-USD", True, 1.2)
    text = render_summary(r.summary(5.0))
    assert "2 connections, 2 faults, 1 detected, 1 recovered, 1 never noticed" in text
    lines = [line for line in text.splitlines() if "checksum" in line]
    assert len(lines) == 2
    assert any("resubscribed" in line and "0.20s" in line for line in lines)
    assert any("lazy" in line and "none" in line and "yes" in line for line in lines)


def test_a_rate_limited_client_is_checked_against_retry_after() -> None:
    r = Report()
    peer = {"peer": "127.0.0.1:0", "user_agent": UA, "venue": "binance"}
    r.rest("binance", "/api/v3/depth", "BTC-USDT", "127.0.0.1:0", UA, None, 429, 1.0)
    r.fault(None, "rate_limit", {**peer, "symbol": "BTC-USDT", "retry_after": 2}, 1.0)
    r.rest("binance", "/api/v3/depth", "BTC-USDT", "127.0.0.1:0", UA, None, 418, 1.5)
    r.fault(None, "rate_limit", {**peer, "symbol": "BTC-USDT", "retry_after": 5}, 1.5)
    r.rest("binance", "/api/v3/depth", "BTC-USDT", "127.0.0.1:0", UA, None, 200, 7.0)
    first, second = r.summary(10.0)["faults"]
    assert first["reaction_needed"] is True
    assert first["next_request_s"] == 0.5 and first["honoured_retry_after"] is False
    assert first["detected"] is False and first["reaction"] == "asked_again"
    assert second["next_request_s"] == 5.5 and second["honoured_retry_after"] is True
    assert second["detected"] is True and second["reaction"] == "backed_off"
    assert r.summary(10.0)["totals"]["snapshot_requests"] == 3


def test_report_file_with_workers_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    from tickwire.cli import main

    assert main(["serve", "--workers", "2", "--report", "r.json", "--admin-port", "off"]) == 2
    assert "--report FILE with --workers" in capsys.readouterr().err


def test_memory_is_bounded_by_clients_connections_and_faults(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import tickwire.faults.report as mod

    monkeypatch.setattr(mod, "MAX_CLIENTS", 2)
    monkeypatch.setattr(mod, "MAX_CONNS", 3)
    monkeypatch.setattr(mod, "MAX_FAULTS", 2)
    r = Report()
    for i in range(4):
        r.opened(i, "native", "/ws", f"10.0.0.{i}:1", UA, None, float(i))
        r.closed(i, 1000, "client", "", float(i) + 0.5)
    assert set(r.events) == {f"10.0.0.0 {UA}", f"10.0.0.1 {UA}", mod.OTHERS}
    assert r.conns[3].client == mod.OTHERS
    assert sorted(r.conns) == [1, 2, 3]  # the oldest closed one was forgotten
    for _ in range(3):
        r.fault(3, "gap", {"symbol": "X"}, 5.0)
    assert len(r.faults) == 2 and r.summary(6.0)["totals"]["faults_dropped"] == 1


def test_a_fault_without_a_symbol_concerns_every_book_of_its_connection() -> None:
    r = Report(notice_window_s=5)
    r.opened(1, "kraken", "/kraken/v2", "127.0.0.1:5000", UA, None, 0.0)
    r.subscribed(1, "kraken|v2|book-10|BTC/USD", "BTC-USD", True, 0.0)
    r.subscribed(1, "kraken|v2|book-10|ETH/USD", "ETH-USD", True, 0.0)
    r.subscribed(1, "kraken|v2|trade|SOL/USD", "SOL-USD", False, 0.0)
    # What the fault engine reports for a stall: no symbol.
    r.fault(1, "stall", {"fault": 3, "name": "stall", "seconds": 30, "venue": "kraken"}, 1.0)
    r.closed(1, 1006, "client", "", 7.0)
    r.opened(2, "kraken", "/kraken/v2", "127.0.0.1:5001", UA, None, 7.1)
    r.subscribed(2, "kraken|v2|book-10|BTC/USD", "BTC-USD", True, 7.2)
    out = outcome(r, 8.0)
    assert out["symbol"] is None and out["symbols"] == ["BTC-USD", "ETH-USD"]
    assert out["reaction"] == "reconnected" and out["reconnected_after_s"] == 6.1
    assert out["recovered"] is False  # ETH-USD's book is not back yet
    assert out["never_noticed"] is True  # it reacted, but after the 5 s window
    r.subscribed(2, "kraken|v2|book-10|ETH/USD", "ETH-USD", True, 7.5)
    assert outcome(r, 8.0)["time_to_book_s"] == 6.5


def test_a_rest_fault_is_the_answer_to_the_request_reported_next() -> None:
    r = Report()
    r.opened(1, "binance", "/binance/stream/0", "127.0.0.1:5000", UA, "bot", 0.0)
    r.subscribed(1, "binance|btcusdt@depth@100ms", "BTC-USDT", True, 0.0)
    # The engine decides before the answer is sent, then the gateway reports the request.
    rest = {"scope": "rest", "venue": "binance", "path": "/binance/api/v3/depth"}
    r.fault(None, "rate_limit", {**rest, "status": 429, "client": "127.0.0.1"}, 1.0)
    r.rest("binance", "/api/v3/depth", "BTC-USDT", "127.0.0.1:0", UA, "bot", 429, 1.0)
    stale = {"symbol": "BTC-USDT", "seq": 90, "stream_seq": 100, "where": "rest"}
    r.fault(None, "stale_snapshot", {**stale, "venue": "binance"}, 2.0)
    r.rest("binance", "/api/v3/depth", "BTC-USDT", "127.0.0.1:0", UA, "bot", 200, 2.0)
    r.fault(1, "gap", {"symbol": "BTC-USDT", "venue": "binance"}, 1.5)
    limited, stale_out, gap = r.summary(5.0)["faults"]
    assert limited["client"] == "bot" and limited["symbols"] == ["BTC-USDT"]
    assert limited["next_request_s"] == 1.0  # the stale fetch, not the refused one
    assert limited["reaction"] == "backed_off"  # 1 s without Retry-After to compare
    assert stale_out["client"] == "bot" and stale_out["symbol"] == "BTC-USDT"
    assert stale_out["reaction"] is None  # its own (stale) answer is no reaction
    # The gap's reaction was the stale fetch: detected, but no right book from it.
    assert gap["reaction"] == "rest_snapshot" and gap["recovered"] is False
    r.rest("binance", "/api/v3/depth", "BTC-USDT", "127.0.0.1:0", UA, "bot", 200, 3.0)
    assert r.summary(5.0)["faults"][2]["time_to_book_s"] == 1.5


def test_a_first_connection_is_not_a_reconnect() -> None:
    r = Report()
    # A REST fault while the client starts: its first socket comes after.
    r.fault(None, "stale_snapshot", {"where": "rest", "venue": "okx", "symbol": "X"}, 1.0)
    r.rest("okx", "/api/v5/public/instruments", None, "127.0.0.1:0", UA, "bot", 200, 1.0)
    r.opened(1, "okx", "/okx/ws/v5/public", "127.0.0.1:5000", UA, "bot", 1.1)
    assert outcome(r, 2.0)["reaction"] is None
    r.closed(1, 1006, "network", "", 1.5)
    r.opened(2, "okx", "/okx/ws/v5/public", "127.0.0.1:5001", UA, "bot", 1.7)
    out = outcome(r, 2.0)
    assert out["reaction"] == "reconnected" and out["reconnected_after_s"] == 0.7


def test_resubscribing_a_book_again_and_again_is_a_storm() -> None:
    r = Report(storm_window_s=10, storm_count=5)
    r.opened(1, "okx", "/okx/ws/v5/public", "127.0.0.1:5000", UA, None, 0.0)
    for i, sym in enumerate(["A-USD", "B-USD", "C-USD", "D-USD", "E-USD", "F-USD", "G-USD"]):
        r.subscribed(1, f"okx|books|{sym}", sym, True, 0.1 * i)  # first subscriptions
    r.fault(1, "stale_snapshot", {"symbol": "A-USD", "venue": "okx"}, 1.0)
    assert outcome(r, 2.0)["storm"] is False
    for i in range(6):  # the stale snapshot makes it resubscribe, over and over
        r.subscribed(1, "okx|books|A-USD", "A-USD", True, 1.1 + 0.3 * i)
    out = outcome(r, 5.0)
    assert out["storm"] is True and out["storm_detail"]["snapshot_requests"] == 6
    assert out["storm_detail"]["reconnects"] == 0


def test_a_refused_handshake_and_the_attempts_after_it() -> None:
    r = Report()
    r.opened(1, "okx", "/okx/ws/v5/public", "127.0.0.1:5000", "ccxt", None, 0.0)
    r.closed(1, 1001, "server", "maintenance", 1.0)
    # The handshake is refused (the peer is unknown then: matched by User-Agent).
    r.refused(2, "okx", "/okx/ws/v5/public", "ccxt", None, 429, 1.1)
    r.fault(2, "rate_limit", {"scope": "connect", "status": 429, "retry_after": 3}, 1.1)
    r.refused(3, "okx", "/okx/ws/v5/public", "ccxt", None, 429, 4.5)
    out = outcome(r, 10.0)
    assert out["client"] == "127.0.0.1 ccxt"
    assert out["next_request_s"] == 3.4 and out["backed_off"] is True
    assert out["honoured_retry_after"] is True
    assert r.summary(10.0)["totals"]["refused_handshakes"] == 2
