"""At-least-once with state under a zombie: a worker paused past its session timeout, with
table updates it has not committed, must not overwrite its successor's changelog when it wakes
(issue 13, item 1). Every input must be in the final state, however often it was absorbed."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import defaultdict
from pathlib import Path

import orjson
import pytest
from kafka_helpers import read_to_end
from workers import AppUnderTest, WorkerProcess, app_under_test, produce, wait_until_processing

pytestmark = pytest.mark.chaos

KEYS = 12


def _batch(first: int, n: int) -> list[tuple[bytes, bytes]]:
    return [(f"k{i % KEYS}".encode(), str(i).encode()) for i in range(first, first + n)]


async def _outputs(bootstrap: str, topic: str) -> set[bytes]:
    """The values echoed so far; at-least-once outputs are not transactional, so read them all."""
    return {r.value for r in await read_to_end(bootstrap, topic, "read_uncommitted") if r.value}


async def _wait_outputs(
    bootstrap: str, app: AppUnderTest, values: set[bytes], timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while not values <= await _outputs(bootstrap, app.sink):
        assert time.monotonic() < deadline, "the inputs were not processed in time"
        await asyncio.sleep(0.3)


async def _final_state(bootstrap: str, changelog: str) -> dict[str, set[int]]:
    """The last committed changelog value per key: what any restore rebuilds."""
    state: dict[str, set[int]] = defaultdict(set)
    for record in await read_to_end(bootstrap, changelog, "read_committed"):
        if record.key is not None:
            state[record.key.decode()] = set(orjson.loads(record.value or b"[]"))
    return state


def _missing(
    state: dict[str, set[int]], records: list[tuple[bytes, bytes]]
) -> dict[str, list[int]]:
    """Per key, the inputs the final state does not hold (it must hold every one)."""
    expected: dict[str, set[int]] = defaultdict(set)
    for key, value in records:
        expected[key.decode()].add(int(value))
    missing = {k: sorted(numbers - state.get(k, set())) for k, numbers in expected.items()}
    return {k: v for k, v in missing.items() if v}


async def test_a_zombie_does_not_overwrite_its_successors_changelog(
    bootstrap_servers: str, new_topic, tmp_path: Path
) -> None:
    source = await new_topic("alos-in", partitions=2)
    sink = await new_topic("alos-out", partitions=2)
    app = app_under_test(
        bootstrap_servers,
        "tests.apps.seen",
        source,
        sink,
        tmp_path,
        state_dirs=2,  # two hosts: a task that moves restores from the changelog
        ONCEFLOW_PROCESSING_GUARANTEE="at_least_once",
        ONCEFLOW_COMMIT_INTERVAL_MS=8000,  # the zombie always has uncommitted updates
    )
    changelog = f"{app.env['ONCEFLOW_TEST_APP_ID']}-seen-changelog"
    zombie = app.spawn(0)
    workers: list[WorkerProcess] = [zombie]
    try:
        assert await wait_until_processing(zombie)
        first = _batch(0, 300)
        await produce(bootstrap_servers, source, first)
        await _wait_outputs(bootstrap_servers, app, {v for _, v in first}, 60)
        zombie.signal(signal.SIGSTOP)  # absorbed, not committed
        successor = app.spawn(1)
        workers.append(successor)
        await asyncio.sleep(8)  # past the 6 s session timeout: the successor owns every task
        second = _batch(300, 300)
        await produce(bootstrap_servers, source, second)
        await _wait_outputs(bootstrap_servers, app, {v for _, v in second}, 60)
        await asyncio.sleep(10)  # the successor commits (8 s interval) its state and offsets
        zombie.signal(signal.SIGCONT)  # its next commit would send the stale sets
        await asyncio.sleep(12)  # it rejoins; the group splits the tasks and restores them
        third = _batch(600, 300)
        await produce(bootstrap_servers, source, third)
        await _wait_outputs(bootstrap_servers, app, {v for _, v in third}, 60)
        await asyncio.sleep(10)  # both commit
        for w in workers:
            assert w.stop() == 0, w.log_text()[-3000:]  # a graceful stop commits what is open
    finally:
        for w in workers:
            w.stop()
    missing = _missing(await _final_state(bootstrap_servers, changelog), first + second + third)
    assert missing == {}, "lost updates (at-least-once must not)"


async def test_at_least_once_state_loses_nothing_under_kill_9_and_zombies(
    bootstrap_servers: str, new_topic, tmp_path: Path
) -> None:
    source = await new_topic("alos-chaos-in", partitions=4)
    sink = await new_topic("alos-chaos-out", partitions=4)
    app = app_under_test(
        bootstrap_servers,
        "tests.apps.seen",
        source,
        sink,
        tmp_path,
        state_dirs=3,
        ONCEFLOW_PROCESSING_GUARANTEE="at_least_once",
        ONCEFLOW_COMMIT_INTERVAL_MS=1500,
    )
    changelog = f"{app.env['ONCEFLOW_TEST_APP_ID']}-seen-changelog"
    records = _batch(0, 6000)
    workers = [app.spawn(0), app.spawn(1)]
    spawned = 2
    faults = {"kill -9": 0, "SIGSTOP": 0}
    producing = asyncio.create_task(produce(bootstrap_servers, source, records, rate=300))
    try:
        assert await wait_until_processing(workers[0])
        for round_ in range(6):
            await asyncio.sleep(3)
            victim = workers.pop(round_ % len(workers))
            if round_ % 2:
                victim.signal(signal.SIGSTOP)  # a zombie: paused past its session timeout
                await asyncio.sleep(8)
                victim.signal(signal.SIGCONT)
                workers.append(victim)
                faults["SIGSTOP"] += 1
            else:
                victim.kill()
                workers.append(app.spawn(spawned))
                spawned += 1
                faults["kill -9"] += 1
        await producing
        await _wait_outputs(bootstrap_servers, app, {v for _, v in records}, 120)
        await asyncio.sleep(4)  # commits
        for w in workers:
            assert w.stop() == 0, w.log_text()[-3000:]
    finally:
        producing.cancel()
        for w in workers:
            w.stop()
    missing = _missing(await _final_state(bootstrap_servers, changelog), records)
    print(f"faults={faults} records={len(records)}")
    assert missing == {}, f"lost updates under {faults}"
