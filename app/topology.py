"""``App``: the declaration of a onceflow service — topics, handlers and tables.

The App holds no connections; ``onceflow worker`` (``onceflow.runtime.Worker``) runs it.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal, TypeVar, cast, overload

from onceflow import naming
from onceflow.context import Context
from onceflow.errors import ConfigurationError
from onceflow.global_tables import GlobalTable
from onceflow.serdes import Serde, resolve_serde
from onceflow.sessions import SessionTable
from onceflow.sliding import SlidingWindowedTable
from onceflow.source_tables import SourceTable, validate_source_tables
from onceflow.sql_sink import SinkFn, SqlSink
from onceflow.tables import Table, WindowedTable
from onceflow.timers import Timer, TimerFn
from onceflow.topics import RepartitionTopic, Topic
from onceflow.windows import Hopping, Session, Sliding, Tumbling

__all__ = ["AnyTable", "App", "Handler", "HandlerFn"]

HandlerFn = Callable[[Context, Any, Any], Awaitable[None]]
F = TypeVar("F", bound=HandlerFn)
T = TypeVar("T", bound=TimerFn)
S = TypeVar("S", bound=SinkFn)
DEFAULT_GROUP = "0"
AnyTable = (
    Table[Any, Any]
    | WindowedTable[Any, Any]
    | SessionTable[Any, Any]
    | SlidingWindowedTable[Any, Any]
    | SourceTable[Any, Any]
)


@dataclass(frozen=True)
class Handler:
    """A registered handler: its coroutine, source topics and task group."""

    fn: HandlerFn
    topics: tuple[Topic[Any, Any], ...]
    group: str
    max_retries: int | None

    @property
    def name(self) -> str:
        return getattr(self.fn, "__qualname__", repr(self.fn))


def _ms(value: timedelta | int | None) -> int | None:
    if value is None:
        return None
    return int(value.total_seconds() * 1000) if isinstance(value, timedelta) else int(value)


def _ttl_ms(table: str, ttl: object) -> int | None:
    if ttl is None:
        return None
    ms = _ms(ttl) if isinstance(ttl, timedelta | int) and not isinstance(ttl, bool) else None
    if ms is None or ms <= 0:
        raise ConfigurationError(
            f"table {table!r}: ttl must be a positive timedelta (or a number of milliseconds), "
            f"got {ttl!r}"
        )
    return ms


class App:
    """A stream-processing service: declare topics, tables and handlers, then run it with
    ``onceflow worker module:app``.

    ``app_id`` names the consumer group, prefixes the transactional ids and the internal topics
    (``<app_id>-<table>-changelog``, ``<app_id>-dlq``). ``ONCEFLOW_APP_ID`` overrides it.

    Handlers are grouped into task groups (``group=``, default ``"0"``): the source topics of one
    group are co-partitioned, one task per partition number owns their partitions and the
    group's tables, and each task has its own transactional producer.
    """

    def __init__(self, app_id: str, *, error_policy: Literal["dlq", "fail"] | None = None):
        if not app_id or any(c.isspace() for c in app_id):
            raise ConfigurationError(f"App id {app_id!r} must be a non-empty word")
        self.app_id = app_id
        self.error_policy = error_policy
        self.topics: dict[str, Topic[Any, Any]] = {}
        self.handlers: dict[str, Handler] = {}
        self.tables: dict[str, AnyTable] = {}
        self.timers: list[Timer] = []
        self.global_tables: dict[str, GlobalTable[Any, Any]] = {}
        self.sql_sinks: dict[str, SqlSink] = {}  # by name

    # -- declarations --------------------------------------------------------------------------

    def topic(
        self,
        name: str,
        *,
        key_serde: str | Serde[Any] = "bytes",
        value_serde: str | Serde[Any] = "bytes",
        partitions: int | None = None,
    ) -> Topic[Any, Any]:
        """Declare a topic (source or sink) with its serdes: "bytes", "str", "json", "int64"…"""
        if name in self.topics:
            raise ConfigurationError(f"topic {name!r} is declared twice")
        topic = Topic.of(name, key_serde, value_serde, partitions=partitions)
        self.topics[name] = topic
        return topic

    def repartition(
        self,
        name: str,
        *,
        key_serde: str | Serde[Any] = "bytes",
        value_serde: str | Serde[Any] = "bytes",
        partitions: int | None = None,
    ) -> RepartitionTopic[Any, Any]:
        """Declare an internal topic to re-key through, ``<app_id>-<name>-repartition``: send
        to it with the new key (``ctx.send(by_page, page, click)``) and consume it with a
        handler (``@app.handler(by_page)``), whose tables are then keyed by the new key.

        The worker creates it at start (``partitions``: the count of the other sources of the
        group that reads it, else of the app's widest source topic; an existing one with another
        count is refused), and deletes the records every reader has committed. Exactly-once
        across the hop: the send commits with the upstream input's offsets, the downstream
        task reads ``read_committed``. Records keep their input's timestamp (event time)."""
        if not name or any(c.isspace() or c == "/" for c in name):
            raise ConfigurationError(f"repartition topic name {name!r} must be a plain word")
        if partitions is not None and partitions < 1:
            raise ConfigurationError(
                f"repartition topic {name!r}: partitions must be >= 1, got {partitions}"
            )
        topic: RepartitionTopic[Any, Any] = RepartitionTopic(
            naming.repartition_topic(self.app_id, name),
            resolve_serde(key_serde),
            resolve_serde(value_serde),
            partitions,
            base_name=name,
        )
        if topic.name in self.topics:
            raise ConfigurationError(f"repartition topic {name!r} is declared twice")
        self.topics[topic.name] = topic
        return topic

    @property
    def repartition_topics(self) -> list[RepartitionTopic[Any, Any]]:
        return [t for t in self.topics.values() if isinstance(t, RepartitionTopic)]

    def repartition_partitions(
        self, topic: RepartitionTopic[Any, Any], counts: Mapping[str, int]
    ) -> int:
        """The partitions to create repartition ``topic`` with, given the partition ``counts``
        of the other topics: as declared; else those of the other sources of the group that
        reads it (it must be co-partitioned with them); else those of the app's widest source
        (Kafka Streams' rule: the maximum of the upstream sources)."""
        if topic.partitions is not None:
            return topic.partitions
        internal = {t.name for t in self.repartition_topics}
        handler = self.handlers.get(topic.name)
        if handler is not None:
            siblings = [
                counts[t] for t in self.groups()[handler.group] if t not in internal and t in counts
            ]
            if siblings:
                return siblings[0]
        external = [n for t, n in counts.items() if t not in internal and t in self.handlers]
        return max(external, default=1)

    def handler(
        self,
        *topics: Topic[Any, Any],
        group: str = DEFAULT_GROUP,
        max_retries: int | None = None,
    ) -> Callable[[F], F]:
        """Register ``async def fn(ctx, key, value)`` for records of ``topics``.

        A handler that raises is retried (``max_retries``, default ``ONCEFLOW_MAX_RETRIES``,
        with backoff); then the record goes to the dead-letter topic, or the task stops under
        error policy ``fail``.
        """
        if not topics:
            raise ConfigurationError("@app.handler needs at least one source topic")

        def register(fn: F) -> F:
            if not inspect.iscoroutinefunction(cast(Any, fn)):
                raise ConfigurationError(f"handler {fn.__qualname__} must be an async def")
            for topic in topics:
                if topic.name in self.handlers:
                    raise ConfigurationError(
                        f"topic {topic.name!r} already has handler "
                        f"{self.handlers[topic.name].name}; one handler per source topic"
                    )
                self.handlers[topic.name] = Handler(fn, tuple(topics), group, max_retries)
            return fn

        return register

    def sql_sink(
        self,
        topic: Topic[Any, Any],
        *,
        database: str | None = None,
        batch: int | None = None,
        name: str | None = None,
    ) -> Callable[[S], S]:
        """Register ``async def fn(tx, records)`` writing batches of ``topic`` into a database,
        exactly once: the rows and the consumed offsets commit in one database transaction
        (``onceflow.sql_sink``; docs/architecture.md, *Exactly-once into a database*).
        ``name`` (default: the function's name) names its consumer group
        ``<app_id>-sink-<name>``."""
        if batch is not None and batch < 1:
            raise ConfigurationError(f"sql sink batch must be >= 1 (got {batch})")

        def register(fn: S) -> S:
            if not inspect.iscoroutinefunction(cast(Any, fn)):
                raise ConfigurationError(f"sql sink {fn.__qualname__} must be an async def")
            sink_name = SqlSink.check_name(name or fn.__name__)
            if sink_name in self.sql_sinks:
                raise ConfigurationError(f"sql sink {sink_name!r} is declared twice")
            self.sql_sinks[sink_name] = SqlSink(fn, topic, sink_name, database, batch)
            return fn

        return register

    def timer(
        self,
        *,
        every: timedelta,
        on: Literal["stream_time", "wall_clock"] = "stream_time",
        group: str = DEFAULT_GROUP,
    ) -> Callable[[T], T]:
        """Register ``async def fn(ctx)`` to run every ``every`` in each task of ``group``, on
        the task's stream time (deterministic with the input) or the wall clock
        (``onceflow.timers``). It runs inside the task's transaction: its sends and table
        writes commit with the task's. A timer that raises is not retried: under error policy
        ``dlq`` a dead letter names it (stage ``timer``) and its effects are dropped."""

        def register(fn: T) -> T:
            self.timers.append(Timer.of(fn, every, on, group))
            return fn

        return register

    def table(
        self,
        name: str,
        *,
        default: Any = None,
        key_serde: str | Serde[Any] = "str",
        value_serde: str | Serde[Any] = "json",
        group: str = DEFAULT_GROUP,
        ttl: timedelta | int | None = None,
    ) -> Table[Any, Any]:
        """Declare a key-value table. ``default`` (a value or a zero-argument callable) is what
        ``get`` returns for a missing key. With ``ttl`` (a ``timedelta``, or milliseconds), a key
        not written for that long in stream time is gone (``Table``)."""
        table: Table[Any, Any] = Table(
            self._table_name(name),
            app_id=self.app_id,
            key_serde=resolve_serde(key_serde),
            value_serde=resolve_serde(value_serde),
            default=default,
            group=group,
            ttl_ms=_ttl_ms(name, ttl),
        )
        self.tables[name] = table
        return table

    def global_table(
        self,
        topic: str,
        *,
        name: str | None = None,
        default: Any = None,
        key_serde: str | Serde[Any] = "str",
        value_serde: str | Serde[Any] = "json",
    ) -> GlobalTable[Any, Any]:
        """Declare a global table: every worker holds all partitions of ``topic`` (written by
        someone else), loaded before it joins its group and kept up to date in the background;
        any handler reads any key with ``get(ctx, key)`` (``GlobalTable``). ``name`` (default:
        the topic's) names it in ``/tables/{name}`` and in ``state_dir/<app_id>/global/``."""
        table_name = self._table_name(topic if name is None else name)
        if any(t.topic == topic for t in self.global_tables.values()):
            raise ConfigurationError(f"topic {topic!r} already feeds a global table")
        table: GlobalTable[Any, Any] = GlobalTable(
            table_name,
            topic=topic,
            key_serde=resolve_serde(key_serde),
            value_serde=resolve_serde(value_serde),
            default=default,
        )
        self.global_tables[table_name] = table
        return table

    def source_table(
        self,
        topic: str | Topic[Any, Any],
        *,
        name: str | None = None,
        key_serde: str | Serde[Any] | None = None,
        value_serde: str | Serde[Any] | None = None,
        default: Any = None,
        group: str = DEFAULT_GROUP,
    ) -> SourceTable[Any, Any]:
        """Declare a table fed by ``topic`` (a compacted topic, co-partitioned with the sources
        of task ``group``): the latest value per key, a tombstone deletes. Handlers of the group
        read it with ``get`` (a stream-table join). The topic is its changelog; ``name``
        (default: the topic's name) names its store and HTTP route. Serdes: the declared
        topic's, else "str" keys and "json" values (``onceflow.source_tables``)."""
        declared = topic if isinstance(topic, Topic) else self.topics.get(topic)
        table_name = self._table_name(name or (topic.name if isinstance(topic, Topic) else topic))
        if declared is not None and (key_serde is not None or value_serde is not None):
            raise ConfigurationError(
                f"source table of topic {declared.name!r}: the topic is declared with its "
                "serdes; pass them to app.topic() or here, not both"
            )
        if declared is None:
            declared = self.topic(
                str(topic), key_serde=key_serde or "str", value_serde=value_serde or "json"
            )
        self.topics.setdefault(declared.name, declared)  # a Topic made elsewhere: known now
        table: SourceTable[Any, Any] = SourceTable(
            table_name,
            topic=declared.name,
            app_id=self.app_id,
            key_serde=declared.key_serde,
            value_serde=declared.value_serde,
            default=default,
            group=group,
        )
        self.tables[table.name] = table
        return table

    @overload
    def windowed_table(
        self,
        name: str,
        *,
        window: Session,
        merge: Callable[[Any, Any], Any],
        grace: timedelta | int = 0,
        retention: timedelta | int | None = None,
        emit: Literal["update", "close"] = "update",
        default: Any = None,
        key_serde: str | Serde[Any] = "str",
        value_serde: str | Serde[Any] = "json",
        group: str = DEFAULT_GROUP,
    ) -> SessionTable[Any, Any]: ...

    @overload
    def windowed_table(
        self,
        name: str,
        *,
        window: Sliding,
        grace: timedelta | int = 0,
        retention: timedelta | int | None = None,
        emit: Literal["update", "close"] = "update",
        default: Any = None,
        key_serde: str | Serde[Any] = "str",
        value_serde: str | Serde[Any] = "json",
        group: str = DEFAULT_GROUP,
    ) -> SlidingWindowedTable[Any, Any]: ...

    @overload
    def windowed_table(
        self,
        name: str,
        *,
        window: Tumbling | Hopping,
        grace: timedelta | int = 0,
        retention: timedelta | int | None = None,
        emit: Literal["update", "close"] = "update",
        default: Any = None,
        key_serde: str | Serde[Any] = "str",
        value_serde: str | Serde[Any] = "json",
        group: str = DEFAULT_GROUP,
    ) -> WindowedTable[Any, Any]: ...

    def windowed_table(
        self,
        name: str,
        *,
        window: Tumbling | Hopping | Session | Sliding,
        merge: Callable[[Any, Any], Any] | None = None,
        grace: timedelta | int = 0,
        retention: timedelta | int | None = None,
        emit: Literal["update", "close"] = "update",
        default: Any = None,
        key_serde: str | Serde[Any] = "str",
        value_serde: str | Serde[Any] = "json",
        group: str = DEFAULT_GROUP,
    ) -> WindowedTable[Any, Any] | SessionTable[Any, Any] | SlidingWindowedTable[Any, Any]:
        """Declare a windowed table: one value per key and window (``grace``/``retention`` as
        ``timedelta`` or milliseconds). ``window=Session(gap=...)`` makes a ``SessionTable``
        and needs ``merge`` (combines the values of two sessions a record joins);
        ``window=Sliding(size=...)`` makes a ``SlidingWindowedTable``."""
        if isinstance(window, Session) != (merge is not None):
            raise ConfigurationError(
                f"windowed table {name!r}: merge= is required for session windows (a function "
                "(a, b) -> value combining two sessions' values) and only for them"
            )
        if isinstance(window, Session | Sliding):
            return self._range_table(
                name, window, merge, _ms(grace) or 0, _ms(retention), emit, default, group,
                resolve_serde(key_serde), resolve_serde(value_serde),
            )  # fmt: skip
        table: WindowedTable[Any, Any] = WindowedTable(
            self._table_name(name),
            app_id=self.app_id,
            window=window,
            grace_ms=_ms(grace) or 0,
            retention_ms=_ms(retention),
            emit=emit,
            key_serde=resolve_serde(key_serde),
            value_serde=resolve_serde(value_serde),
            default=default,
            group=group,
        )
        self.tables[name] = table
        return table

    def _range_table(
        self,
        name: str,
        window: Session | Sliding,
        merge: Callable[[Any, Any], Any] | None,
        grace_ms: int,
        retention_ms: int | None,
        emit: Literal["update", "close"],
        default: Any,
        group: str,
        key_serde: Serde[Any],
        value_serde: Serde[Any],
    ) -> SessionTable[Any, Any] | SlidingWindowedTable[Any, Any]:
        common: dict[str, Any] = dict(
            app_id=self.app_id, grace_ms=grace_ms, retention_ms=retention_ms, emit=emit,
            key_serde=key_serde, value_serde=value_serde, default=default, group=group,
        )  # fmt: skip
        table: SessionTable[Any, Any] | SlidingWindowedTable[Any, Any]
        if isinstance(window, Session):
            assert merge is not None
            table = SessionTable(self._table_name(name), window=window, merge=merge, **common)
        else:
            table = SlidingWindowedTable(self._table_name(name), window=window, **common)
        self.tables[name] = table
        return table

    def _table_name(self, name: str) -> str:
        if name in self.tables or name in self.global_tables:
            raise ConfigurationError(f"table {name!r} is declared twice")
        if not name or "/" in name or name.startswith("."):
            raise ConfigurationError(f"table name {name!r} must be a plain word (used in paths)")
        return name

    # -- derived -------------------------------------------------------------------------------

    def configured(self, app_id: str | None) -> App:
        """This app as a worker or the CLI runs it: renamed to ``app_id`` (``ONCEFLOW_APP_ID``,
        if set), then validated. Returns it."""
        if app_id:
            self.with_app_id(app_id)
        self.validate()
        return self

    def with_app_id(self, app_id: str) -> None:
        """Rename the app (``ONCEFLOW_APP_ID``) before it runs; tables follow the new id."""
        self.app_id = app_id
        for table in self.tables.values():
            if isinstance(table, SourceTable):
                continue  # its changelog is its topic, whatever the app's name
            table.changelog_topic = naming.changelog_topic(app_id, table.name)
        for topic in self.repartition_topics:  # their names hold the app id: rename, re-key
            old = topic.name
            object.__setattr__(topic, "name", naming.repartition_topic(app_id, topic.base_name))
            self.topics = {(topic.name if k == old else k): v for k, v in self.topics.items()}
            if old in self.handlers:
                self.handlers = {
                    (topic.name if k == old else k): v for k, v in self.handlers.items()
                }

    @property
    def dlq_topic(self) -> str:
        return naming.dlq_topic(self.app_id)

    def groups(self) -> dict[str, list[str]]:
        """Task group -> its source topic names, in declaration order (the topics of its
        source tables last: a task consumes them too)."""
        groups: dict[str, list[str]] = {}
        for topic, handler in self.handlers.items():
            groups.setdefault(handler.group, []).append(topic)
        for table in self.source_tables():
            groups.setdefault(table.group, []).append(table.topic)
        return groups

    def group_of(self, topic: str) -> str:
        """The task group that consumes ``topic`` (a handler's source or a source table's)."""
        handler = self.handlers.get(topic)
        if handler is not None:
            return handler.group
        for table in self.source_tables():
            if table.topic == topic:
                return table.group
        raise KeyError(f"topic {topic!r} is not a source of this app")

    def source_tables(self) -> list[SourceTable[Any, Any]]:
        """The tables fed by a topic, in declaration order."""
        return [t for t in self.tables.values() if isinstance(t, SourceTable)]

    def timers_of(self, group: str) -> list[Timer]:
        return [t for t in self.timers if t.group == group]

    def validate(self) -> None:
        """Check what only the whole App can tell (the worker and the test driver call it):
        every timer's group has handlers, every repartition topic a handler, every
        ``emit="close"`` table an ``on_close``."""
        groups = self.groups()
        for timer in self.timers:
            if timer.group not in groups:
                raise ConfigurationError(
                    f"timer {timer.name} runs in task group {timer.group!r}, which has no "
                    f"handlers (groups: {', '.join(map(repr, groups)) or 'none'}): a timer runs "
                    "in the tasks of its group"
                )
        for topic in self.repartition_topics:
            if topic.name not in self.handlers:
                raise ConfigurationError(
                    f"repartition topic {topic.base_name!r} has no handler: what is sent to it "
                    "would never be read (register one with @app.handler)"
                )
        handlers = {topic: h.name for topic, h in self.handlers.items()}
        validate_source_tables(self.source_tables(), handlers, groups)
        for table in self.tables.values():
            if isinstance(table, WindowedTable) and table.emit == "close" and not table.closers:
                raise ConfigurationError(
                    f"windowed table {table.name!r} has emit='close' but no on_close coroutine "
                    "(decorate one with @<table>.on_close): its final results would go nowhere"
                )

    def tables_of(self, group: str) -> list[AnyTable]:
        return [t for t in self.tables.values() if t.group == group]
