"""Type stub of the compiled market core (``_market.c``)."""

from collections.abc import Sequence

__all__ = ["Flow"]

_Batch = tuple[int, int, int, int, bytes, bytes]
_Levels = list[tuple[str, str]]
_Trades = list[tuple[int, str, str, str, int]]
_Px = str | None

class Flow:
    def __init__(
        self,
        seed: Sequence[int],
        mid: int,
        price_decimals: int,
        qty_decimals: int,
        sizes: Sequence[int],
        add_table: Sequence[int],
        cancel_table: Sequence[int],
        book_ch: bytes,
        trades_ch: bytes,
    ) -> None: ...
    @property
    def seqs(self) -> tuple[int, int]: ...
    def seed(self, ts: int, /) -> _Batch: ...
    def run(self, n: int, ts: int, /) -> _Batch: ...
    def rests(self, bid: bool, px: int, /) -> bool: ...
    # (book_seq, trade_seq, bids, asks, trades, last, open, high, low, volume, count, ts)
    def export(
        self,
    ) -> tuple[int, int, _Levels, _Levels, _Trades, _Px, _Px, _Px, _Px, str, int, int]: ...
    # (ts, bid, bid_qty, ask, ask_qty, last, open, high, low, volume, trades)
    def ticker(self) -> tuple[int, _Px, _Px, _Px, _Px, _Px, _Px, _Px, _Px, str, int]: ...
