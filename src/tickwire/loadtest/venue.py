"""``tickwire bench --dialect``: what a venue connection follows, and the venue's clock
(Sans-I/O).

A connection's channels are tickwire names (``book.BTC-USDT``, ``trades.ETH-USDT``,
``ticker.BTC-USDT``); the connection follows their symbols and kinds on the venue,
spelled the venue's way (:mod:`tickwire.dialects.markets`), through a decoder
(:mod:`tickwire.dialects.decode`) that keeps its books verified by the venue's rules.

Latency is measured from the venue's event time (``LATENCY_DEFINITION``), so it is only
as good as the agreement between the venue's clock and this host's. The offset the bench
assumes is reported with the result: 0 (this host's clock is taken as the venue's: right
for a gateway on the same host, or hosts kept in sync by NTP/PTP), a value given with
``--clock-offset MS``, or ``auto``: measured from the venue's REST time endpoint before
the run (the sample with the shortest round trip; the offset is the venue's time minus
the midpoint of the request, good to half that round trip).
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from ..dialects.decode import VENUES, VenueDecoder, make_decoder
from ..exceptions import ConfigError

__all__ = ["TIME_PATHS", "decoder_for", "estimate_offset", "parse_server_time"]

#: Each venue's REST server-time path, after its REST base.
TIME_PATHS = {
    "binance": "/api/v3/time",
    "okx": "/api/v5/public/time",
}


def decoder_for(dialect: str, channels: Sequence[str], depth: int = 0) -> VenueDecoder:
    """The decoder of one connection subscribed to ``channels`` (tickwire names).

    Raises:
        ConfigError: an unknown venue, or a channel that is not ``kind.SYMBOL``.
    """
    if dialect not in VENUES:
        raise ConfigError(f"--dialect must be one of {', '.join(VENUES)}")
    symbols: list[str] = []
    kinds: list[str] = []
    for ch in channels:
        kind, dot, symbol = ch.partition(".")
        if not dot or not symbol or kind not in ("book", "trades", "ticker"):
            raise ConfigError(f"channel {ch!r}: use book.SYMBOL, trades.SYMBOL or ticker.SYMBOL")
        if symbol not in symbols:
            symbols.append(symbol)
        if kind not in kinds:
            kinds.append(kind)
    return make_decoder(dialect, symbols, kinds, depth=depth)


class _BinanceTime(msgspec.Struct):
    serverTime: int  # noqa: N815 - Binance's field name


class _OkxTs(msgspec.Struct):
    ts: str


class _OkxTime(msgspec.Struct):
    data: list[_OkxTs]


#: A venue's millisecond time stands for an instant within that millisecond: its middle.
_HALF_MS = 500_000


def parse_server_time(dialect: str, body: bytes) -> int:
    """The venue time (ns since the epoch) in a REST time answer: the middle of the
    millisecond it names (the venue truncated its clock to it).

    Raises:
        ConfigError: the venue has no usable time endpoint, or the answer is malformed.
    """
    try:
        if dialect == "binance":
            ms = msgspec.json.decode(body, type=_BinanceTime).serverTime
            return ms * 1_000_000 + _HALF_MS
        if dialect == "okx":
            ms = int(msgspec.json.decode(body, type=_OkxTime).data[0].ts)
            return ms * 1_000_000 + _HALF_MS
    except (msgspec.DecodeError, IndexError, ValueError) as exc:
        raise ConfigError(
            f"--clock-offset auto: the {dialect} time answer is unusable: {exc}"
        ) from None
    raise ConfigError(
        f"--clock-offset auto: {dialect} has no millisecond time endpoint; give --clock-offset MS"
    )


def estimate_offset(samples: Sequence[tuple[int, int, int]]) -> tuple[int, int]:
    """The venue's clock minus this host's, from ``(sent_ns, received_ns, venue_ns)``.

    Returns ``(offset_ns, round_trip_ns)`` of the sample with the shortest round trip
    (the least queueing): the venue answered at some instant of it, taken as the midpoint.

    Raises:
        ConfigError: no sample.
    """
    if not samples:
        raise ConfigError("--clock-offset auto: no time sample could be taken")
    sent, received, venue = min(samples, key=lambda s: s[1] - s[0])
    return venue - (sent + received) // 2, received - sent
