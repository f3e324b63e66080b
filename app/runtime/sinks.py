"""Where a task's output goes: a transactional producer of its own (exactly-once; the
at-least-once sinks are in ``alos_sinks``).

aiokafka's transaction API has sharp edges, handled here so that the task sees three outcomes:
success, ``TaskFencedError`` (a newer owner exists: close quietly) or ``TaskCorruptedError``
(anything else: abort, rewind to the committed offsets, rebuild state, retry).

* A fenced producer's transaction manager is in a fatal state, in which ``commit_transaction``
  trips an assertion instead of raising: check the state first and raise the recorded error.
* ``commit_transaction`` waits without a timeout: bound it; a timeout is an ambiguous commit.
* A commit does not fail because sends failed: the task awaits its send futures first.

A transaction's outputs are invisible to ``read_committed`` readers until it commits, so the
transactional sinks hand them to the producer in bulk (``FLUSH_RECORDS``, ``FLUSH_AGE_S``) and
at the commit, not after every fetched batch (docs/architecture.md, *Commit scheduling*).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from time import monotonic
from typing import Any, Protocol

from aiokafka import AIOKafkaProducer
from aiokafka.errors import IllegalOperation, KafkaError
from aiokafka.structs import OffsetAndMetadata, TopicPartition

from onceflow.errors import OnceflowError, TaskCorruptedError, TaskFencedError
from onceflow.records import OutgoingRecord
from onceflow.runtime.compat import abortable, fatal_transaction_error
from onceflow.runtime.outbox import AUTHORIZATION_ERRORS, FENCING_ERRORS, Outbox, producer_failure

__all__ = [
    "Outbox",
    "ProducerFactory",
    "Sink",
    "TaskCorruptedError",
    "TransactionalSink",
]

log = logging.getLogger("onceflow.producer")

ProducerFactory = Callable[..., AIOKafkaProducer]

FLUSH_RECORDS = 1_000
FLUSH_AGE_S = 0.02
"""A transactional sink's ``flush`` hands its outputs to the producer once ``FLUSH_RECORDS``
wait, or once the first flush that found some is ``FLUSH_AGE_S`` old; the commit hands over the
rest. Flushing after every fetched batch cost a produce request per task and batch (hundreds
per second at any steady input) for records nobody can read before the commit anyway; holding
them all until the commit put a produce round trip (and AddPartitionsToTxn) on its path."""


class Sink(Protocol):
    """A task's output: sends joined to the task's commit unit.

    ``send`` only buffers; ``flush`` hands the buffer to the producer (the task flushes after
    each fetched batch; a transactional sink may hold it a little longer); ``delivered`` hands
    over the rest, waits for every acknowledgement and is the only way to learn that a send
    failed, so the task calls it before ``commit``.
    """

    async def start(self) -> None: ...
    async def begin(self) -> None: ...
    async def partition_count(self, topic: str) -> int: ...
    def send(self, record: OutgoingRecord) -> None: ...
    def send_pairs(
        self, topic: str, partition: int, pairs: Iterable[tuple[bytes, bytes | None]]
    ) -> None: ...
    async def flush(self) -> None: ...
    def cut(self) -> None:
        """The task's commit begins: the sends so far are the committing transaction's; later
        sends belong to the next one, and a transactional sink holds them until ``commit``
        returns (``delivered`` and ``commit`` then concern the cut sends only)."""
        ...

    async def delivered(self) -> dict[TopicPartition, int]: ...
    async def stage_offsets(self, offsets: Mapping[TopicPartition, OffsetAndMetadata]) -> None:
        """Put ``offsets`` into the open transaction ahead of ``commit`` (which then does not
        send them again), while its sends are still being acknowledged: nothing counts until
        ``commit``, and a failed send aborts them with the rest. A no-op where offsets are
        committed outside a transaction."""
        ...

    async def commit(self, offsets: Mapping[TopicPartition, OffsetAndMetadata]) -> None: ...
    async def abort(self) -> None: ...
    async def close(self) -> None: ...


class _Buffered:
    """``send``/``send_pairs`` of both sinks: they only queue records in the task's outbox."""

    _outbox: Outbox

    async def partition_count(self, topic: str) -> int:
        return await self._outbox.partition_count(topic)

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
        self._beginning = asyncio.Lock()
        self._staged = False  # the open transaction holds its offsets (``stage_offsets``)
        self._holding_since: float | None = None  # the first flush that kept records back
        self._closed = False

    async def start(self) -> None:
        try:
            await asyncio.wait_for(self._producer.start(), self._timeout_s * 2)
        except AUTHORIZATION_ERRORS as exc:
            raise producer_failure(exc, f"producer {self.transactional_id!r} start") from exc
        except TimeoutError as exc:
            raise TaskCorruptedError(
                f"producer {self.transactional_id!r} could not initialize (InitProducerId)"
            ) from exc

    async def begin(self) -> None:
        if self._in_txn:
            return
        # aiokafka's begin_transaction may suspend (it waits for the producer id): a concurrent
        # begin() — the commit's acknowledgements and offsets begin at once — waits for it.
        async with self._beginning:
            if not self._in_txn:
                self._check_fatal()
                await self._producer.begin_transaction()
                self._in_txn = True

    def cut(self) -> None:
        self._outbox.cut()

    async def flush(self) -> None:
        if self._outbox.holding:
            return  # the next transaction's: it begins when the committing one returns
        pending = self._outbox.pending
        if not pending:
            return
        if pending < FLUSH_RECORDS:
            now = monotonic()
            if self._holding_since is None:
                self._holding_since = now
            if now - self._holding_since < FLUSH_AGE_S:
                return  # a later flush, or ``delivered`` (the commit), hands them over
        self._holding_since = None
        await self.begin()  # records processed while the last transaction committed
        # No timeout of ours: aiokafka bounds a send itself (metadata wait and a full buffer
        # both time out after request_timeout_ms).
        await self._guard(self._outbox.flush(), "send", None)

    async def delivered(self) -> dict[TopicPartition, int]:
        self._holding_since = None
        await self.begin()  # the offsets need a transaction even if nothing was sent
        last: dict[TopicPartition, int] = await self._guard(self._outbox.delivered(), "send", None)
        return last

    async def stage_offsets(self, offsets: Mapping[TopicPartition, OffsetAndMetadata]) -> None:
        """``send_offsets_to_transaction`` (AddOffsetsToTxn, TxnOffsetCommit), once per
        transaction."""
        if not offsets or self._staged:
            return
        await self.begin()  # beside ``delivered``, which may be beginning it
        await self._guard(
            self._producer.send_offsets_to_transaction(dict(offsets), self._group_id),
            "send_offsets_to_transaction",
        )
        self._staged = True

    async def commit(self, offsets: Mapping[TopicPartition, OffsetAndMetadata]) -> None:
        """Send the consumed offsets to the transaction (once: not if ``stage_offsets`` did)
        and commit it."""
        if not self._in_txn:
            return
        await self.stage_offsets(offsets)
        await self._guard(self._producer.commit_transaction(), "commit_transaction")
        self._in_txn = self._staged = False
        self._outbox.release()  # what was sent meanwhile: the next transaction begins with it

    async def abort(self) -> None:
        self._outbox.discard()
        if not self._in_txn:
            return
        self._in_txn = self._staged = False
        can_abort, state = abortable(self._producer)
        if not can_abort:
            # Fenced: a new producer's InitProducerId aborts it. Or a commit that timed out on
            # our side is still in flight (or has landed): it cannot be aborted; the next
            # owner's InitProducerId settles it, and the task re-reads the committed offsets
            # either way.
            log.debug("%s: no transaction to abort (%s)", self.transactional_id, state)
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
        """Raise what put the producer in a fatal state: fenced (also when aiokafka recorded no
        cause: rebuilding the producer would fence the real owner), not authorized, or another
        fatal error (out-of-order sequence...: rebuilt with a new producer)."""
        fatal, cause = fatal_transaction_error(self._producer)
        if not fatal:
            return
        what = f"producer {self.transactional_id!r}"
        if cause is None:
            raise TaskFencedError(f"{what} was fenced: another instance owns the task now")
        raise producer_failure(cause, what) from cause

    async def _guard(self, op: Awaitable[Any], what: str, timeout_s: float | None = -1.0) -> Any:
        """Run a producer call (bounded by ``timeout_s``, default the request timeout; None: no
        bound of ours), mapping its failures to fenced / corrupted."""
        try:
            try:
                self._check_fatal()
            except OnceflowError:
                if isinstance(op, Coroutine):
                    op.close()  # never started: close it so it is not reported as un-awaited
                raise
            if timeout_s is None:
                return await op
            return await asyncio.wait_for(op, self._timeout_s if timeout_s < 0 else timeout_s)
        except FENCING_ERRORS + AUTHORIZATION_ERRORS as exc:
            raise producer_failure(exc, f"{what} of {self.transactional_id!r}") from exc
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
