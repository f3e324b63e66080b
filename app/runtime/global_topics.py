"""What the global tables check about their topics: at start (exist? partitions, topic ids; does
a store's content belong to the topic as it is now?) and while running (deleted, recreated or
repartitioned since the start?). docs/architecture.md, *Global tables*.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from aiokafka.errors import KafkaError
from aiokafka.structs import TopicPartition

from onceflow.errors import GlobalTopicChangedError, TopicNotFoundError
from onceflow.global_tables import GlobalTable
from onceflow.runtime.admin import TopicAdmin
from onceflow.runtime.clients import Clients
from onceflow.runtime.protocol import TopicIdsUnsupportedError, topic_ids
from onceflow.state.sqlite.global_store import GlobalStorePartition

__all__ = ["changed", "describe", "layout_of", "mismatch"]

log = logging.getLogger("onceflow.global")
Tables = Mapping[str, GlobalTable[Any, Any]]  # by topic


def layout_of(table: GlobalTable[Any, Any]) -> bytes:
    """The layout recorded in the table's store (canonical JSON)."""
    return json.dumps(table.layout(), sort_keys=True).encode()


async def describe(
    clients: Clients, replication_factor: int, tables: Tables
) -> tuple[dict[str, int], dict[str, str]]:
    """Partition count and topic id (none from a broker before Kafka 3.1) of every global topic;
    ``TopicNotFoundError`` naming the tables whose topics do not exist."""
    topics = sorted(tables)
    client = clients.admin()
    try:
        await clients.start(client)
        counts = await TopicAdmin(client, replication_factor=replication_factor).partition_counts(
            topics
        )
        missing = [t for t in topics if t not in counts]
        if missing:
            names = ", ".join(f"{t!r} (global table {tables[t].name})" for t in missing)
            raise TopicNotFoundError(
                f"global table topic(s) {names} do not exist on the cluster; create them "
                "(their producer owns them) and restart"
            )
        try:
            ids = await topic_ids(client, topics)
        except TopicIdsUnsupportedError:
            ids = {}  # a recreated topic then shows by its offsets only
    finally:
        await client.close()
    return counts, ids


def mismatch(
    table: GlobalTable[Any, Any],
    store: GlobalStorePartition,
    count: int,
    ends: Mapping[TopicPartition, int],
    topic_id: str | None,
) -> str | None:
    """Why ``store`` cannot go on from its positions in ``table``'s topic (None: it can)."""
    recorded = store.changelog_topic_id
    if recorded is not None and topic_id is not None and recorded != topic_id:
        return f"topic {table.topic!r} was recreated (topic id {recorded} -> {topic_id})"
    layout = layout_of(table)
    if store.layout is not None and store.layout != layout:
        return f"layout changed ({store.layout.decode(errors='replace')} -> {layout.decode()})"
    for p, position in sorted(store.positions.items()):
        if p >= count:
            return f"topic {table.topic!r} has {count} partitions, the store read partition {p}"
        end = ends[TopicPartition(table.topic, p)]
        if position > end:
            return (
                f"position {position} of partition {p} is beyond the topic's end offset {end} "
                "(the topic was recreated or truncated)"
            )
    return None


async def changed(
    clients: Clients,
    replication_factor: int,
    tables: Tables,
    counts: Mapping[str, int],
    ids: Mapping[str, str],
) -> GlobalTopicChangedError | None:
    """A global topic deleted, repartitioned or recreated since ``counts`` and ``ids`` were
    read, as an error to stop the worker with; None if none is (or the broker cannot say now:
    logged at debug, the next check asks again)."""
    client = clients.admin()
    try:
        await client.start()
        admin = TopicAdmin(client, replication_factor=replication_factor)
        now_counts = await admin.partition_counts(tables)
        now_ids = await topic_ids(client, tables) if ids else {}
    except (KafkaError, TimeoutError, TopicIdsUnsupportedError) as exc:
        log.debug("global topic check failed: %r", exc)
        return None
    finally:
        await client.close()
    for topic, table in tables.items():
        why = None
        if topic not in now_counts:
            why = "was deleted"
        elif now_counts[topic] != counts[topic]:
            why = f"has {now_counts[topic]} partitions, not {counts[topic]}"
        elif topic in ids and now_ids.get(topic, ids[topic]) != ids[topic]:
            why = f"was recreated (topic id {ids[topic]} -> {now_ids[topic]})"
        if why is not None:
            return GlobalTopicChangedError(
                f"topic {topic!r} of global table {table.name!r} {why} while the worker ran; "
                "stopping: a restart reloads the table from the topic as it is now"
            )
    return None
