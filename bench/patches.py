"""Prototypes of hot-path proposals, applied by monkeypatching inside a bench worker only.

They estimate what a proposal would gain before anyone changes ``app/``: the ``exp-*`` scenarios
run ``bench.apps.patched``, which applies the patches named in ``BENCH_PATCHES`` (comma-separated)
and then serves the app module named in ``BENCH_APP``. Prototypes, not production code: they reach
into private attributes and skip error handling the real change would need.

* ``nowaitfor``: ``TransactionalSink.send`` without the per-record ``asyncio.wait_for``.
* ``batch``: handler and changelog sends are buffered per task and handed to the producer as one
  ``create_batch``/``send_batch`` per partition, after each fetched batch and before commit;
  partitions come from a memoized murmur2 (headers and explicit timestamps are not carried: the
  bench apps use neither).
* ``prefetch``: before a fetched batch is processed, every store of the task loads the batch's
  keys in one SQLite round trip, off the event loop (``StorePartition.prefetch``).
"""

from __future__ import annotations

import asyncio
import os
from collections import defaultdict
from collections.abc import Sequence
from typing import Any, NamedTuple

from app.context import OutgoingRecord
from app.partitioner import partition_for_key
from app.producers import TransactionalSink, _send
from app.tables import WindowedTable
from app.task import Task

__all__ = ["apply"]


class _Offset(NamedTuple):
    topic: str
    partition: int
    offset: int


def _nowaitfor() -> None:
    async def send(self: TransactionalSink, record: OutgoingRecord) -> asyncio.Future[Any]:
        self._check_fatal()
        return await _send(self._producer, record)

    TransactionalSink.send = send  # type: ignore[method-assign]


_PARTITIONS: dict[tuple[bytes, int], int] = {}


def _partition_of(key: bytes, count: int) -> int:
    """murmur2 partition of ``key``, memoized: keys repeat, and murmur2 is pure Python."""
    cached = _PARTITIONS.get((key, count))
    if cached is None:
        if len(_PARTITIONS) > 200_000:
            _PARTITIONS.clear()
        cached = _PARTITIONS[(key, count)] = partition_for_key(key, count)
    return cached


async def _flush_pending(sink: TransactionalSink) -> None:
    """Hand the sink's buffered records to its producer, one batch per partition."""
    pending = sink.__dict__.pop("_pending", [])
    producer = sink._producer
    groups: dict[tuple[str, int], list[tuple[OutgoingRecord, Any]]] = defaultdict(list)
    counts: dict[str, int] = sink.__dict__.setdefault("_partition_counts", {})
    for record, future in pending:
        partition = record.partition
        if partition is None:
            count = counts.get(record.topic)
            if count is None:
                count = counts[record.topic] = len(await producer.partitions_for(record.topic))
            partition = _partition_of(record.key or b"", count)
        groups[(record.topic, partition)].append((record, future))
    for (topic, partition), items in groups.items():
        batch = producer.create_batch()
        members: list[asyncio.Future[Any]] = []
        for record, future in items:
            if batch.append(key=record.key, value=record.value, timestamp=None) is None:
                await _ship(producer, batch, topic, partition, members)
                batch, members = producer.create_batch(), []
                batch.append(key=record.key, value=record.value, timestamp=None)
            members.append(future)
        await _ship(producer, batch, topic, partition, members)


async def _ship(
    producer: Any, batch: Any, topic: str, partition: int, members: list[asyncio.Future[Any]]
) -> None:
    done = await producer.send_batch(batch, topic, partition=partition)

    def resolve(f: asyncio.Future[Any]) -> None:
        error = f.exception()
        for i, member in enumerate(members):
            if error is not None:
                member.set_exception(error)
            else:
                member.set_result(_Offset(topic, partition, f.result().offset + i))

    done.add_done_callback(resolve)


def _batch() -> None:
    async def send(self: TransactionalSink, record: OutgoingRecord) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.__dict__.setdefault("_pending", []).append((record, future))
        return future

    original_process = Task.process
    original_await = Task._await_sends

    async def process(self: Task, tp: Any, records: Sequence[Any]) -> None:
        await original_process(self, tp, records)
        await _flush_pending(self.sink)  # type: ignore[arg-type]

    async def await_sends(self: Task, futures: list[asyncio.Future[Any]]) -> list[Any]:
        await _flush_pending(self.sink)  # type: ignore[arg-type]
        return await original_await(self, futures)

    TransactionalSink.send = send  # type: ignore[method-assign]
    Task.process = process  # type: ignore[method-assign]
    Task._await_sends = await_sends  # type: ignore[method-assign]


def _prefetch() -> None:
    original_process = Task.process

    def load(task: Task, records: Sequence[Any]) -> None:
        keys = [r.key for r in records if r.key is not None]
        for table in task._tables:
            if isinstance(table, WindowedTable):
                windows = [
                    (r.key, start)
                    for r in records
                    if r.key is not None
                    for start, _ in table.window.windows_for(r.timestamp)
                ]
                task._windowed[table.name].prefetch(windows)
            else:
                task._stores[table.name].prefetch(keys)

    async def process(self: Task, tp: Any, records: Sequence[Any]) -> None:
        if self._tables:
            await asyncio.to_thread(load, self, records)
        await original_process(self, tp, records)

    Task.process = process  # type: ignore[method-assign]


PATCHES = {"nowaitfor": _nowaitfor, "batch": _batch, "prefetch": _prefetch}


def apply(names: str | None = None) -> list[str]:
    """Apply the named patches (default: ``BENCH_PATCHES``); returns their names."""
    wanted = [n for n in (names or os.environ.get("BENCH_PATCHES", "")).split(",") if n]
    for name in wanted:
        PATCHES[name]()
    return wanted
