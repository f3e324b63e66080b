"""The faults chaos tests inject into workers of one app: ``Fleet``, up to three workers and the
random faults the soaks inject (kill -9, SIGSTOP past the session timeout then SIGCONT, SIGTERM
rolling restarts, scaling 1 -> 3 -> 1; every action keeps at least one worker alive), and
``Schedule``, the fixed schedule of the feature chaos tests."""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections.abc import Callable
from pathlib import Path

import psutil
from history import check_run
from oracle import AggregatesOracle, make_inputs
from workers import WorkerProcess, app_under_test, collect, produce, wait_until_processing

RATE = 1500  # records/s the soaks offer while faults are injected


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

    async def strike_until(
        self, rng: random.Random, seconds: float, producing: asyncio.Task[int]
    ) -> int:
        """Random faults every 3-8 s for ``seconds`` or until ``producing`` is done; returns
        what it produced."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not producing.done():
            await asyncio.sleep(rng.uniform(3, 8))
            await self.act(rng)
        return await producing

    def rss_mb(self) -> list[float]:
        return [
            psutil.Process(w.proc.pid).memory_info().rss / 2**20
            for w in self.workers
            if w.alive and w.proc
        ]


class Schedule:
    """The fault schedule of the feature chaos tests (final results, re-keying, joins), on two
    workers ``spawn(0)`` and ``spawn(1)``: a kill -9 mid-transaction, a SIGSTOP zombie past its
    session timeout woken up after ``zombie_s``, another kill -9 and a scale-up (``strike``);
    then, once the input is all produced, a graceful scale-down to one worker (``settle``).
    ``faults`` counts what was injected, for the history line."""

    def __init__(self, spawn: Callable[[int], WorkerProcess], pause_s: float = 3.0) -> None:
        self._spawn = spawn
        self._pause_s = pause_s
        self.workers = [spawn(0), spawn(1)]
        self.faults: dict[str, int] = {}

    def _note(self, fault: str) -> None:
        self.faults[fault] = self.faults.get(fault, 0) + 1

    async def strike(self, zombie_s: float = 10.0) -> None:
        workers, spawn = self.workers, self._spawn
        await wait_until_processing(workers[0])
        await asyncio.sleep(2)
        workers[0].kill()  # kill -9 mid-transaction
        self._note("kill -9")
        workers[0] = spawn(3)
        await wait_until_processing(workers[0])
        zombie = workers[1]
        zombie.signal(signal.SIGSTOP)  # past the session timeout: its tasks move
        self._note("SIGSTOP zombie")
        workers[1] = spawn(4)
        await asyncio.sleep(zombie_s)
        zombie.signal(signal.SIGCONT)  # wakes up believing it owns tasks: fenced
        workers.append(zombie)
        await asyncio.sleep(self._pause_s)
        workers[0].kill()
        self._note("kill -9")
        workers[0] = spawn(6)
        workers.append(spawn(5))  # scale up
        self._note("scale-up")

    async def settle(self) -> None:
        """After the last input: scale down to the first worker, gracefully."""
        await asyncio.sleep(self._pause_s)
        for w in self.workers[1:]:
            w.stop()
        self._note("scale-down")

    def stop(self) -> None:
        for w in self.workers:
            w.stop()


async def soak(
    bootstrap: str, new_topic, tmp_path: Path, seconds: float, seed: int = 13, **env: str | int
) -> Fleet:
    """The stateful oracle under ``Fleet``'s random faults for ``seconds`` (tests/chaos/
    test_soak.py; with ``env`` settings, e.g. standbys); asserts a clean history and returns the
    fleet (its workers' logs stay in ``tmp_path``)."""
    source = await new_topic("soak-in", partitions=6)
    sink = await new_topic("soak-out", partitions=6)
    app = app_under_test(
        bootstrap, "tests.apps.aggregates", source, sink, tmp_path,
        state_dirs=4, ONCEFLOW_COMMIT_INTERVAL_MS=500, **env,
    )  # fmt: skip
    fleet = Fleet(app.spawn)
    fleet.add()
    n = int(seconds * RATE)
    producing = asyncio.create_task(produce(bootstrap, source, make_inputs(n, 9), rate=RATE))
    rng = random.Random(seed)
    await asyncio.sleep(5)
    rss_start = fleet.rss_mb()
    try:
        produced = await fleet.strike_until(rng, seconds, producing)
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
    return fleet
