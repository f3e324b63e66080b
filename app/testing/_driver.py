"""``TestDriver``: run an App's handlers and tables in memory, without a broker.

Like Kafka Streams' ``TopologyTestDriver``, records go through the worker's own ``Task`` code —
serdes, retries, dead letters, windows, late records, stream time, error policy — with an
in-memory sink for the transactional producer and in-memory stores for SQLite. Only committed
output and committed table state are visible, as to a ``read_committed`` reader::

    from onceflow.examples.windowed_count import app, counts, sink, source

    async with TestDriver(app, partitions=3) as driver:
        await driver.send(source, "alice", "click", timestamp=1_000)
        await driver.send(source, "alice", "click", timestamp=2_000)
        assert [o.value for o in driver.read(sink)] == ["1", "2"]
        assert driver.table(counts).windows("alice")[0].value == 2

Settings default to ``Settings``' defaults (not the environment) without retry backoff. When
processing or a commit fails (error policy ``fail``), the task's open transaction is aborted and
the task rebuilt from its committed state, as the worker does, and the error raised.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import time
from collections import defaultdict
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn, Self, Unpack, overload

from aiokafka.structs import ConsumerRecord, TopicPartition

from onceflow.errors import ConfigurationError, CopartitioningError, OnceflowError
from onceflow.global_tables import GlobalTable
from onceflow.partitioner import partition_for_key
from onceflow.records import Header, OutgoingRecord
from onceflow.runtime import Metrics, Task
from onceflow.serdes import Serde
from onceflow.settings import Settings
from onceflow.source_tables import SourceTable
from onceflow.state.memory import InMemoryStorePartition
from onceflow.tables import Table, WindowedTable, WindowValue
from onceflow.testing._globals import GlobalView, InMemoryGlobals
from onceflow.testing._sink import DeadLetter, InMemorySink, Output, RecordOptions
from onceflow.topics import RepartitionTopic, Topic
from onceflow.topology import AnyTable, App
from onceflow.window_ranges import RangeTable

__all__ = ["TableView", "TestDriver"]

TopicRef = Topic[Any, Any] | str
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MAX_HOPS = 1_000_000  # records handed from handler to handler for one driver call


def _no_broker(*_: Any, **__: Any) -> NoReturn:
    raise OnceflowError("the test driver has no broker to restore from")


class TableView:
    """Committed state of one table, over all its partitions (what HTTP queries see)."""

    def __init__(self, driver: TestDriver, table: AnyTable) -> None:
        self._driver, self._table = driver, table

    def _task(self, key: Any) -> tuple[Task, bytes]:
        data = self._table.key_serde.serialize(key)
        n = self._driver.group_partitions[self._table.group]
        return self._driver.task(partition_for_key(data, n), self._table.group), data

    def get(self, key: Any, default: Any = None) -> Any:
        """The key's committed value, or ``default`` when it has none."""
        task, data = self._task(key)
        table = self._table
        if not isinstance(table, Table | SourceTable):
            raise ConfigurationError(f"table {table.name!r} is windowed: use windows()")
        raw = task.store(table.name).committed_get(table.store_key(data))
        raw = table.visible(raw, task.committed_stream_time)  # a ttl table: what queries see
        return default if raw is None else table.value_serde.deserialize(raw)

    def windows(self, key: Any, from_ms: int = 0, to_ms: int = 2**63 - 1) -> list[WindowValue[Any]]:
        """A windowed table's committed windows of ``key`` that start in ``[from_ms, to_ms]``
        (a session table's sessions; session and sliding windows have inclusive ends), as an
        HTTP query answers them."""
        table = self._table
        if isinstance(table, RangeTable):
            task, data = self._task(key)
            fetch = functools.partial(task.windowed_store(table.name).fetch, committed=True)
            return table.committed_windows(fetch, data, from_ms, to_ms, task.committed_stream_time)
        if not isinstance(table, WindowedTable):
            raise ConfigurationError(f"table {table.name!r} is not windowed: use get()")
        task, data = self._task(key)
        from_ms = max(from_ms, table.expired_before(task.committed_stream_time))
        rows = task.windowed_store(table.name).fetch(data, from_ms, to_ms, committed=True)
        size, serde = table.window.size_ms, table.value_serde
        return [WindowValue(s, s + size, serde.deserialize(v)) for s, v in rows]


class TestDriver:
    """Runs an App in memory: ``send`` records in, ``read`` outputs, inspect ``table``s.

    ``partitions`` is every topic's partition count, or ``{topic: count}`` (other topics: their
    declared ``partitions``, else 1; the dead-letter topic: the largest source count). Sources of
    one task group need equal counts. With ``auto_commit`` (default) each record is committed
    once processed; otherwise ``commit()`` commits what is open.
    """

    __test__ = False  # not a pytest test class, despite its name

    def __init__(
        self,
        app: App,
        *,
        partitions: int | dict[str, int] = 1,
        settings: Settings | None = None,
        auto_commit: bool = True,
        clock: Callable[[], int] | None = None,
    ) -> None:
        app.validate()
        self.settings = settings or Settings.model_construct(retry_backoff_ms=0)
        if self.settings.app_id:
            app.with_app_id(self.settings.app_id)
        self.app, self.auto_commit, self._partitions = app, auto_commit, partitions
        self._internal = {t.name for t in app.repartition_topics}
        self._clock = clock or (lambda: time.time_ns() // 1_000_000)
        self._wall_offset_ms = 0  # moved on by advance_time(wall_clock=...)
        self.metrics = Metrics(app.app_id, eos=self.settings.eos)
        self.group_partitions: dict[str, int] = {}
        for group, topics in app.groups().items():
            found = {t: self._count(t) for t in topics}
            if len(set(found.values())) > 1:
                raise CopartitioningError(
                    f"task group {group!r} reads topics with different partition counts ({found}): "
                    "co-partitioned sources need equal counts"
                )
            self.group_partitions[group] = found[topics[0]]
        self._committed: dict[str, list[Output]] = defaultdict(list)
        self._offsets: dict[tuple[str, int], itertools.count[int]] = defaultdict(itertools.count)
        self._round_robin: dict[str, itertools.count[int]] = defaultdict(itertools.count)
        self._stores: dict[tuple[str, int], dict[str, InMemoryStorePartition]] = {}
        self._tasks: dict[tuple[str, int], Task] = {}
        self._globals = InMemoryGlobals(app)
        for key in ((g, p) for g, n in self.group_partitions.items() for p in range(n)):
            self._stores[key] = {
                t.name: InMemoryStorePartition(t.name) for t in app.tables_of(key[0])
            }
            sink = InMemorySink(self._place, self._publish, self._count)
            self._tasks[key] = self._new_task(*key, sink)
        self._closed = False
        self._hops: list[Output] = []  # committed records of topics the app reads, to process
        self._read = {t for topics in app.groups().values() for t in topics}

    def _count(self, topic: str) -> int:
        if isinstance(self._partitions, int):
            return self._partitions
        if topic in self._partitions:
            return self._partitions[topic]
        if topic == self.app.dlq_topic:
            return max(self.group_partitions.values(), default=1)
        declared = self.app.topics.get(topic)
        if isinstance(declared, RepartitionTopic):
            counts = {t: self._count(t) for t in self.app.handlers if t not in self._internal}
            return self.app.repartition_partitions(declared, counts)
        return declared.partitions if declared and declared.partitions else 1

    def _new_task(self, group: str, partition: int, sink: InMemorySink) -> Task:
        task = Task(
            app=self.app,
            group=group,
            partition=partition,
            num_partitions=self.group_partitions[group],
            sink=sink,
            consumer=None,  # only start() uses it; the driver never calls start()
            consumer_factory=_no_broker,
            settings=self.settings,
            metrics=self.metrics,
            clock_ms=self.clock,
            global_stores=self._globals.stores,
        )
        # start() would fence, seek and restore: here everything is in memory already
        task.adopt(self._stores[(group, partition)], sink.committed_offsets)
        return task

    def clock(self) -> int:
        """The driver's wall clock, epoch ms: the ``clock`` given (default: the system's) plus
        what ``advance_time`` moved it by. Records sent without a timestamp get this one."""
        return self._clock() + self._wall_offset_ms

    def _partition_of(self, topic: str, key: bytes | None) -> int:
        if key is None:
            return next(self._round_robin[topic]) % self._count(topic)
        return partition_for_key(key, self._count(topic))

    def _place(self, r: OutgoingRecord) -> Output:
        p = self._partition_of(r.topic, r.key) if r.partition is None else r.partition
        ts = self.clock() if r.timestamp_ms is None else r.timestamp_ms
        return Output(r.topic, r.key, r.value, r.headers, ts, p, next(self._offsets[(r.topic, p)]))

    def _publish(self, out: Output) -> None:
        self._committed[out.topic].append(out)
        self._globals.apply(out.topic, out.key, out.value)  # a global table's topic: it reads it
        if out.topic in self._read:  # a repartition hop (or any topic the app's tasks read)
            self._hops.append(out)

    # -- input ---------------------------------------------------------------------------------

    async def send(
        self,
        topic: TopicRef | GlobalTable[Any, Any],
        key: Any,
        value: Any,
        **options: Unpack[RecordOptions],
    ) -> None:
        """Serialize ``key`` and ``value`` with the topic's serdes and process the record (then
        commit, with ``auto_commit``). To a global table (or its topic): update the table, which
        every task reads from then on."""
        if (table := self._globals.table_of(topic)) is not None:
            k, v = table.key_serde.serialize(key), _ser(table.value_serde, value)
            self._globals.apply(table.topic, k, v)
            return
        assert not isinstance(topic, GlobalTable)  # table_of() found every global table
        source = self._source(topic)
        key_bytes = None if key is None else source.key_serde.serialize(key)
        value_bytes = None if value is None else source.value_serde.serialize(value)
        await self.send_raw(source, key_bytes, value_bytes, **options)

    async def send_raw(
        self,
        topic: TopicRef,
        key: bytes | None,
        value: bytes | None,
        **options: Unpack[RecordOptions],
    ) -> None:
        """``send`` for a record given as bytes (e.g. input that does not deserialize)."""
        name = self._source(topic).name
        p = options.get("partition")
        p = self._partition_of(name, key) if p is None else p
        offset, ts = next(self._offsets[(name, p)]), self._millis(options.get("timestamp"))
        headers = list(options.get("headers") or ())
        await self._process(name, p, offset, ts, key, value, headers)
        await self._follow_hops()

    async def _process(
        self,
        name: str,
        p: int,
        offset: int,
        ts: int,
        key: bytes | None,
        value: bytes | None,
        headers: list[Header],
    ) -> None:
        task = self.task(p, self.app.group_of(name))
        sizes = (len(key or b""), len(value or b""))
        record = ConsumerRecord(name, p, offset, ts, 0, key, value, None, *sizes, headers)
        self.metrics.records_consumed.labels(self.app.app_id, name, str(p)).inc()
        await self._run(task, task.process(TopicPartition(name, p), [record]))
        await self._run(task, task.settle())  # retries wait out their backoff here
        if self.auto_commit:
            await self._run(task, task.commit())

    async def _follow_hops(self) -> None:
        """Process the committed records of topics the app reads (repartition topics), in the
        order they were committed, until none is left — as the worker's consumer would read
        them, ``read_committed``."""
        processed = 0
        while self._hops:
            out = self._hops.pop(0)
            await self._process(
                out.topic, out.partition, out.offset, out.timestamp, out.key, out.value,
                list(out.headers),
            )  # fmt: skip
            processed += 1
            if processed > MAX_HOPS:
                self._hops.clear()
                raise OnceflowError(
                    f"more than {MAX_HOPS} records went from handler to handler for one input: "
                    f"does a handler send to its own source topic ({out.topic!r})?"
                )

    async def advance_time(
        self,
        *,
        stream_time: timedelta | int = 0,
        wall_clock: timedelta | int = 0,
        partition: int | None = None,
        group: str | None = None,
    ) -> None:
        """Let time pass, without records: move every task's stream time on by ``stream_time``
        (from 0 for a task that has seen no record yet) — windows of ``emit="close"`` tables
        close and stream-time timers fire as a record that late would make them — and the wall
        clock by ``wall_clock``, firing the wall-clock timers due by then. Then commit (with
        ``auto_commit``). ``partition`` / ``group`` limit it to some tasks (ms or timedelta)."""
        by_stream, by_wall = _delta_ms(stream_time), _delta_ms(wall_clock)
        self._wall_offset_ms += by_wall
        for (g, p), task in list(self._tasks.items()):
            if (partition is not None and p != partition) or (group is not None and g != group):
                continue
            if by_stream:
                target = max(task.stream_time, 0) + by_stream
                await self._run(task, task.advance_stream_time(target))
            due = task.wall_clock_due
            if due is not None and due <= self.clock() / 1000:
                await self._run(self._tasks[(g, p)], self._tasks[(g, p)].run_wall_clock())
            if self.auto_commit:
                await self._run(self._tasks[(g, p)], self._tasks[(g, p)].commit())
        await self._follow_hops()

    async def commit(self) -> None:
        """Commit every task's open work (only needed with ``auto_commit=False``), then process
        what that committed to topics the app reads."""
        for task in list(self._tasks.values()):
            await self._run(task, task.commit())
        await self._follow_hops()

    async def _run(self, task: Task, step: Coroutine[Any, Any, Any]) -> None:
        try:
            await step
        except BaseException:
            # As the worker does: drop the open transaction, rebuild the task from committed state.
            await task.sink.abort()
            key = (task.group, task.partition)
            for store in self._stores[key].values():
                store.discard()
            assert isinstance(task.sink, InMemorySink)
            self._tasks[key] = self._new_task(*key, task.sink)
            raise

    def _source(self, topic: TopicRef) -> Topic[Any, Any]:
        name = _name(topic)
        fed = {t.topic for t in self.app.source_tables()}  # a source table's topic updates it
        if name not in self.app.handlers and name not in fed:
            sources = ", ".join(sorted({*self.app.handlers, *fed})) or "(none)"
            raise ConfigurationError(f"topic {name!r} has no handler; the sources are {sources}")
        return self.app.topics[name]

    def _millis(self, timestamp: int | datetime | None) -> int:
        if timestamp is None:
            return self.clock()
        if isinstance(timestamp, datetime):
            aware = timestamp if timestamp.tzinfo else timestamp.replace(tzinfo=UTC)
            return (aware - _EPOCH) // timedelta(milliseconds=1)
        return timestamp

    # -- output and state ----------------------------------------------------------------------

    def read(self, topic: TopicRef) -> list[Output]:
        """The committed records sent to ``topic`` in commit order, deserialized with its serdes
        (bytes for a topic the App does not declare)."""
        out, declared = self._committed.get(_name(topic), []), self.app.topics.get(_name(topic))
        if declared is None:
            return list(out)
        k, v = declared.key_serde, declared.value_serde
        return [dataclasses.replace(o, key=_de(k, o.key), value=_de(v, o.value)) for o in out]

    def read_all(self) -> dict[str, list[Output]]:
        """``read`` of every topic written to, changelogs left out."""
        changelogs = {
            t.changelog_topic for t in self.app.tables.values() if not isinstance(t, SourceTable)
        }
        return {t: self.read(t) for t in list(self._committed) if t not in changelogs}

    def clear(self) -> None:
        """Forget every committed output."""
        self._committed.clear()

    @property
    def dead_letters(self) -> list[DeadLetter]:
        """The committed records of ``<app_id>-dlq``."""
        return [
            DeadLetter(o.key, o.value, _text(o.headers), o.timestamp, o.partition, o.offset)
            for o in self._committed.get(self.app.dlq_topic, [])
        ]

    @overload
    def table(self, table: AnyTable | str) -> TableView: ...
    @overload
    def table(self, table: GlobalTable[Any, Any]) -> GlobalView: ...
    def table(self, table: AnyTable | GlobalTable[Any, Any] | str) -> TableView | GlobalView:
        """Committed state of ``table`` (an App table, a global table, or its name)."""
        if _name(table) in self.app.global_tables:
            return self._globals.view(_name(table))
        if _name(table) not in self.app.tables:
            raise ConfigurationError(
                f"unknown table {_name(table)!r}; tables: {list(self.app.tables)}"
            )
        return TableView(self, self.app.tables[_name(table)])

    def task(self, partition: int, group: str = "0") -> Task:
        """The task of ``partition`` in task ``group``."""
        if (group, partition) not in self._tasks:
            tasks = ", ".join(f"{g}_{p}" for g, p in self._tasks)
            raise ConfigurationError(f"no task {group}_{partition}; the tasks are {tasks}")
        return self._tasks[(group, partition)]

    def stream_time(self, partition: int = 0, group: str = "0") -> int:
        """The task's stream time: the largest record timestamp it has seen (-1: none yet)."""
        return self.task(partition, group).stream_time

    def late_dropped(self, table: AnyTable | str) -> int:
        """How many records ``table`` dropped as late (``onceflow_late_records_dropped_total``)."""
        labels = {"app": self.app.app_id, "store": _name(table)}
        sample = "onceflow_late_records_dropped_total"
        return int(self.metrics.registry.get_sample_value(sample, labels) or 0)

    # -- lifecycle -----------------------------------------------------------------------------

    async def close(self) -> None:
        """Commit what is open and release the stores; safe to call twice."""
        if not self._closed:
            self._closed = True
            for task in self._tasks.values():
                await task.close(commit=True)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


def _delta_ms(delta: timedelta | int) -> int:
    millis = delta // timedelta(milliseconds=1) if isinstance(delta, timedelta) else delta
    if millis < 0:
        raise ConfigurationError(f"time only moves forward: got {delta}")
    return millis


def _name(ref: TopicRef | AnyTable | GlobalTable[Any, Any]) -> str:
    return ref if isinstance(ref, str) else ref.name


def _ser(serde: Serde[Any], value: Any) -> bytes | None:
    return None if value is None else serde.serialize(value)


def _de(serde: Serde[Any], data: bytes | None) -> Any:
    return None if data is None else serde.deserialize(data)


def _text(headers: list[Header]) -> dict[str, str]:
    return {k: v.decode("utf-8", "replace") for k, v in headers}
