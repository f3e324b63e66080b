"""What bounds a store partition's memory: the read cache in bytes, SQLite's page caches, and
the few statement shapes its writes and batched reads compile (each one is cached per
connection)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from onceflow.state.cache import ENTRY_OVERHEAD, MISS, LruCache
from onceflow.state.sqlite._io_child import ladder, padded
from onceflow.state.sqlite.file import _KEYS, _ROWS, DB_FILE
from onceflow.state.sqlite.partition import SqliteStorePartition


def test_cache_evicts_by_bytes_least_recently_used_first() -> None:
    entry = 1 + 3 + ENTRY_OVERHEAD  # one-byte key, three-byte value
    cache = LruCache(100, max_bytes=2 * entry)
    cache.store(b"a", b"aaa")
    cache.store(b"b", b"bbb")
    assert cache.lookup(b"a") == b"aaa"  # now b is the least recently used
    cache.store(b"c", b"ccc")
    assert cache.lookup(b"b") is MISS
    assert cache.lookup(b"a") == b"aaa"
    assert cache.size_bytes == 2 * entry


def test_cache_accounts_replacements_forgets_and_absent_keys() -> None:
    cache = LruCache(100, max_bytes=10_000)
    cache.store(b"k", b"x" * 100)
    cache.store(b"k", b"y")  # replaced: the old value's bytes are given back
    cache.store(b"gone", None)  # a known-absent key costs its key and the overhead
    assert cache.size_bytes == (1 + 1 + ENTRY_OVERHEAD) + (4 + ENTRY_OVERHEAD)
    cache.forget(b"k")
    cache.forget(b"never-stored")
    assert cache.size_bytes == 4 + ENTRY_OVERHEAD
    cache.clear()
    assert cache.size_bytes == 0
    assert len(cache) == 0


def test_cache_entry_bound_still_applies_and_oversized_values_are_not_kept() -> None:
    cache = LruCache(2, max_bytes=None)
    for key in (b"1", b"2", b"3"):
        cache.store(key, key)
    assert len(cache) == 2
    small = LruCache(100, max_bytes=ENTRY_OVERHEAD)
    small.store(b"big", b"x" * 1000)
    assert small.lookup(b"big") is MISS
    assert small.size_bytes == 0
    with pytest.raises(ValueError, match="max_bytes"):
        LruCache(1, max_bytes=-1)


@pytest.mark.parametrize("n", [0, 1, 2, 3, 1023, 1024, 1025, 5000])
def test_ladder_keeps_order_and_uses_few_chunk_lengths(n: int) -> None:
    items = list(range(n))
    chunks = list(ladder(items, 1024))
    assert [x for chunk in chunks for x in chunk] == items
    assert all(len(c) <= 1024 and len(c) & (len(c) - 1) == 0 for c in chunks)  # powers of two


@pytest.mark.parametrize("n", [1, 2, 3, 999, 1024, 1025])
def test_padded_chunks_cover_every_key_with_power_of_two_lengths(n: int) -> None:
    keys = [b"%d" % i for i in range(n)]
    chunks = list(padded(keys, 1024))
    assert [k for c in chunks for k in dict.fromkeys(c)] == keys
    assert all(len(c) <= 1024 and len(c) & (len(c) - 1) == 0 for c in chunks)


def test_writes_of_any_size_compile_a_bounded_set_of_statements(tmp_path: Path) -> None:
    # A flush per commit with a different number of keys each time used to compile (and cache,
    # per connection) one statement per remainder size; now at most one per ladder rung.
    sizes = range(1, 3 * _ROWS, 7)
    with SqliteStorePartition(tmp_path) as store:
        offset = 0
        for size in sizes:
            for i in range(size):
                store.put(b"%06d" % ((offset + i) % 4000), b"v%d" % size)
            offset += size
            store.flush(offset)
        found = {key: value for key, value in store.range_items(b"", b"\xff")}
        store.prefetch(b"%06d" % i for i in range(_KEYS + 5))
    assert len(found) == 4000
    with sqlite3.connect(tmp_path / DB_FILE) as conn:
        rows = conn.execute("SELECT count(*) FROM kv").fetchone()[0]
    assert rows == 4000 + 2  # the data, the checkpoint and the format version


def test_restore_applies_big_batches_with_the_last_value_per_key(tmp_path: Path) -> None:
    records: list[tuple[bytes, bytes | None]] = [(b"%07d" % i, b"%d" % i) for i in range(10_000)]
    records += [(b"%07d" % i, None) for i in range(0, 10_000, 3)]  # tombstones win over values
    records += [(b"%07d" % 1, b"again")]
    with SqliteStorePartition(tmp_path) as store:
        store.restore_batch(records, 12_345)
        assert store.checkpoint == 12_345
        assert store.approximate_size() == 10_000 - len(range(0, 10_000, 3))
        assert store.get(b"%07d" % 1) == b"again"
        assert store.get(b"%07d" % 3) is None
        assert store.get(b"%07d" % 4) == b"4"
    with SqliteStorePartition(tmp_path) as store:
        assert store.checkpoint == 12_345
