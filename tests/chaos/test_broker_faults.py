"""Broker failures: the stateful oracle must hold when a broker dies under the app.

Each test runs its own cluster (the session broker is shared by every other test): a single node
killed with -9 and restarted, and a 3-node cluster with internal topics at RF 3 losing a node.
tests/history.py judges each run; the worker's log stays in the test's tmp_path (worker-0.log).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from history import check_run
from kafka_helpers import create_topics, load_kafka_local, unique_name
from oracle import AggregatesOracle, make_inputs
from workers import app_under_test, collect, produce

pytestmark = pytest.mark.chaos


class Cluster:
    def __init__(self, kafka_local: ModuleType, data_dir: Path, nodes: int) -> None:
        self.kl, self.data_dir, self.nodes = kafka_local, data_dir, nodes
        port, controller = kafka_local.free_ports(2 * nodes)[::nodes][:2]
        self.bootstrap: str = kafka_local.start_cluster(data_dir, nodes, port, controller)

    def kill(self, node: int) -> None:
        self.kl.kill_node(self.data_dir, node)

    def restart(self, node: int) -> None:
        self.kl.start_node(self.data_dir, node)


@pytest.fixture
def cluster_factory(tmp_path: Path) -> Iterator[type]:
    started: list[Cluster] = []
    kafka_local = load_kafka_local()

    def make(nodes: int) -> Cluster:
        cluster = Cluster(kafka_local, tmp_path / f"kafka-{len(started)}", nodes)
        started.append(cluster)
        return cluster

    yield make  # type: ignore[misc]
    for cluster in started:
        kafka_local.stop_cluster(cluster.data_dir)


async def _topics(bootstrap: str, replication: int) -> tuple[str, str]:
    source, sink = unique_name("bf-in"), unique_name("bf-out")
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await create_topics(admin, [source, sink], 6, replication)
    finally:
        await admin.close()
    return source, sink


async def _run_with_fault(cluster: Cluster, tmp_path: Path, replication: int, fault) -> None:
    source, sink = await _topics(cluster.bootstrap, replication)
    app = app_under_test(
        cluster.bootstrap,
        "tests.apps.aggregates",
        source,
        sink,
        tmp_path,
        ONCEFLOW_REPLICATION_FACTOR=replication,
        ONCEFLOW_REQUEST_TIMEOUT_MS=10_000,
        ONCEFLOW_COMMIT_INTERVAL_MS=500,
    )
    worker = app.spawn(0)
    n = 20_000
    producing = asyncio.create_task(
        produce(cluster.bootstrap, source, make_inputs(n, 5), rate=2000)
    )
    try:
        # the fault lands mid-stream: once outputs flow, with transactions open
        await collect(cluster.bootstrap, sink, 4000, timeout=120, workers=[worker], settle=0)
        faults = await fault()
        produced = await producing
        await collect(cluster.bootstrap, sink, n, timeout=240, workers=[worker])
    finally:
        code = worker.stop()
    assert code == 0, worker.log_text()[-3000:]
    report = await check_run(
        cluster.bootstrap, source, sink, AggregatesOracle(), faults=faults, produced=produced
    )
    report.assert_clean()


async def test_single_broker_kill_9_and_restart(cluster_factory, tmp_path: Path) -> None:
    cluster = cluster_factory(1)

    async def fault() -> dict[str, int]:
        cluster.kill(1)
        await asyncio.sleep(5)
        await asyncio.to_thread(cluster.restart, 1)
        return {"broker kill -9": 1}

    await _run_with_fault(cluster, tmp_path, 1, fault)


async def test_one_of_three_brokers_dies_and_returns(cluster_factory, tmp_path: Path) -> None:
    cluster = cluster_factory(3)

    async def fault() -> dict[str, int]:
        cluster.kill(2)
        await asyncio.sleep(10)  # the app keeps processing on the other two
        await asyncio.to_thread(cluster.restart, 2)
        return {"broker kill -9": 1}

    await _run_with_fault(cluster, tmp_path, 3, fault)
