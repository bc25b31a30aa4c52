"""Type stub of the compiled market core (``_market.c``)."""

from collections.abc import Sequence

__all__ = ["Flow", "Levels"]

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

# A rejected message: the index of the first change (or pair) not valid, or the crossed
# (best bid, best ask) prices.
_Fault = int | tuple[str, str]

class Levels:
    """An ingest symbol's L2 book of exact decimals (``tickwire.ingest.PyLevels``)."""

    def __init__(self, book_ch: bytes) -> None: ...
    def apply(self, changes: Sequence[Sequence[str]], ts: int, seq: int, /) -> bytes | _Fault: ...
    def check(self, changes: Sequence[Sequence[str]], /) -> int: ...
    def load(
        self, bids: Sequence[Sequence[str]], asks: Sequence[Sequence[str]], /
    ) -> _Fault | None: ...
    def bids(self, depth: int = -1, /) -> list[tuple[str, str]]: ...
    def asks(self, depth: int = -1, /) -> list[tuple[str, str]]: ...
    def top(self) -> tuple[str | None, str | None, str | None, str | None]: ...
    def checksum(self) -> int: ...
    def depth(self) -> tuple[int, int]: ...
