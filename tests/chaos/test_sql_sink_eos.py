"""Exactly-once into PostgreSQL under faults: SQL sink workers (2-3 at a time) are killed with
-9, frozen with SIGSTOP past their session timeout and thawed (zombies), joined by new members
(rebalances), while the database itself crashes and restarts. Afterwards every payment is in
the table exactly once, every running total is the sum of its payments, and no row was written by
an owner after the next one claimed its partition (each row records its epoch; the claims table
is the epoch history). The short run is part of ``make test``; the soak runs more faults."""

from __future__ import annotations

import asyncio
import random
import re
import signal
import time
from pathlib import Path

import pytest
from sql_helpers import (
    PostgresServer,
    check_dead_letters,
    check_exactly_once,
    payments,
    query,
    wait_first_row,
    wait_rows,
)
from workers import WorkerProcess, app_under_test, produce

pytestmark = pytest.mark.chaos


async def _run(
    bootstrap: str,
    new_topic,
    postgres: PostgresServer,
    tmp_path: Path,
    *,
    n: int,
    rate: float,
    rounds: int,
    seed: int,
) -> int:
    """The run; returns how many times a thawed zombie's batch was fenced."""
    rng = random.Random(seed)
    source = await new_topic("sqlchaos-in", partitions=3)
    forwarded = await new_topic("sqlchaos-fwd", partitions=3)
    dsn = await postgres.new_database(f"chaos_{seed}_{int(time.time())}")
    app = app_under_test(
        bootstrap, "tests.apps.sql_payments", source, forwarded, tmp_path,
        ONCEFLOW_SQL_SINK_DSN=dsn, ONCEFLOW_TEST_SINK_BATCH=20,
        ONCEFLOW_SQL_SINK_STATEMENT_TIMEOUT_MS=4000, ONCEFLOW_SQL_SINK_MAX_BATCH_WAIT_MS=1000,
        ONCEFLOW_COMMIT_INTERVAL_MS=200,
    )  # fmt: skip
    records, good = payments(n)
    spawned = 3
    workers = [app.spawn(i) for i in range(spawned)]
    producing = asyncio.create_task(produce(bootstrap, source, records, rate=rate))
    faults: dict[str, int] = {}
    try:
        await wait_first_row(dsn, workers[0])
        for _ in range(rounds):
            await asyncio.sleep(rng.uniform(1.0, 3.0))
            # A zombie: frozen past the 6 s session timeout, its partitions go to the others
            zombie, held = await _holding_a_partition(workers, rng)
            workers[zombie].signal(signal.SIGSTOP)
            frozen_at = time.monotonic()
            marks = [len(w.log_text()) for w in workers]
            await asyncio.sleep(rng.uniform(1.0, 3.0))
            victim = rng.choice([i for i in range(len(workers)) if i != zombie])
            workers[victim].kill()  # kill -9: its open transactions are lost
            workers[victim] = app.spawn(spawned)
            marks[victim] = 0
            spawned += 1
            # Past the session timeout and the rebalance: another worker claimed one of its
            # partitions (a new epoch), or 30 s went by.
            await asyncio.sleep(max(0.0, frozen_at + rng.uniform(9.0, 11.0) - time.monotonic()))
            await _claimed_elsewhere(workers, zombie, marks, held, frozen_at + 30)
            # It wakes up with the batches it had buffered and tries to commit them (its
            # pooled connections are alive: the database restarts only after): fenced.
            workers[zombie].signal(signal.SIGCONT)
            await asyncio.sleep(rng.uniform(1.0, 2.0))
            postgres.stop("immediate")  # a database crash: open transactions roll back
            await asyncio.sleep(rng.uniform(1.0, 2.0))
            postgres.start()
            await asyncio.sleep(rng.uniform(1.0, 2.0))
            workers.append(app.spawn(spawned))  # a rebalance: a fourth member joins
            spawned += 1
            await asyncio.sleep(rng.uniform(2.0, 4.0))
            workers.pop(0).stop()  # and an old one leaves
            for fault in ("SIGSTOP zombie", "kill -9", "database restart", "join", "leave"):
                faults[fault] = faults.get(fault, 0) + 1
        await producing
        await wait_rows(dsn, len(good), workers[-1], timeout=180)
        await check_exactly_once(dsn, good)
        await check_dead_letters(bootstrap, app.env["ONCEFLOW_TEST_APP_ID"], n, "check")
        claims = (await query(dsn, "SELECT count(*) FROM onceflow_claims"))[0][0]
        assert isinstance(claims, int) and claims > 3, "the partitions never moved"
        fenced = _count(tmp_path, " fenced: epoch ")
        outages = _count(tmp_path, "database unavailable")
        print(f"faults {faults}, claims {claims}, fenced partitions {fenced}, outages {outages}")
        return fenced
    finally:
        producing.cancel()
        for w in workers:
            w.signal(signal.SIGCONT)
            w.stop()


_SINK_ASSIGNED = re.compile(r"sql sink 'payments': assigned partitions (.*)")


_SINK_CLAIMED = re.compile(r"sql sink 'payments' partition (\d+) claimed")


async def _holding_a_partition(
    workers: list[WorkerProcess], rng: random.Random
) -> tuple[int, set[str]]:
    """A worker whose sink holds partitions now (by its last assignment), and them: frozen, it
    has batches to try to commit when it wakes up."""
    deadline = time.monotonic() + 30
    while True:
        holding = {
            i: set(seen[-1].split(", "))
            for i, w in enumerate(workers)
            if (seen := _SINK_ASSIGNED.findall(w.log_text())) and seen[-1] != "(none)"
        }
        if holding:
            zombie = rng.choice(sorted(holding))
            return zombie, holding[zombie]
        assert time.monotonic() < deadline, "no sink holds a partition"
        await asyncio.sleep(0.5)


async def _claimed_elsewhere(
    workers: list[WorkerProcess], zombie: int, marks: list[int], held: set[str], until: float
) -> None:
    """Wait until a worker other than ``zombie`` claimed one of ``held`` since ``marks`` (each
    worker's log length when the zombie froze; a worker spawned since counts from 0)."""
    while time.monotonic() < until:
        for i, w in enumerate(workers):
            text = w.log_text()[marks[i] if i < len(marks) else 0 :]
            if i != zombie and held & set(_SINK_CLAIMED.findall(text)):
                return
        await asyncio.sleep(0.5)


def _count(tmp_path: Path, line: str) -> int:
    """How many times the workers logged ``line``."""
    return sum(p.read_text(errors="replace").count(line) for p in tmp_path.glob("*.log"))


async def test_sql_sink_exactly_once_under_faults(
    bootstrap_servers: str, new_topic, postgres: PostgresServer, tmp_path: Path
) -> None:
    await _run(
        bootstrap_servers, new_topic, postgres, tmp_path, n=12_000, rate=400, rounds=1, seed=19
    )


@pytest.mark.soak
async def test_sql_sink_exactly_once_under_faults_soak(
    bootstrap_servers: str, new_topic, postgres: PostgresServer, tmp_path: Path
) -> None:
    fenced = await _run(
        bootstrap_servers, new_topic, postgres, tmp_path, n=60_000, rate=500, rounds=5, seed=7
    )
    # A thawed zombie wakes up with the batches it had buffered (it may have had none: then the
    # rebalance reaches it first) and tries to commit them after another worker claimed its
    # partition: over five rounds, at least once, the checks above judged a superseded owner's
    # writes. (The short run fences 2-3 partitions in most runs; not asserted there.)
    assert fenced >= 1, "no thawed zombie tried to commit in five rounds"
