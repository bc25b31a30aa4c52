"""The level tracker without a hub: merged catch-ups equal the updates they replace."""

from __future__ import annotations

import copy

from hypothesis import given, settings
from hypothesis import strategies as st

from tickwire.book import Book
from tickwire.lag import MIN_TRACKED_LEVELS, UPDATE_VS_LEVEL, LevelTracker
from tickwire.protocol import BookUpdate

TS = 1_700_000_000_000_000_000
DEEP = 10_000  # a book depth for which a merge is never too big


def u(side: str, price: str, qty: str, ts: int = TS) -> BookUpdate:
    return BookUpdate(side, price, qty, ts)  # type: ignore[arg-type]


updates = st.builds(
    u,
    st.sampled_from(("bid", "ask")),
    st.sampled_from([f"{p}.00" for p in range(90, 110)]),
    st.sampled_from(("0", "1.0000", "2.5000", "0.0100")),
)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.lists(updates, min_size=1, max_size=8), min_size=1, max_size=12),
    st.data(),
)
def test_merged_equals_applying_every_update(
    batches: list[list[BookUpdate]], data: st.DataObject
) -> None:
    tracker = LevelTracker(7)
    book = Book()
    book.apply_updates([u("bid", "95.00", "3.0000"), u("ask", "105.00", "3.0000")])
    seq = 7
    books = {seq: copy.deepcopy(book)}
    for batch in batches:
        seq += len(batch)
        tracker.track(batch, seq, DEEP)
        book.apply_updates(batch)
        books[seq] = copy.deepcopy(book)
    since = data.draw(st.sampled_from(sorted(books)))
    merged = tracker.merged_since(since, DEEP)
    assert merged is not None
    caught_up = books[since]
    caught_up.apply_updates(merged)
    assert caught_up == book
    # One update per level, each the latest of its level.
    keys = [(m.side, m.price) for m in merged]
    assert len(keys) == len(set(keys))


def test_merged_keeps_each_level_latest_and_skips_older_seqs() -> None:
    tracker = LevelTracker(0)
    tracker.track([u("bid", "1.00", "1"), u("ask", "2.00", "1")], 2, DEEP)
    tracker.track([u("bid", "1.00", "5")], 3, DEEP)
    assert [(m.price, m.qty) for m in tracker.merged_since(0, DEEP) or []] == [
        ("1.00", "5"),
        ("2.00", "1"),
    ]
    assert [(m.price, m.qty) for m in tracker.merged_since(2, DEEP) or []] == [("1.00", "5")]
    assert tracker.merged_since(3, DEEP) == []
    assert len(tracker) == 2


def test_too_big_gives_none() -> None:
    tracker = LevelTracker(0)
    tracker.track([u("bid", f"{p}.00", "1") for p in range(10)], 10, DEEP)
    assert tracker.merged_since(0, 10) is None  # 10 updates x 3.3 > 10 levels
    assert tracker.merged_since(0, int(10 * UPDATE_VS_LEVEL)) is not None
    assert tracker.merged_since(9, 10) is not None  # one update is smaller
    cheap = LevelTracker(0, update_cost=1.0)
    cheap.track([u("bid", f"{p}.00", "1") for p in range(10)], 10, DEEP)
    assert cheap.merged_since(0, 10) is not None


def test_more_levels_than_the_book_restarts_tracking() -> None:
    tracker = LevelTracker(0)
    n = MIN_TRACKED_LEVELS + 1
    tracker.track([u("ask", f"{200 + i}.00", "1") for i in range(n - 1)], n - 1, 3)
    assert len(tracker) == n - 1 and tracker.since == 0
    tracker.track([u("ask", "999.00", "1")], n, 3)
    assert len(tracker) == 0 and tracker.since == n
    assert tracker.merged_since(n - 1, DEEP) is None  # started after: snapshot
    tracker.track([u("bid", "1.00", "1")], n + 1, 3)
    assert [m.price for m in tracker.merged_since(n, DEEP) or []] == ["1.00"]


def test_clear_forgets_levels_and_moves_the_start() -> None:
    tracker = LevelTracker(5)
    assert tracker.merged_since(4, DEEP) is None  # before tracking started
    assert tracker.merged_since(5, DEEP) == []
    tracker.track([u("bid", "1.00", "1")], 6, DEEP)
    tracker.clear(6)
    assert len(tracker) == 0 and tracker.since == 6
    assert tracker.merged_since(5, DEEP) is None
    assert tracker.merged_since(6, DEEP) == []
