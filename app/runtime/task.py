"""A task: partition ``p`` of one task group — its source partitions, its tables' store
partitions and its own transactional producer.

Lifecycle: ``start()`` (fence the previous owner, seek to the committed offsets, restore the
stores, resume) → ``process()`` / ``commit()`` → ``close()``. A task never outlives a failure:
the worker closes it and builds a fresh one from the committed state (see ``app.worker``).
"""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata, TopicPartition

from onceflow.context import Context, OutgoingRecord
from onceflow.errors import HandlerFailedError, SerdeError, TaskFencedError
from onceflow.runtime.metrics import BatchedHistogram
from onceflow.runtime.restore import RestoreCancelledError, RestoreProgress, restore_partition
from onceflow.runtime.sinks import Sink, TaskCorruptedError
from onceflow.state.sqlite.partition import open_store
from onceflow.state.windowed import WindowedStorePartition
from onceflow.tables import Table, WindowedTable

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer
    from aiokafka.structs import ConsumerRecord

    from onceflow.runtime.metrics import Metrics
    from onceflow.runtime.restore import ConsumerFactory
    from onceflow.settings import Settings
    from onceflow.state.typing import StorePartition
    from onceflow.topology import App, Handler

__all__ = ["Task", "TaskState"]

log = logging.getLogger("onceflow.task")


class TaskState(enum.StrEnum):
    CREATED = "created"
    RESTORING = "restoring"
    RUNNING = "running"
    CLOSED = "closed"


class Task:
    """One unit of exactly-once processing (Kafka Streams' task)."""

    def __init__(
        self,
        *,
        app: App,
        group: str,
        partition: int,
        num_partitions: int,
        sink: Sink,
        consumer: AIOKafkaConsumer,
        consumer_factory: ConsumerFactory,
        settings: Settings,
        metrics: Metrics,
    ) -> None:
        self.app = app
        self.group = group
        self.partition = partition
        self.num_partitions = num_partitions
        self.task_id = f"{group}_{partition}"
        self.tps = [TopicPartition(t, partition) for t in app.groups()[group]]
        self.sink = sink
        self.state = TaskState.CREATED
        self.stream_time = -1
        self.restores: dict[str, RestoreProgress] = {}
        self.closing = False  # set when the task is revoked while it starts
        self._consumer = consumer
        self._consumer_factory = consumer_factory
        self._settings = settings
        self._metrics = metrics
        self._tables = app.tables_of(group)
        self._stores: dict[str, StorePartition] = {}
        self._windowed: dict[str, WindowedStorePartition] = {}
        self._positions: dict[TopicPartition, int] = {}
        self._dirty = False
        self._uncommitted = 0
        self._sent: dict[str, int] = {}  # records sent per topic in the current batch
        self._flushing: asyncio.Future[None] | None = None  # the last commit's SQLite writes
        # Per source topic: the tables keyed like it, whose keys a fetched batch names.
        self._prefetch: dict[str, list[Table[Any, Any] | WindowedTable[Any, Any]]] = {}
        self._error_policy = app.error_policy or settings.error_policy
        labels = (app.app_id,)
        self._late = {
            t.name: metrics.late_records_dropped.labels(*labels, t.name) for t in self._tables
        }
        self._latency = BatchedHistogram(metrics.process_latency.labels(*labels))
        self._produced: dict[str, Any] = {}
        self._processed = {
            tp: metrics.records_processed.labels(*labels, tp.topic, str(partition))
            for tp in self.tps
        }

    # -- accessors used by tables ------------------------------------------------------------

    def store(self, name: str) -> StorePartition:
        return self._stores[name]

    def windowed_store(self, name: str) -> WindowedStorePartition:
        return self._windowed[name]

    def count_late(self, table: str) -> None:
        self._late[table].inc()

    @property
    def uncommitted(self) -> int:
        return self._uncommitted

    @property
    def positions(self) -> Mapping[TopicPartition, int]:
        """The next offset to process per source partition, as far as this task processed."""
        return self._positions

    # -- start ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Take the task over, in the order DESIGN §3 fixes.

        1. Start the producer: InitProducerId fences the previous owner and ends its transaction.
        2. Read the committed offsets (stable only after step 1) and seek to them explicitly.
        3. Open and restore the stores from their changelogs.
        4. Mark running; the worker resumes the partitions.
        """
        self.state = TaskState.RESTORING
        # Step 1
        await self.sink.start()
        # Step 2
        self._check_closing()
        await self._seek_committed()
        # Step 3
        for table in self._tables:
            self._check_closing()
            await self._open_and_restore(table)
        self._check_closing()
        # Step 4
        self.state = TaskState.RUNNING
        log.info("task %s running (stream time %d)", self.task_id, self.stream_time)

    def attach_store(
        self, table: Table[Any, Any] | WindowedTable[Any, Any], store: StorePartition
    ) -> StorePartition | WindowedStorePartition:
        """Give the task its partition of ``table`` (the in-memory test driver calls this too)."""
        self._stores[table.name] = store
        if isinstance(table, WindowedTable):
            windowed = WindowedStorePartition(store, segment_interval_ms=table.segment_interval_ms)
            self._windowed[table.name] = windowed
            return windowed
        return store

    def _check_closing(self) -> None:
        if self.closing:
            raise RestoreCancelledError(f"task {self.task_id} was revoked while starting")

    async def _seek_committed(self) -> None:
        # aiokafka has no batch `committed()` returning metadata; the coordinator call does both.
        committed = await self._consumer._coordinator.fetch_committed_offsets(self.tps)
        for tp in self.tps:
            meta = committed.get(tp)
            if meta is not None and meta.offset >= 0:
                self._consumer.seek(tp, meta.offset)
                self.stream_time = max(self.stream_time, _stream_time_of(meta.metadata))
            else:
                await self._consumer.seek_to_beginning(tp)

    async def _open_and_restore(self, table: Table[Any, Any] | WindowedTable[Any, Any]) -> None:
        path = Path(self._settings.state_dir) / self.app.app_id / table.name / str(self.partition)
        s = self._settings
        store, reason = await asyncio.to_thread(
            functools.partial(
                open_store,
                path,
                lock_timeout_s=30.0,
                cache_bytes=int(s.state_read_cache_mib * 2**20),
                page_cache_mib=s.state_page_cache_mib,
            )
        )
        if reason:
            log.warning("store %s partition %d wiped: %s", table.name, self.partition, reason)
        target = self.attach_store(table, store)
        progress = RestoreProgress(table.name, self.partition, wiped_because=reason)
        self.restores[table.name] = progress
        gauge = self._metrics.restore_remaining.labels(
            self.app.app_id, table.name, str(self.partition)
        )
        counter = self._metrics.restored_records.labels(
            self.app.app_id, table.name, str(self.partition)
        )

        logged_at = 0.0

        def on_batch(p: RestoreProgress, n: int) -> None:
            nonlocal logged_at
            gauge.set(p.remaining)
            counter.inc(n)
            now = time.monotonic()
            if p.remaining and now - logged_at < 5.0:
                return  # a progress line every 5 s is enough: batches come many per second
            logged_at = now
            log.info(
                "restoring %s partition %d: %d done, %d remaining, %.0f records/s",
                p.store,
                p.partition,
                p.restored,
                p.remaining,
                p.rate,
            )

        await restore_partition(
            self._consumer_factory,
            table.changelog_topic,
            self.partition,
            target,
            progress,
            on_batch=on_batch,
        )
        gauge.set(0)
        if progress.restored:
            log.info(
                "restored %s partition %d: %d records from offset %d in %.2fs",
                table.name,
                self.partition,
                progress.restored,
                progress.start_offset,
                time.monotonic() - progress.started_at,
            )

    # -- processing ----------------------------------------------------------------------------

    async def process(
        self, tp: TopicPartition, records: Sequence[ConsumerRecord[Any, Any]]
    ) -> None:
        """Handle ``records`` of ``tp`` in offset order inside the open transaction, then hand
        their outputs to the producer, one batch per partition."""
        if not records:
            return
        handler = self.app.handlers[tp.topic]
        await self.sink.begin()
        tables = self._tables_keyed_like(tp.topic)
        if tables:
            await asyncio.to_thread(self._load, tables, records)
        # The per-record loop, with everything it touches in locals: it is the hot path.
        topic = self.app.topics[tp.topic]
        key_of, value_of = topic.key_serde.deserialize, topic.value_serde.deserialize
        fn, observe, clock = handler.fn, self._latency.observe, time.perf_counter
        for record in records:
            timestamp = record.timestamp
            if timestamp > self.stream_time:
                self.stream_time = timestamp
            try:
                raw_key, raw_value = record.key, record.value
                key = None if raw_key is None else key_of(raw_key)
                value = None if raw_value is None else value_of(raw_value)
            except SerdeError as exc:
                self._fail_record(record, exc, "deserialize")
                continue
            ctx = Context(
                self, record.topic, record.partition, record.offset, timestamp, record.headers,
                raw_key,
            )  # fmt: skip
            started = clock()
            try:
                await fn(ctx, key, value)
            except Exception as exc:
                retried = await self._retry(handler, record, key, value, exc)
                if retried is None:
                    continue
                ctx = retried
            else:
                observe(clock() - started)
            self._take_effects(ctx)
        self._positions[tp] = records[-1].offset + 1
        self._latency.publish()
        self._processed[tp].inc(len(records))
        self._uncommitted += len(records)
        self._dirty = True
        for name, count in self._sent.items():
            produced = self._produced.get(name)
            if produced is None:
                produced = self._metrics.records_produced.labels(self.app.app_id, name)
                self._produced[name] = produced
            produced.inc(count)
        self._sent.clear()
        await self.sink.flush()

    def _tables_keyed_like(self, topic: str) -> list[Table[Any, Any] | WindowedTable[Any, Any]]:
        """Tables whose keys are serialized like ``topic``'s: a record's key bytes are then
        likely the key the handler reads, worth loading before the batch is handled."""
        tables = self._prefetch.get(topic)
        if tables is None:
            serde = type(self.app.topics[topic].key_serde)
            tables = [t for t in self._tables if type(t.key_serde) is serde]
            self._prefetch[topic] = tables
        return tables

    def _load(
        self,
        tables: list[Table[Any, Any] | WindowedTable[Any, Any]],
        records: Sequence[ConsumerRecord[Any, Any]],
    ) -> None:
        """Load the committed values of the batch's keys, one SQLite round trip per store instead
        of one per record (runs in a worker thread; a wrong guess only costs the lookup)."""
        for table in tables:
            if isinstance(table, WindowedTable):
                windows = table.window.windows_for
                self._windowed[table.name].prefetch(
                    (r.key, start)
                    for r in records
                    if r.key is not None
                    for start, _ in windows(r.timestamp)
                )
            else:
                self._stores[table.name].prefetch(r.key for r in records if r.key is not None)

    def _take_effects(self, ctx: Context) -> None:
        """Apply what a successful handler attempt staged: sends, table writes, late counts."""
        if ctx._sends is not None:
            sent, send = self._sent, self.sink.send
            for out in ctx._sends:
                send(out)
                sent[out.topic] = sent.get(out.topic, 0) + 1
        if ctx._staged is not None:
            for (name, key_bytes), raw in ctx._staged.items():
                self._apply(name, key_bytes, raw)
        if ctx._late is not None:
            for name in ctx._late:
                self.count_late(name)

    def _apply(self, name: str, key: bytes, raw: bytes | None) -> None:
        windowed = self._windowed.get(name)
        if windowed is not None:
            start = int.from_bytes(key[-8:], "big", signed=True)
            if raw is None:
                windowed.delete(key[:-8], start)
            else:
                windowed.put(key[:-8], start, raw)
        elif raw is None:
            self._stores[name].delete(key)
        else:
            self._stores[name].put(key, raw)

    async def _retry(
        self,
        handler: Handler,
        record: ConsumerRecord[Any, Any],
        key: Any,
        value: Any,
        error: Exception,
    ) -> Context | None:
        """After a failed first attempt: retry with backoff, each attempt on a fresh Context (a
        failed attempt's effects are dropped with it); the last failure goes to ``_fail_record``.
        """
        retries = self._settings.max_retries if handler.max_retries is None else handler.max_retries
        for attempt in range(retries):
            await asyncio.sleep(self._settings.retry_backoff_ms / 1000 * 2**attempt)
            ctx = Context(
                self,
                record.topic,
                record.partition,
                record.offset,
                record.timestamp,
                record.headers,
                record.key,
            )
            started = time.perf_counter()
            try:
                await handler.fn(ctx, key, value)
            except Exception as exc:
                error = exc
                continue
            self._latency.observe(time.perf_counter() - started)
            return ctx
        self._fail_record(record, error, "handler")
        return None

    def _fail_record(self, record: ConsumerRecord[Any, Any], exc: Exception, stage: str) -> None:
        where = f"{record.topic}[{record.partition}]@{record.offset}"
        if self._error_policy == "fail":
            raise HandlerFailedError(
                f"{stage} failed for record {where}: {type(exc).__name__}: {exc}. Error policy is "
                "'fail': fix the handler or the input, or set ONCEFLOW_ERROR_POLICY=dlq"
            ) from exc
        log.warning("record %s -> %s (%s failed: %r)", where, self.app.dlq_topic, stage, exc)
        headers = [
            ("onceflow.source.topic", record.topic.encode()),
            ("onceflow.source.partition", str(record.partition).encode()),
            ("onceflow.source.offset", str(record.offset).encode()),
            ("onceflow.source.timestamp", str(record.timestamp).encode()),
            ("onceflow.error.stage", stage.encode()),
            ("onceflow.error.type", type(exc).__name__.encode()),
            ("onceflow.error.message", str(exc)[:4000].encode("utf-8", "replace")),
            *[(f"onceflow.original.{k}", v) for k, v in (record.headers or ())],
        ]
        out = OutgoingRecord(
            self.app.dlq_topic, record.key, record.value, headers, None, record.timestamp
        )
        self.sink.send(out)
        self._metrics.dead_letter_records.labels(self.app.app_id, record.topic, stage).inc()

    # -- commit --------------------------------------------------------------------------------

    @property
    def has_work(self) -> bool:
        return self._dirty

    async def commit(self) -> bool:
        """Commit what the task processed since its last commit; False when there was nothing.

        1. Expire old windows; hand each store's changelog records (last value per key) to the
           producer.
        2. Wait for the broker to acknowledge every send of the transaction (aiokafka would
           commit a transaction whose sends failed) and note the last changelog offset per store.
        3. Send the consumed offsets to the transaction — once — and commit it.
        4. Persist each store's buffer with its changelog checkpoint to SQLite (Invariant 1:
           only after the commit returned; Invariant 2: data and checkpoint in one SQLite
           transaction). The buffers are sealed on the loop and written in a worker thread while
           the task goes on processing; the next commit (or close) waits for that write first,
           so writes land in commit order and a failed one fails the task.
        """
        if not self._dirty:
            return False
        started = time.perf_counter()
        await self._flushed()
        # Step 1
        self._send_changelogs()
        # Step 2
        try:
            delivered = await self.sink.delivered()
        except (TaskFencedError, TaskCorruptedError):
            self._metrics.producer_errors.labels(self.app.app_id).inc()
            raise
        checkpoints = {
            table.name: delivered[tp]
            for table in self._tables
            if (tp := TopicPartition(table.changelog_topic, self.partition)) in delivered
        }
        # Step 3
        meta = orjson.dumps({"stream_time": self.stream_time}).decode()
        offsets = {tp: OffsetAndMetadata(pos, meta) for tp, pos in self._positions.items()}
        await self.sink.commit(offsets)
        self._metrics.transactions.labels(self.app.app_id, "committed").inc()
        # Step 4
        if self._stores:
            for store in self._stores.values():
                store.seal()  # on the loop: later writes go to a fresh buffer while this lands
            self._flushing = asyncio.ensure_future(asyncio.to_thread(self._flush, checkpoints))
        self._dirty = False
        self._uncommitted = 0
        self._metrics.commit_latency.labels(self.app.app_id).observe(time.perf_counter() - started)
        return True

    def _flush(self, checkpoints: dict[str, int]) -> None:
        for name, store in self._stores.items():
            store.flush(checkpoints.get(name), seal=False)

    async def _flushed(self) -> None:
        """Wait for the last commit's SQLite writes; raises what they raised."""
        flushing, self._flushing = self._flushing, None
        if flushing is not None:
            await flushing

    def _send_changelogs(self) -> None:
        for table in self._tables:
            windowed = self._windowed.get(table.name)
            if windowed is not None and isinstance(table, WindowedTable) and self.stream_time >= 0:
                windowed.expire_before(self.stream_time - table.retention_ms)
        for table in self._tables:
            windowed = self._windowed.get(table.name)
            records = (
                windowed.pending_changelog()
                if windowed is not None
                else list(self._stores[table.name].pending().items())
            )
            self.sink.send_pairs(table.changelog_topic, self.partition, records)

    # -- close ---------------------------------------------------------------------------------

    async def close(self, *, commit: bool) -> None:
        """Close the task: commit first if asked (and possible), else abort; release stores."""
        if self.state is TaskState.CLOSED:
            return
        try:
            await self._flushed()
        except Exception as exc:  # the changelog has it all: the restore replays it
            log.warning(
                "task %s: writing state to SQLite failed (%s); the next owner restores it from "
                "the changelog",
                self.task_id,
                exc,
            )
        try:
            if commit and self.state is TaskState.RUNNING:
                await self.commit()
            else:
                await self.sink.abort()
        except (TaskFencedError, TaskCorruptedError, KafkaError) as exc:
            log.warning(
                "task %s: final commit failed (%s); the next owner re-processes", self.task_id, exc
            )
            await self.sink.abort()
        finally:
            self.state = TaskState.CLOSED
            for store in self._stores.values():
                store.discard()
                await asyncio.to_thread(store.close)
            await self.sink.close()


def _stream_time_of(metadata: str | None) -> int:
    if not metadata:
        return -1
    try:
        value = orjson.loads(metadata).get("stream_time", -1)
    except (orjson.JSONDecodeError, AttributeError):
        return -1
    return int(value) if isinstance(value, int) else -1
