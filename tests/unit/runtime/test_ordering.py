"""A task's fetched records across partitions are handled in timestamp order, offsets in order
within each partition (runtime/ordering.py), against a model that picks one record at a time."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st

from onceflow.runtime.ordering import by_timestamp


@dataclass(frozen=True)
class R:
    partition: str
    offset: int
    timestamp: int


def model(work: list[tuple[str, list[R]]]) -> list[R]:
    """One record at a time: the partition whose next record has the smallest timestamp."""
    queues = {key: list(records) for key, records in work}
    order = [key for key, _ in work]
    out = []
    while any(queues.values()):
        live = [k for k in order if queues[k]]
        key = min(live, key=lambda k: (queues[k][0].timestamp, order.index(k)))
        out.append(queues[key].pop(0))
    return out


partitions = st.lists(st.integers(0, 50), max_size=12)


@given(st.lists(partitions, min_size=0, max_size=4))
def test_runs_follow_the_model_and_keep_offset_order(stamps: list[list[int]]) -> None:
    work = [
        (f"p{i}", [R(f"p{i}", offset, ts) for offset, ts in enumerate(times)])
        for i, times in enumerate(stamps)
    ]
    runs = by_timestamp(work)
    flat = [r for _, records in runs for r in records]
    assert flat == model(work)
    assert all(r.partition == key for key, records in runs for r in records)
    assert all(records for _, records in runs)


def test_one_partition_is_left_as_fetched() -> None:
    records = [R("a", 0, 5), R("a", 1, 1)]
    assert by_timestamp([("a", records)]) == [("a", records)]


def test_two_streams_interleave_by_timestamp() -> None:
    a = [R("a", 0, 1), R("a", 1, 4), R("a", 2, 5)]
    b = [R("b", 0, 2), R("b", 1, 3), R("b", 2, 9)]
    runs = by_timestamp([("a", a), ("b", b)])
    assert [(k, [r.offset for r in rs]) for k, rs in runs] == [
        ("a", [0]), ("b", [0, 1]), ("a", [1, 2]), ("b", [2]),
    ]  # fmt: skip
