"""The runtime end to end, as users run it: ``onceflow worker`` subprocesses on a real broker."""

from __future__ import annotations

from pathlib import Path

from kafka_helpers import read_to_end, unique_name
from workers import (
    WorkerProcess,
    assert_no_hanging_transactions,
    by_partition,
    collect,
    produce,
    worker_env,
)


async def test_echo_output_equals_input_per_partition(
    bootstrap_servers: str, new_topic, tmp_path: Path
) -> None:
    source = await new_topic("echo-in", partitions=6)
    sink = await new_topic("echo-out", partitions=6)
    n = 20_000
    await produce(
        bootstrap_servers, source, ((f"k{i % 501}".encode(), str(i).encode()) for i in range(n))
    )
    env = worker_env(
        bootstrap_servers,
        unique_name("echo"),
        tmp_path / "state",
        ONCEFLOW_TEST_INPUT=source,
        ONCEFLOW_TEST_OUTPUT=sink,
    )
    worker = WorkerProcess("tests.apps.echo", env, tmp_path / "worker.log").start()
    try:
        output = await collect(bootstrap_servers, sink, n, timeout=120, workers=[worker])
    finally:
        assert worker.stop() == 0, worker.log_text()[-3000:]
    inputs = await read_to_end(bootstrap_servers, source)
    assert len(output) == n
    assert by_partition(output) == by_partition(inputs)
    await assert_no_hanging_transactions(bootstrap_servers, sink)
