"""A task's tables fed by a topic (``onceflow.source_tables.SourceTable``): applying their
topic's records in the task's transaction, restoring them up to the committed offset, and their
checkpoints (docs/architecture.md, *Tables fed by a topic*).

The topic is written by someone else, outside our transactions; what makes the store exactly-once
is that it moves only with the task's committed offsets:

* processing applies a record to the store's open buffer, in the task's order, and notes its
  offset like any source record's (``Checkpoint.processed``); the offsets commit in the task's
  transaction, and the buffer reaches SQLite after that commit with checkpoint = the committed
  offset - 1, the offset of the last record it applied (Invariant 1 and 2);
* a start restores from the store's checkpoint + 1 up to the task's committed offset of the
  topic partition (``restore_partition(until=...)``), never to the log end: the rest is
  processed from the committed offset like any source. A checkpoint at or beyond the committed
  offset (offsets reset) wipes the store first;
* nothing is sent to a changelog: the topic is the changelog.

Both paths apply a record under the same rule (``SourceTable.accepts``): a null key or a key or
value that does not deserialize is not applied — processing dead-letters it, a restore skips it —
so a restored store holds exactly what processing applied.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from aiokafka.structs import TopicPartition

from onceflow.errors import SerdeError
from onceflow.source_tables import SourceTable
from onceflow.state.wrapped import WrappedRestorable

if TYPE_CHECKING:
    from aiokafka.structs import ConsumerRecord

    from onceflow.state.typing import Restorable

__all__ = ["SourceRestore", "TableFeed", "source_checkpoints"]

log = logging.getLogger("onceflow.task")


class TableFeed:
    """The source tables of one task's group, by topic."""

    def __init__(self, tables: Iterable[object]) -> None:
        self.by_topic: dict[str, SourceTable[Any, Any]] = {
            t.topic: t for t in tables if isinstance(t, SourceTable)
        }

    def __contains__(self, topic: str) -> bool:
        return topic in self.by_topic

    def until(
        self, table: object, committed: Mapping[TopicPartition, int], partition: int
    ) -> int | None:
        """Where ``table``'s restore stops: the task's committed offset of its topic partition
        (0 when none: the task reads the topic from its start, like a source); None for a
        table with a changelog of its own (restored to the end)."""
        if not isinstance(table, SourceTable):
            return None
        return committed.get(TopicPartition(table.topic, partition), 0)

    def apply(
        self,
        records: Sequence[ConsumerRecord[Any, Any]],
        apply: Callable[[str, bytes, bytes | None], None],
        dead_letter: Callable[[ConsumerRecord[Any, Any], Exception, str], None],
    ) -> None:
        """Apply records of one table topic partition to the open transaction's buffer with
        ``apply`` (``TaskStores.apply``: a value is a put, None a delete), in offset order. A
        record that does not deserialize goes to ``dead_letter`` (``Effects.dead_letter``,
        stage ``deserialize``) and changes nothing."""
        table = self.by_topic[records[0].topic]
        name, accepts = table.name, table.accepts
        for record in records:
            try:
                if not accepts(record.key, record.value):
                    continue
            except SerdeError as exc:
                dead_letter(record, exc, "deserialize")
                continue
            apply(name, record.key, record.value)


def source_checkpoints(
    tables: Iterable[object], partition: int, positions: Mapping[TopicPartition, int]
) -> dict[str, int]:
    """Per source table whose topic partition the task processed: the offset of the last
    record it consumed, which its store's next flush records as checkpoint."""
    return {
        t.name: positions[tp] - 1
        for t in tables
        if isinstance(t, SourceTable)
        and (tp := TopicPartition(t.topic, partition)) in positions
        and positions[tp] > 0
    }


class SourceRestore(WrappedRestorable):
    """What restores a source table's store from its topic: the store, applying only the
    records processing would apply (``SourceTable.accepts``)."""

    def __init__(self, table: SourceTable[Any, Any], inner: Restorable) -> None:
        self.table = table
        self.inner = inner
        self.skipped = 0

    def wipe(self) -> None:
        self.inner.wipe()

    def restore_batch(
        self, records: Sequence[tuple[bytes, bytes | None]], last_offset: int
    ) -> None:
        """Apply the batch's accepted records and checkpoint ``last_offset``."""
        accepted = [(k, v) for k, v in records if self._accepts(k, v)]
        self.inner.restore_batch(accepted, last_offset)

    def _accepts(self, key: bytes | None, value: bytes | None) -> bool:
        try:
            return self.table.accepts(key, value)
        except SerdeError as exc:
            self.skipped += 1
            log.debug("source table %s: restore skips a record (%s)", self.table.name, exc)
            return False
