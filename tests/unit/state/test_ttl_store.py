"""The ttl store: row and index layout, reads filtered by stream time, bulk expiry with
tombstones, stale index entries, restore, and refusing rows of a table that had no ttl."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from onceflow.errors import ConfigurationError
from onceflow.state import ttl as ttl_module
from onceflow.state.memory import InMemoryStorePartition
from onceflow.state.sqlite.partition import SqliteStorePartition
from onceflow.state.ttl import (
    ROW_FORMAT,
    TtlStorePartition,
    decode_row,
    encode_row,
    live_value,
    row_key,
)
from onceflow.state.typing import StorePartition

TTL = 1_000
ALL = (b"", b"\xff" * 32)


@pytest.fixture(params=["sqlite", "memory"])
def inner(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StorePartition]:
    store: StorePartition = (
        SqliteStorePartition(tmp_path) if request.param == "sqlite" else InMemoryStorePartition()
    )
    with store:
        yield store


@pytest.fixture
def ttl(inner: StorePartition) -> TtlStorePartition:
    return TtlStorePartition(inner, ttl_ms=TTL, name="seen")


def put(store: TtlStorePartition, key: bytes, value: bytes, written_at: int) -> None:
    store.put(key, encode_row(written_at, value))


def index(inner: StorePartition) -> list[bytes]:
    return [k for k, _ in inner.range_items(b"\x00", b"\x01", include_pending=False)]


@given(st.integers(-(2**63), 2**63 - 1), st.binary(max_size=20))
def test_a_row_round_trips(written_at: int, value: bytes) -> None:
    row = encode_row(written_at, value)
    assert row[:1] == ROW_FORMAT and decode_row(row) == (written_at, value)


def test_layout_is_documented_bytes(ttl: TtlStorePartition, inner: StorePartition) -> None:
    put(ttl, b"k", b"v", 5)
    ttl.inner.flush(0)
    assert inner.range_items(*ALL, include_pending=False) == [
        (b"\x00" + (5 + 2**63).to_bytes(8, "big") + b"k", b""),
        (b"\x01k", b"\xf5" + (5).to_bytes(8, "big", signed=True) + b"v"),
    ]
    assert row_key(b"k") == b"\x01k"


def test_a_key_expires_ttl_after_its_last_write(ttl: TtlStorePartition) -> None:
    put(ttl, b"k", b"v", 100)
    assert ttl.get(b"k", 100 + TTL - 1) == b"v"
    assert ttl.get(b"k", 100 + TTL) is None  # written_at + ttl <= stream time: gone
    put(ttl, b"k", b"v2", 600)  # a rewrite restarts its clock
    assert ttl.get(b"k", 100 + TTL) == b"v2"
    ttl.inner.flush(1)
    assert ttl.committed_get(b"k", 600 + TTL - 1) == b"v2"
    assert ttl.committed_get(b"k", 600 + TTL) is None


def test_live_value_of_nothing_is_nothing() -> None:
    assert live_value(None, TTL, 10**9) is None
    with pytest.raises(ValueError, match="not a ttl row"):
        decode_row(b"plain json")


def test_expire_deletes_expired_keys_with_tombstones(ttl: TtlStorePartition) -> None:
    put(ttl, b"a", b"1", 0)
    put(ttl, b"b", b"2", 10)
    put(ttl, b"c", b"3", 20)
    ttl.inner.flush(0)
    assert ttl.expire(10 + TTL) == 2  # a and b: written at or before 10
    assert sorted(ttl.pending_changelog()) == [(b"a", None), (b"b", None)]
    ttl.inner.flush(1)
    assert ttl.committed_get(b"a", 0) is None and ttl.committed_get(b"c", 0) == b"3"
    assert len(index(ttl.inner)) == 1  # the entries read went with one range deletion
    assert ttl.expire(10 + TTL) == 0  # nothing left below the bound
    assert ttl.pending_changelog() == []


def test_a_rewritten_key_survives_its_stale_index_entry(ttl: TtlStorePartition) -> None:
    put(ttl, b"k", b"old", 0)
    ttl.inner.flush(0)
    put(ttl, b"k", b"new", 500)  # no read on the write path: the entry at 0 stays
    ttl.inner.flush(1)
    assert len(index(ttl.inner)) == 2
    assert ttl.expire(TTL) == 0  # the entry at 0 no longer matches the row: only it goes
    ttl.inner.flush(2)
    assert ttl.committed_get(b"k", TTL) == b"new"
    assert len(index(ttl.inner)) == 1
    assert ttl.expire(500 + TTL) == 1
    assert ttl.pending_changelog() == [(b"k", None)]


def test_a_key_written_and_expired_in_one_transaction_is_one_tombstone(
    ttl: TtlStorePartition,
) -> None:
    put(ttl, b"k", b"v", 0)
    assert ttl.expire(5 * TTL) == 1
    assert ttl.pending_changelog() == [(b"k", None)]
    ttl.inner.flush(0)
    assert ttl.inner.range_items(*ALL, include_pending=False) == []


def test_pending_changelog_leaves_the_index_out(ttl: TtlStorePartition) -> None:
    put(ttl, b"k", b"v", 7)
    ttl.delete(b"gone")
    assert sorted(ttl.pending_changelog()) == [(b"gone", None), (b"k", encode_row(7, b"v"))]


def test_expire_works_off_a_backlog_in_batches(ttl: TtlStorePartition) -> None:
    for i in range(25):
        put(ttl, b"k%02d" % i, b"v", i)
    ttl.inner.flush(0)
    done = [ttl.expire(10 * TTL, limit=10) for _ in range(4)]
    assert done == [10, 10, 5, 0]
    assert len(ttl.pending_changelog()) == 25
    ttl.inner.flush(1)
    assert ttl.inner.range_items(*ALL, include_pending=False) == []


def test_expire_reads_at_least_as_many_entries_as_the_transaction_wrote(
    ttl: TtlStorePartition, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ttl_module, "EXPIRE_BATCH", 5)
    for i in range(25):
        put(ttl, b"k%02d" % i, b"v", i)
    ttl.inner.flush(0)
    assert ttl.expire(10 * TTL) == 5  # no writes: EXPIRE_BATCH
    ttl.inner.flush(1)
    for i in range(6):
        put(ttl, b"new%d" % i, b"v", 10 * TTL)  # 12 writes: a row and an entry each
    assert ttl.expire(10 * TTL) == 12


def test_an_aborted_expiry_leaves_everything(ttl: TtlStorePartition) -> None:
    put(ttl, b"k", b"v", 0)
    ttl.inner.flush(0)
    ttl.expire(TTL)
    ttl.inner.discard()  # the Kafka transaction aborted
    assert ttl.get(b"k", 0) == b"v"
    assert ttl.expire(TTL) == 1  # the next commit does it again


def test_restore_rebuilds_rows_and_index(ttl: TtlStorePartition) -> None:
    ttl.restore_batch(
        [
            (b"a", encode_row(0, b"1")),
            (b"b", encode_row(5, b"2")),
            (b"a", encode_row(900, b"3")),  # the last record of a key wins, one index entry
            (b"c", encode_row(1, b"4")),
            (b"c", None),
        ],
        last_offset=4,
    )
    assert ttl.checkpoint == 4
    assert ttl.committed_get(b"a", TTL) == b"3" and ttl.committed_get(b"c", 0) is None
    assert len(index(ttl.inner)) == 2
    # an expired row is restored, hidden from reads, and tombstoned by the next expiry
    assert ttl.committed_get(b"b", 5 + TTL) is None
    assert ttl.expire(5 + TTL) == 1
    assert ttl.pending_changelog() == [(b"b", None)]


def test_restore_refuses_changelog_records_without_a_ttl(ttl: TtlStorePartition) -> None:
    with pytest.raises(ConfigurationError, match=r"'seen' has a ttl.*changelog.*new name"):
        ttl.restore_batch([(b"a", b"42")], last_offset=0)
    assert ttl.checkpoint is None


@pytest.mark.parametrize(
    "rows",
    [
        [(b"user-1", b'{"n": 1}')],  # a plain table's key
        [(b"\x01user-1", b'{"n": 1}')],  # ... that happens to look like a row key
        [(b"\x00\x00\x00\x05", b"1")],  # ... or like an index entry (an int64 key)
    ],
)
def test_a_store_of_a_table_without_ttl_is_refused(
    inner: StorePartition, rows: list[tuple[bytes, bytes]]
) -> None:
    inner.restore_batch(rows, last_offset=0)
    store = TtlStorePartition(inner, ttl_ms=TTL, name="seen")
    with pytest.raises(ConfigurationError, match=r"'seen' has a ttl.*store"):
        store.check_layout()


def test_a_store_of_its_own_layout_passes_the_check(ttl: TtlStorePartition) -> None:
    ttl.check_layout()  # empty
    put(ttl, b"\xff" * 20, b"v", 3)
    ttl.inner.flush(0)
    ttl.check_layout()


def test_ttl_must_be_positive(inner: StorePartition) -> None:
    with pytest.raises(ConfigurationError, match="'seen': ttl must be positive"):
        TtlStorePartition(inner, ttl_ms=0, name="seen")


def test_a_restored_sqlite_store_reopens_with_its_rows(tmp_path: Path) -> None:
    with SqliteStorePartition(tmp_path) as inner:
        TtlStorePartition(inner, ttl_ms=TTL, name="seen").restore_batch(
            [(b"k%d" % i, encode_row(i, b"v")) for i in range(2_000)], last_offset=1_999
        )
    with SqliteStorePartition(tmp_path) as inner:
        store = TtlStorePartition(inner, ttl_ms=TTL, name="seen")
        store.check_layout()
        assert store.checkpoint == 1_999
        assert store.committed_get(b"k1500", 1500 + TTL - 1) == b"v"
        assert store.expire(999 + TTL) == 1_000
