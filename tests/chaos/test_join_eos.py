"""A stream-table join (tests/apps/enrich.py: orders joined with a customers source table) under
chaos: kill -9 mid-transaction, a SIGSTOP zombie past its session timeout, scale-up and
scale-down, while the table's topic is updated (and keys deleted) as the orders come. Every
order must be joined exactly once with the value its customer had in the table as of the
order's place in its task, at positions that never go back along a partition
(tests/join_oracle.py, judged by the history checker): a store holding table records the task
never committed, or missing some it did, shows as an aborted read.

Worker logs stay in each test's tmp_path (``worker-<i>.log``).
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest
from fleet import Schedule
from history import Event, History
from join_oracle import JoinOracle
from kafka_helpers import read_to_end
from workers import app_under_test, collect, produce

pytestmark = pytest.mark.chaos

CUSTOMERS = 40


def table_updates(n: int, seed: int) -> list[tuple[bytes, bytes | None]]:
    """``n`` updates of random customers, each value unique (``c<i>#<n>``); one in eight a
    tombstone."""
    rng = random.Random(seed)
    out: list[tuple[bytes, bytes | None]] = []
    for i in range(n):
        key = f"c{rng.randrange(CUSTOMERS)}"
        out.append((key.encode(), None if rng.random() < 0.125 else f"{key}#{i}".encode()))
    return out


def orders(n: int, seed: int) -> list[tuple[bytes, bytes]]:
    rng = random.Random(seed)
    return [(f"c{rng.randrange(CUSTOMERS)}".encode(), f"o{i}".encode()) for i in range(n)]


async def test_join_exact_under_kill_9_zombie_and_rebalance(
    bootstrap_servers: str, new_topic, tmp_path: Path
) -> None:
    n, updates = 30_000, 15_000
    source = await new_topic("join-orders", partitions=4)
    table = await new_topic("join-customers", partitions=4, config={"cleanup.policy": "compact"})
    sink = await new_topic("join-out", partitions=4)
    app = app_under_test(
        bootstrap_servers, "tests.apps.enrich", source, sink, tmp_path, state_dirs=3,
        ONCEFLOW_TEST_TABLE=table, ONCEFLOW_COMMIT_INTERVAL_MS=700,
    )  # fmt: skip
    first = [(f"c{i}".encode(), f"c{i}#first".encode()) for i in range(CUSTOMERS)]
    await produce(bootstrap_servers, table, first)  # a value each, then updates as orders come
    schedule = Schedule(app.spawn)
    producing = asyncio.gather(
        produce(bootstrap_servers, source, orders(n, 2), rate=2000),
        produce(bootstrap_servers, table, table_updates(updates, 3), rate=1000),
    )
    try:
        await schedule.strike()
        produced, _ = await producing
        await schedule.settle()
        await collect(bootstrap_servers, sink, n, timeout=180, workers=schedule.workers[:1])
    finally:
        schedule.stop()
    history = History(JoinOracle([]), faults=schedule.faults, produced=produced)
    await history.load(bootstrap_servers, source, sink)
    customers = [Event.of(r) for r in await read_to_end(bootstrap_servers, table)]
    history.oracle = oracle = JoinOracle(customers, history.outputs)
    report = history.check()
    print(f"history {oracle.name}: {report.summary()} ({schedule.faults})")
    report.assert_clean()
    # Not a vacuous join: most orders found a value, and the positions moved through the table.
    joined = [o for o in history.outputs if not (o.value or b"").endswith(b"|<absent>")]
    assert len(joined) > n // 2, f"only {len(joined)} of {n} orders joined a value"
    print({p: (len(set(qs)), max(qs)) for p, qs in oracle.positions.items()})
    assert all(len(set(qs)) > 20 for qs in oracle.positions.values()), oracle.positions.keys()
