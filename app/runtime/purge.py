"""Purging repartition topics: what every reader committed is deleted (DeleteRecords), so an
internal topic does not grow without bound (Kafka Streams' ``repartition.purge.interval.ms``;
docs/architecture.md, *Re-keying*).

A repartition topic's partition is read by exactly one task, whose committed offset is where
its next owner starts: records before it are never read again. The purger asks each running
task for its committed offsets every interval and moves the log start offset of its repartition
partitions up to them; a failure is logged and retried at the next round (nothing is lost by a
purge that did not happen).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from aiokafka.admin import RecordsToDelete
from aiokafka.errors import KafkaError
from aiokafka.structs import TopicPartition

if TYPE_CHECKING:
    from aiokafka.admin import AIOKafkaAdminClient

    from onceflow.runtime.task import Task

__all__ = ["RepartitionPurger"]

log = logging.getLogger("onceflow.worker")

PURGE_INTERVAL_S = 30.0


class RepartitionPurger:
    """Deletes the records of ``topics`` that the running tasks committed past."""

    def __init__(self, client: AIOKafkaAdminClient, topics: Iterable[str]) -> None:
        self._client = client
        self._topics = set(topics)
        self._purged: dict[TopicPartition, int] = {}  # up to where, per partition

    def due(self, tasks: Iterable[Task]) -> dict[TopicPartition, int]:
        """The committed offsets of repartition partitions beyond what was purged already."""
        return {
            tp: offset
            for task in tasks
            for tp, offset in task.committed_positions.items()
            if tp.topic in self._topics and offset > self._purged.get(tp, 0)
        }

    async def purge(self, tasks: Iterable[Task]) -> dict[TopicPartition, int]:
        """Delete the records before each running task's committed offset; returns the new log
        start offsets."""
        due = self.due(tasks)
        if not due:
            return {}
        starts: dict[TopicPartition, int] = await self._client.delete_records(
            {tp: RecordsToDelete(offset) for tp, offset in due.items()}
        )
        self._purged.update(due)
        return starts

    async def run(
        self,
        tasks: Callable[[], Iterable[Task]],
        stop: asyncio.Event,
        interval_s: float = PURGE_INTERVAL_S,
    ) -> None:
        """Purge every ``interval_s`` until ``stop`` is set."""
        if not self._topics:
            return
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)
            if stop.is_set():
                return
            try:
                starts = await self.purge(tasks())
            except (KafkaError, TimeoutError) as exc:
                log.warning("purging repartition topics failed (%r); retrying later", exc)
                continue
            if starts:
                log.debug("purged repartition partitions up to %s", starts)
