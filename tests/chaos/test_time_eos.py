"""Final window results and stream-time timers under chaos: kill -9 mid-transaction, a SIGSTOP
zombie, scale-up and scale-down (and, under ``make chaos``, a ten-minute random soak of them).
Every (key, window) that stream time closed must be emitted exactly once with its exact count
(tests/oracle.py ``FinalsOracle``, judged by the history checker), and the timer's firings per
task must be exactly those of a run without faults.

Worker logs stay in each test's tmp_path (``worker-<i>.log``).
"""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from pathlib import Path

import pytest
from fleet import Fleet, Schedule
from history import Event, check_run
from kafka_helpers import read_to_end, recent_window_start
from oracle import FinalsOracle, expected_ticks
from workers import app_under_test, collect, produce

pytestmark = pytest.mark.chaos

# Recent: the broker deletes records older than its retention (7 days) — inputs and the outputs,
# which carry their window's end as timestamp — as soon as their segment rolls.
BASE_MS = recent_window_start(60_000, hours_ago=3)


def finals_inputs(n: int, seed: int) -> list[tuple[bytes, bytes, int]]:
    """n records of 30 keys, 3 ms apart in event time, most a little out of order (within the
    200 ms grace) and one in 50 late by 1.5 s (dropped by the windows it missed)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        jitter = -1500 if rng.random() < 0.02 else -rng.randrange(0, 300)
        ts = BASE_MS + 3 * i + jitter
        out.append((f"k{rng.randrange(30)}".encode(), (0).to_bytes(8, "big"), ts))
    return out


async def test_final_results_and_timers_exact_under_kill_9_zombie_and_rebalance(
    bootstrap_servers: str, new_topic, tmp_path: Path
) -> None:
    n = 36_000
    source = await new_topic("fin-in", partitions=4)
    sink = await new_topic("fin-out", partitions=4)
    ticks = await new_topic("fin-ticks", partitions=4)
    app = app_under_test(
        bootstrap_servers, "tests.apps.finals", source, sink, tmp_path, state_dirs=3,
        ONCEFLOW_TEST_TICKS=ticks, ONCEFLOW_COMMIT_INTERVAL_MS=700,
    )  # fmt: skip
    schedule = Schedule(app.spawn)
    producing = asyncio.create_task(
        produce(bootstrap_servers, source, finals_inputs(n, 5), rate=2000)
    )
    try:
        await schedule.strike()
        produced = await producing
        await schedule.settle()
        inputs = [Event.of(r) for r in await read_to_end(bootstrap_servers, source)]
        want = len(FinalsOracle().expect(sorted(inputs, key=lambda e: (e.partition, e.offset))))
        await collect(bootstrap_servers, sink, want, timeout=180, workers=schedule.workers[:1])
    finally:
        schedule.stop()
    await _check_finals_and_ticks(bootstrap_servers, source, sink, ticks, schedule.faults, produced)


async def _check_finals_and_ticks(
    bootstrap: str, source: str, sink: str, ticks: str, faults: dict[str, int], produced: int
) -> None:
    report = await check_run(
        bootstrap, source, sink, FinalsOracle(), faults=dict(faults), produced=produced
    )
    report.assert_clean()
    inputs = [Event.of(r) for r in await read_to_end(bootstrap, source)]
    fired: dict[str, list[str]] = defaultdict(list)
    for record in await read_to_end(bootstrap, ticks):
        fired[record.key.decode()].append(record.value.decode())
    assert dict(fired) == expected_ticks(inputs)


@pytest.mark.soak
@pytest.mark.timeout(1500)
async def test_final_results_ten_minute_soak(
    bootstrap_servers: str, new_topic, tmp_path: Path
) -> None:
    seconds, rate = 600, 1000
    source = await new_topic("fin-soak-in", partitions=6)
    sink = await new_topic("fin-soak-out", partitions=6)
    ticks = await new_topic("fin-soak-ticks", partitions=6)
    app = app_under_test(
        bootstrap_servers, "tests.apps.finals", source, sink, tmp_path, state_dirs=4,
        ONCEFLOW_TEST_TICKS=ticks, ONCEFLOW_COMMIT_INTERVAL_MS=500,
    )  # fmt: skip
    fleet = Fleet(app.spawn)
    fleet.add()
    producing = asyncio.create_task(
        produce(bootstrap_servers, source, finals_inputs(seconds * rate, 17), rate=rate)
    )
    rng = random.Random(19)
    try:
        produced = await fleet.strike_until(rng, seconds, producing)
        inputs = [Event.of(r) for r in await read_to_end(bootstrap_servers, source)]
        want = len(FinalsOracle().expect(sorted(inputs, key=lambda e: (e.partition, e.offset))))
        await collect(bootstrap_servers, sink, want, timeout=300, workers=fleet.workers)
    finally:
        for w in fleet.workers:
            w.stop()
    await _check_finals_and_ticks(bootstrap_servers, source, sink, ticks, fleet.faults, produced)
