"""The per-record context handed to every handler.

A ``Context`` carries the record's metadata and stages the record's effects — sends and table
writes — so that a handler attempt that raises leaves nothing behind: the runtime applies the
staged effects to the task's open transaction only when the handler returns
(docs/architecture.md, *The life of a record*).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, TypeVar

from onceflow.errors import RecordTooLargeError
from onceflow.records import (
    ABSENT,
    RECORD_OVERHEAD,
    Absent,
    Header,
    OutgoingRecord,
    record_size,
)
from onceflow.topics import Topic

if TYPE_CHECKING:
    from onceflow.scope import TaskScope

__all__ = ["Context"]

K = TypeVar("K")
V = TypeVar("V")


class Context:
    """What a handler knows about the record it handles, and how it acts.

    Example::

        @app.handler(orders)
        async def enrich(ctx: Context, key: str, order: dict) -> None:
            if ctx.timestamp < cutoff:
                return
            await ctx.send(enriched, key, {**order, "partition": ctx.partition})

    ``staged_sends``, ``staged_writes`` and ``late_tables`` are what this handler attempt staged
    so far (None until the first one), ``explicit_partitions`` whether a send named its
    partition: the runtime reads them when the handler returns.
    """

    __slots__ = (
        "explicit_partitions",
        "headers",
        "key_bytes",
        "late_tables",
        "offset",
        "partition",
        "scope",
        "staged_sends",
        "staged_writes",
        "timestamp",
        "topic",
    )

    def __init__(
        self,
        scope: TaskScope,
        topic: str,
        partition: int,
        offset: int,
        timestamp: int,
        headers: Sequence[Header],
        key_bytes: bytes | None,
    ) -> None:
        self.scope = scope
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.timestamp = timestamp
        self.headers = headers
        self.key_bytes = key_bytes
        # Allocated on first use: most records send one record and stage one write, or none.
        self.staged_sends: list[OutgoingRecord] | None = None
        # (store name, store key) -> serialized value, or None for a delete
        self.staged_writes: dict[tuple[str, bytes], bytes | None] | None = None
        self.late_tables: set[str] | None = None  # windowed tables this record was late for
        self.explicit_partitions = False  # whether a send names its partition (to be checked)

    @property
    def task_id(self) -> str:
        """The task handling this record, e.g. ``"0_3"`` (group 0, partition 3)."""
        return self.scope.task_id

    @property
    def stream_time(self) -> int:
        """The largest record timestamp this task has seen (event time, ms)."""
        return self.scope.stream_time

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
        header_list = list(headers) if headers else []
        limit = self.scope.max_record_bytes
        plain = (len(key_bytes) if key_bytes else 0) + (len(value_bytes) if value_bytes else 0)
        # record_size only when headers or a large record make the check worth its cost
        if (header_list or plain + RECORD_OVERHEAD > limit) and (
            size := record_size(key_bytes, value_bytes, header_list)
        ) > limit:
            raise RecordTooLargeError(
                f"a record of about {size} bytes for topic {topic.name!r} is larger than the "
                f"producer allows ({self.scope.max_record_bytes} bytes, "
                "ONCEFLOW_MAX_REQUEST_SIZE): the input record goes to the dead-letter topic"
            )
        record = OutgoingRecord(
            topic.name,
            key_bytes,
            value_bytes,
            header_list,
            partition,
            self.timestamp if timestamp_ms is None else timestamp_ms,
        )
        if partition is not None:
            self.explicit_partitions = True
        if self.staged_sends is None:
            self.staged_sends = [record]
        else:
            self.staged_sends.append(record)

    # -- what tables stage -------------------------------------------------------------------

    def staged(self, store: str, key: bytes) -> bytes | Absent | None:
        """The value this attempt staged for ``key`` of ``store`` (None: a delete), or
        ``onceflow.records.ABSENT`` when it staged nothing for it."""
        writes = self.staged_writes
        return ABSENT if writes is None else writes.get((store, key), ABSENT)

    def stage(self, store: str, key: bytes, value: bytes | None) -> None:
        """Stage a write (None: a delete) of ``key`` in ``store``, applied if the attempt
        succeeds. Its changelog record must fit a produce request (``RecordTooLargeError``)."""
        limit = self.scope.max_record_bytes
        if value is not None and len(key) + len(value) + RECORD_OVERHEAD > limit:
            raise RecordTooLargeError(
                f"table {store!r}: a value of {len(value)} bytes (key {len(key)} bytes) does not "
                f"fit the changelog record limit ({limit} bytes, "
                "ONCEFLOW_MAX_REQUEST_SIZE): the input record goes to the dead-letter topic"
            )
        if self.staged_writes is None:
            self.staged_writes = {(store, key): value}
        else:
            self.staged_writes[(store, key)] = value

    def mark_late(self, store: str) -> None:
        """Note that the record was late for a window of ``store``: counted once per record and
        table, and only if the handler attempt succeeds."""
        if self.late_tables is None:
            self.late_tables = {store}
        else:
            self.late_tables.add(store)

    def __repr__(self) -> str:
        return f"Context({self.topic}[{self.partition}]@{self.offset}, task {self.task_id})"
