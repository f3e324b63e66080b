"""Session-wide fixtures: one real Kafka broker, and topics that clean up after themselves.

``make test`` starts the broker and exports ``ONCEFLOW_BOOTSTRAP_SERVERS``; a bare ``pytest``
starts its own single-node broker on free ports for the session (slower: a JVM start).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from kafka_helpers import create_topics, load_kafka_local, unique_name
from sql_helpers import PostgresServer, free_port

NewTopicFactory = Callable[..., Awaitable[str]]


@pytest.fixture(scope="session")
def bootstrap_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The broker every integration test talks to."""
    if bootstrap := os.environ.get("ONCEFLOW_BOOTSTRAP_SERVERS"):
        yield bootstrap
        return
    kafka_local = load_kafka_local()
    data_dir: Path = tmp_path_factory.mktemp("kafka")
    port, controller_port = kafka_local.free_ports(2)
    yield kafka_local.start_cluster(data_dir, 1, port, controller_port)
    kafka_local.stop_cluster(data_dir)


@pytest.fixture(name="unique_name")
def unique_name_fixture() -> Callable[[str], str]:
    """``unique_name("group")`` → a fresh name, for group and transactional ids."""
    return unique_name


@pytest.fixture
async def new_topic(bootstrap_servers: str) -> AsyncIterator[NewTopicFactory]:
    """``await new_topic("orders", partitions=3)`` → a fresh topic, deleted after the test."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    created: list[str] = []

    async def create(
        prefix: str = "topic",
        partitions: int = 1,
        replication: int = 1,
        config: dict[str, str] | None = None,
    ) -> str:
        name = unique_name(prefix)
        await create_topics(admin, [name], partitions, replication, config)
        created.append(name)
        return name

    try:
        yield create
    finally:
        if created:
            await admin.delete_topics(created)
        await admin.close()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A real PostgreSQL server (scripts/postgres_local.py) for the SQL sink tests. Its data dir
    is not under pytest's (closed to other users): under root the server runs as nobody."""
    data_dir = Path(tempfile.mkdtemp(prefix="onceflow-postgres-"))
    server = PostgresServer(data_dir, free_port())
    server.start()
    yield server
    server.stop("immediate")
    shutil.rmtree(data_dir, ignore_errors=True)
