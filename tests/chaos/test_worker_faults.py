"""Exactly-once under worker faults, checked the way Kafka's EOS system test checks it: the
read_committed output per partition must equal the input per partition — no loss, no duplicate,
same order — and no transaction may be left open."""

from __future__ import annotations

import asyncio
import random
import signal
from pathlib import Path

import pytest
from kafka_helpers import read_to_end, unique_name
from workers import (
    WorkerProcess,
    assert_no_hanging_transactions,
    by_partition,
    collect,
    produce,
    worker_env,
)

pytestmark = pytest.mark.chaos


def _records(n: int) -> list[tuple[bytes, bytes]]:
    return [(f"k{i % 997}".encode(), str(i).encode()) for i in range(n)]


async def _echo_setup(bootstrap: str, new_topic, tmp_path: Path, **env: str | int):
    source = await new_topic("chaos-in", partitions=6)
    sink = await new_topic("chaos-out", partitions=6)
    base = worker_env(
        bootstrap,
        unique_name("chaos"),
        tmp_path / "state",
        ONCEFLOW_TEST_INPUT=source,
        ONCEFLOW_TEST_OUTPUT=sink,
        **env,
    )

    def spawn(i: int) -> WorkerProcess:
        return WorkerProcess("tests.apps.echo", base, tmp_path / f"worker-{i}.log").start()

    return source, sink, spawn


async def test_kill_9_mid_transaction_keeps_output_exact(
    bootstrap_servers: str, new_topic, tmp_path: Path
) -> None:
    n = 100_000
    source, sink, spawn = await _echo_setup(
        bootstrap_servers, new_topic, tmp_path, ONCEFLOW_COMMIT_INTERVAL_MS=2000
    )
    workers = [spawn(0), spawn(1)]
    producing = asyncio.create_task(produce(bootstrap_servers, source, _records(n), rate=4000))
    kills = 0
    rng = random.Random(7)
    try:
        while not producing.done() or kills < 6:
            await asyncio.sleep(rng.uniform(2.0, 4.0))
            victim = rng.randrange(len(workers))
            workers[victim].kill()  # mid-transaction: commits are 2 s apart
            kills += 1
            workers[victim] = spawn(10 + kills)
        await producing
        output = await collect(bootstrap_servers, sink, n, timeout=180, workers=workers)
    finally:
        for w in workers:
            w.stop()
    inputs = await read_to_end(bootstrap_servers, source)
    print(f"survived {kills} kill -9; {len(output)} records checked")
    assert len(output) == n, f"expected {n} outputs, got {len(output)} after {kills} kills"
    assert by_partition(output) == by_partition(inputs)
    await assert_no_hanging_transactions(bootstrap_servers, sink)


async def test_zombie_is_fenced(bootstrap_servers: str, new_topic, tmp_path: Path) -> None:
    n = 30_000
    source, sink, spawn = await _echo_setup(
        bootstrap_servers, new_topic, tmp_path, ONCEFLOW_COMMIT_INTERVAL_MS=500
    )
    zombie = spawn(0)
    producing = asyncio.create_task(produce(bootstrap_servers, source, _records(n), rate=3000))
    await asyncio.sleep(4)
    zombie.signal(signal.SIGSTOP)  # frozen mid-stream, past the 6 s session timeout
    successor = spawn(1)
    await asyncio.sleep(12)
    zombie.signal(signal.SIGCONT)  # wakes up believing it owns the tasks; its commits are fenced
    try:
        await producing
        output = await collect(bootstrap_servers, sink, n, timeout=120, workers=[successor])
        await asyncio.sleep(3)
        assert zombie.alive, f"the zombie crashed:\n{zombie.log_text()[-3000:]}"
    finally:
        zombie.stop()
        successor.stop()
    inputs = await read_to_end(bootstrap_servers, source)
    assert len(output) == n
    assert by_partition(output) == by_partition(inputs)
    await assert_no_hanging_transactions(bootstrap_servers, sink)


async def test_rebalance_2_3_1_no_loss_no_duplicate(
    bootstrap_servers: str, new_topic, tmp_path: Path
) -> None:
    n = 40_000
    source, sink, spawn = await _echo_setup(bootstrap_servers, new_topic, tmp_path)
    workers = [spawn(0), spawn(1)]
    producing = asyncio.create_task(produce(bootstrap_servers, source, _records(n), rate=4000))
    try:
        await asyncio.sleep(3)
        workers.append(spawn(2))  # 2 -> 3
        await asyncio.sleep(4)
        for w in workers[1:]:  # 3 -> 1, gracefully
            assert w.stop() == 0, w.log_text()[-3000:]
        await producing
        output = await collect(bootstrap_servers, sink, n, timeout=120, workers=workers[:1])
    finally:
        for w in workers:
            w.stop()
    inputs = await read_to_end(bootstrap_servers, source)
    assert len(output) == n
    assert by_partition(output) == by_partition(inputs)


async def test_at_least_once_loses_nothing_under_kill_9(
    bootstrap_servers: str, new_topic, tmp_path: Path
) -> None:
    n = 30_000
    source, sink, spawn = await _echo_setup(
        bootstrap_servers,
        new_topic,
        tmp_path,
        ONCEFLOW_PROCESSING_GUARANTEE="at_least_once",
        ONCEFLOW_COMMIT_INTERVAL_MS=1000,
    )
    worker = spawn(0)
    producing = asyncio.create_task(produce(bootstrap_servers, source, _records(n), rate=5000))
    try:
        for i in range(3):
            await asyncio.sleep(2.5)
            worker.kill()
            worker = spawn(i + 1)
        await producing
        output = await collect(bootstrap_servers, sink, n, timeout=120, workers=[worker])
    finally:
        worker.stop()
    sent = {r.value for r in await read_to_end(bootstrap_servers, source)}
    assert {r.value for r in output} == sent  # duplicates allowed, loss not
