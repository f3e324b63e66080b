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
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import (
    IllegalOperation,
    InvalidProducerEpoch,
    KafkaError,
    ProducerFenced,
    TransactionalIdAuthorizationFailed,
)
from aiokafka.structs import OffsetAndMetadata, TopicPartition

from app.context import OutgoingRecord
from app.errors import OnceflowError, TaskFencedError

__all__ = [
    "AtLeastOnceSink",
    "ProducerFactory",
    "Sink",
    "TaskCorruptedError",
    "TransactionalSink",
]

log = logging.getLogger("onceflow.producer")

ProducerFactory = Callable[..., AIOKafkaProducer]
FENCING_ERRORS = (ProducerFenced, InvalidProducerEpoch)


class TaskCorruptedError(OnceflowError):
    """The task's open transaction cannot be committed; recover from the committed state."""


class Sink(Protocol):
    """A task's output: sends joined to the task's commit unit."""

    async def start(self) -> None: ...
    async def begin(self) -> None: ...
    async def send(self, record: OutgoingRecord) -> asyncio.Future[Any]: ...
    async def commit(self, offsets: Mapping[TopicPartition, OffsetAndMetadata]) -> None: ...
    async def abort(self) -> None: ...
    async def close(self) -> None: ...


async def _send(producer: AIOKafkaProducer, record: OutgoingRecord) -> asyncio.Future[Any]:
    fut: asyncio.Future[Any] = await producer.send(
        record.topic,
        value=record.value,
        key=record.key,
        partition=record.partition,
        timestamp_ms=record.timestamp_ms,
        headers=record.headers,
    )
    return fut


class TransactionalSink:
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

    async def send(self, record: OutgoingRecord) -> asyncio.Future[Any]:
        # No wait_for here: it costs a task per record (the hot path's largest cost, measured
        # in bench/), and aiokafka bounds a send itself (metadata wait and a full buffer both
        # time out after request_timeout_ms).
        fut: asyncio.Future[Any] = await self._guard(_send(self._producer, record), "send", None)
        return fut

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
        if not self._in_txn:
            return
        self._in_txn = False
        txn = self._producer._txn_manager
        if txn is None or txn.is_fatal_error():
            return  # nothing to abort with: a new producer's InitProducerId aborts it
        try:
            await asyncio.wait_for(self._producer.abort_transaction(), self._timeout_s)
        except FENCING_ERRORS:
            log.debug("%s: fenced, nothing to abort", self.transactional_id)
        except (KafkaError, TimeoutError) as exc:
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


class AtLeastOnceSink:
    """The worker's shared idempotent producer; offsets are committed by the consumer after
    every send of the task has been acknowledged."""

    def __init__(self, producer: AIOKafkaProducer, consumer: AIOKafkaConsumer) -> None:
        self._producer = producer
        self._consumer = consumer

    async def start(self) -> None:
        return None  # the shared producer is started by the worker

    async def begin(self) -> None:
        return None

    async def send(self, record: OutgoingRecord) -> asyncio.Future[Any]:
        try:
            return await _send(self._producer, record)
        except KafkaError as exc:
            raise TaskCorruptedError(f"send to {record.topic!r} failed: {exc!r}") from exc

    async def commit(self, offsets: Mapping[TopicPartition, OffsetAndMetadata]) -> None:
        if not offsets:
            return
        try:
            await self._consumer.commit(dict(offsets))
        except KafkaError as exc:
            raise TaskCorruptedError(f"offset commit failed: {exc!r}") from exc

    async def abort(self) -> None:
        return None

    async def close(self) -> None:
        return None
