"""Records that wait for a retry: the record whose handler failed, and every record of the same
task fetched after it (they wait in order: a task's records are handled in offset order).

The wait is not a sleep: the worker keeps polling and keeps the task's other work and every
other task going, and tries again when ``due`` (docs/architecture.md, *Failures*). A sleep
held the worker's loop: a few hundred failing records in one fetch passed
``max.poll.interval.ms`` and cost the member its place in the group, and the next owner met the
same records.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka.structs import ConsumerRecord, TopicPartition

__all__ = ["Held"]

Chunk = tuple[TopicPartition, Sequence[ConsumerRecord[Any, Any]]]


@dataclass
class Held:
    """``chunks[0][1][0]`` is the record to try again at ``due`` (``time.monotonic()``), after
    ``attempt`` retries so far (the last failure is logged when the record goes to the
    dead-letter topic)."""

    chunks: list[Chunk]
    due: float
    attempt: int = 0

    @classmethod
    def after(
        cls,
        tp: TopicPartition,
        records: Sequence[ConsumerRecord[Any, Any]],
        delay_s: float,
    ) -> Held:
        """The first failure of ``records[0]``: try it again in ``delay_s`` seconds."""
        return cls([(tp, records)], time.monotonic() + delay_s)
