"""Where a task's output goes: a transactional producer of its own (exactly-once) or the
worker's shared idempotent producer (at-least-once).

aiokafka's transaction API has sharp edges, handled here so that the task sees three outcomes:
success, ``TaskFencedError`` (a newer owner exists: close quietly) or ``TaskCorruptedError``
(anything else: abort, rewind to the committed offsets, rebuild state, retry).

* A fenced producer's transaction manager is in a fatal state, in which ``commit_transaction``
  trips an assertion instead of raising: check the state first and raise the recorded error.
* ``commit_transaction`` waits without a timeout: bound it; a timeout is an ambiguous commit.
* A commit does not fail because sends failed: the task awaits its send futures first.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import (
    IllegalOperation,
    InvalidProducerEpoch,
    KafkaError,
    ProducerFenced,
    TransactionalIdAuthorizationFailed,
)
from aiokafka.producer.transaction_manager import TransactionState
from aiokafka.structs import OffsetAndMetadata, TopicPartition

from onceflow.context import Header, OutgoingRecord
from onceflow.errors import OnceflowError, TaskFencedError
from onceflow.partitioner import cached_partition_for_key

__all__ = [
    "AtLeastOnceSink",
    "Outbox",
    "ProducerFactory",
    "Sink",
    "TaskCorruptedError",
    "TransactionalSink",
]

log = logging.getLogger("onceflow.producer")

ProducerFactory = Callable[..., AIOKafkaProducer]
FENCING_ERRORS = (ProducerFenced, InvalidProducerEpoch)
# aiokafka allows abort_transaction() only from these states (it asserts otherwise)
_ABORTABLE = (TransactionState.IN_TRANSACTION, TransactionState.ABORTABLE_ERROR)


class TaskCorruptedError(OnceflowError):
    """The task's open transaction cannot be committed; recover from the committed state."""


class Sink(Protocol):
    """A task's output: sends joined to the task's commit unit.

    ``send`` only buffers; ``flush`` hands the buffer to the producer (the task flushes after
    each fetched batch); ``delivered`` waits for every acknowledgement and is the only way to
    learn that a send failed, so the task calls it before ``commit``.
    """

    async def start(self) -> None: ...
    async def begin(self) -> None: ...
    def send(self, record: OutgoingRecord) -> None: ...
    def send_pairs(
        self, topic: str, partition: int, pairs: Iterable[tuple[bytes, bytes | None]]
    ) -> None: ...
    async def flush(self) -> None: ...
    async def delivered(self) -> dict[TopicPartition, int]: ...
    async def commit(self, offsets: Mapping[TopicPartition, OffsetAndMetadata]) -> None: ...
    async def abort(self) -> None: ...
    async def close(self) -> None: ...


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
        self._direct: list[tuple[TopicPartition, Iterable[tuple[bytes, bytes | None]]]] = []
        self._shipped: list[tuple[TopicPartition, int, asyncio.Future[Any]]] = []

    def add(self, record: OutgoingRecord) -> None:
        self._pending.append(record)

    def add_pairs(
        self, topic: str, partition: int, pairs: Iterable[tuple[bytes, bytes | None]]
    ) -> None:
        """Queue ``(key, value)`` records for one partition, stamped when sent; ``pairs`` is read
        at the next flush."""
        self._direct.append((TopicPartition(topic, partition), pairs))

    async def flush(self) -> None:
        """Hand every pending record to the producer, one batch per partition."""
        if self._pending:
            pending, self._pending = self._pending, []
            for tp, records in (await self._group(pending)).items():
                await self._ship(tp, ((r.key, r.value, r.timestamp_ms, r.headers) for r in records))
        if self._direct:
            direct, self._direct = self._direct, []
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
                if isinstance(result, FENCING_ERRORS):
                    raise TaskFencedError(f"send to {tp.topic}[{tp.partition}] fenced") from result
                if isinstance(result, KafkaError | asyncio.CancelledError | TimeoutError):
                    raise TaskCorruptedError(
                        f"send to {tp.topic}[{tp.partition}] failed: {result!r}"
                    ) from result
                raise result
            offset = result.offset + count - 1
            if offset > last.get(tp, -1):
                last[tp] = offset
        return last

    def discard(self) -> None:
        """Drop pending records and stop caring about shipped ones (the transaction aborts)."""
        self._pending = []
        self._direct = []
        _forget([f for _, _, f in self._shipped])
        self._shipped = []


# key, value, timestamp (ms; None: when sent), headers
_Record = tuple[bytes | None, bytes | None, int | None, list[Header]]
_NO_HEADERS: list[Header] = []  # shared: the batch builder only reads it


def _forget(futures: list[asyncio.Future[Any]]) -> None:
    """Retrieve the outcome of futures nobody will await, so asyncio does not log each one."""
    for future in futures:
        future.add_done_callback(lambda f: f.cancelled() or f.exception())


class _Buffered:
    """``send``/``send_pairs`` of both sinks: they only queue records in the task's outbox."""

    _outbox: Outbox

    def send(self, record: OutgoingRecord) -> None:
        self._outbox.add(record)

    def send_pairs(
        self, topic: str, partition: int, pairs: Iterable[tuple[bytes, bytes | None]]
    ) -> None:
        self._outbox.add_pairs(topic, partition, pairs)


class TransactionalSink(_Buffered):
    """One transactional producer for one task: ``transactional_id = {app_id}-{group}_{p}``.

    ``start()`` runs InitProducerId, which bumps the epoch and so fences any previous owner of
    the task and completes or aborts its open transaction before this one may begin.
    """

    def __init__(
        self,
        factory: ProducerFactory,
        *,
        transactional_id: str,
        group_id: str,
        request_timeout_ms: int,
    ) -> None:
        self.transactional_id = transactional_id
        self._group_id = group_id
        self._timeout_s = request_timeout_ms / 1000
        self._producer = factory(transactional_id=transactional_id)
        self._outbox = Outbox(self._producer)
        self._in_txn = False
        self._closed = False

    async def start(self) -> None:
        try:
            await asyncio.wait_for(self._producer.start(), self._timeout_s * 2)
        except TransactionalIdAuthorizationFailed as exc:
            raise OnceflowError(
                f"not authorized to use transactional id {self.transactional_id!r}: grant "
                "WRITE/DESCRIBE on TransactionalId prefix of the app id"
            ) from exc
        except TimeoutError as exc:
            raise TaskCorruptedError(
                f"producer {self.transactional_id!r} could not initialize (InitProducerId)"
            ) from exc

    async def begin(self) -> None:
        if not self._in_txn:
            self._check_fatal()
            await self._producer.begin_transaction()
            self._in_txn = True

    async def flush(self) -> None:
        # No timeout of ours: aiokafka bounds a send itself (metadata wait and a full buffer
        # both time out after request_timeout_ms).
        await self._guard(self._outbox.flush(), "send", None)

    async def delivered(self) -> dict[TopicPartition, int]:
        last: dict[TopicPartition, int] = await self._guard(self._outbox.delivered(), "send", None)
        return last

    async def commit(self, offsets: Mapping[TopicPartition, OffsetAndMetadata]) -> None:
        """Send the consumed offsets to the transaction (once) and commit it."""
        if not self._in_txn:
            return
        if offsets:
            await self._guard(
                self._producer.send_offsets_to_transaction(dict(offsets), self._group_id),
                "send_offsets_to_transaction",
            )
        await self._guard(self._producer.commit_transaction(), "commit_transaction")
        self._in_txn = False

    async def abort(self) -> None:
        self._outbox.discard()
        if not self._in_txn:
            return
        self._in_txn = False
        txn = self._producer._txn_manager
        if txn is None or txn.is_fatal_error():
            return  # nothing to abort with: a new producer's InitProducerId aborts it
        if txn.state not in _ABORTABLE:
            # A commit that timed out on our side is still in flight (or has landed): it cannot
            # be aborted; the next owner's InitProducerId settles it, and the task re-reads the
            # committed offsets either way.
            log.debug("%s: no transaction to abort (%s)", self.transactional_id, txn.state)
            return
        try:
            await asyncio.wait_for(self._producer.abort_transaction(), self._timeout_s)
        except FENCING_ERRORS:
            log.debug("%s: fenced, nothing to abort", self.transactional_id)
        except (KafkaError, TimeoutError, AssertionError, IllegalOperation) as exc:
            log.warning(
                "abort of %s failed (%r); the next owner's init aborts it",
                self.transactional_id,
                exc,
            )

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await asyncio.wait_for(self._producer.stop(), self._timeout_s)
        except (KafkaError, TimeoutError) as exc:
            log.warning("closing producer %s: %r", self.transactional_id, exc)

    def _check_fatal(self) -> None:
        txn = self._producer._txn_manager
        if txn is not None and txn.is_fatal_error():
            waiter = txn._transaction_waiter
            cause = waiter.exception() if waiter is not None and waiter.done() else None
            raise TaskFencedError(
                f"producer {self.transactional_id!r} was fenced ({cause!r}): another instance "
                "owns the task now"
            ) from cause

    async def _guard(self, op: Awaitable[Any], what: str, timeout_s: float | None = -1.0) -> Any:
        """Run a producer call (bounded by ``timeout_s``, default the request timeout; None: no
        bound of ours), mapping its failures to fenced / corrupted."""
        try:
            try:
                self._check_fatal()
            except TaskFencedError:
                if isinstance(op, Coroutine):
                    op.close()  # never started: close it so it is not reported as un-awaited
                raise
            if timeout_s is None:
                return await op
            return await asyncio.wait_for(op, self._timeout_s if timeout_s < 0 else timeout_s)
        except FENCING_ERRORS as exc:
            raise TaskFencedError(
                f"producer {self.transactional_id!r} fenced during {what}: another instance "
                "owns the task now"
            ) from exc
        except TimeoutError as exc:
            raise TaskCorruptedError(
                f"{what} for {self.transactional_id!r} timed out after {self._timeout_s:.0f}s; "
                "outcome unknown, recreating the producer"
            ) from exc
        except (KafkaError, AssertionError, IllegalOperation) as exc:
            # IllegalOperation: aiokafka left the transaction after an abortable error
            # AssertionError: aiokafka's state machine refusing a transition after a fatal error
            self._check_fatal()
            raise TaskCorruptedError(
                f"{what} for {self.transactional_id!r} failed: {exc!r}"
            ) from exc


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

    async def commit(self, offsets: Mapping[TopicPartition, OffsetAndMetadata]) -> None:
        if not offsets:
            return
        try:
            await self._consumer.commit(dict(offsets))
        except KafkaError as exc:
            raise TaskCorruptedError(f"offset commit failed: {exc!r}") from exc

    async def abort(self) -> None:
        self._outbox.discard()

    async def close(self) -> None:
        self._outbox.discard()
