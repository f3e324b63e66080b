"""One partition of a SQL sink as its owner holds it (docs/architecture.md, *Exactly-once into a
database*)."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from typing import TypeAlias

from aiokafka.structs import ConsumerRecord, TopicPartition

from onceflow.runtime.sql_offsets import PartitionKey

__all__ = ["Record", "SinkPartition"]

Record: TypeAlias = "ConsumerRecord[bytes, bytes]"


@dataclass
class SinkPartition:
    """What a sink holds of one claimed partition: its epoch, where the database has it, and
    the records fetched and not written yet (with when they were fetched)."""

    tp: TopicPartition
    key: PartitionKey
    epoch: int | None = None  # None until claimed
    next_offset: int = 0  # in the database, as this owner last read or wrote it
    fetched_to: int = 0  # records below this are in the buffer or applied
    buffer: list[Record] = field(default_factory=list)
    arrivals: deque[tuple[int, float]] = field(default_factory=deque)  # (first offset, fetched at)
    retry_at: float | None = None
    fenced: bool = False
    claim: asyncio.Task[None] | None = None

    def take(self, records: list[Record], now: float) -> None:
        fresh = [r for r in records if r.offset >= self.fetched_to]
        if fresh:
            self.buffer += fresh
            self.arrivals.append((fresh[0].offset, now))
            self.fetched_to = fresh[-1].offset + 1

    def applied(self, next_offset: int) -> None:
        self.next_offset = next_offset
        i = 0
        while i < len(self.buffer) and self.buffer[i].offset < next_offset:
            i += 1
        del self.buffer[:i]
        if not self.buffer:
            self.arrivals.clear()
        while len(self.arrivals) > 1 and self.arrivals[1][0] <= self.buffer[0].offset:
            self.arrivals.popleft()

    def clear(self) -> None:
        self.buffer.clear()
        self.arrivals.clear()

    @property
    def oldest_at(self) -> float:
        """When the oldest buffered record was fetched."""
        return self.arrivals[0][1] if self.arrivals else 0.0
