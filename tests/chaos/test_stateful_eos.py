"""The stateful EOS oracle (after Kafka's EOS system test): per key, the running sum, count, min
and max kept in changelogged SQLite tables. Every input must produce exactly one output, equal
to the exact running aggregate, in order — through kill -9 mid-transaction, rebalances,
restores from the changelog and a corrupted database (tests/history.py judges each run).

Worker logs stay in each test's tmp_path (``worker-<i>.log``).
"""

from __future__ import annotations

import asyncio
import random
import re
from pathlib import Path

import pytest
from history import check_run
from oracle import AggregatesOracle, make_inputs
from workers import AppUnderTest, app_under_test, collect, produce, wait_until_processing

pytestmark = pytest.mark.chaos


async def _aggregates(bootstrap: str, new_topic, tmp_path: Path, **env: str | int) -> AppUnderTest:
    source = await new_topic("agg-in", partitions=6)
    sink = await new_topic("agg-out", partitions=6)
    # one state dir per worker, as on separate hosts: a moved task restores from Kafka
    return app_under_test(
        bootstrap, "tests.apps.aggregates", source, sink, tmp_path, state_dirs=3, **env
    )


async def _check(bootstrap: str, app: AppUnderTest, produced: int, faults: dict[str, int]) -> None:
    oracle = AggregatesOracle()
    report = await check_run(
        bootstrap, app.source, app.sink, oracle, faults=faults, produced=produced
    )
    report.assert_clean()


async def test_running_aggregates_exact_under_kill_9_and_rebalance(
    bootstrap_servers: str, new_topic, tmp_path: Path
) -> None:
    n = 60_000
    app = await _aggregates(
        bootstrap_servers, new_topic, tmp_path, ONCEFLOW_COMMIT_INTERVAL_MS=1000
    )
    workers = [app.spawn(0), app.spawn(1)]
    producing = asyncio.create_task(
        produce(bootstrap_servers, app.source, make_inputs(n, 1), rate=3000)
    )
    rng = random.Random(11)
    kills = 0
    try:
        for _ in range(4):  # kill -9 mid-transaction, restart on the same state dir
            await asyncio.sleep(rng.uniform(2.0, 3.5))
            victim = rng.randrange(2)
            await wait_until_processing(workers[victim])  # not while it starts up
            workers[victim].kill()
            kills += 1
            workers[victim] = app.spawn(victim + 3 * kills)
        workers.append(app.spawn(2))  # 2 -> 3
        await asyncio.sleep(4)
        for w in workers[1:]:  # 3 -> 1
            w.stop()
        produced = await producing
        await collect(bootstrap_servers, app.sink, n, timeout=180, workers=workers[:1])
    finally:
        for w in workers:
            w.stop()
    faults = {"kill -9": kills, "scale-up": 1, "scale-down": 2}
    await _check(bootstrap_servers, app, produced, faults)


def _restore_lines(log: str) -> list[tuple[str, int, int, int]]:
    pattern = r"restored (\w+) partition (\d+): (\d+) records from offset (\d+)"
    return [(s, int(p), int(n), int(o)) for s, p, n, o in re.findall(pattern, log)]


async def test_restore_replays_only_the_tail_and_survives_corruption(
    bootstrap_servers: str, new_topic, tmp_path: Path
) -> None:
    app = await _aggregates(bootstrap_servers, new_topic, tmp_path)
    first = make_inputs(20_000, 2)
    produced = await produce(bootstrap_servers, app.source, first)
    worker = app.spawn(0)
    try:
        await collect(
            bootstrap_servers, app.sink, len(first), timeout=90, workers=[worker], settle=0
        )
        await asyncio.sleep(1.5)  # let a commit land after the last output
    finally:
        worker.kill()  # no clean shutdown: the restart must not start from zero
    produced += await produce(bootstrap_servers, app.source, make_inputs(5_000, 3))
    worker = app.spawn(3)  # same state dir (index % 3 == 0)
    try:
        await collect(bootstrap_servers, app.sink, 25_000, timeout=90, workers=[worker], settle=0)
        await asyncio.sleep(1.5)
    finally:
        assert worker.stop() == 0
    restores = _restore_lines(worker.log_text())
    assert all(offset > 0 for _, _, _, offset in restores), restores  # only the tail
    # Corrupt one store's database: it must be wiped and rebuilt from the changelog.
    victim = next((tmp_path / "state-0").rglob("data.sqlite"))
    victim.write_bytes(b"this is not a database" * 100)
    produced += await produce(bootstrap_servers, app.source, make_inputs(5_000, 4))
    worker = app.spawn(6)
    try:
        await collect(bootstrap_servers, app.sink, 30_000, timeout=90, workers=[worker])
    finally:
        assert worker.stop() == 0
    log = worker.log_text()
    assert "wiped" in log and str(victim.parent) in log, log[-3000:]
    assert any(offset == 0 and count > 0 for _, _, count, offset in _restore_lines(log))
    faults = {"kill -9": 1, "corrupt database": 1}
    await _check(bootstrap_servers, app, produced, faults)
