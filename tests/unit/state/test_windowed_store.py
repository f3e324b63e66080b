"""The windowed store: key layout, fetch, segment-wise expiry, changelog codecs, restore."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from onceflow.errors import StateError
from onceflow.state.memory import InMemoryStorePartition
from onceflow.state.sqlite.partition import SqliteStorePartition
from onceflow.state.typing import StorePartition
from onceflow.state.windowed import WindowedStorePartition, changelog_key, parse_changelog_key

INTERVAL = 100
starts = st.integers(-(2**63), 2**63 - 1)
small_keys = st.binary(max_size=4)


@pytest.fixture(params=["sqlite", "memory"])
def inner(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StorePartition]:
    store: StorePartition = (
        SqliteStorePartition(tmp_path) if request.param == "sqlite" else InMemoryStorePartition()
    )
    with store:
        yield store


@pytest.fixture
def windows(inner: StorePartition) -> WindowedStorePartition:
    return WindowedStorePartition(inner, segment_interval_ms=INTERVAL)


def layout() -> WindowedStorePartition:
    return WindowedStorePartition(InMemoryStorePartition(), segment_interval_ms=INTERVAL)


@given(small_keys, starts, small_keys, starts)
def test_store_keys_order_by_segment_then_key_then_start(
    k1: bytes, s1: int, k2: bytes, s2: int
) -> None:
    w = layout()
    a, b = w.store_key(k1, s1), w.store_key(k2, s2)
    assert (a < b) == ((s1 // INTERVAL, len(k1), k1, s1) < (s2 // INTERVAL, len(k2), k2, s2))
    assert w.parse_store_key(a) == (k1, s1)


def test_store_key_layout_is_documented_bytes() -> None:
    w = layout()
    data = w.store_key(b"ab", 250)
    segment, start = (2 + 2**63).to_bytes(8, "big"), (250 + 2**63).to_bytes(8, "big")
    assert data == segment + (2).to_bytes(4, "big") + b"ab" + start
    with pytest.raises(ValueError, match="64-bit"):
        w.store_key(b"a", 2**63)


@given(st.binary(max_size=20), starts)
def test_changelog_key_round_trip(key: bytes, start: int) -> None:
    data = changelog_key(key, start)
    assert data[-8:] == start.to_bytes(8, "big", signed=True)
    assert parse_changelog_key(data) == (key, start)


def test_short_changelog_key_is_rejected() -> None:
    with pytest.raises(StateError, match="shorter than its 8-byte window start"):
        parse_changelog_key(b"abc")


def test_get_put_delete(windows: WindowedStorePartition) -> None:
    windows.put(b"k", 100, b"a")
    windows.put(b"k", 200, b"b")
    windows.put(b"other", 100, b"c")
    assert windows.get(b"k", 100) == b"a"
    assert windows.committed_get(b"k", 100) is None
    windows.flush(1)
    windows.delete(b"k", 100)
    assert windows.get(b"k", 100) is None
    assert windows.committed_get(b"k", 100) == b"a"
    assert windows.get(b"k", 150) is None
    assert windows.checkpoint == 1


def test_prefetch_windows(windows: WindowedStorePartition) -> None:
    windows.put(b"k", 100, b"a")
    windows.flush(1)
    windows.prefetch([(b"k", 100), (b"k", 200)])
    assert (windows.get(b"k", 100), windows.get(b"k", 200)) == (b"a", None)


def test_fetch_is_inclusive_and_ascending(windows: WindowedStorePartition) -> None:
    for start in (-50, 0, 40, 99, 100, 250, 399, 400):
        windows.put(b"k", start, b"%d" % start)
    windows.put(b"kk", 100, b"other key")
    windows.put(b"", 100, b"empty key")
    assert [s for s, _ in windows.fetch(b"k", 0, 400)] == [0, 40, 99, 100, 250, 399, 400]
    assert windows.fetch(b"k", 99, 100) == [(99, b"99"), (100, b"100")]
    assert windows.fetch(b"k", -100, -1) == [(-50, b"-50")]
    assert windows.fetch(b"k", 101, 249) == []
    assert windows.fetch(b"k", 300, 200) == []
    assert windows.fetch(b"", 0, 1000) == [(100, b"empty key")]
    assert windows.fetch(b"k", 0, 400, committed=True) == []
    windows.flush(1)
    assert len(windows.fetch(b"k", 0, 400, committed=True)) == 7


def test_wide_fetch_reads_only_live_segments(windows: WindowedStorePartition) -> None:
    expected = [(start, b"v") for start in (5, 10_050, 10_000_000_000)]
    for start, value in expected:
        windows.put(b"k", start, value)
        windows.put(b"j", start + 1, value)
    windows.flush(1)
    windows.delete(b"k", 10_050)
    calls = 0
    range_items = windows.inner.range_items

    def counting(*args: object, **kwargs: object) -> list[tuple[bytes, bytes]]:
        nonlocal calls
        calls += 1
        return range_items(*args, **kwargs)  # type: ignore[arg-type]

    windows.inner.range_items = counting  # type: ignore[method-assign]
    assert windows.fetch(b"k", 0, 2**62) == [expected[0], expected[2]]
    assert calls <= 2 * 3 + 1  # a probe and a read per live segment
    assert windows.fetch(b"k", 0, 2**62, committed=True) == expected


def test_expire_before_drops_whole_segments_and_hides_the_partial_one(
    windows: WindowedStorePartition,
) -> None:
    for start in (0, 50, 150, 199, 200, 310):
        windows.put(b"k", start, b"v")
    windows.put(b"j", 120, b"v")
    windows.flush(1)
    windows.expire_before(180)
    # Segment 0 ([0, 100)) is gone; segment 1 is partial: 120 and 150 hidden, 199 kept.
    assert [s for s, _ in windows.fetch(b"k", -(2**40), 2**40)] == [199, 200, 310]
    assert windows.get(b"j", 120) is None
    assert windows.committed_get(b"k", 150) is None
    assert windows.pending_changelog() == []  # expiry is not changelogged
    windows.flush(2)
    on_disk = [windows.parse_store_key(k) for k, _ in windows.inner.range_items(b"", b"\xff" * 9)]
    assert on_disk == [(b"j", 120), (b"k", 150), (b"k", 199), (b"k", 200), (b"k", 310)]
    windows.expire_before(180, exact=True)  # deletes the partial segment's windows now
    windows.flush(3)
    on_disk = [windows.parse_store_key(k) for k, _ in windows.inner.range_items(b"", b"\xff" * 9)]
    assert on_disk == [(b"k", 199), (b"k", 200), (b"k", 310)]


def test_expiry_is_discarded_with_its_transaction(windows: WindowedStorePartition) -> None:
    windows.put(b"k", 10, b"v")
    windows.flush(1)
    windows.expire_before(150)
    assert windows.get(b"k", 10) is None
    windows.discard()
    assert windows.get(b"k", 10) == b"v"
    windows.expire_before(150)  # the same bound again still drops the segment
    windows.flush(2)
    assert windows.inner.range_items(b"", b"\xff" * 9) == []


def test_pending_changelog_translates_buffered_writes(windows: WindowedStorePartition) -> None:
    windows.put(b"k", 100, b"a")
    windows.delete(b"k", 200)
    windows.put(b"j", -5, b"b")
    assert sorted(windows.pending_changelog()) == sorted(
        [
            (changelog_key(b"k", 100), b"a"),
            (changelog_key(b"k", 200), None),
            (changelog_key(b"j", -5), b"b"),
        ]
    )


def test_restore_skips_expired_windows(windows: WindowedStorePartition) -> None:
    records: list[tuple[bytes, bytes | None]] = [
        (changelog_key(b"k", 50), b"expired"),
        (changelog_key(b"k", 150), b"a"),
        (changelog_key(b"k", 250), b"b"),
        (changelog_key(b"k", 250), None),
        (changelog_key(b"j", 300), b"c"),
    ]
    windows.restore_batch(records, 17, min_start=100)
    assert windows.checkpoint == 17
    assert windows.fetch(b"k", 0, 1000) == [(150, b"a")]
    assert windows.fetch(b"j", 0, 1000) == [(300, b"c")]
    windows.restore_batch([(changelog_key(b"k", 50), b"kept")], 18)
    assert windows.get(b"k", 50) == b"kept"


def test_restore_round_trips_pending_changelog(inner: StorePartition) -> None:
    source = WindowedStorePartition(InMemoryStorePartition(), segment_interval_ms=INTERVAL)
    for i, start in enumerate((-100, 0, 99, 100, 12_345)):
        source.put(b"key-%d" % (i % 2), start, b"v%d" % i)
    target = WindowedStorePartition(inner, segment_interval_ms=INTERVAL)
    target.restore_batch(source.pending_changelog(), 4)
    for key in (b"key-0", b"key-1"):
        assert target.fetch(key, -(2**62), 2**62) == source.fetch(key, -(2**62), 2**62)


def test_lifecycle_delegates_to_inner(windows: WindowedStorePartition) -> None:
    windows.put(b"k", 1, b"v")
    assert windows.has_pending
    windows.seal()
    windows.flush(5, seal=False)
    assert not windows.has_pending and windows.checkpoint == 5
    windows.wipe()
    assert windows.checkpoint is None and windows.get(b"k", 1) is None
    with windows:
        pass
    windows.close()
    assert windows.closed
    with pytest.raises(ValueError, match="segment_interval_ms"):
        WindowedStorePartition(InMemoryStorePartition(), segment_interval_ms=0)


def test_the_changelog_topic_id_is_the_inner_stores(
    windows: WindowedStorePartition, inner: StorePartition
) -> None:
    windows.set_changelog_topic_id("UghfcGq0S3-YOhw7sSOVbw")
    windows.restore_batch([(changelog_key(b"k", 0), b"v")], 5)
    assert windows.changelog_topic_id == inner.changelog_topic_id == "UghfcGq0S3-YOhw7sSOVbw"


def test_a_window_expired_in_the_transaction_that_wrote_it_is_still_changelogged(
    windows: WindowedStorePartition,
) -> None:
    # The flush writes it to SQLite (the segment is only partly expired), so the changelog must
    # carry it too: otherwise the changelog would hold an older value than the store.
    windows.put(b"k", 120, b"new")
    windows.expire_before(150)
    assert windows.pending_changelog() == [(changelog_key(b"k", 120), b"new")]
    windows.flush(1)
    on_disk = [windows.parse_store_key(k) for k, _ in windows.inner.range_items(b"", b"\xff" * 9)]
    assert on_disk == [(b"k", 120)]


def test_windows_starting_lists_every_key_per_start_through_the_transaction(
    windows: WindowedStorePartition,
) -> None:
    windows.put(b"b", 100, b"1")
    windows.put(b"a", 100, b"2")
    windows.put(b"a", 250, b"3")
    windows.flush(1)
    windows.put(b"c", 100, b"4")  # pending: seen
    windows.delete(b"b", 100)  # pending delete: gone
    windows.put(b"z", 99, b"5")  # before the range
    windows.put(b"z", 10_000_000, b"6")  # far after it: segments between are skipped
    assert list(windows.windows_starting(100, 300)) == [
        (100, [(b"a", b"2"), (b"c", b"4")]),
        (250, [(b"a", b"3")]),
    ]
    assert list(windows.windows_starting(301, 10_000_000))[-1] == (10_000_000, [(b"z", b"6")])
    assert list(windows.windows_starting(5, 4)) == []
