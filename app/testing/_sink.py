"""The test driver's records and its in-memory ``Sink`` (see ``onceflow.testing``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypedDict

from aiokafka.structs import TopicPartition

from onceflow.records import Header, OutgoingRecord

__all__ = ["DeadLetter", "InMemorySink", "Output", "RecordOptions"]


class RecordOptions(TypedDict, total=False):
    """Input record fields: ``timestamp`` (ms, or a datetime; naive = UTC), ``headers`` and
    ``partition`` (default: murmur2 of the key bytes, as Kafka's producers pick it)."""

    timestamp: int | datetime | None
    headers: Sequence[Header] | None
    partition: int | None


@dataclass(frozen=True, slots=True)
class Output:
    """A committed record the app sent (key and value deserialized by ``read``)."""

    topic: str
    key: Any
    value: Any
    headers: list[Header]
    timestamp: int
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A dead-letter record: the source record's bytes, headers as text (``onceflow.*``)."""

    key: bytes | None
    value: bytes | None
    headers: dict[str, str]
    timestamp: int
    partition: int
    offset: int


class InMemorySink:
    """A task's ``Sink`` (``onceflow.runtime.sinks``) into an in-memory log: a send is
    acknowledged at once (``place`` gives it its partition, offset and timestamp) and is handed to
    ``publish`` when the task commits; ``abort`` drops it. ``count`` gives a topic's partitions."""

    def __init__(
        self,
        place: Callable[[OutgoingRecord], Output],
        publish: Callable[[Output], None],
        count: Callable[[str], int],
    ) -> None:
        self._place = place
        self._publish = publish
        self._count = count
        self._pending: list[Output] = []
        self._cut: list[Output] | None = None  # the committing transaction's (``cut``)
        self.committed_offsets: dict[TopicPartition, Any] = {}

    async def start(self) -> None: ...  # nothing to fence: the driver owns every task

    async def begin(self) -> None: ...

    async def partition_count(self, topic: str) -> int:
        return self._count(topic)

    def send(self, record: OutgoingRecord) -> None:
        self._pending.append(self._place(record))

    def send_pairs(
        self, topic: str, partition: int, pairs: Iterable[tuple[bytes, bytes | None]]
    ) -> None:
        for key, value in pairs:
            self.send(OutgoingRecord(topic, key, value, [], partition, None))

    async def flush(self) -> None: ...

    def cut(self) -> None:
        self._cut, self._pending = self._pending, []

    def _committing(self) -> list[Output]:
        return self._pending if self._cut is None else self._cut

    async def delivered(self) -> dict[TopicPartition, int]:
        last: dict[TopicPartition, int] = {}
        for out in self._committing():
            tp = TopicPartition(out.topic, out.partition)
            last[tp] = max(last.get(tp, -1), out.offset)
        return last

    async def stage_offsets(self, offsets: Mapping[TopicPartition, Any]) -> None:
        return None  # ``commit`` takes them

    async def commit(self, offsets: Mapping[TopicPartition, Any]) -> None:
        self.committed_offsets.update(offsets)
        for out in self._committing():
            self._publish(out)
        if self._cut is None:
            self._pending = []
        self._cut = None

    async def abort(self) -> None:
        self._pending = []
        self._cut = None

    close = abort
