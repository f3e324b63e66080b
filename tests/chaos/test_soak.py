"""Worker faults combined and repeated, on the stateful oracle.

A random schedule of kill -9, SIGSTOP past the session timeout then SIGCONT, SIGTERM rolling
restarts and scaling 1 -> 3 -> 1, while records flow. The short form runs in ``make test``; the
soak (``make chaos``, ``-m soak``) runs for ten minutes and reports worker RSS at start and end.
Both stop by themselves: the schedule is bounded in time and every process is reaped.
tests/history.py judges the run and prints one line: faults injected, records checked and
anomalies found. Worker logs stay in the test's tmp_path (``worker-<i>.log``).
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import pytest
from fleet import Fleet
from history import check_run
from oracle import AggregatesOracle, make_inputs
from workers import app_under_test, collect, produce

RATE = 1500  # records/s offered while faults are injected


async def _soak(bootstrap: str, new_topic, tmp_path: Path, seconds: float) -> None:
    source = await new_topic("soak-in", partitions=6)
    sink = await new_topic("soak-out", partitions=6)
    app = app_under_test(
        bootstrap,
        "tests.apps.aggregates",
        source,
        sink,
        tmp_path,
        state_dirs=4,
        ONCEFLOW_COMMIT_INTERVAL_MS=500,
    )
    fleet = Fleet(app.spawn)
    fleet.add()
    n = int(seconds * RATE)
    producing = asyncio.create_task(produce(bootstrap, source, make_inputs(n, 9), rate=RATE))
    rng = random.Random(13)
    await asyncio.sleep(5)
    rss_start = fleet.rss_mb()
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline and not producing.done():
            await asyncio.sleep(rng.uniform(3, 8))
            await fleet.act(rng)
        produced = await producing
        rss_end = fleet.rss_mb()
        await collect(bootstrap, sink, n, timeout=300, workers=fleet.workers)
    finally:
        for w in fleet.workers:
            w.stop()
    print(f"RSS MB start {rss_start} end {rss_end}")
    report = await check_run(
        bootstrap, source, sink, AggregatesOracle(), faults=fleet.faults, produced=produced
    )
    report.assert_clean()


@pytest.mark.chaos
async def test_short_soak(bootstrap_servers: str, new_topic, tmp_path: Path) -> None:
    await _soak(bootstrap_servers, new_topic, tmp_path, seconds=75)


@pytest.mark.soak
@pytest.mark.timeout(1500)
async def test_ten_minute_soak(bootstrap_servers: str, new_topic, tmp_path: Path) -> None:
    await _soak(bootstrap_servers, new_topic, tmp_path, seconds=600)
