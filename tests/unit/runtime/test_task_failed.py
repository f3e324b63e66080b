"""A task whose ``process`` or ``commit`` raises is ``failed`` at once: the worker fails and closes
it only after every task of the batch is done, and meanwhile it must neither be queried (its
state may already be the next owner's: it was fenced) nor committed again.

The task runs with in-memory stores (as in the test driver) and a sink that fails on demand.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pytest
from aiokafka.structs import ConsumerRecord, TopicPartition

from onceflow import App, Context
from onceflow.errors import StateError, TaskFencedError
from onceflow.records import OutgoingRecord
from onceflow.runtime import Metrics, Task, TaskState
from onceflow.settings import Settings
from onceflow.state.memory import InMemoryStorePartition

FENCED = TaskFencedError("producer fenced by a newer owner")


class FailingSink:
    """A ``Sink`` (``onceflow.runtime.sinks``) that acknowledges everything at once and whose
    ``begin`` / ``commit`` raise ``TaskFencedError`` on demand."""

    def __init__(self) -> None:
        self.fail_begin = False
        self.fail_commit = False
        self.pending = 0  # sends of the open transaction
        self.committing = 0  # sends of the transaction being committed (after ``cut``)
        self.commits = 0
        self.aborts = 0

    async def start(self) -> None: ...

    async def begin(self) -> None:
        if self.fail_begin:
            raise FENCED

    async def partition_count(self, topic: str) -> int:
        return 1

    def send(self, record: OutgoingRecord) -> None:
        self.pending += 1

    def send_pairs(
        self, topic: str, partition: int, pairs: Iterable[tuple[bytes, bytes | None]]
    ) -> None:
        self.pending += sum(1 for _ in pairs)

    async def flush(self) -> None: ...

    def cut(self) -> None:
        self.committing, self.pending = self.pending, 0

    async def delivered(self) -> dict[TopicPartition, int]:
        return {}

    async def stage_offsets(self, offsets: Mapping[TopicPartition, Any]) -> None: ...

    async def commit(self, offsets: Mapping[TopicPartition, Any]) -> None:
        if self.fail_commit:
            raise FENCED
        self.commits += 1
        self.committing = 0

    async def abort(self) -> None:
        self.aborts += 1
        self.pending = self.committing = 0

    async def close(self) -> None: ...


def make_task(sink: FailingSink) -> Task:
    app = App("task-failed")
    source = app.topic("in", key_serde="str", value_serde="int64")
    last = app.table("last", default=None, key_serde="str", value_serde="int64")

    @app.handler(source)
    async def remember(ctx: Context, key: str, value: int) -> None:
        last.set(ctx, key, value)

    task = Task(
        app=app,
        group="0",
        partition=0,
        num_partitions=1,
        sink=sink,
        consumer=None,
        consumer_factory=lambda **_: pytest.fail("no consumer"),
        settings=Settings(),
        metrics=Metrics(app.app_id, eos=True),
    )
    task.adopt({"last": InMemoryStorePartition("last/0")})
    return task


def record(offset: int, value: int) -> ConsumerRecord[bytes, bytes]:
    data = value.to_bytes(8, "big", signed=True)
    return ConsumerRecord("in", 0, offset, 0, 0, b"k", data, None, 1, 8, [])


TP = TopicPartition("in", 0)


async def test_a_failed_commit_fails_the_task_at_once() -> None:
    sink = FailingSink()
    task = make_task(sink)
    await task.process(TP, [record(0, 1)])
    assert await task.commit()
    assert (task.state, sink.commits) == (TaskState.RUNNING, 1)
    await task.process(TP, [record(1, 2)])
    sink.fail_commit = True
    with pytest.raises(TaskFencedError):
        await task.commit()
    assert str(task.state) == "failed"  # at once, as the HTTP layer reads it
    await task.close(commit=True)  # a failed task is never committed again: aborted
    assert (str(task.state), sink.commits, sink.aborts) == ("closed", 1, 1)


async def test_a_failed_batch_fails_the_task_at_once() -> None:
    sink = FailingSink()
    task = make_task(sink)
    sink.fail_begin = True
    with pytest.raises(TaskFencedError):
        await task.process(TP, [record(0, 1)])
    assert task.state is TaskState.FAILED


async def test_closing_after_a_failure_stays_closed() -> None:
    sink = FailingSink()
    task = make_task(sink)
    await task.close(commit=False)
    with pytest.raises(StateError, match="closed"):
        await task.process(TP, [record(0, 1)])
    assert task.state is TaskState.CLOSED  # _fail never revives a closed task's state
