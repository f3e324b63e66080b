"""Where what a handler or callback attempt did goes: its staged sends and table writes into the
task's open transaction when it succeeded, the input (or the callback's window) to the
dead-letter topic when it failed for good (docs/architecture.md, *The life of a record*,
*Failures*).

``Effects`` belongs to one task: it holds the task's sink and stores, counts what it sends, and
knows the error policy — under ``fail`` a failure raises ``HandlerFailedError`` instead of
dead-lettering, and the task fails.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Literal

from onceflow.errors import HandlerFailedError, UnknownPartitionError
from onceflow.runtime.dead_letters import CallbackSource, callback_dead_letter, dead_letter

if TYPE_CHECKING:
    from aiokafka.structs import ConsumerRecord

    from onceflow.context import Context
    from onceflow.records import OutgoingRecord
    from onceflow.runtime.metrics import Metrics
    from onceflow.runtime.sinks import Sink
    from onceflow.runtime.stores import TaskStores

__all__ = ["Effects"]

log = logging.getLogger("onceflow.task")


class Effects:
    """The effects of one task's attempts, applied or dead-lettered."""

    def __init__(
        self,
        *,
        app_id: str,
        dlq_topic: str,
        sink: Sink,
        stores: TaskStores,
        metrics: Metrics,
        error_policy: Literal["dlq", "fail"],
        max_record_bytes: int,
    ) -> None:
        self._app_id = app_id
        self._dlq_topic = dlq_topic
        self._sink = sink
        self._stores = stores
        self._metrics = metrics
        self._error_policy = error_policy
        self._max_record_bytes = max_record_bytes
        self._sent: dict[str, int] = {}  # records sent per topic since the last count_sent()
        self._produced: dict[str, Any] = {}  # their counters
        self._partition_counts: dict[str, int] = {}  # of topics sent to an explicit partition
        self._late = {
            t.name: metrics.late_records_dropped.labels(app_id, t.name) for t in stores.tables
        }

    def take(self, ctx: Context) -> None:
        """Apply what a successful attempt staged: sends, table writes, late counts."""
        sends = ctx.staged_sends
        if sends is not None:
            sent, send = self._sent, self._sink.send
            for out in sends:
                send(out)
                sent[out.topic] = sent.get(out.topic, 0) + 1
        writes = ctx.staged_writes
        if writes is not None:
            apply = self._stores.apply
            for (name, key_bytes), raw in writes.items():
                apply(name, key_bytes, raw)
        late = ctx.late_tables
        if late is not None:
            for name in late:
                self._late[name].inc()

    def count_sent(self) -> None:
        """Add the records sent since the last call to ``records_produced_total``."""
        for name, sent in self._sent.items():
            produced = self._produced.get(name)
            if produced is None:
                produced = self._metrics.records_produced.labels(self._app_id, name)
                self._produced[name] = produced
            produced.inc(sent)
        self._sent.clear()

    async def misdirected(self, sends: list[OutgoingRecord]) -> UnknownPartitionError | None:
        """The error for a record sent to a partition its topic does not have, if any (a record
        without an explicit partition goes where the partitioner puts it)."""
        for out in sends:
            if out.partition is None:
                continue
            count = self._partition_counts.get(out.topic)
            if count is None:
                count = await self._sink.partition_count(out.topic)
                self._partition_counts[out.topic] = count
            if out.partition >= count:
                return UnknownPartitionError(
                    f"a handler sent a record to partition {out.partition} of {out.topic!r}, "
                    f"which has partitions 0-{count - 1}: the input record goes to the "
                    "dead-letter topic"
                )
        return None

    def dead_letter(self, record: ConsumerRecord[Any, Any], exc: Exception, stage: str) -> None:
        """Send ``record`` to the dead-letter topic (or raise, under error policy ``fail``)."""
        where = f"{record.topic}[{record.partition}]@{record.offset}"
        if self._error_policy == "fail":
            raise HandlerFailedError(
                f"{stage} failed for record {where}: {type(exc).__name__}: {exc}. Error policy is "
                "'fail': fix the handler or the input, or set ONCEFLOW_ERROR_POLICY=dlq"
            ) from exc
        log.warning("record %s -> %s (%s failed: %r)", where, self._dlq_topic, stage, exc)
        out = dead_letter(
            record, exc, stage, topic=self._dlq_topic, max_bytes=self._max_record_bytes
        )
        self._sink.send(out)
        self._metrics.dead_letter_records.labels(self._app_id, record.topic, stage).inc()

    def dead_letter_callback(self, source: CallbackSource, exc: Exception) -> None:
        """Send a failed ``on_close`` or timer's dead letter (or raise, under ``fail``)."""
        what = f"{source.stage} {source.name} at stream time {source.timestamp}"
        if self._error_policy == "fail":
            raise HandlerFailedError(
                f"{what} failed: {type(exc).__name__}: {exc}. Error policy is 'fail': fix "
                "the callback, or set ONCEFLOW_ERROR_POLICY=dlq"
            ) from exc
        log.warning("%s -> %s (failed: %r)", what, self._dlq_topic, exc)
        out = callback_dead_letter(
            source, exc, topic=self._dlq_topic, max_bytes=self._max_record_bytes
        )
        self._sink.send(out)
        labels = (self._app_id, source.name, source.stage)
        self._metrics.dead_letter_records.labels(*labels).inc()
