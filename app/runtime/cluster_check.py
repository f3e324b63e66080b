"""An App's topics as the cluster has them (``onceflow describe --bootstrap``): each source,
source-table, global-table and internal topic, found or missing, with its partitions and the
configs the framework creates internal topics with, and what differs from the topology.

Also the topics *named* like this app's internal topics (``<app_id>-…-changelog``,
``<app_id>-…-repartition``, ``<app_id>-dlq``) that its topology does not declare: left by an
older version of the app (a table renamed or dropped), listed so an operator can see them and
``onceflow reset`` deletes them. Kafka Streams' reset tool finds internal topics by this prefix
alone; a prefix also matches the topics of another app whose id extends this one's
(``orders`` / ``orders-v2``): a topic under the id of an existing consumer group that extends
this app's id is that group's, never this app's (``foreign_topics``).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Literal

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from pydantic import BaseModel

from onceflow import naming
from onceflow.runtime.admin import TopicAdmin
from onceflow.runtime.clients import Clients
from onceflow.runtime.describe import Topology, describe_topology
from onceflow.settings import Settings
from onceflow.topology import App

__all__ = [
    "ClusterReport",
    "ClusterTopic",
    "check_cluster",
    "cluster_counts",
    "describe_app",
    "foreign_topics",
    "named_like_internal",
]

Role = Literal[
    "source", "source table", "global table", "sql sink source", "changelog", "repartition", "dlq"
]
Status = Literal["ok", "missing", "mismatch"]


class ClusterTopic(BaseModel):
    name: str
    role: Role
    expected_partitions: int | None
    partitions: int | None  # None: not on the cluster
    config: dict[str, str | None]  # the configs the topology sets, as the cluster has them
    status: Status
    problems: list[str]


class ClusterReport(BaseModel):
    """``onceflow describe --json``'s ``cluster`` part."""

    bootstrap_servers: str
    topics: list[ClusterTopic]
    stale: list[str]  # named like this app's internal topics, not in its topology
    foreign: list[str]  # named so too, but under another group's id (module docstring)


def named_like_internal(app_id: str, names: Iterable[str]) -> list[str]:
    """The topics of ``names`` named as ``naming`` names this app's internal topics."""
    dlq = naming.dlq_topic(app_id)
    return sorted(
        n
        for n in names
        if n == dlq or (n.startswith(f"{app_id}-") and n.endswith(("-changelog", "-repartition")))
    )


def foreign_topics(app_id: str, names: Iterable[str], groups: Collection[str]) -> set[str]:
    """The topics of ``names`` under the id of another group that extends ``app_id``."""
    longer = [g for g in groups if g != app_id and g.startswith(f"{app_id}-")]
    return {n for n in names if any(n.startswith(f"{g}-") for g in longer)}


async def describe_app(
    app: App, settings: Settings, *, cluster: bool
) -> tuple[Topology, ClusterReport | None]:
    """``onceflow describe``: the topology, with the cluster's partition counts and the
    comparison with the cluster if ``cluster``."""
    if not cluster:
        return describe_topology(app), None
    clients = Clients(settings, client_id="onceflow-describe")
    client = clients.admin()
    await clients.start(client)
    try:
        topology = describe_topology(
            app, await cluster_counts(TopicAdmin(client, replication_factor=-1), app)
        )
        return topology, await check_cluster(client, app, topology, settings.bootstrap_servers)
    finally:
        await client.close()


async def cluster_counts(admin: TopicAdmin, app: App) -> dict[str, int]:
    """Partitions of each source topic of ``app`` that exists."""
    return await admin.partition_counts(t for ts in app.groups().values() for t in ts)


async def check_cluster(
    client: AIOKafkaAdminClient, app: App, topology: Topology, bootstrap_servers: str
) -> ClusterReport:
    """Compare ``topology`` (``describe_topology`` with the cluster's counts) with the cluster."""
    wanted = _wanted(app, topology)
    counts = await TopicAdmin(client, replication_factor=-1).partition_counts(wanted)
    configs = await _configs(client, [i.name for i in topology.internal_topics if i.name in counts])
    expected_config = {i.name: i.config for i in topology.internal_topics}
    topics = []
    for name, (role, expected) in wanted.items():
        found = counts.get(name)
        want = expected_config.get(name, {})
        actual = {k: configs.get(name, {}).get(k) for k in want}
        problems = _problems(role, expected, found, want, actual)
        status: Status = "missing" if found is None else "mismatch" if problems else "ok"
        topics.append(
            ClusterTopic(
                name=name,
                role=role,
                expected_partitions=expected,
                partitions=found,
                config=actual,
                status=status,
                problems=problems,
            )
        )
    existing = await client.list_topics()
    named = set(named_like_internal(app.app_id, existing)) - wanted.keys()
    groups = [g[0] for g in await client.list_consumer_groups()]
    foreign = foreign_topics(app.app_id, named, groups)
    return ClusterReport(
        bootstrap_servers=bootstrap_servers,
        topics=topics,
        stale=sorted(named - foreign),
        foreign=sorted(foreign),
    )


def _wanted(app: App, topology: Topology) -> dict[str, tuple[Role, int | None]]:
    wanted: dict[str, tuple[Role, int | None]] = {}
    for group in topology.task_groups:
        for source in group.sources:
            if source.kind != "repartition":  # listed below, as an internal topic
                role: Role = "source table" if source.kind == "source table" else "source"
                wanted[source.topic] = (role, group.partitions)
    for table in topology.global_tables:
        wanted[table.topic] = ("global table", None)
    for sink in topology.sql_sinks:
        wanted.setdefault(sink.topic, ("sql sink source", None))
    for topic in topology.internal_topics:
        wanted[topic.name] = (topic.kind, topic.partitions)
    return wanted


def _problems(
    role: Role,
    expected: int | None,
    found: int | None,
    want: dict[str, str],
    actual: dict[str, str | None],
) -> list[str]:
    if found is None:
        if role in ("changelog", "repartition", "dlq"):
            return ["not created yet: the worker creates it at start"]
        return ["does not exist: create it (`onceflow topics create MODULE`) before the worker"]
    problems = []
    if expected is not None and found != expected:
        what = "the task group's" if role in ("source", "source table") else "the planned"
        problems.append(f"{found} partitions, {what} count is {expected}")
    for key, value in want.items():
        if not _config_ok(key, value, actual[key]):
            problems.append(f"{key}={actual[key]}, the worker creates it with {value}")
    return problems


def _config_ok(key: str, wanted: str, actual: str | None) -> bool:
    if actual is None:
        return False
    if key == "cleanup.policy":
        return set(wanted.split(",")) == set(actual.split(","))
    if key == "retention.ms":  # a longer retention is an operator's choice (topic_config.py)
        return int(actual) < 0 or 0 <= int(wanted) <= int(actual)
    return wanted == actual


async def _configs(client: AIOKafkaAdminClient, names: list[str]) -> dict[str, dict[str, str]]:
    """Every config of each topic the broker describes (unreadable ones are left out)."""
    if not names:
        return {}
    resources = [ConfigResource(ConfigResourceType.TOPIC, n) for n in sorted(names)]
    found: dict[str, dict[str, str]] = {}
    for response in await client.describe_configs(resources):
        for code, _message, _type, name, entries in response.resources:
            if code == 0:
                found[name] = {e[0]: e[1] for e in entries}
    return found
