"""Kraken book checksums by cryptofeed's ``order_book`` package (run in .venv-interop).

stdin: one JSON object a line, ``{"bids": [[price, qty], ...], "asks": [...]}`` with the
wire's decimal strings; stdout: one line a book, its ``OrderBook(checksum_format=
"KRAKEN").checksum()``. Nothing of tickwire is imported: this is the second opinion.
"""

from __future__ import annotations

import json
import sys
from decimal import Decimal

from order_book import OrderBook


def main() -> None:
    for line in sys.stdin:
        if not line.strip():
            continue
        levels = json.loads(line)
        book = OrderBook(checksum_format="KRAKEN")
        for price, qty in levels["bids"]:
            book.bids[Decimal(price)] = Decimal(qty)
        for price, qty in levels["asks"]:
            book.asks[Decimal(price)] = Decimal(qty)
        print(book.checksum())


if __name__ == "__main__":
    main()
