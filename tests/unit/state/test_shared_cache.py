"""One read-cache budget per worker (``ONCEFLOW_STATE_CACHE_MIB``), shared by every store
partition through a view: accounting, LRU eviction across store partitions, adaptation to the
working set, clearing, and store partitions reading through it."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onceflow.state.cache import (
    ENTRY_OVERHEAD,
    MAX_SHARDS,
    MISS,
    SHARD_BYTES,
    SharedCache,
    _cost,
)
from onceflow.state.sqlite.partition import SqliteStorePartition

# An entry's cost in a shared cache: the 8-byte owner prefix, a 2-byte key, a 3-byte value.
ENTRY = 8 + 2 + 3 + ENTRY_OVERHEAD


def test_views_see_only_their_own_keys_and_account_their_own_entries() -> None:
    shared = SharedCache(100 * ENTRY)
    a, b = shared.view(), shared.view()
    a.store(b"k1", b"aaa")
    b.store(b"k1", b"bbb")
    b.store(b"k2", None)  # known absent: the key and the overhead only
    assert a.lookup(b"k1") == b"aaa" and b.lookup(b"k1") == b"bbb"
    assert a.lookup(b"k2") is MISS and b.lookup(b"k2") is None
    assert (len(a), a.size_bytes) == (1, ENTRY)
    assert (len(b), b.size_bytes) == (2, ENTRY + (ENTRY - 3))
    assert shared.size_bytes == a.size_bytes + b.size_bytes and len(shared) == 3
    b.store(b"k1", b"bbbbbbbbbbbb")  # a replacement gives the old value's bytes back
    assert b.size_bytes == ENTRY + 9 + (ENTRY - 3)
    b.forget(b"k1")
    b.forget(b"never")
    assert (len(b), b.size_bytes) == (1, ENTRY - 3)
    assert shared.size_bytes == a.size_bytes + b.size_bytes


def test_the_budget_holds_across_views_least_recently_used_first() -> None:
    shared = SharedCache(4 * ENTRY)
    a, b = shared.view(), shared.view()
    a.store(b"a1", b"xxx")
    a.store(b"a2", b"xxx")
    b.store(b"b1", b"xxx")
    b.store(b"b2", b"xxx")
    assert a.lookup(b"a1") == b"xxx"  # a2 is now the least recently used entry of all
    b.store(b"b3", b"xxx")
    assert a.lookup(b"a2") is MISS
    assert shared.size_bytes == 4 * ENTRY
    assert (len(a), len(b)) == (1, 3)


def test_the_hot_store_partition_takes_the_budget_from_an_idle_one() -> None:
    shared = SharedCache(1000 * ENTRY)
    hot, idle = shared.view(), shared.view()
    for i in range(500):
        idle.store(b"%02d" % (i % 100), b"xxx")  # 100 keys: its working set
    assert len(idle) == 100
    for i in range(5000):
        hot.store(b"%02x" % (i % 256), b"xxx")  # a working set bigger than its "share"
        hot.lookup(b"%02x" % ((i * 7) % 256))
    assert len(hot) == 256 and len(idle) == 100  # both fit: nothing was evicted
    for i in range(2000):  # the hot one needs more than the budget holds
        hot.store(b"%03d" % i, b"xxx")
    assert len(idle) == 0  # unused entries went first
    assert len(hot) == 1000 * ENTRY // (ENTRY + 2)  # its last 989 keys, of four bytes
    assert shared.size_bytes <= 1000 * ENTRY


def test_clear_and_close_hide_a_views_entries_which_then_age_out_first() -> None:
    shared = SharedCache(3 * ENTRY)
    a, b = shared.view(), shared.view()
    a.store(b"a1", b"xxx")
    a.store(b"a2", b"xxx")
    b.store(b"b1", b"xxx")
    a.clear()
    assert a.lookup(b"a1") is MISS and len(a) == 0 and a.size_bytes == 0
    assert shared.size_bytes == 3 * ENTRY  # still held, until evicted
    a.store(b"a3", b"xxx")  # evicts a1, the oldest: of the cleared entries
    assert b.lookup(b"b1") == b"xxx" and a.lookup(b"a3") == b"xxx"
    b.close()
    b.store(b"b2", b"xxx")  # a closed view stores nothing more
    assert b.lookup(b"b2") is MISS
    c = shared.view()
    for i in range(3):
        c.store(b"c%d" % i, b"xxx")
    assert len(c) == 3 and len(shared) == 3 and shared.size_bytes == 3 * ENTRY
    # a's and c's current prefixes: the cleared and closed ones went with their last entries
    assert len(shared._owners) == 2


def test_an_entry_bigger_than_the_budget_is_not_kept_and_a_zero_budget_keeps_nothing() -> None:
    shared = SharedCache(ENTRY)
    view = shared.view()
    view.store(b"k1", b"xxx")
    view.store(b"k1", b"x" * 100)  # too big: the old value goes too, never a stale one
    assert view.lookup(b"k1") is MISS and shared.size_bytes == 0
    nothing = SharedCache(0).view()
    nothing.store(b"k", None)
    assert nothing.lookup(b"k") is MISS
    with pytest.raises(ValueError, match="max_bytes"):
        SharedCache(-1)


def test_views_are_safe_from_several_threads() -> None:
    shared = SharedCache(200 * ENTRY)
    views = [shared.view() for _ in range(4)]

    def churn(n: int) -> None:
        view = views[n]
        for i in range(20_000):
            key = b"%02d" % (i % 97)
            view.store(key, b"xxx")
            view.lookup(key)
            if i % 1000 == 0:
                view.forget(key)

    threads = [threading.Thread(target=churn, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert shared.size_bytes <= 200 * ENTRY
    assert shared.size_bytes == sum(v.size_bytes for v in views)
    assert len(shared) == sum(len(v) for v in views)


def test_store_partitions_read_through_one_shared_budget(tmp_path: Path) -> None:
    shared = SharedCache(2**20)
    with (
        SqliteStorePartition(tmp_path / "a", cache=shared.view()) as a,
        SqliteStorePartition(tmp_path / "b", cache=shared.view()) as b,
    ):
        a.put(b"k", b"from a")
        a.flush(1)
        b.put(b"k", b"from b")
        b.flush(1)
        assert a.get(b"k") == b"from a" and b.get(b"k") == b"from b"
        b.prefetch([b"x", b"y"])
        assert b.get(b"x") is None
        assert len(shared) == 4  # two written keys, two known-absent ones
        b.wipe()
        assert b.get(b"k") is None and a.get(b"k") == b"from a"
    # The closed views' entries age out of the LRU; nothing stores under them any more.
    assert all(owner.retired for owner in shared._owners.values())


def test_store_many_keeps_the_budget_item_by_item() -> None:
    shared = SharedCache(3 * ENTRY)
    a, b = shared.view(), shared.view()
    b.store(b"b1", b"xxx")
    a.store_many((b"a%d" % i, b"xxx") for i in range(5))  # more than the budget: the oldest go
    assert b.lookup(b"b1") is MISS
    assert [a.lookup(b"a%d" % i) for i in range(5)] == [MISS, MISS, b"xxx", b"xxx", b"xxx"]
    assert shared.size_bytes == 3 * ENTRY and (len(a), len(b)) == (3, 0)


def test_a_big_budget_is_spread_over_shards_that_keep_it_together() -> None:
    # No dict grows big (see SharedCache); the budget and the LRU order across views hold per
    # shard, so across the whole cache too.
    shared = SharedCache(4 * SHARD_BYTES)
    assert len(shared._shards) == 4
    hot, idle = shared.view(), shared.view()
    per_shard = SHARD_BYTES // (8 + 7 + 8 + ENTRY_OVERHEAD)
    for i in range(2 * per_shard):
        idle.store(b"i%06d" % i, b"v" * 8)
    assert len(idle) == 2 * per_shard  # fits: half the budget
    for i in range(8 * per_shard):  # twice the budget: every old entry of idle goes
        hot.store(b"h%06d" % i, b"v" * 8)
    assert len(idle) == 0
    assert shared.size_bytes <= 4 * SHARD_BYTES and len(hot) > 3 * per_shard
    assert shared.size_bytes == sum(shared._shard_bytes) == hot.size_bytes
    assert max(shared._shard_bytes) <= SHARD_BYTES
    assert len(SharedCache(10**12)._shards) == MAX_SHARDS


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 2),  # view
            st.sampled_from(["store", "forget", "clear"]),
            st.sampled_from([b"a", b"b", b"c", b"d", b"e", b"f"]),
            st.none() | st.binary(max_size=600),  # big values: replaced bigger, smaller, evicted
        ),
        max_size=60,
    )
)
def test_the_accounting_matches_the_entries_after_any_sequence(ops: list[Any]) -> None:
    shared = SharedCache(4 * (ENTRY_OVERHEAD + 300))
    views = [shared.view() for _ in range(3)]
    for which, op, key, value in ops:
        view = views[which]
        if op == "store":
            view.store_many([(key, value), (key + b"2", value)])
            assert view.lookup(key + b"2") in (value, MISS)  # kept, or too big / evicted
        elif op == "forget":
            view.forget(key)
            assert view.lookup(key) is MISS
        else:
            view.clear()
    entries = [(k, v) for shard in shared._shards for k, v in shard.items()]
    assert shared._shard_bytes == [sum(_cost(k, v) for k, v in s.items()) for s in shared._shards]
    assert shared.size_bytes == sum(_cost(k, v) for k, v in entries) <= shared.max_bytes
    for prefix, owner in shared._owners.items():
        own = [(k, v) for k, v in entries if k.startswith(prefix)]
        assert (owner.entries, owner.bytes) == (len(own), sum(_cost(k, v) for k, v in own))
