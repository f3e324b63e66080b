"""A fenced task is rebuilt only when a rebalance gives it back, never on a timer (issue 13,
item 8): a member that believes it still owns a task but lost it would otherwise fence the real
owner in turn, over and over. Here another producer takes the task's transactional id while the
worker runs; the worker's task is fenced, the worker rejoins the group, gets the task back from
the rebalance, and the output stays exact."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from history import check_run
from oracle import EchoOracle
from workers import app_under_test, collect, produce, wait_until_processing

pytestmark = pytest.mark.chaos


async def test_a_fenced_task_waits_for_the_rebalance_and_output_stays_exact(
    bootstrap_servers: str, new_topic, tmp_path: Path
) -> None:
    n = 20_000
    source = await new_topic("fence-in", partitions=1)
    sink = await new_topic("fence-out", partitions=1)
    app = app_under_test(
        bootstrap_servers,
        "tests.apps.echo",
        source,
        sink,
        tmp_path,
        ONCEFLOW_COMMIT_INTERVAL_MS=500,
    )
    worker = app.spawn(0)
    records = [(f"k{i % 97}".encode(), str(i).encode()) for i in range(n)]
    producing = asyncio.create_task(produce(bootstrap_servers, source, records, rate=2000))
    try:
        assert await wait_until_processing(worker)
        await asyncio.sleep(2)
        # Another producer initializes the task's transactional id: the worker's is fenced.
        usurper = AIOKafkaProducer(
            bootstrap_servers=bootstrap_servers,
            transactional_id=f"{app.env['ONCEFLOW_TEST_APP_ID']}-0_0",
        )
        await usurper.start()
        await usurper.stop()
        produced = await producing
        await collect(bootstrap_servers, sink, n, timeout=90, workers=[worker])
        log = worker.log_text()
    finally:
        worker.stop()
    assert "task 0_0 fenced" in log and "rejoining the group" in log, log[-3000:]
    # Rebuilt by the rebalance it asked for (a second assignment), not by a timer.
    assert log.count("assigned tasks 0_0") == 2, log[-3000:]
    report = await check_run(
        bootstrap_servers, source, sink, EchoOracle(), faults={"fenced": 1}, produced=produced
    )
    report.assert_clean()
