"""``onceflow describe``'s plain-text output: the same ``Topology`` (and ``ClusterReport``) that
``--json`` prints, for people."""

from __future__ import annotations

from collections.abc import Iterator

from onceflow.runtime.cluster_check import ClusterReport
from onceflow.runtime.describe import TableDescription, Topology

__all__ = ["render_text"]


def _count(n: int | None) -> str:
    return "?" if n is None else str(n)


def render_text(topology: Topology, cluster: ClusterReport | None = None) -> str:
    """Several sections, one line per item; ``?`` for a partition count nothing tells yet."""
    return "\n".join([*_topology_lines(topology), *_cluster_lines(cluster)]) + "\n"


def _topology_lines(t: Topology) -> Iterator[str]:
    yield f"app {t.app_id} (consumer group {t.app_id}, error policy {t.error_policy or 'setting'})"
    for group in t.task_groups:
        yield ""
        yield f"task group {group.name}: {_count(group.partitions)} tasks (one per partition)"
        for s in group.sources:
            yield (
                f"  source {s.topic} [{s.kind}] partitions={_count(s.partitions)} "
                f"key={s.key_serde} value={s.value_serde}"
            )
        for timer in group.timers:
            yield f"  timer {timer.name} every {timer.every_ms} ms ({timer.on})"
    if t.handlers:
        yield ""
        yield "handlers:"
    for h in t.handlers:
        outputs = ", ".join(h.outputs) or "-"
        tables = ", ".join(h.tables) or "-"
        yield f"  {h.name} (group {h.group}): {', '.join(h.inputs)} -> {outputs}; tables {tables}"
    if t.tables or t.global_tables:
        yield ""
        yield "tables:"
    for table in t.tables:
        yield f"  {_table_line(table)}"
    for g in t.global_tables:
        yield f"  {g.name} [global] topic={g.topic} key={g.key_serde} value={g.value_serde}"
    if t.sql_sinks:
        yield ""
        yield "sql sinks (offsets in their database, keyed by consumer group):"
    for k in t.sql_sinks:
        batch = "setting" if k.batch is None else k.batch
        yield (
            f"  {k.name}: {k.topic} -> database from {k.database}; "
            f"consumer group {k.consumer_group}, batch {batch}"
        )
    yield ""
    yield "internal topics (created by the worker at start):"
    for i in t.internal_topics:
        config = " ".join(f"{k}={v}" for k, v in i.config.items()) or "broker defaults"
        yield f"  {i.name} [{i.kind}] partitions={_count(i.partitions)} {config}"


def _table_line(table: TableDescription) -> str:
    parts = [
        f"{table.name} [{table.kind}] group={table.group}",
        f"key={table.key_serde} value={table.value_serde}",
    ]
    if table.window is not None:
        window = dict(table.window)
        kind = window.pop("type")
        parts.append(f"window={kind}(" + ", ".join(f"{k}={v}" for k, v in window.items()) + ")")
    for label, value in (
        ("grace_ms", table.grace_ms),
        ("retention_ms", table.retention_ms),
        ("emit", table.emit),
        ("ttl_ms", table.ttl_ms),
    ):
        if value is not None:
            parts.append(f"{label}={value}")
    parts.append(f"changelog={table.changelog_topic}")
    return " ".join(parts)


def _cluster_lines(cluster: ClusterReport | None) -> Iterator[str]:
    if cluster is None:
        return
    yield ""
    yield f"on the cluster ({cluster.bootstrap_servers}):"
    for topic in cluster.topics:
        count = _count(topic.partitions)
        yield f"  {topic.status:<8} {topic.name} [{topic.role}] partitions={count}"
        for problem in topic.problems:
            yield f"           {problem}"
    for name in cluster.stale:
        yield f"  stale    {name}: named as this app's, not in its topology (reset deletes it)"
    for name in cluster.foreign:
        yield f"  other    {name}: under another app's id (its consumer group), left alone"
