"""The open transaction's buffer: range sets and batch merging, against simple models."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from onceflow.state.buffer import RangeSet, WriteBatch, merge_range, merge_range_paged

small = st.binary(max_size=2)


@given(st.lists(st.tuples(small, small), max_size=12), st.lists(small, max_size=20))
def test_range_set_membership_matches_the_ranges(
    ranges: list[tuple[bytes, bytes]], probes: list[bytes]
) -> None:
    rs = RangeSet()
    for lo, hi in ranges:
        rs.add(lo, hi)
    intervals = list(rs)
    assert all(lo < hi for lo, hi in intervals)
    assert all(a[1] < b[0] for a, b in itertools.pairwise(intervals))  # disjoint
    for key in probes + [lo for lo, _ in ranges] + [hi for _, hi in ranges]:
        assert (key in rs) == any(lo <= key < hi for lo, hi in ranges)


def test_range_set_merges_touching_ranges() -> None:
    rs = RangeSet()
    rs.add(b"a", b"c")
    rs.add(b"e", b"g")
    rs.add(b"c", b"e")
    rs.add(b"x", b"x")  # empty: ignored
    assert list(rs) == [(b"a", b"g")]
    assert "a" not in rs  # only bytes are members


ops = st.lists(
    st.one_of(
        st.tuples(st.just("put"), small, st.none() | small),
        st.tuples(st.just("range"), small, small),
    ),
    max_size=15,
)


def apply(
    batch: WriteBatch, model: dict[bytes, bytes | None], op: tuple[str, bytes, object]
) -> None:
    kind, a, b = op
    if kind == "put":
        assert b is None or isinstance(b, bytes)
        batch.put(a, b)
        model[a] = b
    else:
        assert isinstance(b, bytes)
        batch.delete_range(a, b)
        for key in [k for k in model if a <= k < b]:
            model[key] = None


@given(st.dictionaries(small, small, max_size=8), ops, ops, small, small, st.integers(1, 5))
def test_merge_range_overlays_batches_in_order(
    committed: dict[bytes, bytes],
    first_ops: list[tuple[str, bytes, object]],
    second_ops: list[tuple[str, bytes, object]],
    lo: bytes,
    hi: bytes,
    limit: int,
) -> None:
    model: dict[bytes, bytes | None] = dict(committed)
    first, second = WriteBatch(), WriteBatch()
    for op in first_ops:
        apply(first, model, op)
    for op in second_ops:
        apply(second, model, op)
    expected = sorted((k, v) for k, v in model.items() if v is not None and lo <= k < hi)
    rows = sorted((k, v) for k, v in committed.items() if lo <= k < hi)
    assert merge_range(rows, [first, second], lo, hi) == expected

    def read(start: bytes, end: bytes, page: int) -> list[tuple[bytes, bytes]]:
        return [(k, v) for k, v in rows if start <= k < end][:page]

    assert merge_range_paged(read, [first, second], lo, hi, limit) == expected[:limit]
    merged = WriteBatch()
    merged.absorb(first)
    merged.absorb(second)
    assert merge_range(rows, [merged], lo, hi) == expected
