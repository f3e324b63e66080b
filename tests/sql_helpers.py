"""A real PostgreSQL server for the SQL sink tests (``scripts/postgres_local.py``, binaries from
the pgserver wheel), and what the tests check in the sink's tables."""

from __future__ import annotations

import asyncio
import importlib.util
import socket
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from kafka_helpers import REPO, read_to_end, unique_name
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from workers import WorkerProcess, produce, worker_env

# The tables of tests/apps/sql_payments.py: no unique key on payments, so that a payment
# written twice shows up as two rows.
SCHEMA = (
    """CREATE TABLE IF NOT EXISTS payments (
        id VARCHAR(64) NOT NULL, customer VARCHAR(64) NOT NULL,
        amount BIGINT NOT NULL CHECK (amount >= 0),
        src_partition INTEGER NOT NULL, src_offset BIGINT NOT NULL, epoch BIGINT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS totals (
        customer VARCHAR(64) PRIMARY KEY, total BIGINT NOT NULL)""",
)


def _postgres_local() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "postgres_local", REPO / "scripts/postgres_local.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["postgres_local"] = module
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PostgresServer:
    """One PostgreSQL server in ``data_dir``; ``stop()`` and ``start()`` it mid-test."""

    data_dir: Path
    port: int

    def start(self) -> None:
        _postgres_local().start(self.data_dir, self.port)

    def stop(self, mode: str = "fast") -> None:
        _postgres_local().stop(self.data_dir, mode)

    def dsn(self, database: str) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    async def new_database(self, name: str) -> str:
        """A fresh database with the payments schema; its DSN."""
        admin = create_async_engine(self.dsn("postgres"), isolation_level="AUTOCOMMIT")
        async with admin.connect() as conn:
            await conn.execute(text(f'CREATE DATABASE "{name}"'))
        await admin.dispose()
        dsn = self.dsn(name)
        await create_schema(dsn)
        return dsn


async def create_schema(dsn: str) -> None:
    engine = create_async_engine(dsn)
    async with engine.begin() as conn:
        for ddl in SCHEMA:
            await conn.execute(text(ddl))
    await engine.dispose()


async def query(dsn: str, sql: str) -> list[tuple[object, ...]]:
    engine = create_async_engine(dsn)
    try:
        async with engine.connect() as conn:
            return [tuple(r) for r in (await conn.execute(text(sql))).all()]
    finally:
        await engine.dispose()


async def check_exactly_once(dsn: str, expected: dict[str, tuple[str, int]]) -> None:
    """Every payment (id -> (customer, amount)) is in the table exactly once, every running
    total is the sum of its payments, and no row was written by a fenced owner: each row's
    offset lies in its epoch's span (from its claim's offset to the next claim's)."""
    rows = await query(
        dsn, "SELECT id, customer, amount, src_partition, src_offset, epoch FROM payments"
    )
    counts = Counter(str(r[0]) for r in rows)
    doubled = {k: n for k, n in counts.items() if n > 1}
    missing = sorted(set(expected) - set(counts))
    assert not doubled, (
        f"{len(doubled)} payments written more than once, e.g. {list(doubled.items())[:5]}"
    )
    assert not missing, f"{len(missing)} payments missing, e.g. {missing[:5]}"
    assert set(counts) == set(expected), (
        f"unexpected rows: {sorted(set(counts) - set(expected))[:5]}"
    )
    sums: Counter[str] = Counter()
    for _pid, (customer, amount) in expected.items():
        sums[customer] += amount
    totals = {str(c): int(t) for c, t in await query(dsn, "SELECT customer, total FROM totals")}
    assert totals == dict(sums)
    claims = await query(dsn, "SELECT topic_partition, epoch, next_offset FROM onceflow_claims")
    starts = {(int(p), int(e)): int(n) for p, e, n in claims}
    for _, _, _, partition, offset, epoch in rows:
        p, o, e = int(partition), int(offset), int(epoch)
        assert starts[(p, e)] <= o, f"row at {p}@{o} written by epoch {e} before its claim"
        later = starts.get((p, e + 1))
        assert later is None or o < later, (
            f"row at {p}@{o} written by epoch {e} after epoch {e + 1} claimed from {later}: a "
            "fenced owner wrote it"
        )


POISON_EVERY = 397


def payments(n: int) -> tuple[list[tuple[bytes, bytes]], dict[str, tuple[str, int]]]:
    """n payments, every POISON_EVERY-th negative (a poison row); the good ones by id."""
    records, good = [], {}
    for i in range(n):
        customer, amount = f"c{i % 23}", (i % 17) + 1
        if i % POISON_EVERY == 5:
            amount = -1
        else:
            good[f"p{i}"] = (customer, amount)
        records.append((customer.encode(), f"p{i}:{amount}".encode()))
    return records, good


async def wait_rows(dsn: str, n: int, worker: WorkerProcess, timeout: float) -> None:
    """Wait until ``payments`` has ``n`` rows, then 2 s more (to catch a row written twice)."""
    await wait_rows_in(dsn, "SELECT count(*) FROM payments", n, worker, timeout)


async def wait_rows_in(
    dsn: str, count_sql: str, n: int, worker: WorkerProcess, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    count: object = None
    while time.monotonic() < deadline:
        assert worker.alive, worker.log_text()[-3000:]
        try:
            (count,) = (await query(dsn, count_sql))[0]
        except OSError:
            count = -1
        if count == n:
            await asyncio.sleep(2)  # anything written twice would show up now
            return
        await asyncio.sleep(0.3)
    raise AssertionError(f"{count_sql}: {count}, not {n}:\n{worker.log_text()[-3000:]}")


async def check_dead_letters(bootstrap: str, app_id: str, n: int, error: str) -> None:
    dead = await read_to_end(bootstrap, f"{app_id}-dlq")
    poison = {f"p{i}" for i in range(n) if i % POISON_EVERY == 5}
    assert {r.value.decode().split(":")[0] for r in dead if r.value} == poison
    headers = dict(dead[0].headers)
    assert headers["onceflow.error.stage"] == b"sql_sink"
    assert error.encode() in headers["onceflow.error.message"].lower()


async def wait_first_row(dsn: str, worker: WorkerProcess, timeout: float = 90) -> None:
    """Wait until the sink has committed a payment (so that a fault lands while it writes)."""
    deadline = time.monotonic() + timeout
    while not (await query(dsn, "SELECT count(*) FROM payments"))[0][0]:
        assert worker.alive and time.monotonic() < deadline, worker.log_text()[-3000:]
        await asyncio.sleep(0.1)


async def start_payments(
    bootstrap: str, new_topic, tmp_path: Path, dsn: str, n: int, **extra: str | int
) -> tuple[WorkerProcess, dict[str, tuple[str, int]], str, int]:
    source = await new_topic("pay-in", partitions=3)
    forwarded = await new_topic("pay-fwd", partitions=3)
    app_id = unique_name("sqlpay")
    records, good = payments(n)
    await produce(bootstrap, source, records)
    port = free_port()
    env = worker_env(
        bootstrap, app_id, tmp_path / "state",
        ONCEFLOW_TEST_INPUT=source, ONCEFLOW_TEST_OUTPUT=forwarded, ONCEFLOW_SQL_SINK_DSN=dsn,
        ONCEFLOW_HTTP_PORT=port, **extra,
    )  # fmt: skip
    worker = WorkerProcess("tests.apps.sql_payments", env, tmp_path / "worker.log").start()
    return worker, good, app_id, port
