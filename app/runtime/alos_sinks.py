"""At-least-once sinks: a task's outputs through the worker's shared idempotent producer, or,
for a task with tables, through a fencing transactional producer of its own; the consumed
offsets are committed by the group consumer after the sends (docs/architecture.md,
*At-least-once*). The exactly-once sink and the sink protocol: ``sinks``.
"""

from __future__ import annotations

from collections.abc import Mapping

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata, TopicPartition

from onceflow.errors import TaskCorruptedError
from onceflow.runtime.outbox import Outbox
from onceflow.runtime.sinks import ProducerFactory, TransactionalSink, _Buffered

__all__ = ["AtLeastOnceSink", "FencedAtLeastOnceSink"]


class AtLeastOnceSink(_Buffered):
    """Sends through the worker's shared idempotent producer; offsets are committed by the
    consumer after every send of the task has been acknowledged."""

    def __init__(self, producer: AIOKafkaProducer, consumer: AIOKafkaConsumer) -> None:
        self._outbox = Outbox(producer)
        self._consumer = consumer

    async def start(self) -> None:
        return None  # the shared producer is started by the worker

    async def begin(self) -> None:
        return None

    def cut(self) -> None:
        return None  # no transaction to hold sends for: ``delivered`` waits for all of them

    async def flush(self) -> None:
        try:
            await self._outbox.flush()
        except KafkaError as exc:
            raise TaskCorruptedError(f"send failed: {exc!r}") from exc

    async def delivered(self) -> dict[TopicPartition, int]:
        try:
            return await self._outbox.delivered()
        except KafkaError as exc:
            raise TaskCorruptedError(f"send failed: {exc!r}") from exc

    async def stage_offsets(self, offsets: Mapping[TopicPartition, OffsetAndMetadata]) -> None:
        return None  # committed by the consumer, after the sends

    async def commit(self, offsets: Mapping[TopicPartition, OffsetAndMetadata]) -> None:
        await _commit_consumer_offsets(self._consumer, offsets)

    async def abort(self) -> None:
        self._outbox.discard()

    async def close(self) -> None:
        self._outbox.discard()


class FencedAtLeastOnceSink(TransactionalSink):
    """At-least-once for a task with tables: its own transactional producer, so that a zombie
    cannot write to a changelog after the task's next owner started.

    The shared idempotent producer is not fenced: a worker paused past its session timeout
    would, on waking, send its stale changelog records after the new owner's (and only then
    fail its offset commit), and a later restore would lose the new owner's updates. Here the
    next owner's InitProducerId fences the zombie, whose commit then fails. Outputs and
    changelog records commit in one transaction; the consumed offsets are committed by the
    consumer afterwards, outside it (a crash between the two re-processes: at least once).
    """

    def __init__(
        self,
        factory: ProducerFactory,
        *,
        transactional_id: str,
        group_id: str,
        request_timeout_ms: int,
        consumer: AIOKafkaConsumer,
    ) -> None:
        super().__init__(
            factory,
            transactional_id=transactional_id,
            group_id=group_id,
            request_timeout_ms=request_timeout_ms,
        )
        self._consumer = consumer

    async def stage_offsets(self, offsets: Mapping[TopicPartition, OffsetAndMetadata]) -> None:
        return None  # committed by the consumer, after the transaction

    async def commit(self, offsets: Mapping[TopicPartition, OffsetAndMetadata]) -> None:
        await super().commit({})  # the transaction, without the offsets
        await _commit_consumer_offsets(self._consumer, offsets)


async def _commit_consumer_offsets(
    consumer: AIOKafkaConsumer, offsets: Mapping[TopicPartition, OffsetAndMetadata]
) -> None:
    """Commit ``offsets`` with the group consumer; it fails when this member's generation is
    no longer current (the task moved)."""
    if not offsets:
        return
    try:
        await consumer.commit(dict(offsets))
    except KafkaError as exc:
        raise TaskCorruptedError(f"offset commit failed: {exc!r}") from exc
