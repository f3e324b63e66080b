"""A task's fetched records across partitions are handled in timestamp order, offsets in order
within each partition (runtime/ordering.py), against a model that picks one record at a time."""

from __future__ import annotations

from dataclasses import dataclass

from aiokafka.structs import TopicPartition
from hypothesis import given
from hypothesis import strategies as st

from onceflow.runtime.ordering import HeldInputs, TaskInput, by_timestamp


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


# -- holding records back for a partition with nothing fetched (ONCEFLOW_MAX_TASK_IDLE_MS) ------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def offsets(runs: list[tuple[str, list[R]]]) -> list[tuple[str, list[int]]]:
    return [(key, [r.offset for r in records]) for key, records in runs]


def test_an_empty_partition_holds_the_others_back_until_the_idle_time_passed() -> None:
    clock = Clock()
    held: TaskInput[str] = TaskInput(["a", "b"], idle_ms=500, clock=clock)
    held.add("a", [R("a", 0, 10), R("a", 1, 30)])
    assert held.take(lambda p: False) == []  # "b" may still bring an earlier record
    assert held.due == 100.5
    clock.now = 100.2
    held.add("b", [R("b", 0, 20)])
    assert offsets(held.take(lambda p: False)) == [("a", [0]), ("b", [0])]  # "b" drained: stop
    clock.now = 101.0  # a's 30 waited for "b" its whole idle time (it started waiting again)
    assert held.take(lambda p: False) == []
    clock.now = 101.5
    assert offsets(held.take(lambda p: False)) == [("a", [1])]
    assert held.due is None


def test_a_caught_up_partition_does_not_hold_the_others_back() -> None:
    held: TaskInput[str] = TaskInput(["a", "b"], idle_ms=10_000, clock=Clock())
    held.add("a", [R("a", 0, 10), R("a", 1, 30)])
    assert offsets(held.take(lambda p: p == "b")) == [("a", [0, 1])]


def test_held_inputs_pass_everything_on_without_an_idle_time_and_forget_replaced_tasks() -> None:
    @dataclass(frozen=True)
    class T:
        tps: tuple[TopicPartition, ...]

    a, b = TopicPartition("x", 0), TopicPartition("y", 0)
    work = {"0_0": [(a, [R("a", 0, 5)])]}
    assert HeldInputs[str, T](0).ready({"0_0": T((a, b))}, work, lambda t, tp: False) == work
    inputs = HeldInputs[str, T](10_000)
    first = T((a, b))
    assert inputs.ready({"0_0": first}, work, lambda t, tp: False) == {}
    assert inputs.holding
    # The task was rebuilt (a new object): what the old one held is dropped, not handed on
    assert inputs.ready({"0_0": T((a, b))}, {}, lambda t, tp: True) == {}
    assert not inputs.holding
