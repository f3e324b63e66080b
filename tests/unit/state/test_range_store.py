"""``RangeStorePartition``: its per-key copies always answer what the store itself answers."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from onceflow.state.memory import InMemoryStorePartition
from onceflow.state.ranges import RETRY_COPY_AFTER, RangeStorePartition, _cost
from onceflow.state.sqlite.partition import SqliteStorePartition
from onceflow.state.windowed import changelog_key

INTERVAL = 100
KEYS = [b"a", b"b", b"ab"]
MAX = 2**63 - 1

ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("put"), st.sampled_from(KEYS), st.integers(0, 1000), st.binary(max_size=3)
        ),
        st.tuples(st.just("delete"), st.sampled_from(KEYS), st.integers(0, 1000)),
        st.tuples(
            st.just("tail"), st.sampled_from(KEYS), st.integers(-50, 1000), st.integers(0, MAX)
        ),
        st.tuples(st.just("prefetch"), st.integers(-50, 1000)),
        st.tuples(st.just("commit")),
        st.tuples(st.just("abort")),
        st.tuples(st.just("expire"), st.integers(0, 1000)),
        st.tuples(st.just("restore"), st.sampled_from(KEYS), st.integers(0, 1000)),
    ),
    max_size=60,
)


def check(store: RangeStorePartition, script: list[tuple[object, ...]]) -> None:
    """Run ``script``; after each step every copy must answer as the store does. Readers never
    ask below the expiry bound (they bound reads by their stream time, which only grows)."""
    checkpoint, bound = 0, -50
    for op in script:
        match op:
            case ("put", bytes(key), int(start), bytes(value)):
                store.put(key, start, value)
            case ("delete", bytes(key), int(start)):
                store.delete(key, start)
            case ("tail", bytes(key), int(lo), int(hi)):
                lo = max(lo, bound)
                assert store.fetch_tail(key, lo, hi) == store.fetch(key, lo, hi)
            case ("prefetch", int(lo)):
                store.prefetch_tails(KEYS, max(lo, bound))
            case ("commit",):
                checkpoint += 1
                store.flush(checkpoint)
            case ("abort",):
                store.discard()
            case ("expire", int(at)):
                bound = max(bound, at)
                store.expire_before(bound)
            case ("restore", bytes(key), int(start)):
                checkpoint += 1
                store.flush(checkpoint)  # restores run on a store without open writes
                store.restore_batch([(changelog_key(key, start), b"r")], checkpoint)
        assert store.copied_bytes == sum(  # the byte budget counts exactly what is held
            _cost(k, e[1].values()) for k, e in store._tails.items()
        )
        for key in KEYS:  # whatever happened, every copy agrees with the store
            for lo in (-50, 0, 250, 999):
                lo = max(lo, bound)
                assert store.fetch_tail(key, lo) == store.fetch(key, lo, MAX)


@settings(max_examples=150, deadline=None)
@given(script=ops)
def test_copies_agree_with_the_memory_store(script: list[tuple[object, ...]]) -> None:
    store = RangeStorePartition(InMemoryStorePartition(), segment_interval_ms=INTERVAL)
    check(store, script)


@settings(max_examples=100, deadline=None)
@given(script=ops)
def test_small_bounds_change_no_answer(script: list[tuple[object, ...]]) -> None:
    store = RangeStorePartition(
        InMemoryStorePartition(),
        segment_interval_ms=INTERVAL,
        max_bytes=600,
        max_keys=2,
        max_rows=2,
    )
    check(store, script)


@settings(max_examples=40, deadline=None)
@given(script=ops)
def test_copies_agree_with_the_sqlite_store(script: list[tuple[object, ...]]) -> None:
    with (
        tempfile.TemporaryDirectory() as tmp,
        SqliteStorePartition(Path(tmp)) as inner,
    ):
        check(RangeStorePartition(inner, segment_interval_ms=INTERVAL), script)


def test_a_key_with_many_windows_is_not_copied_for_a_while() -> None:
    store = RangeStorePartition(InMemoryStorePartition(), segment_interval_ms=INTERVAL, max_rows=3)
    for start in range(5):
        store.put(b"k", start, b"v")
    assert len(store.fetch_tail(b"k", 0)) == 5
    store.put(b"k", 9, b"v")  # not copied: the store answers
    assert [s for s, _ in store.fetch_tail(b"k", 0, 8)] == [0, 1, 2, 3, 4]
    for start in range(5):
        store.delete(b"k", start)
    for _ in range(RETRY_COPY_AFTER - 1):  # the read with bound 8 was one of them
        assert store.fetch_tail(b"k", 0) == [(9, b"v")]
    assert store.copied_bytes == 0
    assert store.fetch_tail(b"k", 0) == [(9, b"v")]  # small again: copied
    assert store.copied_bytes > 0


def test_copies_stay_within_their_byte_budget() -> None:
    store = RangeStorePartition(
        InMemoryStorePartition(), segment_interval_ms=INTERVAL, max_bytes=2000
    )
    for i in range(50):
        store.put(b"k%d" % i, 5, b"x" * 100)
        store.fetch_tail(b"k%d" % i, 0)
        assert store.copied_bytes <= 2000
    assert store.copied_bytes > 0
    assert store.fetch_tail(b"k3", 0) == [(5, b"x" * 100)]  # evicted: read again


def test_least_recently_used_keys_go_first() -> None:
    store = RangeStorePartition(InMemoryStorePartition(), segment_interval_ms=INTERVAL, max_keys=2)
    store.prefetch_tails([b"a", b"b"], 0)
    store.fetch_tail(b"a", 0)
    store.fetch_tail(b"c", 0)  # evicts b
    store.inner.put(store.store_key(b"b", 5), b"behind its back")  # only a copy would miss it
    assert store.fetch_tail(b"b", 0) == [(5, b"behind its back")]
