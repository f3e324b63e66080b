"""Wall-clock timers on the real broker: a task that never sees a record still fires its
timer, in a transaction of its own that commits (read_committed readers see the output)."""

from __future__ import annotations

import itertools
import time
from collections import Counter
from pathlib import Path

from workers import app_under_test, assert_no_hanging_transactions, collect


async def test_a_wall_clock_timer_commits_on_idle_tasks(
    bootstrap_servers: str, new_topic, tmp_path: Path
) -> None:
    source = await new_topic("tick-in", partitions=2)
    sink = await new_topic("tick-out", partitions=2)
    app = app_under_test(bootstrap_servers, "tests.apps.ticker", source, sink, tmp_path)
    worker = app.spawn(0)
    started_ms = time.time() * 1000
    try:
        records = await collect(bootstrap_servers, sink, 10, timeout=60, workers=[worker])
    finally:
        assert worker.stop() == 0, worker.log_text()[-3000:]
    per_task = Counter(r.key.decode() for r in records if r.key)
    assert set(per_task) == {"0_0", "0_1"}, per_task  # no input at all: both tasks fired
    stamps = sorted(int(r.value) for r in records if r.key == b"0_0" and r.value)
    assert stamps[0] >= started_ms - 1000
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert all(gap >= 250 for gap in gaps), gaps  # one firing per period, not a burst
    await assert_no_hanging_transactions(bootstrap_servers, sink)
