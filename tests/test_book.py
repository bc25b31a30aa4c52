"""The L2 book: exact decimal levels, ordering, deletes, and the checksum's fixed vectors.

The checksum vectors are literal: input levels -> the exact checksum string -> the CRC32
integer (computed once with ``binascii.crc32``, independently of ``tickwire.book``). A
change to the string form breaks these tests, and it must: clients depend on it.
"""

from __future__ import annotations

import random
import zlib
from decimal import Decimal

import pytest

from tickwire.book import CHECKSUM_DEPTH, Book, checksum_string, is_zero
from tickwire.exceptions import BookError

# -- fixed vectors ------------------------------------------------------------------------

TS = 1_700_000_000_000_000_000

# The example from the book module docstring and docs/protocol.md.
DOC_ASKS = [("100.5", "0.0100")]
DOC_BIDS = [("100.0", "2.0000")]
DOC_STRING = "1005100" + "100020000"
DOC_CRC = 3881386666

# Twelve levels per side, so the 11th and 12th must be left out; leading-zero quantities.
DEEP_ASKS = [
    ("100.50", "0.0100"),
    ("101.50", "1.0000"),
    ("102.50", "0.5000"),
    ("103.50", "2.2500"),
    ("104.50", "0.0001"),
    ("105.50", "10.0000"),
    ("106.50", "3.1400"),
    ("107.50", "0.0700"),
    ("108.50", "1.5000"),
    ("109.50", "0.0020"),
    ("110.50", "9.9999"),  # 11th: not in the checksum
    ("111.50", "7.0000"),  # 12th: not in the checksum
]
DEEP_BIDS = [
    ("99.75", "0.2500"),
    ("98.75", "0.0030"),
    ("97.75", "4.0000"),
    ("96.75", "1.1000"),
    ("95.75", "0.0900"),
    ("94.75", "6.0000"),
    ("93.75", "0.0010"),
    ("92.75", "2.0000"),
    ("91.75", "5.5000"),
    ("90.75", "0.4000"),
    ("89.75", "8.0000"),  # 11th
    ("88.75", "3.0000"),  # 12th
]
DEEP_STRING = (
    # asks, lowest first: strip(price) + strip(qty)
    "10050" + "100"
    "10150" + "10000"
    "10250" + "5000"
    "10350" + "22500"
    "10450" + "1"
    "10550" + "100000"
    "10650" + "31400"
    "10750" + "700"
    "10850" + "15000"
    "10950" + "20"
    # bids, highest first
    "9975" + "2500"
    "9875" + "30"
    "9775" + "40000"
    "9675" + "11000"
    "9575" + "900"
    "9475" + "60000"
    "9375" + "10"
    "9275" + "20000"
    "9175" + "55000"
    "9075" + "4000"
)
DEEP_CRC = 2490802123

# Prices whose string order differs from their numeric order (9.99 < 10.01 < 100.00).
MIXED_ASKS = [("9.99", "5.000"), ("10.01", "1.000"), ("100.00", "0.25")]
MIXED_BIDS = [("10.5", "0.25"), ("9.5", "1")]
MIXED_STRING = "9995000" + "10011000" + "1000025" + "10525" + "951"
MIXED_CRC = 3074985359

# Kraken's own v1 example level: "0.05000" x "0.00000304" formats as "5000304".
KRAKEN_ASKS = [("0.05000", "0.00000304")]
KRAKEN_STRING = "5000304"
KRAKEN_CRC = 3935865742

VECTORS = [
    pytest.param(DOC_ASKS, DOC_BIDS, DOC_STRING, DOC_CRC, id="doc-example"),
    pytest.param(DEEP_ASKS, DEEP_BIDS, DEEP_STRING, DEEP_CRC, id="12-levels-truncated"),
    pytest.param(MIXED_ASKS, MIXED_BIDS, MIXED_STRING, MIXED_CRC, id="numeric-order"),
    pytest.param(KRAKEN_ASKS, [], KRAKEN_STRING, KRAKEN_CRC, id="kraken-v1-level"),
    pytest.param([], [], "", 0, id="empty"),
]


def _shuffled_book(asks: list[tuple[str, str]], bids: list[tuple[str, str]], seed: int) -> Book:
    ops = [("ask", p, q) for p, q in asks] + [("bid", p, q) for p, q in bids]
    random.Random(seed).shuffle(ops)
    book = Book()
    for side, price, qty in ops:
        book.apply(side, price, qty)
    return book


@pytest.mark.parametrize(("asks", "bids", "string", "crc"), VECTORS)
def test_checksum_string_vector(
    asks: list[tuple[str, str]], bids: list[tuple[str, str]], string: str, crc: int
) -> None:
    assert checksum_string(asks, bids) == string


@pytest.mark.parametrize(("asks", "bids", "string", "crc"), VECTORS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_book_checksum_vector(
    asks: list[tuple[str, str]],
    bids: list[tuple[str, str]],
    string: str,
    crc: int,
    seed: int,
) -> None:
    # Levels arrive in any order; the book sorts them and hashes the documented string.
    book = _shuffled_book(asks, bids, seed)
    assert book.checksum() == crc
    assert checksum_string(book.asks(), book.bids()) == string


def test_checksum_is_unsigned() -> None:
    # DEEP_CRC >= 2**31: a signed CRC32 (Java, JavaScript | 0) would be negative.
    assert DEEP_CRC > 2**31
    assert _shuffled_book(DEEP_ASKS, DEEP_BIDS, 0).checksum() == DEEP_CRC


def test_checksum_ignores_levels_below_depth() -> None:
    book = _shuffled_book(DEEP_ASKS, DEEP_BIDS, 0)
    assert CHECKSUM_DEPTH == 10
    book.apply("ask", "111.50", "0")
    book.apply("bid", "88.75", "123.4567")
    book.apply("ask", "200.00", "1.0000")
    assert book.checksum() == DEEP_CRC
    # ...but a change within the top 10 does change it.
    book.apply("ask", "100.50", "0.0200")
    assert book.checksum() != DEEP_CRC


def test_checksum_cache_follows_quantity_changes() -> None:
    book = _shuffled_book(DOC_ASKS, DOC_BIDS, 0)
    assert book.checksum() == DOC_CRC
    book.apply("ask", "100.5", "0.0300")
    assert book.checksum() == zlib.crc32(b"1005300" + b"100020000")
    book.apply("ask", "100.5", "0.0100")
    assert book.checksum() == DOC_CRC


# -- levels and ordering ------------------------------------------------------------------


def test_levels_are_ordered_best_first_numerically() -> None:
    book = _shuffled_book(MIXED_ASKS, MIXED_BIDS, 7)
    assert book.asks() == [("9.99", "5.000"), ("10.01", "1.000"), ("100.00", "0.25")]
    assert book.bids() == [("10.5", "0.25"), ("9.5", "1")]
    assert book.best_ask() == ("9.99", "5.000")
    assert book.best_bid() == ("10.5", "0.25")
    assert book.asks(2) == [("9.99", "5.000"), ("10.01", "1.000")]
    assert book.bids(1) == [("10.5", "0.25")]
    assert book.asks(0) == []
    assert book.depth() == (2, 3)


def test_strings_are_kept_exactly() -> None:
    # No float round trip, no normalisation: what came in goes out.
    book = Book()
    book.apply("bid", "0.10000000", "0.00000001")
    book.apply("ask", "123456789.123456789", "1E+2")
    assert book.bids() == [("0.10000000", "0.00000001")]
    assert book.asks() == [("123456789.123456789", "1E+2")]
    assert book.spread() == Decimal("123456789.023456789")


def test_update_replaces_quantity_in_place() -> None:
    book = Book()
    book.apply("bid", "10.00", "1.0000")
    book.apply("bid", "11.00", "2.0000")
    book.apply("bid", "10.00", "3.5000")
    assert book.bids() == [("11.00", "2.0000"), ("10.00", "3.5000")]
    assert book.depth() == (2, 0)


@pytest.mark.parametrize("zero", ["0", "0.0", "0.0000", "00.00", "0."])
def test_zero_quantity_deletes(zero: str) -> None:
    book = Book()
    book.apply("ask", "10.00", "1.0000")
    book.apply("ask", "11.00", "1.0000")
    book.apply("ask", "10.00", zero)
    assert book.asks() == [("11.00", "1.0000")]
    book.apply("ask", "11.00", zero)
    assert book.asks() == [] and book.best_ask() is None


def test_deleting_absent_level_is_a_no_op() -> None:
    book = Book()
    book.apply("bid", "10.00", "1.0000")
    book.apply("bid", "12.00", "0")
    book.apply("ask", "12.00", "0")
    assert book.bids() == [("10.00", "1.0000")] and book.asks() == []


@pytest.mark.parametrize(
    ("qty", "zero"),
    [
        ("0", True),
        ("0.0000", True),
        ("000", True),
        (".0", True),
        ("0.0100", False),
        ("1", False),
        ("10", False),
        ("100.000", False),
        ("0.00000001", False),
    ],
)
def test_is_zero(qty: str, zero: bool) -> None:
    assert is_zero(qty) is zero


@pytest.mark.parametrize("side", ["buy", "sell", "BID", "", "bids"])
def test_bad_side_raises(side: str) -> None:
    book = Book()
    with pytest.raises(BookError, match="side"):
        book.apply(side, "10.00", "1.0000")
    assert book.depth() == (0, 0)


@pytest.mark.parametrize("price", ["abc", "", "1.2.3", "NaN", "Infinity", "-1.00", "0", "0.00"])
def test_bad_price_raises(price: str) -> None:
    book = Book()
    with pytest.raises(BookError, match="price"):
        book.apply("bid", price, "1.0000")
    with pytest.raises(ValueError):  # BookError is a ValueError too
        book.apply("ask", price, "1.0000")
    assert book.depth() == (0, 0)


def test_empty_book_views() -> None:
    book = Book()
    assert book.bids() == [] and book.asks() == []
    assert book.best_bid() is None and book.best_ask() is None
    assert book.spread() is None
    book.apply("bid", "1.00", "1")
    assert book.spread() is None
    assert book.depth() == (1, 0)
    assert repr(book) == "<Book bids=1 asks=0 best=('1.00', '1')/None>"


def test_load_replaces_and_clear_empties() -> None:
    book = _shuffled_book(DEEP_ASKS, DEEP_BIDS, 3)
    book.load(DOC_BIDS, DOC_ASKS)
    assert book.bids() == DOC_BIDS and book.asks() == DOC_ASKS
    assert book.checksum() == DOC_CRC
    # A snapshot never carries zero levels, but if it did they would not appear.
    book.load([("5.00", "0"), ("4.00", "1")], [])
    assert book.bids() == [("4.00", "1")]
    book.clear()
    assert book.depth() == (0, 0) and book.checksum() == 0


def test_equality() -> None:
    a = _shuffled_book(DEEP_ASKS, DEEP_BIDS, 1)
    b = _shuffled_book(DEEP_ASKS, DEEP_BIDS, 2)
    assert a == b
    b.apply("bid", "88.75", "3.0001")  # below the checksum depth: still unequal
    assert a != b
    assert a.checksum() == b.checksum()
    b.apply("bid", "88.75", "3.0000")
    assert a == b
    # Same price on the other side is a different book.
    c, d = Book(), Book()
    c.apply("bid", "1.00", "1")
    d.apply("ask", "1.00", "1")
    assert c != d
    assert a != "not a book"
    assert Book().__eq__(object()) is NotImplemented


def test_random_updates_match_a_reference_model() -> None:
    """A dict-of-Decimal reference book agrees with Book after every update."""
    rng = random.Random(42)
    book = Book()
    ref: dict[str, dict[str, str]] = {"bid": {}, "ask": {}}
    for _ in range(3000):
        side = rng.choice(("bid", "ask"))
        price = f"{rng.randint(1, 300) / 4:.2f}"
        qty = "0" if rng.random() < 0.3 else f"{rng.randint(1, 50000) / 10000:.4f}"
        book.apply(side, price, qty)
        if is_zero(qty):
            ref[side].pop(price, None)
        else:
            ref[side][price] = qty
    bids = sorted(ref["bid"].items(), key=lambda kv: -Decimal(kv[0]))
    asks = sorted(ref["ask"].items(), key=lambda kv: Decimal(kv[0]))
    assert book.bids() == bids
    assert book.asks() == asks
    assert book.checksum() == zlib.crc32(checksum_string(asks[:10], bids[:10]).encode())


def test_apply_updates_equals_apply_one_by_one() -> None:
    from tickwire.protocol import BookUpdate

    rng = random.Random(5)
    updates = [
        BookUpdate(
            rng.choice(("bid", "ask")),
            f"{rng.randint(1, 40)}.{rng.randint(0, 99):02d}",
            "0" if rng.random() < 0.3 else f"{rng.randint(1, 999)}.0000",
            TS,
        )
        for _ in range(500)
    ]
    one, batch = Book(), Book()
    for x in updates:
        one.apply(x.side, x.price, x.qty)
    batch.apply_updates(updates)
    assert one == batch and one.checksum() == batch.checksum()
    assert one.bids() == batch.bids() and one.asks() == batch.asks()


def test_apply_updates_rejects_bad_side() -> None:
    class Bad:
        side, price, qty = "sell", "1.00", "1"

    book = Book()
    with pytest.raises(BookError, match="side"):
        book.apply_updates([Bad()])
