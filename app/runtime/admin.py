"""Topic checks and creation at start: sources must exist and be co-partitioned; internal topics
(changelogs, dead letters) are created by the framework with the configured replication factor."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import (
    CoordinatorLoadInProgressError,
    CoordinatorNotAvailableError,
    NotCoordinatorError,
    for_code,
)
from aiokafka.protocol.metadata import MetadataRequest

from onceflow.errors import (
    ChangelogMissingError,
    ConfigurationError,
    CopartitioningError,
    TopicNotFoundError,
)
from onceflow.runtime.checkpoint import tables_of
from onceflow.runtime.compat import send_admin_request
from onceflow.runtime.protocol import TopicIdsUnsupportedError, topic_ids
from onceflow.runtime.topic_config import widen_retention
from onceflow.source_tables import SourceTable
from onceflow.topology import App

__all__ = ["DEFAULT_DELETE_RETENTION_MS", "InternalTopic", "TopicAdmin", "internal_topics"]

log = logging.getLogger("onceflow.admin")
_TOPIC_ALREADY_EXISTS = 36
_UNKNOWN_TOPIC = 3
# The group coordinator is starting or moving: ask again.
_COORDINATOR_LOADING = (
    CoordinatorLoadInProgressError,
    CoordinatorNotAvailableError,
    NotCoordinatorError,
)
DEFAULT_DELETE_RETENTION_MS = 86_400_000
"""Kafka's default ``delete.retention.ms`` (one day), assumed for a topic the broker does not
describe to us."""


@dataclass(frozen=True)
class InternalTopic:
    name: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)


def internal_topics(app: App, partitions: dict[str, int]) -> list[InternalTopic]:
    """The changelog of every table (partitions = its group's; none for a source table), the
    repartition topics (their reading group's) and the dead-letter topic."""
    topics = []
    for topic in app.repartition_topics:
        # Kafka Streams' settings: no time-based deletion (records keep their input's event
        # time, which may be old), smaller segments so that purged records free disk sooner.
        config = {"cleanup.policy": "delete", "retention.ms": "-1", "segment.bytes": "52428800"}
        group = app.handlers[topic.name].group
        topics.append(InternalTopic(topic.name, partitions[group], config))
    for table in app.tables.values():
        if table.group not in partitions:
            raise ConfigurationError(
                f"table {table.name!r} is in task group {table.group!r}, which has no handler"
            )
        if isinstance(table, SourceTable):
            continue  # its topic is its changelog: a source of the group, checked as such
        config = {"cleanup.policy": "compact"}
        retention = getattr(table, "retention_ms", None)
        if retention is not None:
            # Windowed changelogs also expire: keep a day beyond the store's own retention, as
            # Kafka Streams does, so a restore always finds every live window.
            config = {
                "cleanup.policy": "compact,delete",
                "retention.ms": str(retention + 86_400_000),
            }
        topics.append(InternalTopic(table.changelog_topic, partitions[table.group], config))
    topics.append(InternalTopic(app.dlq_topic, max(partitions.values(), default=1)))
    return topics


class TopicAdmin:
    """Checks and creates the app's topics through one admin client."""

    def __init__(self, client: AIOKafkaAdminClient, *, replication_factor: int) -> None:
        self._client = client
        self._replication_factor = replication_factor

    async def partition_counts(self, topics: Iterable[str]) -> dict[str, int]:
        """Partitions per existing topic; missing topics are left out."""
        names = list(topics)
        counts: dict[str, int] = {}
        # Not describe_topics(): it lets the broker auto-create what it asks about, so on a
        # cluster with auto.create.topics.enable a check would create a missing topic, with
        # the broker's defaults (a changelog that is not compacted).
        request = MetadataRequest(names, allow_auto_topic_creation=False)
        response = await send_admin_request(self._client, request)
        for meta in response.to_object()["topics"]:
            if meta["error_code"] == 0:
                counts[meta["topic"]] = len(meta["partitions"])
            elif meta["error_code"] != _UNKNOWN_TOPIC:
                raise for_code(meta["error_code"])(f"describing topic {meta['topic']!r}")
        return counts

    async def check_sources(self, app: App) -> dict[str, int]:
        """Partition count of each task group; fail on a missing or mis-partitioned source. A
        repartition topic not created yet counts with the partitions it will be created with
        (``App.repartition_partitions``)."""
        groups = app.groups()
        if not groups and app.sql_sinks:
            return {}  # SQL sinks only: they check their own topics
        if not groups:
            raise ConfigurationError(f"app {app.app_id!r} has no handlers: nothing to run")
        internal = {t.name for t in app.repartition_topics}
        sources = {t for topics in groups.values() for t in topics}
        counts = await self.partition_counts(sources)
        missing = sorted(sources - counts.keys() - internal)
        if missing:
            raise TopicNotFoundError(
                f"source topic(s) {', '.join(map(repr, missing))} do not exist on the cluster; "
                "create them (`onceflow topics create MODULE`) and restart"
            )
        for topic in app.repartition_topics:
            planned = app.repartition_partitions(topic, counts)
            existing = counts.setdefault(topic.name, planned)
            if existing != planned:
                raise ConfigurationError(
                    f"repartition topic {topic.name!r} has {existing} partitions, but it should "
                    f"have {planned} (declared, or those of the sources it is co-partitioned "
                    "with): stop the app, let it drain and delete the topic (the worker "
                    f"recreates it), or declare partitions={existing}"
                )
        result = {}
        for group, topics in groups.items():
            found = {t: counts[t] for t in topics}
            if len(set(found.values())) > 1:
                detail = ", ".join(f"{t!r}: {n}" for t, n in found.items())
                raise CopartitioningError(
                    f"task group {group!r} reads topics with different partition counts ({detail});"
                    " co-partitioned sources need equal counts — repartition or split the group"
                )
            result[group] = next(iter(found.values()))
        return result

    async def changelog_ids(self, app: App, timeout_s: float = 10.0) -> dict[str, str]:
        """The topic id of each changelog topic (after ``ensure``: they exist). A broker whose
        metadata lags behind a topic just created leaves it out: asked again for ``timeout_s``.
        Changelogs without an id (a warning; none from a broker before Kafka 3.1) are found
        recreated by their offsets only."""
        names = {t.changelog_topic for t in app.tables.values()}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        try:
            while (ids := await topic_ids(self._client, names)).keys() < names:
                if loop.time() >= deadline:
                    missing = ", ".join(sorted(names - ids.keys()))
                    log.warning("no topic id for %s: a recreation shows by offsets only", missing)
                    break
                await asyncio.sleep(0.2)
        except TopicIdsUnsupportedError as exc:
            log.warning("no topic ids (%s): a recreated changelog shows by offsets only", exc)
            return {}
        return ids

    async def check_changelogs(
        self, app: App, partitions: dict[str, int], ids: Mapping[str, str] | None = None
    ) -> None:
        """Raise ``ChangelogMissingError`` if a changelog topic (or some of its partitions) is
        gone, or (``ids``: the topic ids seen at start) was deleted and recreated: checked while
        the app runs, so a deletion stops it before state diverges."""
        wanted = {t.changelog_topic: partitions[t.group] for t in app.tables.values()}
        if not wanted:
            return
        existing = await self.partition_counts(wanted)
        for name, count in sorted(wanted.items()):
            found = existing.get(name, 0)
            if found < count:
                what = "was deleted" if found == 0 else f"has {found} of its {count} partitions"
                raise ChangelogMissingError(
                    f"changelog topic {name!r} {what} under the running app, with the state it "
                    "held. Restore the topic; or, to start its table from empty, stop every "
                    "worker, delete the state directory and restart"
                )
        if ids:
            await self._check_ids(ids)

    async def _check_ids(self, ids: Mapping[str, str]) -> None:
        current = await topic_ids(self._client, ids)
        for name, topic_id in sorted(ids.items()):
            now = current.get(name)
            if now != topic_id:
                raise ChangelogMissingError(
                    f"changelog topic {name!r} was deleted and recreated under the running app "
                    f"(topic id {topic_id}, now {now or 'none'}): the state it held is gone. To "
                    "start its table from what the new topic holds, stop every worker, delete "
                    "the table's store directories under ONCEFLOW_STATE_DIR and restart"
                )

    async def check_known_changelogs(self, app: App) -> None:
        """Raise ``ChangelogMissingError`` if the changelog of a table that had state is missing
        at start-up: ``ensure`` would create it empty, and a host without local state would then
        restore an empty table without a word. "Had state": the app's committed offsets name the
        table (``checkpoint.tables_of``); a table they do not name is new, and created."""
        wanted = {t.changelog_topic: t.name for t in app.tables.values()}
        if not wanted:
            return
        missing = set(wanted) - (await self.partition_counts(wanted)).keys()
        if not missing:
            return
        offsets = await self._group_offsets(app.app_id)
        known = set().union(*(tables_of(meta.metadata) for meta in offsets.values()))
        for topic in sorted(missing):
            if wanted[topic] in known:
                raise ChangelogMissingError(
                    f"changelog topic {topic!r} of table {wanted[topic]!r} does not exist, but "
                    f"the committed offsets of group {app.app_id!r} show the table had state: the "
                    "topic was deleted while the app was stopped. Restore the topic; or, to start "
                    "the table from empty, stop every worker, delete the group's committed "
                    "offsets (kafka-consumer-groups --delete-offsets) and the state directory, "
                    "and restart"
                )
            log.info("table %r is new: creating its changelog topic %s", wanted[topic], topic)

    async def _group_offsets(self, group_id: str, timeout_s: float = 30.0) -> dict[Any, Any]:
        """The group's committed offsets. On a cluster that has just started, the group
        coordinator (``__consumer_offsets``) may not be ready yet: retry for ``timeout_s``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            try:
                offsets: dict[Any, Any] = await self._client.list_consumer_group_offsets(group_id)
                return offsets
            except _COORDINATOR_LOADING:
                if loop.time() >= deadline:
                    raise
                await asyncio.sleep(0.5)

    async def ensure(self, topics: list[InternalTopic]) -> None:
        """Create the missing internal topics; check the partitions of the existing ones, and
        raise their ``retention.ms`` where a table's retention grew (``widen_retention``)."""
        existing = await self.partition_counts(t.name for t in topics)
        for topic in topics:
            if topic.name in existing and existing[topic.name] != topic.partitions:
                raise ConfigurationError(
                    f"internal topic {topic.name!r} has {existing[topic.name]} partitions but the "
                    f"sources have {topic.partitions}; delete it (and the state dir) to rebuild"
                )
        retention = {
            t.name: int(t.config["retention.ms"])
            for t in topics
            if t.name in existing and "retention.ms" in t.config
        }
        await widen_retention(self._client, retention)
        wanted = [t for t in topics if t.name not in existing]
        if not wanted:
            return
        rf = await self.resolve_replication_factor()
        new = [NewTopic(t.name, t.partitions, rf, topic_configs=t.config) for t in wanted]
        response = await self._client.create_topics(new)
        for name, code, *rest in response.topic_errors:
            if code not in (0, _TOPIC_ALREADY_EXISTS):
                message = rest[0] if rest else ""
                raise ConfigurationError(
                    f"cannot create internal topic {name!r} (replication factor {rf}): "
                    f"{for_code(code).__name__} {message}"
                )
            log.info("created internal topic %s (replication factor %d)", name, rf)
        await self._wait_visible([t.name for t in wanted])

    async def _wait_visible(self, names: list[str], timeout_s: float = 30.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            if len(await self.partition_counts(names)) == len(names):
                return
            await asyncio.sleep(0.2)
        raise ConfigurationError(f"internal topics {names} not visible after {timeout_s}s")

    async def delete_retention_ms(self, topics: Iterable[str]) -> dict[str, int]:
        """``delete.retention.ms`` of each topic: how long a tombstone outlives the compaction
        that first saw it (the broker's default where the topic does not override it). A topic
        the broker does not describe (no DescribeConfigs permission) gets Kafka's default, with
        a warning."""
        names = sorted(set(topics))
        if not names:
            return {}
        config = "delete.retention.ms"
        resources = [
            ConfigResource(ConfigResourceType.TOPIC, name, configs={config: None}) for name in names
        ]
        found: dict[str, int] = {}
        for response in await self._client.describe_configs(resources):
            for code, message, _type, name, entries in response.resources:
                if code != 0:
                    log.warning(
                        "cannot read %s of topic %s (%s %s); assuming Kafka's default, %d ms",
                        config,
                        name,
                        for_code(code).__name__,
                        message or "",
                        DEFAULT_DELETE_RETENTION_MS,
                    )
                    continue
                for entry in entries:
                    if entry[0] == config and entry[1] is not None:
                        found[name] = int(entry[1])
        return {name: found.get(name, DEFAULT_DELETE_RETENTION_MS) for name in names}

    async def resolve_replication_factor(self) -> int:
        """The replication factor to create topics with: the configured one, or (-1) the broker's
        ``default.replication.factor``, capped by the broker count."""
        if self._replication_factor > 0:
            return self._replication_factor
        # CreateTopics below v4 (all aiokafka speaks) cannot say "broker default": ask for it.
        cluster = await self._client.describe_cluster()
        broker = str(cluster["brokers"][0]["node_id"])
        resource = ConfigResource(
            ConfigResourceType.BROKER, broker, configs={"default.replication.factor": None}
        )
        for response in await self._client.describe_configs([resource]):
            for _code, _msg, _type, _name, entries in response.resources:
                for entry in entries:
                    if entry[0] == "default.replication.factor":
                        return min(int(entry[1]), len(cluster["brokers"]))
        return 1
