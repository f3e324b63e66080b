"""A record whose handler keeps failing waits for its retries without holding up the worker
(issue 13, item 6): the poll loop goes on, the member stays in the group, other partitions flow.

Before, the backoff slept inside the loop: 500 failing records (3 retries, 10-20-40 ms each) kept
``getmany`` away for ~35 s, past the 10 s ``max.poll.interval.ms`` below; the member left the
group, and the next owner met the same records."""

from __future__ import annotations

import time
from pathlib import Path

from kafka_helpers import unique_name
from workers import WorkerProcess, collect, produce, worker_env

from onceflow.partitioner import partition_for_key

POISON = 500


async def test_500_failing_records_in_a_row_do_not_stall_the_worker(
    bootstrap_servers: str, new_topic, tmp_path: Path
) -> None:
    source = await new_topic("retry-in", partitions=2)
    sink = await new_topic("retry-out", partitions=2)
    app_id = unique_name("retry")
    stuck = partition_for_key(b"poison", 2)
    good_keys = [
        k for k in (f"k{i}".encode() for i in range(40)) if partition_for_key(k, 2) != stuck
    ]
    env = worker_env(
        bootstrap_servers,
        app_id,
        tmp_path / "state",
        ONCEFLOW_TEST_INPUT=source,
        ONCEFLOW_TEST_OUTPUT=sink,
        ONCEFLOW_TEST_POISON_KEYS="poison",
        ONCEFLOW_MAX_RETRIES=3,
        ONCEFLOW_RETRY_BACKOFF_MS=10,
        ONCEFLOW_MAX_POLL_INTERVAL_MS=10_000,
    )
    worker = WorkerProcess("tests.apps.echo", env, tmp_path / "worker.log").start()
    try:
        await produce(
            bootstrap_servers, source, [(b"poison", str(i).encode()) for i in range(POISON)]
        )
        await produce(
            bootstrap_servers, source, [(b"poison-end", b"x")]
        )  # never mind its partition
        started = time.monotonic()
        good = [(good_keys[i % len(good_keys)], f"g{i}".encode()) for i in range(2000)]
        await produce(bootstrap_servers, source, good)
        # The other partition is not held up by the failing one: its records come out at once.
        out = await collect(bootstrap_servers, sink, 2000, timeout=30, workers=[worker], settle=0)
        flowed_in = time.monotonic() - started
        assert {r.value for r in out} >= {v for _, v in good}
        dead = await collect(
            bootstrap_servers, f"{app_id}-dlq", POISON, timeout=120, workers=[worker], settle=2
        )
        assert sorted(int(r.value) for r in dead) == list(range(POISON))  # each once, in order
        log = worker.log_text()
    finally:
        assert worker.stop() == 0, worker.log_text()[-3000:]
    assert flowed_in < 25, f"the healthy partition waited {flowed_in:.1f}s behind the failing one"
    assert log.count("assigned tasks") == 1, "the member left the group (a rebalance followed)"
    assert "leaving group" not in log.lower()
