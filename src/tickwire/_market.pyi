"""Type stub of the compiled market core (``_market.c``)."""

from collections.abc import Sequence

__all__ = ["Flow"]

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
    def seed(self, ts: int, /) -> tuple[int, int, int, int, bytes, bytes]: ...
    def run(self, n: int, ts: int, /) -> tuple[int, int, int, int, bytes, bytes]: ...
    def export(
        self,
    ) -> tuple[
        int,
        int,
        list[tuple[str, str]],
        list[tuple[str, str]],
        list[tuple[int, str, str, str, int]],
        str | None,
        str | None,
        str | None,
        str | None,
        str,
        int,
        int,
    ]: ...
    def ticker(
        self,
    ) -> tuple[
        int,
        str | None,
        str | None,
        str | None,
        str | None,
        str | None,
        str | None,
        str | None,
        str | None,
        str,
        int,
    ]: ...
