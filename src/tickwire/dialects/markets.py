"""How tickwire's symbols are spelled by each venue (Sans-I/O).

A tickwire symbol is ``BASE-QUOTE`` (``BTC-USDT``); ``/`` and ``_`` are accepted as the
separator too. Each venue spells it its own way:

=============  ==============  ===========  =========  ============  =============
tickwire       Binance (REST)  Binance WS   OKX        Kraken v2     Kraken v1
=============  ==============  ===========  =========  ============  =============
``BTC-USDT``   ``BTCUSDT``     ``btcusdt``  ``BTC-USDT``  ``BTC/USDT``  ``XBT/USDT``
``ETH-USD``    ``ETHUSD``      ``ethusd``   ``ETH-USD``   ``ETH/USD``   ``ETH/USD``
``SYM0``       ``SYM0USD``     ``sym0usd``  ``SYM0-USD``  ``SYM0/USD``  ``SYM0/USD``
=============  ==============  ===========  =========  ============  =============

A symbol without a quote currency (``SYM0``, what ``--symbols 3`` serves) is quoted in
:data:`DEFAULT_QUOTE`. Kraken's v1 names (its ``wsname``) use Kraken's own asset codes
for two assets: ``XBT`` for BTC and ``XDG`` for DOGE.

Lookups go through a table built from the served symbols, never by parsing a venue
name, so an unknown venue name is always an error, never a guess.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

__all__ = ["DEFAULT_QUOTE", "Market", "Markets", "split_symbol"]

#: The quote currency of a symbol that names none.
DEFAULT_QUOTE = "USD"

#: Kraken's v1 (``wsname``) asset codes that differ from the common ones.
_KRAKEN_V1_ASSETS = {"BTC": "XBT", "DOGE": "XDG"}


def split_symbol(symbol: str) -> tuple[str, str]:
    """Return ``(base, quote)`` of a tickwire symbol (:data:`DEFAULT_QUOTE` if none)."""
    for sep in ("-", "/", "_"):
        base, found, quote = symbol.partition(sep)
        if found and base and quote:
            return base.upper(), quote.upper()
    return symbol.upper(), DEFAULT_QUOTE


class Market:
    """One served symbol and its names on every venue."""

    __slots__ = (
        "symbol",
        "base",
        "quote",
        "binance",
        "binance_stream",
        "okx",
        "kraken",
        "kraken_v1",
        "kraken_pair",
    )

    def __init__(self, symbol: str) -> None:
        self.symbol = symbol
        base, quote = split_symbol(symbol)
        self.base = base
        self.quote = quote
        self.binance = base + quote
        self.binance_stream = self.binance.lower()
        self.okx = f"{base}-{quote}"
        self.kraken = f"{base}/{quote}"
        v1 = _KRAKEN_V1_ASSETS
        self.kraken_v1 = f"{v1.get(base, base)}/{v1.get(quote, quote)}"
        # The REST pair key (AssetPairs' keys, ``Depth?pair=``): the altname.
        self.kraken_pair = f"{v1.get(base, base)}{v1.get(quote, quote)}"

    def __repr__(self) -> str:
        return f"<Market {self.symbol}>"


class Markets:
    """The served symbols, looked up by any venue's spelling.

    :meth:`update` adds symbols served later (a source that follows new symbols); two
    tickwire symbols that one venue would spell alike (``BTC-USD`` and ``BTC/USD``)
    keep the first.
    """

    def __init__(self, symbols: Iterable[str] = ()) -> None:
        self.by_symbol: dict[str, Market] = {}
        self.by_binance: dict[str, Market] = {}
        self.by_okx: dict[str, Market] = {}
        self.by_kraken: dict[str, Market] = {}
        self.by_kraken_v1: dict[str, Market] = {}
        self.by_kraken_pair: dict[str, Market] = {}
        self.update(symbols)

    def update(self, symbols: Iterable[str]) -> None:
        """Add the symbols not known yet."""
        for symbol in symbols:
            if symbol in self.by_symbol:
                continue
            m = Market(symbol)
            self.by_symbol[symbol] = m
            self.by_binance.setdefault(m.binance, m)
            self.by_okx.setdefault(m.okx, m)
            self.by_kraken.setdefault(m.kraken, m)
            self.by_kraken_v1.setdefault(m.kraken_v1, m)
            self.by_kraken_pair.setdefault(m.kraken_pair, m)
            # Kraken accepts either spelling in REST ``pair=`` and v1 subscriptions.
            self.by_kraken_pair.setdefault(m.binance, m)

    def __iter__(self) -> Iterator[Market]:
        return iter(self.by_symbol.values())

    def __len__(self) -> int:
        return len(self.by_symbol)
