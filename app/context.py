"""The per-record context handed to every handler.

A ``Context`` carries the record's metadata and stages the record's effects — sends and table
writes — so that a handler attempt that raises leaves nothing behind: its effects are applied to
the task's open transaction only when the handler returns.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from onceflow.topics import Topic

if TYPE_CHECKING:
    from onceflow.runtime.task import Task

__all__ = ["Context", "Header", "OutgoingRecord"]

K = TypeVar("K")
V = TypeVar("V")

Header = tuple[str, bytes]
_ABSENT = object()


class OutgoingRecord(NamedTuple):
    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[Header]
    partition: int | None = None
    timestamp_ms: int | None = None


class Context:
    """What a handler knows about the record it handles, and how it acts.

    Example::

        @app.handler(orders)
        async def enrich(ctx: Context, key: str, order: dict) -> None:
            if ctx.timestamp < cutoff:
                return
            await ctx.send(enriched, key, {**order, "partition": ctx.partition})
    """

    __slots__ = (
        "_late",
        "_sends",
        "_staged",
        "_task",
        "headers",
        "key_bytes",
        "offset",
        "partition",
        "timestamp",
        "topic",
    )

    def __init__(
        self,
        task: Task,
        topic: str,
        partition: int,
        offset: int,
        timestamp: int,
        headers: Sequence[Header],
        key_bytes: bytes | None,
    ) -> None:
        self._task = task
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.timestamp = timestamp
        self.headers = headers
        self.key_bytes = key_bytes
        # Allocated on first use: most records send one record and stage one write, or none.
        self._sends: list[OutgoingRecord] | None = None
        # (store name, store key) -> serialized value, or None for a delete
        self._staged: dict[tuple[str, bytes], bytes | None] | None = None
        self._late: set[str] | None = None  # windowed tables this record was late for

    @property
    def task_id(self) -> str:
        """The task handling this record, e.g. ``"0_3"`` (group 0, partition 3)."""
        return self._task.task_id

    @property
    def stream_time(self) -> int:
        """The largest record timestamp this task has seen (event time, ms)."""
        return self._task.stream_time

    async def send(
        self,
        topic: Topic[K, V],
        key: K | None,
        value: V | None,
        *,
        headers: Sequence[Header] | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
    ) -> None:
        """Send a record as part of this task's current transaction.

        The record is serialized now (a serde error fails this handler attempt) and handed to the
        producer once the handler returns. Under exactly-once it becomes visible to
        ``read_committed`` consumers when the task commits. Its timestamp is the input record's
        (event time flows downstream, as in Kafka Streams) unless ``timestamp_ms`` is given.
        """
        key_bytes = None if key is None else topic.key_serde.serialize(key)
        value_bytes = None if value is None else topic.value_serde.serialize(value)
        record = OutgoingRecord(
            topic.name,
            key_bytes,
            value_bytes,
            list(headers) if headers else [],
            partition,
            self.timestamp if timestamp_ms is None else timestamp_ms,
        )
        if self._sends is None:
            self._sends = [record]
        else:
            self._sends.append(record)

    # -- used by tables ---------------------------------------------------------------------

    def _staged_get(self, store: str, key: bytes) -> Any:
        """The value staged by this record for ``key``, or ``_ABSENT``."""
        staged = self._staged
        return _ABSENT if staged is None else staged.get((store, key), _ABSENT)

    def _stage(self, store: str, key: bytes, value: bytes | None) -> None:
        if self._staged is None:
            self._staged = {(store, key): value}
        else:
            self._staged[(store, key)] = value

    def _count_late(self, store: str) -> None:
        """Counted once per record and table, and only if the handler attempt succeeds."""
        if self._late is None:
            self._late = {store}
        else:
            self._late.add(store)


ABSENT = _ABSENT
