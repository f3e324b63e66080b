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
import signal
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from history import check_run
from oracle import AggregatesOracle, make_inputs
from workers import WorkerProcess, app_under_test, collect, produce

RATE = 1500  # records/s offered while faults are injected


class Fleet:
    """Up to three workers of one app; every action keeps at least one alive."""

    def __init__(self, spawn: Callable[[int], WorkerProcess]) -> None:
        self._spawn = spawn
        self._count = 0
        self.workers: list[WorkerProcess] = []
        self.faults: dict[str, int] = {}

    def add(self) -> WorkerProcess:
        self._count += 1
        worker = self._spawn(self._count)
        self.workers.append(worker)
        return worker

    def _note(self, fault: str) -> None:
        self.faults[fault] = self.faults.get(fault, 0) + 1

    async def act(self, rng: random.Random) -> None:
        live = [w for w in self.workers if w.alive]
        victim = rng.choice(live)
        action = rng.choice(["kill", "stop", "term", "scale"])
        if action == "kill":
            victim.kill()
            self.workers.remove(victim)
            self.add()
        elif action == "stop":
            victim.signal(signal.SIGSTOP)  # past the 6 s session timeout: a zombie
            await asyncio.sleep(8)
            victim.signal(signal.SIGCONT)
        elif action == "term":
            assert victim.stop() == 0, victim.log_text()[-3000:]
            self.workers.remove(victim)
            self.add()
        elif len(live) < 3:
            self.add()
            action = "scale-up"
        else:
            for extra in live[1:]:
                assert extra.stop() == 0, extra.log_text()[-3000:]
                self.workers.remove(extra)
            action = "scale-down"
        self._note(action)

    def rss_mb(self) -> list[float]:
        return [
            psutil.Process(w.proc.pid).memory_info().rss / 2**20
            for w in self.workers
            if w.alive and w.proc
        ]


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
