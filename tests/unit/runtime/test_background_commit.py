"""A task commits in the background (``Task.commit_in_background``) on a staggered schedule
(``CommitSchedule``) while the worker processes every task: the records handed to the committing
task are processed at once into its next transaction; nothing they do can slip into the
transaction being committed (its offsets, state and sends were cut when it began).
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pytest
from aiokafka.structs import TopicPartition
from test_task_failed import TP, FailingSink, make_task, record

from onceflow.errors import TaskFencedError
from onceflow.runtime import TaskState
from onceflow.runtime.commits import CommitSchedule, phase_of
from onceflow.runtime.worker import Worker
from onceflow.settings import Settings
from onceflow.state.memory import InMemoryStorePartition


class GatedSink(FailingSink):
    """Holds every commit until ``gate`` is set; records the offsets each commit carried."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.offsets: list[dict[Any, int]] = []

    async def commit(self, offsets: Mapping[Any, Any]) -> None:
        await self.gate.wait()
        await super().commit(offsets)
        self.offsets.append({tp: meta.offset for tp, meta in offsets.items()})


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def can_commit(task: Any) -> None:
    """Wait for the last commit's SQLite write (a worker thread)."""
    for _ in range(500):
        if task.can_commit:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the SQLite write did not end")


def value_of(task: Any, key: bytes, *, committed: bool = False) -> int | None:
    store = task.store("last")
    raw = store.committed_get(key) if committed else store.get(key)
    return None if raw is None else int.from_bytes(raw, "big", signed=True)


async def test_records_handed_over_during_the_commit_go_to_the_next_transaction() -> None:
    sink = GatedSink()
    task = make_task(sink)
    await task.process(TP, [record(0, 1), record(1, 2)])
    task.commit_in_background()  # the cut: offsets 0-1, the value 2, the sends so far
    await settle()
    assert not task.schedulable and not task.can_commit and not task.commit_finished
    await task.process(TP, [record(2, 3)])
    await task.process(TP, [record(3, 4)])
    # Processed at once, into the next transaction: seen through it, not committed
    assert (task.positions[TP], task.uncommitted, sink.pending) == (4, 2, 0)
    assert (value_of(task, b"k"), value_of(task, b"k", committed=True)) == (4, None)
    sink.gate.set()
    await settle()
    assert task.commit_finished
    assert await task.finish_commit()
    assert sink.offsets == [{TP: 2}]  # the cut's offsets, not those processed since
    assert (value_of(task, b"k"), value_of(task, b"k", committed=True)) == (4, 2)
    assert (task.uncommitted, task.schedulable) == (2, True)
    await can_commit(task)
    task.commit_in_background()
    await settle()
    assert await task.finish_commit()
    assert sink.offsets == [{TP: 2}, {TP: 4}]
    assert value_of(task, b"k", committed=True) == 4


async def test_no_commit_begins_before_the_last_sqlite_write_is_over() -> None:
    sink = GatedSink()
    sink.gate.set()
    task = make_task(sink)
    store = task.store("last")
    assert isinstance(store, InMemoryStorePartition)
    writing = threading.Event()
    flush = store.flush

    def slow_flush(checkpoint: int | None, *, seal: bool = True) -> None:
        writing.wait(5)
        flush(checkpoint, seal=seal)

    store.flush = slow_flush  # type: ignore[method-assign]
    await task.process(TP, [record(0, 1)])
    task.commit_in_background()
    await settle()
    assert await task.finish_commit()
    await task.process(TP, [record(1, 2)])
    assert task.schedulable and task.has_work and not task.can_commit  # the write runs
    with pytest.raises(RuntimeError, match="writing its last commit"):
        task.commit_in_background()
    writing.set()
    await can_commit(task)
    await task.close(commit=True)
    assert sink.offsets == [{TP: 1}, {TP: 2}]


async def test_a_failed_background_commit_fails_the_task_and_drops_what_followed() -> None:
    sink = GatedSink()
    task = make_task(sink)
    await task.process(TP, [record(0, 1)])
    sink.fail_commit = True
    task.commit_in_background()
    await task.process(TP, [record(1, 2)])  # into the next transaction
    sink.gate.set()
    await settle()
    with pytest.raises(TaskFencedError):
        await task.finish_commit()
    assert task.state is TaskState.FAILED
    await task.close(commit=True)
    assert (str(task.state), sink.commits, sink.aborts) == ("closed", 0, 1)


async def test_close_waits_for_the_background_commit_then_commits_what_followed() -> None:
    sink = GatedSink()
    task = make_task(sink)
    await task.process(TP, [record(0, 1)])
    task.commit_in_background()
    await task.process(TP, [record(1, 2)])
    closing = asyncio.ensure_future(task.close(commit=True))
    await settle()
    assert not closing.done()  # the commit in flight finishes first
    sink.gate.set()
    await closing
    assert (sink.offsets, sink.aborts, str(task.state)) == ([{TP: 1}, {TP: 2}], 0, "closed")


async def test_close_without_commit_cancels_the_background_commit() -> None:
    sink = GatedSink()
    task = make_task(sink)
    await task.process(TP, [record(0, 1)])
    task.commit_in_background()
    await settle()
    await task.close(commit=False)
    assert (sink.commits, sink.aborts, str(task.state)) == (0, 1, "closed")


async def test_a_second_background_commit_is_refused() -> None:
    task = make_task(GatedSink())
    await task.process(TP, [record(0, 1)])
    task.commit_in_background()
    with pytest.raises(RuntimeError, match="committing already"):
        task.commit_in_background()
    await task.close(commit=False)


@dataclass
class FakeTask:
    can_commit: bool = True
    has_work: bool = True
    uncommitted: int = 1


def schedule(interval_ms: int = 100, commit_every: int = 1_000) -> CommitSchedule[int]:
    return CommitSchedule(interval_ms, commit_every, lambda key: key / 4)


def test_phases_spread_a_groups_partitions_evenly_over_the_interval() -> None:
    phases = sorted(phase_of("0", p, 6) for p in range(6))
    assert phases == [i / 6 for i in range(6)]
    assert sorted(phase_of("1", p, 6) for p in range(6)) == phases  # another group: shifted
    assert phase_of("0", 0, 1) == 0.0


def test_each_task_commits_once_per_interval_at_its_own_phase() -> None:
    s = schedule(interval_ms=125)  # binary fractions: exact times
    tasks = {p: FakeTask() for p in range(4)}
    assert s.due(tasks, 0.0) == []  # first sight: placed, not due
    commits: list[tuple[float, int]] = []
    for step in range(1, 50):  # 1/128 s steps over ~3 intervals
        now = step / 128
        for key in s.due(tasks, now):
            s.begun(key, now)
            commits.append((now, key))
    by_task = {p: [t for t, k in commits if k == p] for p in tasks}
    for times in by_task.values():
        assert len(times) == 3
        assert [b - a for a, b in itertools.pairwise(times)] == [0.125, 0.125]
    firsts = sorted(times[0] for times in by_task.values())
    assert firsts == [0.03125, 0.0625, 0.09375, 0.125]  # staggered, not together


def test_a_late_commit_keeps_the_tasks_place_in_the_grid() -> None:
    s = schedule()
    tasks = {1: FakeTask()}
    s.due(tasks, 0.0)  # placed at 0.025
    assert s.due(tasks, 0.19) == [1]  # the loop was busy: late
    s.begun(1, 0.19)
    assert s.due(tasks, 0.22) == []
    assert s.due(tasks, 0.225) == [1]


def test_not_due_while_committing_or_without_work_and_due_at_once_on_commit_every() -> None:
    s = schedule(commit_every=10)
    task = FakeTask()
    s.due({1: task}, 0.0)
    task.can_commit = False
    assert s.due({1: task}, 1.0) == []
    task.can_commit, task.has_work = True, False
    assert s.due({1: task}, 1.0) == []
    task.has_work, task.uncommitted = True, 10
    assert s.due({1: task}, 0.001) == [1]  # before its time: commit_every reached
    s.begun(1, 0.001)
    assert s.next_due([1]) == pytest.approx(0.025)  # the time-based commit stays where it was


def test_a_key_no_longer_assigned_is_forgotten() -> None:
    s = schedule()
    s.due({1: FakeTask(), 2: FakeTask()}, 0.0)
    s.due({2: FakeTask()}, 0.0)
    assert s.next_due([1]) is None
    assert s.next_due([1, 2]) == pytest.approx(0.05)


class PausingConsumer:
    """What ``Worker._pause_waiting`` calls of the group consumer."""

    def __init__(self) -> None:
        self.paused: set[TopicPartition] = set()

    def pause(self, *tps: TopicPartition) -> None:
        self.paused.update(tps)

    def resume(self, *tps: TopicPartition) -> None:
        self.paused.difference_update(tps)


async def test_a_task_holding_commit_every_records_past_its_cut_pauses_until_it_returns() -> None:
    sink = GatedSink()
    task = make_task(sink)
    worker = Worker(task.app, Settings(commit_every=2))
    consumer = PausingConsumer()
    worker._consumer = consumer  # type: ignore[assignment]
    worker.tasks[("0", 0)] = task
    await task.process(TP, [record(0, 1)])
    task.commit_in_background()
    await task.process(TP, [record(1, 2)])
    worker._pause_waiting()
    assert consumer.paused == set()  # one record held: below commit_every
    await task.process(TP, [record(2, 3)])
    worker._pause_waiting()
    assert consumer.paused == {TP}  # its sends wait in memory for the commit: no more input
    sink.gate.set()
    await settle()
    assert await task.finish_commit()
    worker._pause_waiting()
    assert consumer.paused == set()
    await task.close(commit=False)
