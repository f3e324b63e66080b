"""The worker's background rounds that talk to the cluster's admin API: the changelog watch
and the repartition purge (docs/architecture.md, *State* and *Re-keying*). Each has its own
admin client and runs until ``stop`` is set."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

from aiokafka.errors import KafkaError

from onceflow.errors import ChangelogMissingError
from onceflow.runtime.admin import TopicAdmin
from onceflow.runtime.purge import RepartitionPurger

if TYPE_CHECKING:
    from onceflow.runtime.clients import Clients
    from onceflow.runtime.task import Task
    from onceflow.topology import App

__all__ = ["purge_repartitions", "watch_changelogs"]

log = logging.getLogger("onceflow.worker")


async def watch_changelogs(
    clients: Clients,
    app: App,
    partitions: Mapping[str, int],
    ids: Mapping[str, str],
    *,
    replication_factor: int,
    interval_s: float,
    stop: asyncio.Event,
    on_fatal: Callable[[BaseException], None],
) -> None:
    """Call ``on_fatal`` with ``ChangelogMissingError`` when a changelog topic disappears, or
    is recreated (its topic id is not the one seen at start), even while its tasks are idle:
    every ``interval_s``, two Metadata requests."""
    client = clients.admin()
    try:
        await client.start()
        admin = TopicAdmin(client, replication_factor=replication_factor)
        while not stop.is_set():
            await asyncio.sleep(interval_s)
            try:
                await admin.check_changelogs(app, dict(partitions), ids)
            except ChangelogMissingError as exc:
                on_fatal(exc)
                return
            except (KafkaError, TimeoutError) as exc:
                # The broker is unreachable: the consumer and producers report that.
                log.debug("changelog check failed: %r", exc)
    except (KafkaError, TimeoutError) as exc:
        log.warning("cannot watch the changelog topics: %r", exc)
    finally:
        await client.close()


async def purge_repartitions(
    clients: Clients,
    app: App,
    running: Callable[[], Iterable[Task]],
    *,
    interval_s: float,
    stop: asyncio.Event,
) -> None:
    """Delete what the ``running`` tasks committed past in repartition topics, every
    ``interval_s`` (``ONCEFLOW_REPARTITION_PURGE_INTERVAL_MS``; ``runtime/purge.py``)."""
    topics = [t.name for t in app.repartition_topics]
    if not topics:
        return
    client = clients.admin()
    try:
        await clients.start(client)
        await RepartitionPurger(client, topics).run(running, stop, interval_s)
    finally:
        await client.close()
