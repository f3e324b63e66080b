"""A task's sends since its last flush, handed to the producer as one batch per partition."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    GroupAuthorizationFailedError,
    InvalidProducerEpoch,
    KafkaError,
    ProducerFenced,
    TopicAuthorizationFailedError,
    TransactionalIdAuthorizationFailed,
)
from aiokafka.structs import TopicPartition

from onceflow.errors import (
    AuthorizationError,
    OnceflowError,
    TaskCorruptedError,
    TaskFencedError,
)
from onceflow.partitioner import cached_partition_for_key
from onceflow.records import Header, OutgoingRecord

__all__ = ["AUTHORIZATION_ERRORS", "FENCING_ERRORS", "Outbox", "producer_failure"]

FENCING_ERRORS = (ProducerFenced, InvalidProducerEpoch)
AUTHORIZATION_ERRORS = (
    TransactionalIdAuthorizationFailed,
    TopicAuthorizationFailedError,
    GroupAuthorizationFailedError,
    ClusterAuthorizationFailedError,
)


def producer_failure(exc: BaseException, what: str) -> OnceflowError:
    """What a producer error means for the task (``what`` names the call, the producer and its
    target): fenced — another instance owns the task; not authorized — the operator must grant
    an ACL (fatal); anything else — the transaction cannot be committed (rebuild the task)."""
    if isinstance(exc, FENCING_ERRORS):
        return TaskFencedError(f"{what}: fenced ({exc!r}); another instance owns the task now")
    if isinstance(exc, AUTHORIZATION_ERRORS):
        return AuthorizationError(
            f"{what}: not authorized ({type(exc).__name__}). Grant the app's principal WRITE and "
            "DESCRIBE on TransactionalId prefix <app id>-, WRITE on its output and internal "
            "topics (<app id>-*) and READ on group <app id>; then restart"
        )
    return TaskCorruptedError(f"{what} failed: {exc!r}")


class Outbox:
    """A task's sends since its last flush, handed to the producer as one batch per partition.

    Batching a fetched batch's outputs per partition (``create_batch``/``send_batch``) instead of
    one ``producer.send`` per record removes an await, a future and a partitioner call per record:
    the largest cost of the hot path (docs/benchmarks.md). Partitions of keyed records come from
    the same murmur2 as aiokafka's default partitioner (memoized: keys repeat).
    """

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self._producer = producer
        self._pending: list[OutgoingRecord] = []
        # Records whose partition is known and that carry no headers or timestamp (changelogs)
        self._direct: list[_Pairs] = []
        self._shipped: list[tuple[TopicPartition, int, asyncio.Future[Any]]] = []
        # From ``cut`` to ``release``: the committing transaction's records not handed over yet
        # (``_pending`` and ``_direct`` then hold the next transaction's).
        self._cut: tuple[list[OutgoingRecord], list[_Pairs]] | None = None

    async def partition_count(self, topic: str) -> int:
        """Partitions of ``topic`` (the producer's metadata; it waits for a topic it does not know
        yet, up to the request timeout)."""
        return len(await self._producer.partitions_for(topic))

    @property
    def pending(self) -> int:
        """Records added and not yet handed to the producer (changelog pairs not counted)."""
        return len(self._pending)

    def add(self, record: OutgoingRecord) -> None:
        self._pending.append(record)

    def add_pairs(
        self, topic: str, partition: int, pairs: Iterable[tuple[bytes, bytes | None]]
    ) -> None:
        """Queue ``(key, value)`` records for one partition, stamped when sent; ``pairs`` is read
        at the next flush."""
        self._direct.append((TopicPartition(topic, partition), pairs))

    @property
    def holding(self) -> bool:
        """Between ``cut`` and ``release``: records added meanwhile wait for the next
        transaction."""
        return self._cut is not None

    def cut(self) -> None:
        """The records added so far belong to the transaction that starts committing: until
        ``release``, ``flush`` and ``delivered`` hand over only those, and later records wait
        (docs/architecture.md, *The commit*)."""
        if self._cut is not None:
            raise RuntimeError("the outbox is cut already")
        self._cut = (self._pending, self._direct)
        self._pending, self._direct = [], []

    def release(self) -> None:
        """The committing transaction is over: the records that waited are the next one's."""
        cut, self._cut = self._cut, None
        if cut is not None and (cut[0] or cut[1]):  # never handed over: keep them first
            self._pending = cut[0] + self._pending
            self._direct = cut[1] + self._direct

    async def flush(self) -> None:
        """Hand every pending record to the producer, one batch per partition (after ``cut``:
        the committing transaction's only)."""
        if self._cut is not None:
            pending, direct = self._cut
            self._cut = ([], [])
        else:
            pending, direct = self._pending, self._direct
            self._pending, self._direct = [], []
        if pending:
            for tp, records in (await self._group(pending)).items():
                await self._ship(tp, ((r.key, r.value, r.timestamp_ms, r.headers) for r in records))
        for tp, pairs in direct:
            await self._ship(tp, ((key, value, None, _NO_HEADERS) for key, value in pairs))

    async def _group(
        self, records: list[OutgoingRecord]
    ) -> dict[TopicPartition, list[OutgoingRecord]]:
        """Records by the partition they go to (murmur2 of the key, as aiokafka picks it)."""
        groups: dict[tuple[str, int], list[OutgoingRecord]] = {}
        partitions: dict[str, list[int]] = {}
        for record in records:
            topic = record.topic
            known = partitions.get(topic)
            if known is None:
                known = partitions[topic] = sorted(await self._producer.partitions_for(topic))
            partition = record.partition
            if partition is None:
                if record.key is None:
                    partition = random.choice(known)  # as aiokafka does for a null key
                else:
                    partition = cached_partition_for_key(record.key, len(known))
            elif partition not in known:
                raise TaskCorruptedError(
                    f"a handler sent to partition {partition} of {topic!r}, which has "
                    f"partitions 0-{len(known) - 1}"
                )
            group = groups.get((topic, partition))
            if group is None:
                groups[(topic, partition)] = [record]
            else:
                group.append(record)
        return {TopicPartition(t, p): records for (t, p), records in groups.items()}

    async def _ship(self, tp: TopicPartition, records: Iterable[_Record]) -> None:
        producer = self._producer
        batch = producer.create_batch()
        count = 0
        for key, value, timestamp, headers in records:
            if batch.append(key=key, value=value, timestamp=timestamp, headers=headers) is not None:
                count += 1
                continue
            if count:  # the batch is full: ship it and start the next one
                await self._submit(tp, batch, count)
                batch, count = producer.create_batch(), 0
                if (
                    batch.append(key=key, value=value, timestamp=timestamp, headers=headers)
                    is not None
                ):
                    count = 1
                    continue
            # Larger than a whole batch: aiokafka's send() sizes a batch for it.
            future = await producer.send(
                tp.topic,
                value=value,
                key=key,
                partition=tp.partition,
                timestamp_ms=timestamp,
                headers=headers,
            )
            self._shipped.append((tp, 1, future))
        if count:
            await self._submit(tp, batch, count)

    async def _submit(self, tp: TopicPartition, batch: Any, count: int) -> None:
        # A closed batch is sent without waiting ``linger_ms``: it is already as full as this
        # flush makes it, and the commit waits for it.
        batch.close()
        future = await self._producer.send_batch(batch, tp.topic, partition=tp.partition)
        self._shipped.append((tp, count, future))

    async def delivered(self) -> dict[TopicPartition, int]:
        """Flush, then wait until the broker acknowledged every record handed over since the last
        call; returns the last offset written per partition. Raises ``TaskFencedError`` or
        ``TaskCorruptedError`` if any send failed (aiokafka would commit a transaction whose
        sends failed: never commit before this returns)."""
        await self.flush()
        shipped, self._shipped = self._shipped, []
        if not shipped:
            return {}
        results = await asyncio.gather(*(f for _, _, f in shipped), return_exceptions=True)
        last: dict[TopicPartition, int] = {}
        for (tp, count, _), result in zip(shipped, results, strict=True):
            if isinstance(result, BaseException):
                if isinstance(result, KafkaError | asyncio.CancelledError | TimeoutError):
                    what = f"send to {tp.topic}[{tp.partition}]"
                    raise producer_failure(result, what) from result
                raise result
            offset = result.offset + count - 1
            if offset > last.get(tp, -1):
                last[tp] = offset
        return last

    def discard(self) -> None:
        """Drop pending records and stop caring about shipped ones (the transaction aborts)."""
        self._pending = []
        self._direct = []
        self._cut = None
        _forget([f for _, _, f in self._shipped])
        self._shipped = []


# key, value, timestamp (ms; None: when sent), headers
_Record = tuple[bytes | None, bytes | None, int | None, list[Header]]
_NO_HEADERS: list[Header] = []  # shared: the batch builder only reads it
# Changelog records of one partition (``add_pairs``)
_Pairs = tuple[TopicPartition, Iterable[tuple[bytes, bytes | None]]]


def _forget(futures: list[asyncio.Future[Any]]) -> None:
    """Retrieve the outcome of futures nobody will await, so asyncio does not log each one."""
    for future in futures:
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
