"""Re-keying through a repartition topic under chaos: kill -9 mid-transaction, a SIGSTOP
zombie, scale-up and scale-down. Each page's counts after the hop must be exactly 1..n, once
each, in order (tests/oracle.py ``PageCountsOracle``, judged by the history checker): no
duplicate and no loss across the hop. Meanwhile the worker purges the repartition topic: its
log start offsets advance, and no transaction is left open on it.

Worker logs stay in each test's tmp_path (``worker-<i>.log``).
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest
from fleet import Schedule
from history import check_run
from kafka_helpers import start_offsets
from oracle import PageCountsOracle
from workers import (
    app_under_test,
    assert_no_hanging_transactions,
    collect,
    produce,
)

pytestmark = pytest.mark.chaos


def clicks(n: int, seed: int) -> list[tuple[bytes, bytes]]:
    rng = random.Random(seed)
    return [
        (f"user-{rng.randrange(1000)}".encode(), f"/page-{rng.randrange(60)}".encode())
        for _ in range(n)
    ]


async def test_counts_across_a_repartition_hop_exact_under_kill_9_zombie_and_rebalance(
    bootstrap_servers: str, new_topic, tmp_path: Path
) -> None:
    n = 30_000
    source = await new_topic("clicks", partitions=4)
    sink = await new_topic("page-counts", partitions=4)
    app = app_under_test(
        bootstrap_servers, "tests.apps.page_counts", source, sink, tmp_path, state_dirs=3,
        ONCEFLOW_COMMIT_INTERVAL_MS=500, ONCEFLOW_REPARTITION_PURGE_INTERVAL_MS=1000,
    )  # fmt: skip
    hop = f"{app.env['ONCEFLOW_TEST_APP_ID']}-by-page-repartition"
    schedule = Schedule(app.spawn, pause_s=2)
    producing = asyncio.create_task(produce(bootstrap_servers, source, clicks(n, 3), rate=2000))
    try:
        await schedule.strike()
        produced = await producing
        await schedule.settle()
        await collect(bootstrap_servers, sink, n, timeout=180, workers=schedule.workers[:1])
        await asyncio.sleep(3)  # a purge round after the last commit
        starts = await start_offsets(bootstrap_servers, hop)
    finally:
        schedule.stop()
    report = await check_run(
        bootstrap_servers, source, sink, PageCountsOracle(4), faults=schedule.faults,
        produced=produced,
    )  # fmt: skip
    report.assert_clean()
    assert len(starts) == 4 and all(offset > 0 for offset in starts.values()), starts
    await assert_no_hanging_transactions(bootstrap_servers, hop)
