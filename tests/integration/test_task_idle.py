"""ONCEFLOW_MAX_TASK_IDLE_MS on the real broker: a task with two co-partitioned sources waits
for the one with nothing fetched, so an earlier record that arrives later is still handled
first (the join sees its inputs in event time order); without it, arrival order wins."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from kafka_helpers import unique_name
from workers import WorkerProcess, collect, produce, wait_until_processing, worker_env


@pytest.mark.parametrize(("idle_ms", "expected"), [(5000, [b"|R", b"R|L"]), (0, [b"|L", b"L|R"])])
async def test_a_task_waits_for_its_empty_partition_up_to_the_idle_time(
    bootstrap_servers: str, new_topic, tmp_path: Path, idle_ms: int, expected: list[bytes]
) -> None:
    left, right = await new_topic("left"), await new_topic("right")
    sink = await new_topic("joined")
    env = worker_env(
        bootstrap_servers, unique_name("idle"), tmp_path / "state",
        ONCEFLOW_TEST_INPUT=left, ONCEFLOW_TEST_INPUT2=right, ONCEFLOW_TEST_OUTPUT=sink,
        ONCEFLOW_MAX_TASK_IDLE_MS=idle_ms,
    )  # fmt: skip
    worker = WorkerProcess("tests.apps.copartitioned", env, tmp_path / "w.log").start()
    try:
        assert await wait_until_processing(worker)
        base = int(time.time() * 1000) - 3_600_000  # recent: within the topics' retention
        await produce(bootstrap_servers, left, [(b"k", b"L", base + 2000)])
        await asyncio.sleep(1.5)  # the right record comes later, with an earlier event time
        await produce(bootstrap_servers, right, [(b"k", b"R", base + 1000)])
        out = await collect(bootstrap_servers, sink, 2, timeout=60, workers=[worker], settle=0)
    finally:
        assert worker.stop() == 0, worker.log_text()[-3000:]
    assert [r.value for r in out] == expected
