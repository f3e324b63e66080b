"""What an App declares, as one JSON-able description: ``onceflow describe`` prints it (text or
``--json``) and ``GET /topology`` serves it, both from ``describe_topology``.

Built from the declarations alone: the task groups (the co-partitioned sources one task reads),
the handlers, the tables with their windows and changelogs, the global tables, and the internal
topics the worker creates (``admin.internal_topics``: the same names and configs). Partition
counts come from the declarations, or from ``counts`` (source topic -> partitions, read from the
cluster) where given; a count neither knows is ``None``. What is on the cluster, and how it
differs, is ``cluster_check``'s.

A handler's outputs and tables are what its code refers to by name (its globals and closure,
nested functions included): a topic or table reached otherwise (an attribute of another module,
an argument) is not listed. They are for reading, never relied on.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from types import CodeType
from typing import Any, Literal

from pydantic import BaseModel

from onceflow.global_tables import GlobalTable
from onceflow.naming import sink_group
from onceflow.runtime.admin import internal_topics
from onceflow.sql_sink import SqlSink
from onceflow.tables import TableBase
from onceflow.topics import RepartitionTopic, Topic
from onceflow.topology import AnyTable, App

__all__ = [
    "GlobalTableInfo",
    "HandlerInfo",
    "InternalTopicInfo",
    "SourceInfo",
    "TableDescription",
    "TaskGroupInfo",
    "TimerInfo",
    "Topology",
    "describe_topology",
    "source_counts",
]

SourceKind = Literal["stream", "repartition", "source table"]
InternalKind = Literal["changelog", "repartition", "dlq"]


class SourceInfo(BaseModel):
    topic: str
    kind: SourceKind
    partitions: int | None
    key_serde: str
    value_serde: str


class TimerInfo(BaseModel):
    name: str
    every_ms: int
    on: str


class TaskGroupInfo(BaseModel):
    """A task group (Kafka Streams' sub-topology): one task per partition of its sources."""

    name: str
    partitions: int | None
    sources: list[SourceInfo]
    handlers: list[str]
    tables: list[str]
    timers: list[TimerInfo]


class HandlerInfo(BaseModel):
    name: str
    group: str
    inputs: list[str]
    outputs: list[str]  # topics its code refers to, besides its inputs (module docstring)
    tables: list[str]  # tables and global tables its code refers to
    max_retries: int | None


class TableDescription(BaseModel):
    name: str
    kind: str  # the store's kind, as its recorded layout names it
    group: str
    key_serde: str
    value_serde: str
    changelog_topic: str  # a source table's is its topic
    window: dict[str, Any] | None  # {"type": "tumbling", "size_ms": ..., ...}
    grace_ms: int | None
    retention_ms: int | None
    emit: str | None
    ttl_ms: int | None


class GlobalTableInfo(BaseModel):
    name: str
    topic: str
    key_serde: str
    value_serde: str


class SqlSinkInfo(BaseModel):
    """A SQL sink: where it reads, its consumer group (the key of its offsets in the database),
    and where its database is configured (never the DSN itself: it may hold a password)."""

    name: str
    topic: str
    consumer_group: str
    database: str
    batch: int | None


class InternalTopicInfo(BaseModel):
    """A topic the worker creates at start, with the configs it creates it with."""

    name: str
    kind: InternalKind
    partitions: int | None
    config: dict[str, str]


class Topology(BaseModel):
    """``onceflow describe --json``'s ``topology`` and ``GET /topology``'s answer."""

    app_id: str
    error_policy: str | None
    task_groups: list[TaskGroupInfo]
    handlers: list[HandlerInfo]
    tables: list[TableDescription]
    global_tables: list[GlobalTableInfo]
    sql_sinks: list[SqlSinkInfo]
    internal_topics: list[InternalTopicInfo]


def source_counts(app: App, group_partitions: Mapping[str, int]) -> dict[str, int]:
    """Per source topic, its group's partition count (a running worker's ``partitions``)."""
    return {
        topic: group_partitions[group]
        for group, topics in app.groups().items()
        if group in group_partitions
        for topic in topics
    }


def describe_topology(app: App, counts: Mapping[str, int] | None = None) -> Topology:
    """The description of ``app``; ``counts``: partitions per source topic from the cluster."""
    known = _known_counts(app, counts or {})
    groups = app.groups()
    group_partitions = {
        g: next((known[t] for t in ts if t in known), None) for g, ts in groups.items()
    }
    return Topology(
        app_id=app.app_id,
        error_policy=app.error_policy,
        task_groups=[
            _group_info(app, name, topics, group_partitions[name], known)
            for name, topics in groups.items()
        ],
        handlers=_handlers(app),
        tables=[_table(t) for t in app.tables.values()],
        global_tables=[
            GlobalTableInfo(
                name=t.name,
                topic=t.topic,
                key_serde=t.key_serde.name,
                value_serde=t.value_serde.name,
            )
            for t in app.global_tables.values()
        ],
        sql_sinks=[_sql_sink(app, sink) for sink in app.sql_sinks.values()],
        internal_topics=_internal(app, group_partitions),
    )


def _sql_sink(app: App, sink: SqlSink) -> SqlSinkInfo:
    if sink.database is None:
        database = "ONCEFLOW_SQL_SINK_DSN"
    elif "://" in sink.database:
        database = f"a {sink.database.split('://')[0]} URL in the code"
    else:
        database = f"ONCEFLOW_SQL_DATABASES[{sink.database!r}]"
    return SqlSinkInfo(
        name=sink.name,
        topic=sink.topic.name,
        consumer_group=sink_group(app.app_id, sink.name),
        database=database,
        batch=sink.batch,
    )


def _known_counts(app: App, counts: Mapping[str, int]) -> dict[str, int]:
    """Partitions per source topic: the cluster's, else the declared; a repartition topic's as
    the worker would create it, once the counts it follows are known."""
    known = {n: t.partitions for n, t in app.topics.items() if t.partitions is not None}
    known.update(counts)
    for topic in app.repartition_topics:
        external = [t for t in known if t not in {r.name for r in app.repartition_topics}]
        if topic.name not in known and (topic.partitions is not None or external):
            known[topic.name] = app.repartition_partitions(topic, known)
    return known


def _group_info(
    app: App, name: str, topics: list[str], partitions: int | None, known: Mapping[str, int]
) -> TaskGroupInfo:
    sources = []
    tables = {t.topic for t in app.source_tables()}
    for topic_name in topics:
        topic = app.topics[topic_name]
        kind: SourceKind = (
            "repartition"
            if isinstance(topic, RepartitionTopic)
            else "source table"
            if topic_name in tables
            else "stream"
        )
        sources.append(
            SourceInfo(
                topic=topic_name,
                kind=kind,
                partitions=known.get(topic_name),
                key_serde=topic.key_serde.name,
                value_serde=topic.value_serde.name,
            )
        )
    handlers = list(dict.fromkeys(h.name for h in app.handlers.values() if h.group == name))
    return TaskGroupInfo(
        name=name,
        partitions=partitions,
        sources=sources,
        handlers=handlers,
        tables=[t.name for t in app.tables_of(name)],
        timers=[TimerInfo(name=t.name, every_ms=t.every_ms, on=t.on) for t in app.timers_of(name)],
    )


def _handlers(app: App) -> list[HandlerInfo]:
    seen: dict[int, HandlerInfo] = {}
    for handler in app.handlers.values():
        if id(handler.fn) in seen:
            continue  # one handler registered for several topics
        inputs = [t.name for t in handler.topics]
        refs = list(_referenced(handler.fn))
        seen[id(handler.fn)] = HandlerInfo(
            name=handler.name,
            group=handler.group,
            inputs=inputs,
            outputs=sorted({r.name for r in refs if isinstance(r, Topic)} - set(inputs)),
            tables=sorted({r.name for r in refs if isinstance(r, TableBase | GlobalTable)}),
            max_retries=handler.max_retries,
        )
    return list(seen.values())


def _referenced(fn: Any) -> Iterator[object]:
    """The objects ``fn``'s code names through its globals and closure, nested code included."""
    code = getattr(fn, "__code__", None)
    if not isinstance(code, CodeType):
        return
    namespace = getattr(fn, "__globals__", {})
    cells = dict(zip(code.co_freevars, getattr(fn, "__closure__", None) or (), strict=False))
    for name in _names(code):
        if name in cells:
            try:
                yield cells[name].cell_contents
            except ValueError:  # a cell not filled yet
                continue
        elif name in namespace:
            yield namespace[name]


def _names(code: CodeType) -> Iterator[str]:
    yield from code.co_names
    yield from code.co_freevars
    for const in code.co_consts:
        if isinstance(const, CodeType):
            yield from _names(const)


def _table(table: AnyTable) -> TableDescription:
    window = getattr(table, "window", None)
    window_info = None
    if window is not None:
        window_info = {"type": type(window).__name__.lower()}
        window_info.update(
            {
                f: getattr(window, f)
                for f in ("size_ms", "advance_ms", "gap_ms")
                if hasattr(window, f)
            }
        )
    return TableDescription(
        name=table.name,
        kind=str(table.layout()["kind"]),
        group=table.group,
        key_serde=table.key_serde.name,
        value_serde=table.value_serde.name,
        changelog_topic=table.changelog_topic,
        window=window_info,
        grace_ms=getattr(table, "grace_ms", None),
        retention_ms=getattr(table, "retention_ms", None),
        emit=getattr(table, "emit", None),
        ttl_ms=getattr(table, "ttl_ms", None),
    )


def _internal(app: App, group_partitions: Mapping[str, int | None]) -> list[InternalTopicInfo]:
    # internal_topics() wants a count per group (a table's group without handlers too, which
    # the worker refuses at start): 0 stands for "not known yet" and shows as None.
    counts = {t.group: 0 for t in app.tables.values()}
    counts.update({g: n or 0 for g, n in group_partitions.items()})
    topics = internal_topics(app, counts)
    repartition = {t.name for t in app.repartition_topics}
    out = []
    for topic in topics:
        kind: InternalKind = (
            "dlq"
            if topic.name == app.dlq_topic
            else "repartition"
            if topic.name in repartition
            else "changelog"
        )
        out.append(
            InternalTopicInfo(
                name=topic.name, kind=kind, partitions=topic.partitions or None, config=topic.config
            )
        )
    return out
