"""The reference app (processors/windowed_count.py) in the in-memory driver: per key and 5-minute
window the emitted counts run 1..n; window boundaries are exact (start inclusive, end
exclusive); late records are dropped and counted."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import AsyncIterator

import pytest

from onceflow.examples import windowed_count as wc
from onceflow.partitioner import partition_for_key
from onceflow.testing import TestDriver

WINDOW = 5 * 60 * 1000
T0 = 1_700_000_100_000 - 1_700_000_100_000 % WINDOW  # a window start


@pytest.fixture
async def driver() -> AsyncIterator[TestDriver]:
    async with TestDriver(wc.app, partitions=3) as driver:
        yield driver


def emitted(driver: TestDriver) -> list[tuple[str, str]]:
    return [(o.key, o.value) for o in driver.read(wc.sink)]


async def test_counts_run_one_to_n_per_key_and_window(driver: TestDriver) -> None:
    for i, key in enumerate(["alice", "bob", "alice", "alice", "bob"]):
        await driver.send(wc.source, key, "click", timestamp=T0 + i * 1000)
    assert emitted(driver) == [
        ("alice", "1"),
        ("bob", "1"),
        ("alice", "2"),
        ("alice", "3"),
        ("bob", "2"),
    ]
    (window,) = driver.table(wc.counts).windows("alice")
    assert (window.start, window.end, window.value) == (T0, T0 + WINDOW, 3)
    assert driver.table(wc.counts).windows("bob")[0].value == 2


async def test_window_start_is_inclusive_and_end_exclusive(driver: TestDriver) -> None:
    await driver.send(wc.source, "k", "x", timestamp=T0)  # first ms of the window
    await driver.send(wc.source, "k", "x", timestamp=T0 + WINDOW - 1)  # last ms
    await driver.send(wc.source, "k", "x", timestamp=T0 + WINDOW)  # first ms of the next
    await driver.send(wc.source, "k", "x", timestamp=T0 + 2 * WINDOW - 1)
    assert emitted(driver) == [("k", "1"), ("k", "2"), ("k", "1"), ("k", "2")]
    windows = driver.table(wc.counts).windows("k")
    assert [(w.start, w.end, w.value) for w in windows] == [(T0 + WINDOW, T0 + 2 * WINDOW, 2)]


async def test_a_late_record_is_dropped_and_counted(driver: TestDriver) -> None:
    partition = partition_for_key(b"k", 3)
    await driver.send(wc.source, "k", "x", timestamp=T0 + 10)
    await driver.send(wc.source, "k", "x", timestamp=T0 + WINDOW)  # closes [T0, T0 + WINDOW)
    await driver.send(wc.source, "k", "x", timestamp=T0 + WINDOW - 1)  # late: grace is 0
    assert emitted(driver) == [("k", "1"), ("k", "1")]
    assert driver.late_dropped(wc.counts) == 1
    assert driver.stream_time(partition) == T0 + WINDOW
    assert driver.dead_letters == []
    # Stream time is per task: a key of another partition is not late at the same timestamp.
    other = next(f"o{i}" for i in range(50) if partition_for_key(f"o{i}".encode(), 3) != partition)
    await driver.send(wc.source, other, "x", timestamp=T0 + WINDOW - 1)
    assert emitted(driver)[-1] == (other, "1")
    assert driver.late_dropped(wc.counts) == 1


async def test_undecodable_input_is_dead_lettered_and_counting_goes_on(driver: TestDriver) -> None:
    await driver.send(wc.source, "k", "x", timestamp=T0)
    await driver.send_raw(wc.source, b"k", b"\xc3\x28", timestamp=T0 + 1)  # invalid UTF-8
    await driver.send(wc.source, "k", "x", timestamp=T0 + 2)
    assert emitted(driver) == [("k", "1"), ("k", "2")]
    (dead,) = driver.dead_letters
    assert dead.headers["onceflow.error.stage"] == "deserialize"
    assert dead.headers["onceflow.source.topic"] == wc.source.name


def model(records: list[tuple[str, int]], partitions: int) -> tuple[list[tuple[str, str]], int]:
    """What the app must emit, in input order: the integration test's oracle."""
    counts: dict[tuple[str, int], int] = defaultdict(int)
    stream_time: dict[int, int] = defaultdict(lambda: -1)
    out, late = [], 0
    for key, ts in records:
        p = partition_for_key(key.encode(), partitions)
        stream_time[p] = max(stream_time[p], ts)
        start = ts - ts % WINDOW
        if stream_time[p] >= start + WINDOW:
            late += 1
            continue
        counts[(key, start)] += 1
        out.append((key, str(counts[(key, start)])))
    return out, late


@pytest.mark.parametrize("seed", range(5))
async def test_random_input_matches_the_model(seed: int) -> None:
    rng = random.Random(seed)
    records, ts = [], T0
    for _ in range(400):
        ts += rng.randrange(0, 6_000)
        jitter = rng.choice([0, 0, 0, -rng.randrange(0, 2 * WINDOW)])  # some out of order
        records.append((f"user-{rng.randrange(7)}", ts + jitter))
    expected, late = model(records, partitions=3)
    assert late > 0
    async with TestDriver(wc.app, partitions=3) as driver:
        for key, stamp in records:
            await driver.send(wc.source, key, "click", timestamp=stamp)
        assert emitted(driver) == expected
        assert driver.late_dropped(wc.counts) == late
