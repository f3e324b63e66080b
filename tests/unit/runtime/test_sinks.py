"""How ``TransactionalSink`` and ``AtLeastOnceSink`` map producer and consumer failures to
``TaskFencedError`` / ``TaskCorruptedError``.

Pure-logic fakes stand in for aiokafka's producer and consumer: they expose exactly what the
sinks, ``Outbox`` and ``onceflow.runtime.compat`` call (including ``_txn_manager`` with its
``state``, ``is_fatal_error()`` and ``_transaction_waiter``). What a real broker does is covered
by the integration and chaos tests.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import traceback
import warnings
from collections.abc import Coroutine
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import pytest
from aiokafka.errors import (
    GroupAuthorizationFailedError,
    IllegalOperation,
    InvalidProducerEpoch,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    TopicAuthorizationFailedError,
    TransactionalIdAuthorizationFailed,
)
from aiokafka.producer.transaction_manager import TransactionState
from aiokafka.structs import OffsetAndMetadata, TopicPartition

from onceflow.errors import AuthorizationError, TaskCorruptedError, TaskFencedError
from onceflow.records import OutgoingRecord
from onceflow.runtime import sinks
from onceflow.runtime.alos_sinks import AtLeastOnceSink
from onceflow.runtime.failures import judge
from onceflow.runtime.sinks import FLUSH_AGE_S, FLUSH_RECORDS, TransactionalSink

TXN_ID = "app-0_3"
GROUP = "app"
SOURCE = TopicPartition("in", 3)
OFFSETS = {SOURCE: OffsetAndMetadata(42, '{"stream_time":7}')}
CHANGELOG = TopicPartition("app-counts-changelog", 3)


# -- fakes -------------------------------------------------------------------------------------


class FakeTxnManager:
    """What ``compat`` reads of aiokafka's ``TransactionManager``."""

    def __init__(self) -> None:
        self.state = TransactionState.READY
        self._transaction_waiter: asyncio.Future[None] | None = None

    def is_fatal_error(self) -> bool:
        return bool(self.state == TransactionState.FATAL_ERROR)

    def fence(self, cause: BaseException | None = None) -> None:
        """Enter the fatal state, as aiokafka does when the broker reports fencing."""
        self.state = TransactionState.FATAL_ERROR
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiter.set_exception(cause or ProducerFenced())
        waiter.exception()  # retrieved: no "exception was never retrieved" at GC
        self._transaction_waiter = waiter


@dataclass
class FakeMetadata:
    offset: int


class FakeBatch:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.records: list[tuple[bytes | None, bytes | None]] = []
        self.closed = False

    def append(
        self, *, key: bytes | None, value: bytes | None, timestamp: int | None, headers: Any
    ) -> object | None:
        if len(self.records) >= self.capacity:
            return None
        self.records.append((key, value))
        return object()

    def close(self) -> None:
        self.closed = True


class FakeProducer:
    """The producer calls of the sinks, with knobs to make each one fail or hang."""

    def __init__(self, **config: Any) -> None:
        self.config = config
        self._txn_manager: FakeTxnManager | None = FakeTxnManager()
        self.calls: list[str] = []
        self.coroutines: list[Coroutine[Any, Any, Any]] = []  # of the transactional calls
        self.sent_offsets: list[tuple[dict[TopicPartition, OffsetAndMetadata], str]] = []
        self.batches: list[tuple[FakeBatch, str, int]] = []
        # knobs
        self.start_error: BaseException | None = None
        self.start_delay_s = 0.0
        self.stop_error: BaseException | None = None
        self.commit_error: BaseException | None = None
        self.commit_delay_s = 0.0
        self.fence_on_commit = False  # enter the fatal state as the commit fails
        self.send_offsets_error: BaseException | None = None
        self.abort_error: BaseException | None = None
        self.abort_delay_s = 0.0
        self.send_error: BaseException | None = None  # outcome of every send future
        self.next_offset = 100
        self.batch_capacity = 10

    @property
    def txn(self) -> FakeTxnManager:
        assert self._txn_manager is not None
        return self._txn_manager

    async def start(self) -> None:
        self.calls.append("start")
        if self.start_delay_s:
            await asyncio.sleep(self.start_delay_s)
        if self.start_error is not None:
            raise self.start_error

    async def stop(self) -> None:
        self.calls.append("stop")
        if self.stop_error is not None:
            raise self.stop_error

    async def begin_transaction(self) -> None:
        self.calls.append("begin_transaction")
        await asyncio.sleep(0.001)  # aiokafka's waits for the producer id (a task) first
        self.txn.state = TransactionState.IN_TRANSACTION

    def send_offsets_to_transaction(
        self, offsets: dict[TopicPartition, OffsetAndMetadata], group_id: str
    ) -> Coroutine[Any, Any, None]:
        coro = self._send_offsets(offsets, group_id)
        self.coroutines.append(coro)
        return coro

    async def _send_offsets(
        self, offsets: dict[TopicPartition, OffsetAndMetadata], group_id: str
    ) -> None:
        self.calls.append("send_offsets_to_transaction")
        if self.txn.state is not TransactionState.IN_TRANSACTION:
            raise IllegalOperation("Not in the middle of a transaction")  # as aiokafka does
        self.sent_offsets.append((offsets, group_id))
        if self.send_offsets_error is not None:
            raise self.send_offsets_error

    def commit_transaction(self) -> Coroutine[Any, Any, None]:
        coro = self._commit()
        self.coroutines.append(coro)
        return coro

    async def _commit(self) -> None:
        self.calls.append("commit_transaction")
        self.txn.state = TransactionState.COMMITTING_TRANSACTION
        if self.commit_delay_s:
            await asyncio.sleep(self.commit_delay_s)
        if self.commit_error is not None:
            if self.fence_on_commit:
                self.txn.fence()
            raise self.commit_error
        self.txn.state = TransactionState.READY

    async def abort_transaction(self) -> None:
        self.calls.append("abort_transaction")
        if self.abort_delay_s:
            await asyncio.sleep(self.abort_delay_s)
        if self.abort_error is not None:
            raise self.abort_error
        self.txn.state = TransactionState.READY

    async def partitions_for(self, topic: str) -> set[int]:
        return {0, 1, 2, 3}

    def create_batch(self) -> FakeBatch:
        return FakeBatch(self.batch_capacity)

    async def send_batch(
        self, batch: FakeBatch, topic: str, *, partition: int
    ) -> asyncio.Future[FakeMetadata]:
        self.calls.append("send_batch")
        self.batches.append((batch, topic, partition))
        return self._future(len(batch.records))

    async def send(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
        headers: Any = None,
    ) -> asyncio.Future[FakeMetadata]:
        self.calls.append("send")
        return self._future(1)

    def _future(self, count: int) -> asyncio.Future[FakeMetadata]:
        future: asyncio.Future[FakeMetadata] = asyncio.get_running_loop().create_future()
        if self.send_error is not None:
            future.set_exception(self.send_error)
        else:
            future.set_result(FakeMetadata(self.next_offset))
            self.next_offset += count
        return future


class FakeConsumer:
    def __init__(self) -> None:
        self.commits: list[dict[TopicPartition, OffsetAndMetadata]] = []
        self.commit_error: BaseException | None = None

    async def commit(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        self.commits.append(offsets)
        if self.commit_error is not None:
            raise self.commit_error


def kind(value: object) -> str:
    return type(value).__name__


def transactional(
    producer: FakeProducer | None = None, *, request_timeout_ms: int = 30_000
) -> tuple[TransactionalSink, FakeProducer]:
    made: list[FakeProducer] = []

    def factory(**config: Any) -> Any:
        made.append(producer or FakeProducer(**config))
        made[-1].config = config
        return made[-1]

    sink = TransactionalSink(
        factory, transactional_id=TXN_ID, group_id=GROUP, request_timeout_ms=request_timeout_ms
    )
    assert len(made) == 1
    assert made[0].config == {"transactional_id": TXN_ID}
    return sink, made[0]


async def in_transaction(**knobs: Any) -> tuple[TransactionalSink, FakeProducer]:
    """A started sink inside a transaction, its producer's knobs set."""
    sink, producer = transactional(request_timeout_ms=knobs.pop("request_timeout_ms", 30_000))
    for name, value in knobs.items():
        assert hasattr(producer, name), name
        setattr(producer, name, value)
    await sink.start()
    await sink.begin()
    assert producer.calls == ["start", "begin_transaction"]
    producer.calls.clear()
    return sink, producer


def assert_no_unawaited_coroutine(tb: TracebackType | None) -> None:
    """Release the frames of a failed call and check that no coroutine it made was left
    un-awaited (the RuntimeWarning that ``filterwarnings = error`` would turn into a failure)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        traceback.clear_frames(tb)
        gc.collect()
    unawaited = [w for w in caught if "never awaited" in str(w.message)]
    assert not unawaited, [str(w.message) for w in unawaited]


# -- TransactionalSink: the happy path (so that the failure cases are meaningful) ---------------


async def test_commit_sends_offsets_once_then_commits() -> None:
    sink, producer = await in_transaction()
    await sink.commit(OFFSETS)
    assert producer.calls == ["send_offsets_to_transaction", "commit_transaction"]
    assert producer.sent_offsets == [(OFFSETS, GROUP)]
    assert producer.txn.state is TransactionState.READY
    await sink.commit(OFFSETS)  # the transaction ended: nothing to commit until begin()
    assert producer.calls == ["send_offsets_to_transaction", "commit_transaction"]


async def test_staged_offsets_are_sent_once_and_commit_then_only_commits() -> None:
    sink, producer = await in_transaction()
    await sink.stage_offsets(OFFSETS)
    await sink.stage_offsets(OFFSETS)  # once per transaction
    assert producer.calls == ["send_offsets_to_transaction"]
    await sink.commit(OFFSETS)
    assert producer.calls == ["send_offsets_to_transaction", "commit_transaction"]
    assert producer.sent_offsets == [(OFFSETS, GROUP)]
    await sink.begin()  # the next transaction stages its own
    await sink.commit(OFFSETS)
    assert producer.calls[-2:] == ["send_offsets_to_transaction", "commit_transaction"]


async def test_an_abort_forgets_the_staged_offsets() -> None:
    sink, producer = await in_transaction()
    await sink.stage_offsets(OFFSETS)
    await sink.abort()
    await sink.begin()
    await sink.commit(OFFSETS)
    assert producer.calls[-2:] == ["send_offsets_to_transaction", "commit_transaction"]
    assert len(producer.sent_offsets) == 2


async def test_outputs_wait_in_the_outbox_until_the_commit_or_flush_records(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sinks, "FLUSH_AGE_S", 3600.0)  # only the count hands them over here
    sink, producer = await in_transaction(batch_capacity=FLUSH_RECORDS)
    for i in range(FLUSH_RECORDS - 1):
        sink.send(OutgoingRecord("out", b"k%d" % i, b"v", [], 1, None))
        await sink.flush()
    assert producer.calls == []  # invisible before the commit anyway: no produce request yet
    sink.send(OutgoingRecord("out", b"last", b"v", [], 1, None))
    await sink.flush()
    assert producer.calls == ["send_batch"]
    assert len(producer.batches[0][0].records) == FLUSH_RECORDS
    sink.send(OutgoingRecord("out", b"after", b"v", [], 1, None))
    assert await sink.delivered() == {TopicPartition("out", 1): 100 + FLUSH_RECORDS}
    assert producer.calls == ["send_batch", "send_batch"]


async def test_sends_after_the_cut_wait_for_the_next_transaction() -> None:
    sink, producer = await in_transaction(batch_capacity=FLUSH_RECORDS * 2)
    out = TopicPartition("out", 1)
    sink.send(OutgoingRecord("out", b"a", b"v", [], 1, None))
    sink.cut()  # the commit begins: "a" is its transaction's
    for i in range(FLUSH_RECORDS):
        sink.send(OutgoingRecord("out", b"b%d" % i, b"v", [], 1, None))
        await sink.flush()  # held, however many wait: their transaction has not begun
    assert producer.calls == []
    assert await sink.delivered() == {out: 100}  # "a" only
    await sink.commit(OFFSETS)
    assert producer.calls == ["send_batch", "send_offsets_to_transaction", "commit_transaction"]
    assert [r[0] for r in producer.batches[0][0].records] == [b"a"]
    await sink.flush()  # the held sends go, in a transaction begun for them
    assert producer.calls[3:] == ["begin_transaction", "send_batch"]
    assert producer.batches[1][0].records[0][0] == b"b0"
    assert await sink.delivered() == {out: 100 + FLUSH_RECORDS}
    await sink.commit(OFFSETS)
    assert producer.calls[-2:] == ["send_offsets_to_transaction", "commit_transaction"]


async def test_offsets_alone_get_a_transaction_after_the_cut() -> None:
    sink, producer = await in_transaction()
    sink.cut()
    await sink.delivered()
    await sink.commit(OFFSETS)
    # Records processed meanwhile sent nothing; their offsets still need a transaction.
    sink.cut()
    assert await sink.delivered() == {}
    await sink.commit(OFFSETS)
    assert producer.calls == [
        "send_offsets_to_transaction",
        "commit_transaction",
        "begin_transaction",
        "send_offsets_to_transaction",
        "commit_transaction",
    ]


async def test_the_commits_acknowledgements_and_offsets_begin_one_transaction_at_once() -> None:
    sink, producer = await in_transaction()
    sink.cut()
    await sink.delivered()
    await sink.commit(OFFSETS)
    producer.calls.clear()
    sink.cut()  # nothing was processed since the last commit began: no transaction is open
    await asyncio.gather(sink.delivered(), sink.stage_offsets(OFFSETS))
    assert producer.calls == ["begin_transaction", "send_offsets_to_transaction"]
    await sink.commit(OFFSETS)
    assert producer.calls[-1] == "commit_transaction"


async def test_an_abort_after_the_cut_drops_the_held_sends_too() -> None:
    sink, producer = await in_transaction()
    sink.send(OutgoingRecord("out", b"a", b"v", [], 1, None))
    sink.cut()
    sink.send(OutgoingRecord("out", b"b", b"v", [], 1, None))
    await sink.abort()
    await sink.begin()
    assert await sink.delivered() == {}
    assert producer.batches == []


async def test_outputs_held_for_flush_age_go_at_the_next_flush(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [100.0]
    monkeypatch.setattr(sinks, "monotonic", lambda: now[0])
    sink, producer = await in_transaction()
    await sink.flush()  # nothing waits: nothing to hold
    sink.send(OutgoingRecord("out", b"a", b"v", [], 1, None))
    await sink.flush()  # the first flush that holds records: the age counts from here
    now[0] += FLUSH_AGE_S / 2
    sink.send(OutgoingRecord("out", b"b", b"v", [], 1, None))
    await sink.flush()
    assert producer.calls == []
    now[0] += FLUSH_AGE_S / 2
    await sink.flush()
    assert producer.calls == ["send_batch"]
    assert producer.batches[0][0].records == [(b"a", b"v"), (b"b", b"v")]
    sink.send(OutgoingRecord("out", b"c", b"v", [], 1, None))
    await sink.flush()  # a new hold begins
    assert producer.calls == ["send_batch"]
    await sink.delivered()  # the commit takes the rest, and the next hold starts afresh
    assert producer.calls == ["send_batch", "send_batch"]
    sink.send(OutgoingRecord("out", b"d", b"v", [], 1, None))
    await sink.flush()
    assert producer.calls == ["send_batch", "send_batch"]


async def test_commit_outside_a_transaction_does_nothing() -> None:
    sink, producer = transactional()
    await sink.start()
    await sink.commit(OFFSETS)
    assert producer.calls == ["start"]


async def test_commit_without_offsets_only_commits() -> None:
    sink, producer = await in_transaction()
    await sink.commit({})
    assert producer.calls == ["commit_transaction"]


async def test_begin_twice_begins_once() -> None:
    sink, producer = await in_transaction()
    await sink.begin()
    assert producer.calls == []


async def test_delivered_reports_the_last_offset_per_partition() -> None:
    sink, producer = await in_transaction(batch_capacity=2)
    sink.send_pairs(
        CHANGELOG.topic, CHANGELOG.partition, [(b"a", b"1"), (b"b", None), (b"c", b"3")]
    )
    sink.send(OutgoingRecord("out", b"k", b"v", [], 1, None))
    assert await sink.delivered() == {TopicPartition("out", 1): 100, CHANGELOG: 103}
    assert [(t, p, len(b.records)) for b, t, p in producer.batches] == [
        ("out", 1, 1),
        (CHANGELOG.topic, 3, 2),
        (CHANGELOG.topic, 3, 1),
    ]
    assert await sink.delivered() == {}  # every acknowledgement was consumed


# -- TransactionalSink: fencing ----------------------------------------------------------------


@pytest.mark.parametrize("error", [ProducerFenced(), InvalidProducerEpoch()], ids=kind)
async def test_fencing_from_commit_is_task_fenced(error: KafkaError) -> None:
    sink, producer = await in_transaction(commit_error=error)
    with pytest.raises(TaskFencedError, match=TXN_ID) as excinfo:
        await sink.commit(OFFSETS)
    assert excinfo.value.__cause__ is error
    assert "commit_transaction" in str(excinfo.value)
    assert producer.calls == ["send_offsets_to_transaction", "commit_transaction"]


@pytest.mark.parametrize("error", [ProducerFenced(), InvalidProducerEpoch()], ids=kind)
async def test_fencing_from_send_offsets_is_task_fenced_and_nothing_is_committed(
    error: KafkaError,
) -> None:
    sink, producer = await in_transaction(send_offsets_error=error)
    with pytest.raises(TaskFencedError, match="send_offsets_to_transaction") as excinfo:
        await sink.commit(OFFSETS)
    assert excinfo.value.__cause__ is error
    assert producer.calls == ["send_offsets_to_transaction"]


async def test_a_fatal_transaction_state_is_fenced_before_any_call() -> None:
    sink, producer = await in_transaction()
    cause = ProducerFenced()
    producer.txn.fence(cause)
    with pytest.raises(TaskFencedError, match=TXN_ID) as excinfo:
        await sink.commit(OFFSETS)
    assert excinfo.value.__cause__ is cause  # the error aiokafka recorded
    assert producer.calls == []  # neither send_offsets_to_transaction nor commit_transaction ran
    # The coroutine made for the call was closed, not dropped un-awaited.
    [coro] = producer.coroutines
    assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED
    assert_no_unawaited_coroutine(excinfo.tb)


async def test_a_fatal_state_without_offsets_is_fenced_before_commit_transaction() -> None:
    sink, producer = await in_transaction()
    producer.txn.fence()
    with pytest.raises(TaskFencedError):
        await sink.commit({})
    assert producer.calls == []
    [coro] = producer.coroutines
    assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED


async def test_a_fatal_state_is_fenced_before_waiting_for_sends() -> None:
    sink, producer = await in_transaction()
    sink.send_pairs(CHANGELOG.topic, CHANGELOG.partition, [(b"k", b"v")])
    producer.txn.fence()
    with pytest.raises(TaskFencedError) as excinfo:
        await sink.delivered()
    assert producer.calls == []  # nothing was handed to the producer
    assert_no_unawaited_coroutine(excinfo.tb)


async def test_a_fatal_state_without_a_recorded_error_is_still_fenced() -> None:
    sink, producer = await in_transaction()
    producer.txn.state = TransactionState.FATAL_ERROR  # no transaction waiter
    with pytest.raises(TaskFencedError) as excinfo:
        await sink.commit(OFFSETS)
    assert excinfo.value.__cause__ is None
    assert producer.calls == []


async def test_begin_in_a_fatal_state_is_fenced() -> None:
    sink, producer = transactional()
    await sink.start()
    producer.txn.fence()
    with pytest.raises(TaskFencedError):
        await sink.begin()
    assert producer.calls == ["start"]


async def test_an_assertion_after_fencing_is_task_fenced() -> None:
    # aiokafka's state machine asserts instead of raising once the producer is fenced.
    sink, producer = await in_transaction(commit_error=AssertionError(), fence_on_commit=True)
    with pytest.raises(TaskFencedError) as excinfo:
        await sink.commit(OFFSETS)
    assert isinstance(excinfo.value.__cause__, ProducerFenced)
    assert producer.calls == ["send_offsets_to_transaction", "commit_transaction"]


async def test_a_fatal_state_from_an_authorization_error_is_fatal_not_fenced() -> None:
    sink, producer = await in_transaction()
    cause = TransactionalIdAuthorizationFailed()
    producer.txn.fence(cause)
    with pytest.raises(AuthorizationError, match="TransactionalId prefix") as excinfo:
        await sink.commit(OFFSETS)
    assert excinfo.value.__cause__ is cause
    assert judge(excinfo.value).disposition == "fatal"
    assert producer.calls == []


async def test_a_fatal_state_from_another_error_is_corrupted_not_fenced() -> None:
    sink, producer = await in_transaction()
    cause = OutOfOrderSequenceNumber()
    producer.txn.fence(cause)
    with pytest.raises(TaskCorruptedError) as excinfo:
        await sink.commit(OFFSETS)
    assert excinfo.value.__cause__ is cause
    assert producer.calls == []


@pytest.mark.parametrize(
    "error", [GroupAuthorizationFailedError(), TopicAuthorizationFailedError()]
)
async def test_an_authorization_error_from_a_call_is_fatal(error: KafkaError) -> None:
    sink, _ = await in_transaction(send_offsets_error=error)
    with pytest.raises(AuthorizationError) as excinfo:
        await sink.commit(OFFSETS)
    assert judge(excinfo.value).disposition == "fatal"


# -- TransactionalSink: corrupted --------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        KafkaTimeoutError(),
        KafkaError("generic"),
        KafkaConnectionError(),
        AssertionError("invalid transition"),
        IllegalOperation("not in a transaction"),
    ],
    ids=kind,
)
async def test_other_commit_failures_are_task_corrupted(error: BaseException) -> None:
    sink, producer = await in_transaction(commit_error=error)
    with pytest.raises(TaskCorruptedError, match="commit_transaction") as excinfo:
        await sink.commit(OFFSETS)
    assert excinfo.value.__cause__ is error
    assert TXN_ID in str(excinfo.value)
    assert producer.calls == ["send_offsets_to_transaction", "commit_transaction"]


@pytest.mark.parametrize("error", [KafkaError(), KafkaTimeoutError(), IllegalOperation()], ids=kind)
async def test_other_send_offsets_failures_are_task_corrupted(error: BaseException) -> None:
    sink, producer = await in_transaction(send_offsets_error=error)
    with pytest.raises(TaskCorruptedError, match="send_offsets_to_transaction"):
        await sink.commit(OFFSETS)
    assert producer.calls == ["send_offsets_to_transaction"]  # no commit after a failed send


async def test_a_commit_that_does_not_return_in_time_has_an_unknown_outcome() -> None:
    sink, producer = await in_transaction(request_timeout_ms=20, commit_delay_s=5.0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TaskCorruptedError, match="outcome unknown") as excinfo:
        await sink.commit(OFFSETS)
    assert loop.time() - started < 2.0  # bounded by request_timeout_ms, not the commit
    assert isinstance(excinfo.value.__cause__, TimeoutError)
    assert "commit_transaction" in str(excinfo.value)
    # The commit may still land: aborting it is not attempted.
    assert producer.txn.state is TransactionState.COMMITTING_TRANSACTION
    await sink.abort()
    assert "abort_transaction" not in producer.calls


# -- TransactionalSink: send failures ----------------------------------------------------------


@pytest.mark.parametrize("error", [ProducerFenced(), InvalidProducerEpoch()], ids=kind)
async def test_a_fenced_send_is_task_fenced(error: KafkaError) -> None:
    sink, producer = await in_transaction(send_error=error)
    sink.send_pairs(CHANGELOG.topic, CHANGELOG.partition, [(b"k", b"v")])
    with pytest.raises(TaskFencedError, match=CHANGELOG.topic):
        await sink.delivered()
    assert producer.calls == ["send_batch"]


@pytest.mark.parametrize(
    "error", [KafkaError(), KafkaTimeoutError(), KafkaConnectionError()], ids=kind
)
async def test_a_failed_send_is_task_corrupted(error: KafkaError) -> None:
    sink, producer = await in_transaction(send_error=error)
    sink.send(OutgoingRecord("out", b"k", b"v", [], 2, None))
    with pytest.raises(TaskCorruptedError, match=r"out\[2\]") as excinfo:
        await sink.delivered()
    assert excinfo.value.__cause__ is error
    assert producer.calls == ["send_batch"]


async def test_a_record_larger_than_a_batch_is_sent_alone_and_mapped_too() -> None:
    sink, producer = await in_transaction(batch_capacity=0, send_error=ProducerFenced())
    sink.send_pairs(CHANGELOG.topic, CHANGELOG.partition, [(b"k", b"v" * 100)])
    with pytest.raises(TaskFencedError):
        await sink.delivered()
    assert producer.calls == ["send"]


# -- TransactionalSink: start ------------------------------------------------------------------


async def test_start_not_authorized_names_the_transactional_id() -> None:
    sink, producer = transactional()
    producer.start_error = TransactionalIdAuthorizationFailed()
    with pytest.raises(AuthorizationError) as excinfo:
        await sink.start()
    assert TXN_ID in str(excinfo.value)
    assert isinstance(excinfo.value.__cause__, TransactionalIdAuthorizationFailed)
    assert judge(excinfo.value).disposition == "fatal"  # not retried for ever


async def test_start_timing_out_is_task_corrupted() -> None:
    sink, producer = transactional(request_timeout_ms=10)
    producer.start_delay_s = 5.0
    with pytest.raises(TaskCorruptedError, match="InitProducerId") as excinfo:
        await sink.start()
    assert TXN_ID in str(excinfo.value)
    assert isinstance(excinfo.value.__cause__, TimeoutError)


async def test_start_within_twice_the_request_timeout_succeeds() -> None:
    sink, producer = transactional(request_timeout_ms=200)
    producer.start_delay_s = 0.25  # beyond the request timeout, within the init's bound
    await sink.start()
    assert producer.calls == ["start"]


# -- TransactionalSink: abort ------------------------------------------------------------------


@pytest.mark.parametrize(
    "state", [TransactionState.IN_TRANSACTION, TransactionState.ABORTABLE_ERROR]
)
async def test_abort_aborts_an_abortable_transaction(state: TransactionState) -> None:
    sink, producer = await in_transaction()
    producer.txn.state = state
    await sink.abort()
    assert producer.calls == ["abort_transaction"]
    await sink.abort()  # the transaction is over: once only
    assert producer.calls == ["abort_transaction"]


@pytest.mark.parametrize(
    "state",
    [
        TransactionState.READY,
        TransactionState.COMMITTING_TRANSACTION,
        TransactionState.ABORTING_TRANSACTION,
        TransactionState.FATAL_ERROR,
    ],
)
async def test_abort_does_not_call_abort_transaction_otherwise(state: TransactionState) -> None:
    sink, producer = await in_transaction(abort_error=AssertionError("aiokafka would assert"))
    if state is TransactionState.FATAL_ERROR:
        producer.txn.fence()
    else:
        producer.txn.state = state
    await sink.abort()  # does not raise
    assert producer.calls == []


async def test_abort_without_a_txn_manager_does_nothing() -> None:
    sink, producer = await in_transaction()
    producer._txn_manager = None
    await sink.abort()
    assert producer.calls == []


async def test_abort_outside_a_transaction_does_not_call_the_producer() -> None:
    sink, producer = transactional()
    await sink.start()
    producer.txn.state = TransactionState.IN_TRANSACTION
    await sink.abort()
    assert producer.calls == ["start"]


@pytest.mark.parametrize(
    "error",
    [ProducerFenced(), InvalidProducerEpoch(), KafkaError(), AssertionError(), IllegalOperation()],
    ids=kind,
)
async def test_a_failing_abort_does_not_raise(error: BaseException) -> None:
    sink, producer = await in_transaction(abort_error=error)
    await sink.abort()
    assert producer.calls == ["abort_transaction"]


async def test_a_hanging_abort_is_bounded() -> None:
    sink, producer = await in_transaction(request_timeout_ms=20, abort_delay_s=5.0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await sink.abort()
    assert loop.time() - started < 2.0
    assert producer.calls == ["abort_transaction"]


async def test_abort_drops_what_was_not_sent_and_a_new_transaction_begins() -> None:
    sink, producer = await in_transaction()
    sink.send_pairs(CHANGELOG.topic, CHANGELOG.partition, [(b"k", b"v")])
    await sink.abort()
    await sink.begin()
    assert await sink.delivered() == {}
    assert producer.calls == ["abort_transaction", "begin_transaction"]


async def test_close_stops_once_and_swallows_kafka_errors() -> None:
    sink, producer = transactional()
    producer.stop_error = KafkaConnectionError()
    await sink.close()
    await sink.close()
    assert producer.calls == ["stop"]


# -- AtLeastOnceSink ---------------------------------------------------------------------------


def at_least_once() -> tuple[AtLeastOnceSink, FakeProducer, FakeConsumer]:
    producer, consumer = FakeProducer(), FakeConsumer()
    sink = AtLeastOnceSink(producer, consumer)
    return sink, producer, consumer


async def test_at_least_once_commits_offsets_through_the_consumer() -> None:
    sink, producer, consumer = at_least_once()
    await sink.start()
    await sink.begin()
    await sink.commit(OFFSETS)
    assert consumer.commits == [OFFSETS]
    assert producer.calls == []  # no transaction, and start() is the worker's


async def test_at_least_once_offset_commit_failure_is_task_corrupted() -> None:
    sink, _, consumer = at_least_once()
    consumer.commit_error = KafkaConnectionError()
    with pytest.raises(TaskCorruptedError, match="offset commit failed") as excinfo:
        await sink.commit(OFFSETS)
    assert excinfo.value.__cause__ is consumer.commit_error


async def test_at_least_once_without_offsets_does_not_commit() -> None:
    sink, _, consumer = at_least_once()
    await sink.commit({})
    assert consumer.commits == []


async def test_at_least_once_failed_send_is_task_corrupted() -> None:
    sink, producer, _ = at_least_once()
    producer.send_error = KafkaTimeoutError()
    sink.send(OutgoingRecord("out", b"k", b"v", [], 0, None))
    with pytest.raises(TaskCorruptedError, match="send"):
        await sink.delivered()


async def test_at_least_once_delivered_reports_offsets_and_abort_discards() -> None:
    sink, producer, _ = at_least_once()
    sink.send(OutgoingRecord("out", b"k", b"v", [], 0, None))
    assert await sink.delivered() == {TopicPartition("out", 0): 100}
    sink.send(OutgoingRecord("out", b"k", b"v", [], 0, None))
    await sink.abort()
    assert await sink.delivered() == {}
    assert producer.calls == ["send_batch"]


async def test_at_least_once_flushes_every_batch() -> None:
    sink, producer, _ = at_least_once()
    sink.send(OutgoingRecord("out", b"k", b"v", [], 1, None))
    await sink.flush()  # visible at once: nothing waits for a commit
    assert producer.calls == ["send_batch"]
