"""processors/alerts.py in the in-memory driver: one alert per user and window whose final
count of failed logins is above the threshold, only once the window closed (end + grace),
never for a running count; late logins are dropped."""

from __future__ import annotations

import random
from collections import Counter

from onceflow.examples import alerts
from onceflow.testing import TestDriver

MIN = 60_000
T0 = 1_700_000_400_000 - 1_700_000_400_000 % (10 * MIN)  # a window start


async def test_an_alert_comes_once_with_the_final_count_when_the_window_closes() -> None:
    async with TestDriver(alerts.app, partitions=3) as driver:
        for i in range(alerts.THRESHOLD + 2):
            await driver.send(alerts.logins, "mallory", "10.0.0.1", timestamp=T0 + i * 1000)
        for _ in range(alerts.THRESHOLD):  # at the threshold: no alert
            await driver.send(alerts.logins, "alice", "10.0.0.2", timestamp=T0 + 5_000)
        assert driver.read(alerts.alerts) == []  # running counts are never sent
        # Stream time is per task: move every task past the window's end + grace
        await driver.advance_time(stream_time=11 * MIN)
        assert [(o.key, o.value) for o in driver.read(alerts.alerts)] == [
            ("mallory", {"window_start": T0, "window_end": T0 + 10 * MIN, "count": 7})
        ]
        assert driver.table(alerts.raised).get("mallory") == 1
        await driver.advance_time(stream_time=60 * MIN)
        assert len(driver.read(alerts.alerts)) == 1


async def test_a_login_within_grace_counts_and_a_late_one_does_not() -> None:
    async with TestDriver(alerts.app) as driver:
        for i in range(alerts.THRESHOLD):
            await driver.send(alerts.logins, "bob", "ip", timestamp=T0 + i)
        await driver.send(alerts.logins, "eve", "ip", timestamp=T0 + 10 * MIN + 30_000)
        await driver.send(alerts.logins, "bob", "ip", timestamp=T0 + 9 * MIN)  # within grace
        await driver.send(alerts.logins, "eve", "ip", timestamp=T0 + 11 * MIN)  # closes it
        await driver.send(alerts.logins, "bob", "ip", timestamp=T0 + 9 * MIN)  # late: dropped
        assert [o.value["count"] for o in driver.read(alerts.alerts)] == [alerts.THRESHOLD + 1]
        assert driver.late_dropped(alerts.failures) == 1


async def test_random_logins_match_a_model() -> None:
    rng = random.Random(3)
    events = sorted(
        (T0 + rng.randrange(0, 60 * MIN), rng.choice(["a", "b", "c", "d"])) for _ in range(300)
    )
    counts = Counter((user, (ts - T0) // (10 * MIN)) for ts, user in events)
    want = sorted(
        (user, T0 + w * 10 * MIN, n) for (user, w), n in counts.items() if n > alerts.THRESHOLD
    )
    async with TestDriver(alerts.app, partitions=2) as driver:
        for ts, user in events:
            await driver.send(alerts.logins, user, "ip", timestamp=ts)
        await driver.advance_time(stream_time=2 * 60 * MIN)
        out = driver.read(alerts.alerts)
        got = sorted((o.key, o.value["window_start"], o.value["count"]) for o in out)
    assert got == want
