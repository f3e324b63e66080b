"""The order in which a task handles what it fetched for its partitions (docs/architecture.md,
*The life of a record*).

A task that owns several source partitions (two co-partitioned streams, a stream and a
repartition topic) handles them in timestamp order, as Kafka Streams does: it always takes the
next record of the partition whose next record has the smallest timestamp, so a join or a late
decision sees its inputs in event time order, not in the order the fetches happened to return
them. Within a partition the offset order is kept (a record with a smaller timestamp than the
one before it in its partition waits for it).

With ``ONCEFLOW_MAX_TASK_IDLE_MS=0`` (the default, Kafka Streams' ``max.task.idle.ms=0``) only
what one poll fetched is ordered: a partition with nothing fetched does not hold the others
back. Above 0, a task keeps what it fetched (``TaskInput``) and handles records only while every
one of its partitions has some, or its empty partitions are caught up (nothing more to fetch);
otherwise it waits up to that long for them, then goes on with what it has.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from typing import Any, Generic, Protocol, TypeVar

from aiokafka.structs import TopicPartition

__all__ = ["HeldInputs", "TaskInput", "by_timestamp"]

T = TypeVar("T")
K = TypeVar("K")


class _Ordered(Protocol):
    """A task, as the ordering sees it: its source partitions."""

    @property
    def tps(self) -> Sequence[TopicPartition]: ...


TaskT = TypeVar("TaskT", bound=_Ordered)
Work = list[tuple[TopicPartition, list[Any]]]


def by_timestamp(work: Sequence[tuple[T, Sequence[Any]]]) -> list[tuple[T, list[Any]]]:
    """``work`` (per partition, its records in offset order) as runs of one partition's records,
    in the order the task handles them: by the timestamp of each partition's next record (ties:
    the order of ``work``), offsets in order within a partition. One partition: unchanged."""
    return _ordered(work, until_drained=False)[0]


def _ordered(
    work: Sequence[tuple[T, Sequence[Any]]], *, until_drained: bool
) -> tuple[list[tuple[T, list[Any]]], list[tuple[T, list[Any]]]]:
    """``by_timestamp``, and with ``until_drained`` stopped as soon as one partition has given
    all it had (it might have an earlier record still to come); returns (runs, what is left)."""
    live = [(key, records) for key, records in work if records]
    if len(live) <= 1 and not until_drained:
        return [(key, list(records)) for key, records in live], []
    heads = [0] * len(live)
    runs: list[tuple[T, list[Any]]] = []
    while True:
        pending = [i for i in range(len(live)) if heads[i] < len(live[i][1])]
        if not pending or (until_drained and len(pending) < len(live)):
            rest = [(live[i][0], list(live[i][1][heads[i] :])) for i in pending]
            return runs, rest
        first = min(pending, key=lambda i: (live[i][1][heads[i]].timestamp, i))
        # Take from ``first`` while its next record would still be picked (ties: work order).
        others = [(live[i][1][heads[i]].timestamp, i) for i in pending if i != first]
        bound = min(others, default=None)
        key, records = live[first]
        start = heads[first]
        end = start + 1
        while end < len(records) and (bound is None or (records[end].timestamp, first) < bound):
            end += 1
        heads[first] = end
        runs.append((key, list(records[start:end])))


class TaskInput(Generic[T]):
    """What a task fetched and has not handled yet, per partition, with ``idle_ms`` > 0: the
    records are handed out (``take``) in timestamp order while every partition has some, and
    a partition with none holds the others back up to ``idle_ms`` unless it is caught up."""

    def __init__(
        self,
        partitions: Sequence[T],
        idle_ms: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._buffers: dict[T, list[Any]] = {p: [] for p in partitions}
        self._idle_s = idle_ms / 1000
        self._clock = clock
        self._waiting_since: float | None = None

    def add(self, partition: T, records: Sequence[Any]) -> None:
        self._buffers[partition].extend(records)

    @property
    def due(self) -> float | None:
        """When (the clock's seconds) a task waiting for an empty partition goes on anyway."""
        return None if self._waiting_since is None else self._waiting_since + self._idle_s

    def take(self, caught_up: Callable[[T], bool]) -> list[tuple[T, list[Any]]]:
        """The runs to handle now (``by_timestamp``); the rest stays for later."""
        buffers = self._buffers
        if not any(buffers.values()):
            self._waiting_since = None
            return []
        blocking = [p for p, records in buffers.items() if not records and not caught_up(p)]
        if blocking:
            now = self._clock()
            if self._waiting_since is None:
                self._waiting_since = now
            if now - self._waiting_since < self._idle_s:
                return []
            # Waited long enough: go on with what there is (Kafka Streams' "enforced processing")
            runs, rest = _ordered(list(buffers.items()), until_drained=False)
        else:
            runs, rest = _ordered(list(buffers.items()), until_drained=True)
        self._waiting_since = None
        self._buffers = {p: [] for p in buffers}
        for partition, records in rest:
            self._buffers[partition] = records
        return runs


class HeldInputs(Generic[K, TaskT]):
    """The ``TaskInput`` of every task of a worker (with ``idle_ms`` > 0; with 0, ``ready``
    hands everything on): what the poll loop may hand each task now."""

    def __init__(self, idle_ms: int) -> None:
        self._idle_ms = idle_ms
        self._inputs: dict[K, tuple[TaskT, TaskInput[TopicPartition]]] = {}

    @property
    def holding(self) -> bool:
        """Whether some task holds records back."""
        return bool(self._inputs)

    @property
    def due(self) -> float | None:
        """The earliest time (``time.monotonic()``) a waiting task goes on anyway."""
        return min((d for _, held in self._inputs.values() if (d := held.due)), default=None)

    def ready(
        self,
        running: dict[K, TaskT],
        fetched: dict[K, Work],
        caught_up: Callable[[TaskT, TopicPartition], bool],
    ) -> dict[K, Work]:
        """Add what ``running`` tasks fetched to what they hold; return what each may handle
        now. A task that is no longer running (closed, failed, rebuilt: the new one seeks its
        committed offsets) loses what it held."""
        if self._idle_ms <= 0:
            return fetched
        for key, (task, _) in list(self._inputs.items()):
            if running.get(key) is not task:
                del self._inputs[key]
        ready: dict[K, Work] = {}
        for key, work in fetched.items():
            task = running[key]
            if len(task.tps) == 1:
                ready[key] = work  # nothing to order
                continue
            if key not in self._inputs:
                self._inputs[key] = (task, TaskInput(task.tps, self._idle_ms))
            for tp, records in work:
                self._inputs[key][1].add(tp, records)
        for key, (task, held) in self._inputs.items():
            runs = held.take(functools.partial(caught_up, task))
            if runs:
                ready[key] = runs
        return ready
