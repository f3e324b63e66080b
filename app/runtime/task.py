"""A task: partition ``p`` of one task group — its source partitions, its tables' store
partitions (``TaskStores``), its commit unit (``Checkpoint``) and its own producer (``Sink``).

Lifecycle: ``start()`` (the hand-over: fence the previous owner, seek to the committed offsets,
restore the stores, resume) → ``process()`` / ``commit()`` → ``close()``. A task never outlives a
failure: the worker closes it and builds a fresh one from the committed state
(docs/architecture.md, *Tasks* and *Failures*). ``Task`` is the ``TaskScope`` that tables and
handler contexts see.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from aiokafka.errors import KafkaError
from aiokafka.structs import TopicPartition

from onceflow import naming
from onceflow.context import Context
from onceflow.errors import (
    RecordRejectedError,
    RestoreCancelledError,
    SerdeError,
    TaskCorruptedError,
    TaskFencedError,
)
from onceflow.runtime.checkpoint import Checkpoint, CommitMetrics, Cut, stream_time_of
from onceflow.runtime.compat import committed_offsets
from onceflow.runtime.effects import Effects
from onceflow.runtime.metrics import BatchedHistogram
from onceflow.runtime.punctuation import Punctuator
from onceflow.runtime.retries import Held
from onceflow.runtime.source_tables import TableFeed
from onceflow.runtime.stores import AnyTable, TaskStores
from onceflow.window_ranges import RangeTable

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer
    from aiokafka.structs import ConsumerRecord

    from onceflow.runtime.dead_letters import CallbackSource
    from onceflow.runtime.metrics import Metrics
    from onceflow.runtime.restore import ConsumerFactory, RestoreProgress
    from onceflow.runtime.sinks import Sink
    from onceflow.settings import Settings
    from onceflow.state.typing import StorePartition
    from onceflow.state.windowed import WindowedStorePartition
    from onceflow.topology import App, Handler

__all__ = ["Task", "TaskState"]

log = logging.getLogger("onceflow.task")

YIELD_MASK = 63
"""The per-record loop yields to the event loop every ``YIELD_MASK + 1`` records: a big batch
would otherwise hold it for tens of milliseconds while other tasks' background commits wait for
their next step (docs/architecture.md, *Commit scheduling*). Every 256 records, six tasks'
chunks could hold each of a commit's steps for ~15 ms: commits of 60-66 ms at half load."""


class TaskState(enum.StrEnum):
    """``created → restoring → running → closed``; ``failed`` from the moment a ``process`` or
    ``commit`` raised until the worker closes the task (it is neither processed, committed nor
    queried again: its state may already be another owner's)."""

    CREATED = "created"
    RESTORING = "restoring"
    RUNNING = "running"
    FAILED = "failed"
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
        consumer: AIOKafkaConsumer | None,
        consumer_factory: ConsumerFactory,
        settings: Settings,
        metrics: Metrics,
        delete_retention_ms: Mapping[str, int] | None = None,
        changelog_ids: Mapping[str, str] | None = None,
        clock_ms: Callable[[], int] | None = None,
        global_stores: Mapping[str, StorePartition] | None = None,
    ) -> None:
        """``delete_retention_ms``: per changelog topic, how long it keeps tombstones; a store
        out of sync with its changelog for longer is restored from the beginning.
        ``changelog_ids``: per changelog topic, its topic id; a store whose checkpoint was
        recorded with another is refused (the topic was recreated). ``clock_ms``: the wall
        clock of wall-clock timers, epoch ms (default: the system's). ``global_stores``: the
        worker's global table stores, by table name (docs/architecture.md, *Global tables*)."""
        self.app = app
        self.group = group
        self.partition = partition
        self.num_partitions = num_partitions
        self.task_id = naming.task_id(group, partition)
        self.tps = [TopicPartition(t, partition) for t in app.groups()[group]]
        self.sink = sink
        self.state = TaskState.CREATED
        self.stream_time = -1
        # The stream time of the last commit (or of the committed offsets the task started
        # from): what interactive queries filter expired state by (docs/architecture.md, *Time*).
        self.committed_stream_time = -1
        self.closing = False  # set when the task is revoked while it starts
        self.max_record_bytes = settings.max_request_size
        self._consumer = consumer
        self._consumer_factory = consumer_factory
        self._settings = settings
        self._metrics = metrics
        self._delete_retention_ms = dict(delete_retention_ms or {})
        self._changelog_ids = dict(changelog_ids or {})
        self._global_stores = global_stores or {}
        self._tables = app.tables_of(group)
        self._stores = TaskStores(self._tables, partition)
        self._feed = TableFeed(self._tables)  # source tables, fed by their topics' records
        self._committed: dict[TopicPartition, int] = {}  # the offsets the task started from
        labels = (app.app_id,)
        self._checkpoint = Checkpoint(
            sink,
            self._stores,
            CommitMetrics(
                committed=metrics.transactions.labels(*labels, "committed"),
                latency=metrics.commit_latency.labels(*labels),
                producer_errors=metrics.producer_errors.labels(*labels),
            ),
        )
        self._held: Held | None = None  # a record waiting for its retry, and those behind it
        # The commit running in the background (``commit_in_background``)
        self._committing: asyncio.Future[bool] | None = None
        # Per source topic: the tables keyed like it, whose keys a fetched batch names.
        self._prefetch: dict[str, list[AnyTable]] = {}
        # Per partition, the loads begun ahead of processing (``preload``; docs/architecture.md,
        # *The life of a record*), by the offset of their batch's first record.
        self._loads: dict[TopicPartition, dict[int, asyncio.Future[None]]] = {}
        self._effects = Effects(
            app_id=app.app_id,
            dlq_topic=app.dlq_topic,
            sink=sink,
            stores=self._stores,
            metrics=metrics,
            error_policy=app.error_policy or settings.error_policy,
            max_record_bytes=self.max_record_bytes,
        )
        self._latency = BatchedHistogram(metrics.process_latency.labels(*labels))
        self._processed = {
            tp: metrics.records_processed.labels(*labels, tp.topic, str(partition))
            for tp in self.tps
        }
        clocks: dict[str, Any] = {}
        if clock_ms is not None:
            clocks = {"clock": lambda: clock_ms() / 1000, "now_ms": clock_ms}
        self._time = Punctuator(
            self, self._tables, app.timers_of(group), count=self._count_callback, **clocks
        )

    # -- the TaskScope of tables and contexts --------------------------------------------------

    def store(self, name: str) -> StorePartition:
        return self._stores.store(name)

    def windowed_store(self, name: str) -> WindowedStorePartition:
        return self._stores.windowed_store(name)

    def global_store(self, name: str) -> StorePartition:
        return self._global_stores[name]

    # -- what the worker reads -------------------------------------------------------------------

    @property
    def restores(self) -> Mapping[str, RestoreProgress]:
        """Restore progress per table (while and after the task starts)."""
        return self._stores.restores

    @property
    def uncommitted(self) -> int:
        return self._checkpoint.uncommitted

    @property
    def positions(self) -> Mapping[TopicPartition, int]:
        """The next offset to process per source partition, as far as this task processed."""
        return self._checkpoint.positions

    @property
    def committed_positions(self) -> Mapping[TopicPartition, int]:
        """The offsets this task committed last, per source partition."""
        return self._checkpoint.committed

    @property
    def has_work(self) -> bool:
        return not self._checkpoint.empty()

    @property
    def schedulable(self) -> bool:
        """Running and not committing: timers may run, retries be tried."""
        return self.state is TaskState.RUNNING and self._committing is None

    @property
    def can_commit(self) -> bool:
        """Running, not committing, and the last commit's SQLite write is over: a commit may
        begin (its cut must not overtake that write: ``Checkpoint.begin``)."""
        return self.schedulable and not self._stores.flushing

    @property
    def committing(self) -> bool:
        """A background commit runs or waits to be collected (``finish_commit``)."""
        return self._committing is not None

    @property
    def commit_finished(self) -> bool:
        """A background commit is over (``finish_commit`` collects it)."""
        return self._committing is not None and self._committing.done()

    # -- start ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Take the task over, in the hand-over order (docs/architecture.md, *Hand-over*).

        1. Start the producer: InitProducerId fences the previous owner and ends its transaction.
        2. Read the committed offsets (stable only after step 1) and seek to them explicitly.
        3. Open and restore the stores from their changelogs.
        4. Mark running; the worker resumes the partitions.
        """
        self.state = TaskState.RESTORING
        started = time.monotonic()
        # Step 1
        await self.sink.start()
        fenced = time.monotonic()
        # Step 2
        self._check_closing()
        await self._seek_committed()
        sought = time.monotonic()
        # Step 3
        for table in self._tables:
            self._check_closing()
            await self._stores.open_and_restore(
                table,
                app_id=self.app.app_id,
                settings=self._settings,
                metrics=self._metrics,
                consumer_factory=self._consumer_factory,
                delete_retention_ms=self._delete_retention_ms.get(table.changelog_topic),
                changelog_topic_id=self._changelog_ids.get(table.changelog_topic),
                stream_time=self.stream_time,
                until=self._feed.until(table, self._committed, self.partition),
            )
        self._check_closing()
        # Step 4
        self._time.start(self.stream_time)
        self.state = TaskState.RUNNING
        now = time.monotonic()
        log.info(
            "task %s running (stream time %d; fenced in %.2fs, offsets in %.2fs, stores in %.2fs)",
            self.task_id,
            self.stream_time,
            fenced - started,
            sought - fenced,
            now - sought,
        )

    def adopt(
        self,
        stores: Mapping[str, StorePartition],
        committed: Mapping[TopicPartition, Any] | None = None,
    ) -> None:
        """Run with ``stores`` (one per table of the group, by name) as they are, resuming the
        stream time of ``committed`` offsets: ``start()`` without fencing, seeking or restoring,
        for an owner that keeps everything in memory (``onceflow.testing``)."""
        for table in self._tables:
            self._stores.attach(table, stores[table.name])
        metas = (committed or {}).values()
        self.stream_time = max((stream_time_of(m.metadata) for m in metas), default=-1)
        self.committed_stream_time = self.stream_time
        self._time.start(self.stream_time)
        self.state = TaskState.RUNNING

    def cancel_start(self) -> None:
        """The task was revoked while starting: stop its restores at the next batch."""
        self.closing = True
        self._stores.cancel_restores()

    def _check_closing(self) -> None:
        if self.closing:
            raise RestoreCancelledError(f"task {self.task_id} was revoked while starting")

    async def _seek_committed(self) -> None:
        consumer = self._consumer
        assert consumer is not None, "start() needs the group consumer"
        committed = await committed_offsets(consumer, self.tps)
        for tp in self.tps:
            meta = committed.get(tp)
            if meta is not None and meta.offset >= 0:
                consumer.seek(tp, meta.offset)
                self._committed[tp] = meta.offset
                self.stream_time = max(self.stream_time, stream_time_of(meta.metadata))
            else:
                await consumer.seek_to_beginning(tp)
        self.committed_stream_time = self.stream_time

    # -- processing ----------------------------------------------------------------------------

    @property
    def retry_due(self) -> float | None:
        """When (``time.monotonic()``) the record whose handler failed is tried again; None when
        no record waits. While one waits, the task's later records wait behind it, in order, and
        the worker pauses the task's partitions (docs/architecture.md, *Failures*)."""
        return None if self._held is None else self._held.due

    async def process(
        self, tp: TopicPartition, records: Sequence[ConsumerRecord[Any, Any]]
    ) -> None:
        """Handle ``records`` of ``tp`` in offset order inside the open transaction, then hand
        their outputs to the producer, one batch per partition. A record whose handler fails
        is not retried here: it and the records after it wait (``retry_due``) while the worker
        goes on with its other tasks and its poll loop. During a background commit the records
        are processed into the next transaction (``commit_in_background``). If it raises, the
        task has failed."""
        try:
            await self._process(tp, records)
        except BaseException:
            self._fail()
            raise

    async def _process(
        self, tp: TopicPartition, records: Sequence[ConsumerRecord[Any, Any]]
    ) -> None:
        if not records:
            return
        if self._held is not None:
            self._held.chunks.append((tp, list(records)))
            return
        await self._run(tp, records)

    async def _run(self, tp: TopicPartition, records: Sequence[ConsumerRecord[Any, Any]]) -> None:
        if tp.topic in self._feed:
            await self._feed_table(tp, records)
            return
        handler = self.app.handlers[tp.topic]
        await self.sink.begin()
        tables = self._tables_keyed_like(tp.topic)
        if (loading := self._loading(tp, records[0].offset)) is not None:
            await loading  # begun when the batch was fetched; never the range tables' (preload)
            tables = [t for t in tables if isinstance(t, RangeTable)]
        if tables:
            await asyncio.to_thread(self._stores.load, tables, records)
        # The per-record loop, with everything it touches in locals: it is the hot path.
        topic = self.app.topics[tp.topic]
        key_of, value_of = topic.key_serde.deserialize, topic.value_serde.deserialize
        fn, observe, clock = handler.fn, self._latency.observe, time.perf_counter
        punctuator = self._time
        done = len(records)
        for index, record in enumerate(records):
            if index & YIELD_MASK == YIELD_MASK:  # let other tasks' commits go on
                await asyncio.sleep(0)
            timestamp = record.timestamp
            if timestamp > self.stream_time:
                previous, self.stream_time = self.stream_time, timestamp
                if timestamp >= punctuator.due:  # windows close, timers fire: before the record
                    await punctuator.stream_time_advanced(previous, timestamp)
            try:
                raw_key, raw_value = record.key, record.value
                key = None if raw_key is None else key_of(raw_key)
                value = None if raw_value is None else value_of(raw_value)
            except SerdeError as exc:
                self._effects.dead_letter(record, exc, "deserialize")
                continue
            ctx = Context(
                self, record.topic, record.partition, record.offset, timestamp, record.headers,
                raw_key,
            )  # fmt: skip
            started = clock()
            try:
                await fn(ctx, key, value)
            except Exception as exc:
                if self._failed_for_good(handler, record, exc):
                    continue
                self._held = Held.after(tp, records[index:], self._backoff_s(0))
                done = index
                break
            observe(clock() - started)
            if ctx.explicit_partitions:  # rare: a coroutine call per record costs the hot path
                await self._apply(record, ctx)
            else:
                self._effects.take(ctx)
        if done:
            await self._finish(tp, records[done - 1].offset + 1, done)

    async def _feed_table(
        self, tp: TopicPartition, records: Sequence[ConsumerRecord[Any, Any]]
    ) -> None:
        """Apply records of a source table's topic to its store in the open transaction; their
        offsets commit with the task's (docs/architecture.md, *Tables fed by a topic*). They do
        not move stream time: the table's topic is not a stream of events."""
        await self.sink.begin()
        self._feed.apply(records, self._stores.apply, self._effects.dead_letter)
        await self._finish(tp, records[-1].offset + 1, len(records))

    async def retry_held(self) -> None:
        """Try the waiting record's handler again (on a fresh Context: a failed attempt's effects
        are dropped with it). On success, or once its retries are spent (then it goes to the
        dead-letter topic), process the records that waited behind it. If it raises, the task
        has failed."""
        try:
            await self._retry_held()
        except BaseException:
            self._fail()
            raise

    async def _retry_held(self) -> None:
        held = self._held
        if held is None:
            return
        tp, records = held.chunks[0]
        record, handler = records[0], self.app.handlers[tp.topic]
        topic = self.app.topics[tp.topic]
        key = None if record.key is None else topic.key_serde.deserialize(record.key)
        value = None if record.value is None else topic.value_serde.deserialize(record.value)
        await self.sink.begin()
        ctx = Context(
            self, record.topic, record.partition, record.offset, record.timestamp, record.headers,
            record.key,
        )  # fmt: skip
        started = time.perf_counter()
        try:
            await handler.fn(ctx, key, value)
        except RecordRejectedError as exc:
            self._effects.dead_letter(record, exc, "output")
        except Exception as exc:
            held.attempt += 1
            if held.attempt < self._retries(handler):
                held.due = time.monotonic() + self._backoff_s(held.attempt)
                return
            self._effects.dead_letter(record, exc, "handler")
        else:
            self._latency.observe(time.perf_counter() - started)
            await self._apply(record, ctx)
        self._held = None
        await self._finish(tp, record.offset + 1, 1)
        for next_tp, rest in [(tp, records[1:]), *held.chunks[1:]]:
            if self._held is not None:
                self._held.chunks.append((next_tp, rest))
            elif rest:
                await self._run(next_tp, rest)

    # -- time: final results and timers (docs/architecture.md, *Time*) -------------------------

    async def run_callback(
        self, ctx: Context, call: Awaitable[None], source: CallbackSource
    ) -> None:
        """Run an ``on_close`` or timer callback in the open transaction: its effects applied if
        it returns; if it raises (or sends to a partition that does not exist), a dead letter
        naming ``source`` instead — callbacks are not retried — or, under error policy
        ``fail``, the task fails."""
        try:
            await call
            sends = ctx.staged_sends
            if sends is not None and ctx.explicit_partitions:
                misdirected = await self._effects.misdirected(sends)
                if misdirected is not None:
                    raise misdirected
        except Exception as exc:
            self._effects.dead_letter_callback(source, exc)
            return
        self._effects.take(ctx)

    def _count_callback(self, stage: str, name: str) -> None:
        if stage == "on_close":
            self._metrics.windows_closed.labels(self.app.app_id, name).inc()
        else:
            self._metrics.timer_firings.labels(self.app.app_id, name).inc()

    @property
    def wall_clock_due(self) -> float | None:
        """When (``time.monotonic()``) a wall-clock timer of the task is next due; None if the
        task has none."""
        return self._time.wall_clock_due

    async def run_wall_clock(self) -> None:
        """Fire the task's due wall-clock timers in its transaction (opened if need be: the task
        may be idle); the next commit commits their effects. If it raises, the task has
        failed."""
        try:
            await self.sink.begin()
            if await self._time.run_wall_clock():
                self._checkpoint.touched()
                await self._after_callbacks()
        except BaseException:
            self._fail()
            raise

    async def advance_stream_time(self, stream_time: int) -> None:
        """Move stream time to ``stream_time`` as a record with that timestamp would, without
        one: windows close and stream-time timers fire (the test driver's ``advance_time``)."""
        if stream_time <= self.stream_time:
            return
        try:
            await self.sink.begin()
            previous, self.stream_time = self.stream_time, stream_time
            self._checkpoint.touched()  # the stream time is to be committed even if nothing fired
            if stream_time >= self._time.due:
                await self._time.stream_time_advanced(previous, stream_time)
            await self._after_callbacks()
        except BaseException:
            self._fail()
            raise

    async def _after_callbacks(self) -> None:
        self._effects.count_sent()
        await self.sink.flush()

    async def settle(self) -> None:
        """Wait out the backoffs and retry until no record waits (the in-memory test driver
        processes records one call at a time)."""
        while (due := self.retry_due) is not None:
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            await self.retry_held()

    def _failed_for_good(
        self, handler: Handler, record: ConsumerRecord[Any, Any], exc: Exception
    ) -> bool:
        """After a failed first attempt: dead-letter the record now if a retry cannot help (a
        rejected output, or no retries); False when it is to be retried."""
        if isinstance(exc, RecordRejectedError):
            self._effects.dead_letter(record, exc, "output")
            return True
        if self._retries(handler) == 0:
            self._effects.dead_letter(record, exc, "handler")
            return True
        return False

    def _retries(self, handler: Handler) -> int:
        return self._settings.max_retries if handler.max_retries is None else handler.max_retries

    def _backoff_s(self, attempt: int) -> float:
        return self._settings.retry_backoff_ms / 1000 * 2.0 ** min(attempt, 30)

    async def _apply(self, record: ConsumerRecord[Any, Any], ctx: Context) -> None:
        """Apply a successful attempt's effects, unless one of its sends names a partition its
        topic lacks (then the record goes to the dead-letter topic, without its effects)."""
        sends = ctx.staged_sends
        if (
            sends is not None
            and ctx.explicit_partitions
            and (m := await self._effects.misdirected(sends))
        ):
            self._effects.dead_letter(record, m, "output")
        else:
            self._effects.take(ctx)

    async def _finish(self, tp: TopicPartition, next_offset: int, count: int) -> None:
        """Account for ``count`` handled records of ``tp``, up to ``next_offset`` exclusive, and
        hand their outputs to the producer."""
        self._checkpoint.processed(tp, next_offset, count)
        self._latency.publish()
        self._processed[tp].inc(count)
        self._effects.count_sent()
        await self.sink.flush()

    def preload(self, tp: TopicPartition, records: Sequence[ConsumerRecord[Any, Any]]) -> None:
        """Begin loading the committed values of ``records``' keys into the read caches, in a
        worker thread, so that they are there when ``process`` runs the records: the worker
        hands the next fetched batch here while it processes this one, and the SQLite reads
        overlap the handlers (docs/architecture.md, *The life of a record*). Not for session and
        sliding-window tables: their per-key copies are loaded by ``process`` itself."""
        if self.state is not TaskState.RUNNING or tp.topic in self._feed or not records:
            return
        tables = [t for t in self._tables_keyed_like(tp.topic) if not isinstance(t, RangeTable)]
        if not tables:
            return
        loading = asyncio.ensure_future(asyncio.to_thread(self._stores.load, tables, records))
        loading.add_done_callback(_retrieve)  # a batch split or retried may never await it
        self._loads.setdefault(tp, {})[records[0].offset] = loading

    def _loading(self, tp: TopicPartition, offset: int) -> asyncio.Future[None] | None:
        """The load begun for the batch of ``tp`` that starts at ``offset``, if any; forgets
        those of earlier batches (a batch that was split or retried runs its parts without)."""
        loads = self._loads.get(tp)
        if not loads:
            return None
        for first in [o for o in loads if o < offset]:
            del loads[first]
        return loads.pop(offset, None)

    def _tables_keyed_like(self, topic: str) -> list[AnyTable]:
        """Tables whose keys are serialized like ``topic``'s: a record's key bytes are then
        likely the key the handler reads, worth loading before the batch is handled."""
        tables = self._prefetch.get(topic)
        if tables is None:
            serde = type(self.app.topics[topic].key_serde)
            tables = [t for t in self._tables if type(t.key_serde) is serde]
            self._prefetch[topic] = tables
        return tables

    # -- commit --------------------------------------------------------------------------------

    async def commit(self) -> bool:
        """Commit what the task processed since its last commit (``Checkpoint.commit``: its
        docstring lists the steps); False when there was nothing. If it raises, the task has
        failed."""
        stream_time = self.stream_time
        try:
            committed = await self._checkpoint.commit(stream_time)
        except BaseException:
            self._fail()
            raise
        if committed:
            self.committed_stream_time = stream_time
        return committed

    def commit_in_background(self) -> None:
        """Begin a commit and return: the cut (``Checkpoint.begin``) happens now, between two
        batches of the task; the rest runs in the background while the worker goes on with
        every task, this one included, whose records go to the next transaction, until
        ``finish_commit`` collects the commit (docs/architecture.md, *Commit scheduling*).
        Call it only while ``can_commit``."""
        if self._committing is not None:
            raise RuntimeError(f"task {self.task_id} is committing already")
        if self._stores.flushing:
            raise RuntimeError(f"task {self.task_id} is writing its last commit to SQLite")
        stream_time = self.stream_time
        try:
            cut = self._checkpoint.begin(stream_time)
        except Exception as exc:
            self._fail()
            self._committing = asyncio.get_running_loop().create_future()
            self._committing.set_exception(exc)
            return
        if cut is None:
            self._committing = asyncio.get_running_loop().create_future()
            self._committing.set_result(False)
            return
        self._committing = asyncio.ensure_future(self._commit_cut(cut, stream_time))

    async def _commit_cut(self, cut: Cut, stream_time: int) -> bool:
        try:
            await self._checkpoint.finish(cut)
        except BaseException:
            self._fail()
            raise
        self.committed_stream_time = stream_time
        return True

    async def finish_commit(self) -> bool:
        """Collect the background commit, re-raising its failure (the task has failed: what it
        processed since the cut is dropped with it). Returns whether it committed anything."""
        commit = self._committing
        if commit is None or not commit.done():
            raise RuntimeError(f"task {self.task_id} has no finished commit to collect")
        self._committing = None
        return commit.result()

    async def _end_background_commit(self, *, wait: bool) -> None:
        """At close: wait for the background commit (``wait``) or cancel it; its failure has
        failed the task already."""
        commit, self._committing = self._committing, None
        if commit is None:
            return
        if not wait:
            commit.cancel()
        await asyncio.wait({commit})
        if commit.cancelled():
            self._fail()
        else:
            commit.exception()  # retrieved: a failure was the task's, and is handled

    def _fail(self) -> None:
        """Stop serving and committing at once: the worker closes the task once every task of
        the batch is done, and a fenced task's state is already another owner's."""
        if self.state is TaskState.RUNNING:
            self.state = TaskState.FAILED

    # -- close ---------------------------------------------------------------------------------

    async def close(self, *, commit: bool) -> None:
        """Close the task: commit first if asked (and possible), else abort; release stores."""
        if self.state is TaskState.CLOSED:
            return
        self._held = None  # the next owner re-reads them from the committed offsets
        await self._end_background_commit(wait=commit)
        try:
            await self._stores.flushed()
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
            loads = [f for by_offset in self._loads.values() for f in by_offset.values()]
            self._loads = {}
            await asyncio.gather(*loads, return_exceptions=True)  # no load reads closed stores
            await self._stores.close()
            await self.sink.close()


def _retrieve(future: asyncio.Future[None]) -> None:
    """Mark a load's failure as seen: the batch that awaits it fails the task, or a later load
    replaced it and the records' own reads tell."""
    if not future.cancelled():
        future.exception()
