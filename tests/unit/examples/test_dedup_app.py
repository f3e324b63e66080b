"""processors/dedup.py in the in-memory driver: an id's first occurrence is forwarded, copies
less than the dedup window away (either side, across window boundaries) are dropped and counted,
late events are dropped and counted, events without an id are dead-lettered."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import AsyncIterator

import pytest

from onceflow.examples import dedup
from onceflow.partitioner import partition_for_key
from onceflow.testing import TestDriver

W = dedup.WINDOW_MS  # 10 minutes
MIN = 60_000
T0 = 1_700_000_400_000 - 1_700_000_400_000 % W  # a window start


@pytest.fixture
async def driver() -> AsyncIterator[TestDriver]:
    async with TestDriver(dedup.app, partitions=3) as driver:
        yield driver


def forwarded(driver: TestDriver) -> list[tuple[str, bytes]]:
    return [(o.key, o.value) for o in driver.read(dedup.unique)]


def dropped(driver: TestDriver, event_id: str) -> int:
    return dedup.duplicates_dropped(driver.table(dedup.seen).windows(event_id))


async def test_the_first_occurrence_is_forwarded_unchanged(driver: TestDriver) -> None:
    await driver.send(dedup.events, "e1", b"payload", timestamp=T0 + 5, headers=[("h", b"1")])
    (out,) = driver.read(dedup.unique)
    assert (out.key, out.value, out.timestamp, out.headers) == (
        "e1",
        b"payload",
        T0 + 5,
        [("h", b"1")],
    )


async def test_copies_within_the_window_are_dropped_and_counted(driver: TestDriver) -> None:
    await driver.send(dedup.events, "e1", b"a", timestamp=T0)
    await driver.send(dedup.events, "e2", b"b", timestamp=T0 + 1)
    await driver.send(dedup.events, "e1", b"a-again", timestamp=T0 + 2 * MIN)
    await driver.send(dedup.events, "e1", b"a-again", timestamp=T0 + 3 * MIN)
    assert forwarded(driver) == [("e1", b"a"), ("e2", b"b")]
    assert (dropped(driver, "e1"), dropped(driver, "e2")) == (2, 0)


async def test_a_copy_across_a_window_boundary_is_still_a_duplicate(driver: TestDriver) -> None:
    await driver.send(dedup.events, "e1", b"a", timestamp=T0 + W - 1)  # 9:59.999
    await driver.send(dedup.events, "e1", b"a", timestamp=T0 + W + 1)  # 10:00.001
    assert forwarded(driver) == [("e1", b"a")]
    assert dropped(driver, "e1") == 1


async def test_a_copy_a_whole_window_later_is_forwarded(driver: TestDriver) -> None:
    await driver.send(dedup.events, "e1", b"a", timestamp=T0 + 3 * MIN)
    await driver.send(dedup.events, "e1", b"b", timestamp=T0 + 3 * MIN + W)  # exactly 10 min
    assert forwarded(driver) == [("e1", b"a"), ("e1", b"b")]


async def test_recurring_copies_keep_an_id_suppressed(driver: TestDriver) -> None:
    for i in range(4):  # every 9 minutes: each copy is within 10 minutes of the previous one
        await driver.send(dedup.events, "e1", str(i).encode(), timestamp=T0 + i * 9 * MIN)
    assert forwarded(driver) == [("e1", b"0")]
    assert dropped(driver, "e1") == 3


async def test_out_of_order_copies_are_duplicates_both_ways(driver: TestDriver) -> None:
    await driver.send(dedup.events, "e1", b"late-copy-first", timestamp=T0 + 12 * MIN)
    await driver.send(dedup.events, "e1", b"original", timestamp=T0 + 8 * MIN)  # 4 min before
    await driver.send(dedup.events, "e2", b"x", timestamp=T0 + 25 * MIN)
    await driver.send(dedup.events, "e2", b"y", timestamp=T0 + 14 * MIN)  # 11 min before: new
    assert forwarded(driver) == [("e1", b"late-copy-first"), ("e2", b"x"), ("e2", b"y")]


async def test_events_behind_the_grace_period_are_dropped_as_late(driver: TestDriver) -> None:
    p = partition_for_key(b"e1", 3)
    await driver.send(dedup.events, "e1", b"a", timestamp=T0 + 40 * MIN)
    await driver.send(dedup.events, "e1", b"b", timestamp=T0 + 15 * MIN)
    assert forwarded(driver) == [("e1", b"a")]
    assert driver.late_dropped(dedup.seen) == 1
    assert driver.stream_time(p) == T0 + 40 * MIN


@pytest.mark.parametrize(("key", "timestamp", "cause"), [(None, T0, "id"), ("e1", -5, "time")])
async def test_events_without_id_or_time_are_dead_lettered(
    driver: TestDriver, key: str | None, timestamp: int, cause: str
) -> None:
    await driver.send(dedup.events, key, b"v", timestamp=timestamp)
    assert forwarded(driver) == []
    (dead,) = driver.dead_letters
    assert dead.headers["onceflow.error.type"] == "UndeduplicableEventError"
    assert cause in dead.headers["onceflow.error.message"]


def oracle(events: list[tuple[str, int]], partitions: int) -> tuple[list[str], int]:
    """Brute force: forward unless a recorded sighting of the id is less than W away; late
    (own window closed: end + grace <= stream time) events are dropped and not recorded."""
    sightings: dict[str, list[int]] = defaultdict(list)
    stream_time: dict[int, int] = defaultdict(lambda: -1)
    out, late = [], 0
    for event_id, t in events:
        p = partition_for_key(event_id.encode(), partitions)
        stream_time[p] = max(stream_time[p], t)
        if stream_time[p] >= t - t % W + W + W:
            late += 1
            continue
        if not any(abs(t - s) < W for s in sightings[event_id]):
            out.append(f"{event_id}@{t}")
        sightings[event_id].append(t)
    return out, late


@pytest.mark.parametrize("seed", range(6))
async def test_random_streams_match_a_brute_force_oracle(seed: int) -> None:
    rng = random.Random(seed)
    events, t = [], T0
    for _ in range(500):
        t += rng.randrange(0, 40_000)
        jitter = rng.choice([0, 0, 0, -rng.randrange(0, 25 * MIN)])
        events.append((f"e{rng.randrange(25)}", t + jitter))
    expected, late = oracle(events, partitions=3)
    assert late > 0 and len(expected) < len(events) - late  # the stream has both cases
    async with TestDriver(dedup.app, partitions=3) as driver:
        for event_id, stamp in events:
            await driver.send(
                dedup.events, event_id, f"{event_id}@{stamp}".encode(), timestamp=stamp
            )
        assert [o.value.decode() for o in driver.read(dedup.unique)] == expected
        assert driver.late_dropped(dedup.seen) == late
