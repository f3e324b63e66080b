"""``Checkpoint``: the order of a commit's steps, with a recording in-memory sink and a real
``TaskStores`` over an ``InMemoryStorePartition`` — changelog sends, then delivered, then the
offsets committed with the stream time, and only then the store's buffer persisted (Invariant 1).
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pytest
from aiokafka.structs import OffsetAndMetadata, TopicPartition

from onceflow import App
from onceflow.errors import StateError, TaskCorruptedError, TaskFencedError
from onceflow.records import OutgoingRecord
from onceflow.runtime import Metrics
from onceflow.runtime.checkpoint import (
    Checkpoint,
    CommitMetrics,
    offset_metadata,
    stream_time_of,
    tables_of,
)
from onceflow.runtime.stores import TaskStores
from onceflow.state.buffer import WriteBatch
from onceflow.state.memory import InMemoryStorePartition
from onceflow.tables import Table
from onceflow.testing import InMemorySink, Output

APP_ID = "app"
PARTITION = 2
SOURCE = TopicPartition("in", PARTITION)
FIRST_CHANGELOG_OFFSET = 500


class RecordingSink:
    """``InMemorySink`` that records every call in order; ``delivered`` can be made to fail and
    ``commit`` runs ``on_commit`` before it commits (to look at the store at that moment)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self.published: list[Output] = []
        self.delivered_error: BaseException | None = None
        self.commit_error: BaseException | None = None
        self.stage_error: BaseException | None = None
        self.on_commit: Callable[[], None] | None = None
        self.last_delivered: dict[TopicPartition, int] | None = None
        self._offsets: dict[tuple[str, int], itertools.count[int]] = defaultdict(
            lambda: itertools.count(FIRST_CHANGELOG_OFFSET)
        )
        self.inner = InMemorySink(self._place, self.published.append, lambda topic: 1)

    def _place(self, r: OutgoingRecord) -> Output:
        p = 0 if r.partition is None else r.partition
        offset = next(self._offsets[(r.topic, p)])
        return Output(r.topic, r.key, r.value, r.headers, r.timestamp_ms or 0, p, offset)

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.events]

    async def start(self) -> None:
        self.events.append(("start", None))

    async def begin(self) -> None:
        self.events.append(("begin", None))

    async def partition_count(self, topic: str) -> int:
        return 1

    def send(self, record: OutgoingRecord) -> None:
        self.events.append(("send", record))
        self.inner.send(record)

    def cut(self) -> None:
        self.events.append(("cut", None))
        self.inner.cut()

    def send_pairs(
        self, topic: str, partition: int, pairs: Iterable[tuple[bytes, bytes | None]]
    ) -> None:
        pairs = list(pairs)
        self.events.append(("send_pairs", (topic, partition, pairs)))
        self.inner.send_pairs(topic, partition, pairs)

    async def flush(self) -> None:
        self.events.append(("flush", None))

    async def delivered(self) -> dict[TopicPartition, int]:
        self.events.append(("delivered", None))
        if self.delivered_error is not None:
            raise self.delivered_error
        self.last_delivered = await self.inner.delivered()
        return self.last_delivered

    async def stage_offsets(self, offsets: Mapping[TopicPartition, OffsetAndMetadata]) -> None:
        self.events.append(("stage_offsets", dict(offsets)))
        if self.stage_error is not None:
            raise self.stage_error

    async def commit(self, offsets: Mapping[TopicPartition, OffsetAndMetadata]) -> None:
        self.events.append(("commit", dict(offsets)))
        if self.on_commit is not None:
            self.on_commit()
        if self.commit_error is not None:
            raise self.commit_error
        await self.inner.commit(offsets)

    async def abort(self) -> None:
        self.events.append(("abort", None))
        await self.inner.abort()

    async def close(self) -> None:
        self.events.append(("close", None))


class FailingStore(InMemoryStorePartition):
    """Its durable writes fail while ``fail`` is set (a full disk)."""

    fail = False

    def _commit(self, batch: WriteBatch, checkpoint: int | None) -> list[bytes]:
        if self.fail:
            raise StateError("disk full")
        return super()._commit(batch, checkpoint)


@dataclass
class Setup:
    checkpoint: Checkpoint
    sink: RecordingSink
    stores: TaskStores
    store: InMemoryStorePartition
    table: Table[Any, Any]
    metrics: Metrics

    def sample(self, name: str, **labels: str) -> float | None:
        return self.metrics.registry.get_sample_value(name, {"app": APP_ID, **labels})

    @property
    def changelog(self) -> TopicPartition:
        return TopicPartition(self.table.changelog_topic, PARTITION)


def setup(store: InMemoryStorePartition | None = None) -> Setup:
    app = App(APP_ID)
    table = app.table("counts")
    tables = app.tables_of("0")
    assert tables == [table]
    stores = TaskStores(tables, PARTITION)
    store = store or InMemoryStorePartition("counts")
    assert stores.attach(table, store) is store
    metrics = Metrics(APP_ID, eos=True)
    commit_metrics = CommitMetrics(
        metrics.transactions.labels(APP_ID, "committed"),
        metrics.commit_latency.labels(APP_ID),
        metrics.producer_errors.labels(APP_ID),
    )
    sink = RecordingSink()
    return Setup(Checkpoint(sink, stores, commit_metrics), sink, stores, store, table, metrics)


# -- the empty checkpoint ----------------------------------------------------------------------


async def test_an_empty_checkpoint_commits_nothing() -> None:
    s = setup()
    s.stores.apply("counts", b"k", b"v")  # staged, but nothing was processed
    assert s.checkpoint.empty()
    assert await s.checkpoint.commit(1_000) is False
    assert s.sink.events == []
    assert s.store.has_pending  # the buffer was not sealed
    assert s.store.committed_get(b"k") is None
    await s.stores.flushed()
    assert s.store.checkpoint is None
    assert s.sample("onceflow_transactions_total", result="committed") == 0
    assert s.sample("onceflow_commit_latency_seconds_count") == 0


# -- a commit's steps --------------------------------------------------------------------------


async def test_commit_sends_changelog_then_waits_then_commits_then_persists() -> None:
    s = setup()
    s.store.put(b"gone", b"old")  # committed earlier
    s.store.flush(checkpoint=7)
    s.checkpoint.processed(SOURCE, 11, 3)
    s.stores.apply("counts", b"k", b"v1")
    s.stores.apply("counts", b"k", b"v2")  # the changelog carries the last value per key
    s.stores.apply("counts", b"gone", None)  # a delete: a tombstone

    seen_at_commit: dict[str, Any] = {}

    def at_commit() -> None:  # Invariant 1: nothing committed in the store before Kafka's commit
        seen_at_commit["k"] = s.store.committed_get(b"k")
        seen_at_commit["gone"] = s.store.committed_get(b"gone")
        seen_at_commit["checkpoint"] = s.store.checkpoint
        seen_at_commit["pending"] = s.store.has_pending  # cut: later writes are the next's
        seen_at_commit["read"] = s.store.get(b"k")  # the cut batch, read through the open txn

    s.sink.on_commit = at_commit
    assert await s.checkpoint.commit(1_234) is True

    # Step 1 -> 2 (acknowledgements and offsets at once) -> 3, in this order
    assert s.sink.names == ["send_pairs", "cut", "delivered", "stage_offsets", "commit"]
    topic, partition, pairs = s.sink.events[0][1]
    assert (topic, partition) == (s.table.changelog_topic, PARTITION)
    assert topic == f"{APP_ID}-counts-changelog"
    assert sorted(pairs, key=lambda p: p[0]) == [(b"gone", None), (b"k", b"v2")]
    offsets = s.sink.events[4][1]
    assert s.sink.events[3][1] == offsets  # staged, then committed: the same offsets
    assert offsets == {SOURCE: OffsetAndMetadata(11, offset_metadata(1_234, ["counts"]))}
    assert stream_time_of(offsets[SOURCE].metadata) == 1_234

    # Invariant 1: while the sink committed, the store still had only the old committed state
    assert seen_at_commit == {
        "k": None,
        "gone": b"old",
        "checkpoint": 7,
        "pending": False,
        "read": b"v2",
    }

    # Step 4: sealed on the loop at once (committed reads see it), flushed in a thread
    assert not s.store.has_pending
    assert s.store.committed_get(b"k") == b"v2"
    assert s.store.committed_get(b"gone") is None
    await s.stores.flushed()
    assert s.sink.last_delivered == {s.changelog: FIRST_CHANGELOG_OFFSET + 1}
    assert s.store.checkpoint == FIRST_CHANGELOG_OFFSET + 1  # the last changelog offset written
    assert s.store.committed_get(b"k") == b"v2"
    assert s.store.committed_get(b"gone") is None

    assert [(o.topic, o.partition, o.key) for o in s.sink.published] == [
        (s.table.changelog_topic, PARTITION, p[0]) for p in pairs
    ]
    assert s.checkpoint.uncommitted == 0
    assert s.sample("onceflow_transactions_total", result="committed") == 1
    assert s.sample("onceflow_commit_latency_seconds_count") == 1
    assert s.sample("onceflow_producer_errors_total") == 0


async def test_a_commit_without_table_writes_keeps_the_store_checkpoint() -> None:
    s = setup()
    s.store.put(b"k", b"v")
    s.store.flush(checkpoint=40)
    s.checkpoint.processed(SOURCE, 3, 1)
    assert await s.checkpoint.commit(5) is True
    assert s.sink.names == ["send_pairs", "cut", "delivered", "stage_offsets", "commit"]
    assert s.sink.events[0][1] == (s.table.changelog_topic, PARTITION, [])
    await s.stores.flushed()
    assert s.store.checkpoint == 40  # no changelog record written: the checkpoint stays
    assert s.store.committed_get(b"k") == b"v"


@pytest.mark.parametrize(
    "error", [TaskFencedError("fenced"), TaskCorruptedError("send failed")], ids=repr
)
async def test_a_failed_delivery_commits_nothing(error: Exception) -> None:
    s = setup()
    s.checkpoint.processed(SOURCE, 11, 3)
    s.stores.apply("counts", b"k", b"v")
    s.sink.delivered_error = error
    with pytest.raises(type(error)) as excinfo:
        await s.checkpoint.commit(1_234)
    assert excinfo.value is error
    # the sink's commit was not called
    assert s.sink.names == ["send_pairs", "cut", "delivered", "stage_offsets"]
    assert s.sample("onceflow_producer_errors_total") == 1
    assert s.sample("onceflow_transactions_total", result="committed") == 0
    assert s.sample("onceflow_commit_latency_seconds_count") == 0
    await s.stores.flushed()
    assert s.store.get(b"k") == b"v"  # cut, not sealed: the task will discard it
    assert s.store.committed_get(b"k") is None
    assert s.store.checkpoint is None
    assert s.sink.published == []


async def test_offsets_that_cannot_join_the_transaction_commit_nothing() -> None:
    s = setup()
    s.checkpoint.processed(SOURCE, 11, 3)
    s.stores.apply("counts", b"k", b"v")
    s.sink.stage_error = TaskFencedError("fenced at AddOffsetsToTxn")
    with pytest.raises(TaskFencedError, match="AddOffsetsToTxn"):
        await s.checkpoint.commit(1_234)
    # the acknowledgements were awaited beside it; the sink's commit was not called
    assert s.sink.names == ["send_pairs", "cut", "delivered", "stage_offsets"]
    assert s.sample("onceflow_transactions_total", result="committed") == 0
    await s.stores.flushed()
    assert s.store.committed_get(b"k") is None
    assert s.store.checkpoint is None


async def test_a_failed_kafka_commit_persists_nothing() -> None:
    s = setup()
    s.checkpoint.processed(SOURCE, 11, 3)
    s.stores.apply("counts", b"k", b"v")
    s.sink.commit_error = TaskCorruptedError("commit_transaction timed out")
    with pytest.raises(TaskCorruptedError):
        await s.checkpoint.commit(1_234)
    assert s.sink.names == ["send_pairs", "cut", "delivered", "stage_offsets", "commit"]
    await s.stores.flushed()
    assert s.store.get(b"k") == b"v"  # cut, not sealed
    assert s.store.committed_get(b"k") is None
    assert s.store.checkpoint is None
    assert s.sample("onceflow_transactions_total", result="committed") == 0
    assert s.checkpoint.committed == {}


async def test_a_failed_store_write_fails_the_next_commit_before_it_sends() -> None:
    store = FailingStore("counts")
    s = setup(store)
    s.checkpoint.processed(SOURCE, 1, 1)
    s.stores.apply("counts", b"k", b"v")
    store.fail = True
    assert await s.checkpoint.commit(10) is True  # Kafka committed; the write runs behind
    s.sink.events.clear()
    s.checkpoint.processed(SOURCE, 2, 1)
    with pytest.raises(StateError, match="disk full"):
        await s.checkpoint.commit(20)  # Step 0
    assert s.sink.events == []


async def test_commits_persist_in_order() -> None:
    s = setup()
    for i in range(3):
        s.checkpoint.processed(SOURCE, i + 1, 1)
        s.stores.apply("counts", b"k", str(i).encode())
        assert await s.checkpoint.commit(i) is True  # step 0 waits for the previous write
    await s.stores.flushed()
    assert s.store.committed_get(b"k") == b"2"
    assert s.store.checkpoint == FIRST_CHANGELOG_OFFSET + 2
    commits = [offsets for name, offsets in s.sink.events if name == "commit"]
    assert [stream_time_of(o[SOURCE].metadata) for o in commits] == [0, 1, 2]
    assert [o[SOURCE].offset for o in commits] == [1, 2, 3]


# -- positions and counters --------------------------------------------------------------------


async def test_positions_and_uncommitted() -> None:
    s = setup()
    other = TopicPartition("other", PARTITION)
    cp = s.checkpoint
    assert cp.empty()
    assert cp.uncommitted == 0
    assert dict(cp.positions) == {}

    cp.processed(SOURCE, 5, 2)
    cp.processed(other, 9, 1)
    cp.processed(SOURCE, 7, 2)
    assert not cp.empty()
    assert cp.uncommitted == 5
    assert dict(cp.positions) == {SOURCE: 7, other: 9}  # the next offset, last one wins

    assert await cp.commit(100) is True
    assert cp.uncommitted == 0
    assert cp.empty()
    assert dict(cp.positions) == {SOURCE: 7, other: 9}  # positions outlive the commit
    meta = offset_metadata(100, ["counts"])
    assert s.sink.events[-1] == (
        "commit",
        {SOURCE: OffsetAndMetadata(7, meta), other: OffsetAndMetadata(9, meta)},
    )

    s.sink.events.clear()
    assert await cp.commit(200) is False  # nothing new
    assert s.sink.events == []

    cp.processed(other, 10, 1)
    assert await cp.commit(300) is True
    meta = offset_metadata(300, ["counts"])
    assert s.sink.events[-1] == (
        "commit",
        {SOURCE: OffsetAndMetadata(7, meta), other: OffsetAndMetadata(10, meta)},
    )
    assert s.sample("onceflow_transactions_total", result="committed") == 2


# -- offset metadata ---------------------------------------------------------------------------


@pytest.mark.parametrize("stream_time", [-1, 0, 1, 1_700_000_000_000, 2**62])
def test_offset_metadata_round_trips(stream_time: int) -> None:
    meta = offset_metadata(stream_time, ["b", "a"])
    assert isinstance(meta, str)
    assert stream_time_of(meta) == stream_time
    assert tables_of(meta) == {"a", "b"}


@pytest.mark.parametrize(
    "metadata", [None, "", "garbage", "[]", '{"stream_time": 5}', '{"tables": "counts"}']
)
def test_metadata_without_a_table_list_names_no_table(metadata: str | None) -> None:
    assert tables_of(metadata) == set()


@pytest.mark.parametrize(
    "metadata",
    [
        None,
        "",
        "garbage",
        "{",
        '{"stream_time": 12',
        "null",
        "42",
        "[1, 2]",
        '"text"',
        "{}",
        '{"other": 5}',
        '{"stream_time": "12"}',
        '{"stream_time": 1.5}',
        '{"stream_time": null}',
        '{"stream_time": [1]}',
        '"\ud800"',  # not encodable as UTF-8
    ],
)
def test_garbage_or_foreign_metadata_has_no_stream_time(metadata: str | None) -> None:
    assert stream_time_of(metadata) == -1


def test_a_boolean_is_not_a_stream_time() -> None:
    assert stream_time_of('{"stream_time": true}') == -1
