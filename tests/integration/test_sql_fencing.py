"""The fence of the SQL sinks under PostgreSQL's READ COMMITTED, step by step, on a real server:
a zombie's offset update after the new owner's claim matches no row, whether the claim committed
before it or commits while it waits on the row lock; a claim that waits on a batch still open
starts after that batch's offset; and a zombie paused inside its transaction is ended by the
server (idle_in_transaction_session_timeout) so that the next claim goes through."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from kafka_helpers import unique_name
from sql_helpers import PostgresServer, query
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from workers import produce

from onceflow import App, SinkRecord, SinkTransaction
from onceflow.runtime.clients import Clients
from onceflow.runtime.metrics import Metrics
from onceflow.runtime.sql_health import SinkMetrics
from onceflow.runtime.sql_offsets import PartitionKey, advance, claim, create_tables, make_engine
from onceflow.runtime.sql_runner import SinkRunner
from onceflow.settings import load_settings

KEY = PartitionKey("g", "orders", 0)


async def _engine(postgres: PostgresServer, timeout_ms: int = 30_000) -> tuple[AsyncEngine, str]:
    dsn = await postgres.new_database(unique_name("fence").replace("-", "_"))
    engine = make_engine(dsn, load_settings(sql_sink_statement_timeout_ms=timeout_ms))
    await create_tables(engine)
    return engine, dsn


async def _claim(engine: AsyncEngine, owner: str) -> tuple[int, int]:
    async with engine.begin() as conn:
        return await claim(conn, KEY, owner)


async def _pay(conn: AsyncConnection, pid: str, epoch: int, offset: int) -> None:
    await conn.execute(
        text(
            "INSERT INTO payments (id, customer, amount, src_partition, src_offset, epoch) "
            "VALUES (:i, 'c', 1, 0, :o, :e)"
        ),
        {"i": pid, "o": offset, "e": epoch},
    )


async def test_a_zombie_after_the_claim_matches_no_row(postgres: PostgresServer) -> None:
    engine, dsn = await _engine(postgres)
    assert await _claim(engine, "zombie") == (1, 0)
    async with engine.connect() as zombie:
        tx = await zombie.begin()
        await _pay(zombie, "z", 1, 0)  # its batch is open ...
        assert await _claim(engine, "owner") == (2, 0)  # ... when the new owner claims
        assert not await advance(zombie, KEY, epoch=1, expected=0, next_offset=1)
        await tx.rollback()
    assert await query(dsn, "SELECT id FROM payments") == []
    await engine.dispose()


async def test_a_zombie_waiting_on_the_claims_lock_matches_no_row(postgres: PostgresServer) -> None:
    engine, dsn = await _engine(postgres)
    await _claim(engine, "zombie")
    async with engine.connect() as owner, engine.connect() as zombie:
        owner_tx = await owner.begin()
        assert await claim(owner, KEY, "owner") == (2, 0)  # holds the row lock, not committed
        zombie_tx = await zombie.begin()
        await _pay(zombie, "z", 1, 0)
        update = asyncio.create_task(advance(zombie, KEY, epoch=1, expected=0, next_offset=1))
        await asyncio.sleep(0.5)
        assert not update.done(), "the zombie's update should wait on the row lock"
        await owner_tx.commit()
        # READ COMMITTED re-checks the WHERE clause on the row the claim committed: epoch 2
        assert not await update
        await zombie_tx.rollback()
    assert await query(dsn, "SELECT id FROM payments") == []
    await engine.dispose()


async def test_a_claim_waits_for_an_open_batch_and_starts_after_it(
    postgres: PostgresServer,
) -> None:
    engine, dsn = await _engine(postgres)
    await _claim(engine, "old")
    async with engine.connect() as old:
        tx = await old.begin()
        await _pay(old, "a", 1, 0)
        assert await advance(old, KEY, epoch=1, expected=0, next_offset=1)  # takes the lock
        claiming = asyncio.create_task(_claim(engine, "new"))
        await asyncio.sleep(0.5)
        assert not claiming.done(), "the claim should wait for the open batch"
        await tx.commit()
    assert await claiming == (2, 1)  # it starts after the batch the old owner committed
    assert await query(dsn, "SELECT id FROM payments") == [("a",)]
    await engine.dispose()


async def test_a_paused_zombie_inside_its_transaction_is_ended_by_the_server(
    postgres: PostgresServer,
) -> None:
    engine, dsn = await _engine(postgres, timeout_ms=1500)
    await _claim(engine, "zombie")
    zombie = await engine.connect()
    tx = await zombie.begin()
    await _pay(zombie, "z", 1, 0)
    assert await advance(zombie, KEY, epoch=1, expected=0, next_offset=1)
    # ... and the zombie is paused here, before its COMMIT, holding the row lock: the claim goes
    # through once the server ends the idle transaction.
    assert await _claim(engine, "owner") == (2, 0)
    try:
        await tx.commit()
        committed = True
    except Exception:  # the server closed the session: the transaction was rolled back
        committed = False
    finally:
        with contextlib.suppress(Exception):
            await zombie.close()
    assert not committed
    assert await query(dsn, "SELECT id FROM payments") == []
    await engine.dispose()


async def test_a_running_sink_whose_partition_is_claimed_elsewhere_writes_nothing_more(
    postgres: PostgresServer, bootstrap_servers: str, new_topic, caplog
) -> None:
    """A sink (in this process, real broker and server) writes a first part of its topic; then
    another owner claims its partition (as the next owner of a zombie does): the sink's next
    batch matches no row, is rolled back, and the partition stays closed."""
    engine, dsn = await _engine(postgres)
    topic = await new_topic("fence-run", partitions=1)
    app = App(unique_name("fence-run"))
    source = app.topic(topic, key_serde="str", value_serde="str")

    @app.sql_sink(source, batch=10, name="payments")
    async def write(tx: SinkTransaction, records: Sequence[SinkRecord[str, str]]) -> None:
        for r in records:
            await _pay(tx.connection, r.value, tx.epoch, r.offset)

    settings = load_settings(bootstrap_servers=bootstrap_servers, sql_sink_max_batch_wait_ms=10)
    registry = Metrics(app.app_id, eos=True)
    metrics = SinkMetrics(registry)
    group = f"{app.app_id}-sink-payments"

    async def no_bad_record(*_: object) -> None:
        raise AssertionError("no record fails here")

    runner = SinkRunner(
        app.sql_sinks["payments"], group=group, engine=engine, settings=settings,
        clients=Clients(settings, client_id=app.app_id), metrics=metrics, owner="old",
        on_bad_record=no_bad_record,
    )  # fmt: skip
    stop = asyncio.Event()
    running = asyncio.create_task(runner.run(stop))
    key = PartitionKey(group, topic, 0)
    try:
        await produce(bootstrap_servers, topic, [(b"c", f"a{i}".encode()) for i in range(100)])
        await _until(lambda: _offset(dsn, key), 100, running)
        assert await _claim_key(engine, key, "new") == (2, 100)  # the next owner claims
        with caplog.at_level(logging.INFO, "onceflow.sql_sink"):
            await produce(bootstrap_servers, topic, [(b"c", f"b{i}".encode()) for i in range(50)])
            await _until(lambda: _fenced(registry), 1.0, running)
        await asyncio.sleep(1)  # a closed partition stays closed
        assert await query(dsn, "SELECT count(*), max(epoch) FROM payments") == [(100, 1)]
        assert await _offset(dsn, key) == 100
        assert "partition 0 fenced: epoch 1 superseded by 2" in caplog.text
    finally:
        stop.set()
        await running
        await runner.close()


async def _claim_key(engine: AsyncEngine, key: PartitionKey, owner: str) -> tuple[int, int]:
    async with engine.begin() as conn:
        return await claim(conn, key, owner)


async def _offset(dsn: str, key: PartitionKey) -> object:
    rows = await query(
        dsn,
        "SELECT next_offset FROM onceflow_offsets WHERE consumer_group = "
        f"'{key.group}' AND topic = '{key.topic}' AND topic_partition = {key.partition}",
    )
    return rows[0][0] if rows else None


async def _fenced(metrics: Metrics) -> float | None:
    labels = {"app": metrics.app_id, "sink": "payments", "result": "fenced"}
    return metrics.registry.get_sample_value("onceflow_sink_transactions_total", labels)


async def _until(
    read: Callable[[], Awaitable[object]], value: object, running: asyncio.Task[None]
) -> None:
    deadline = time.monotonic() + 60
    while (got := await read()) != value:
        assert not running.done(), running
        assert time.monotonic() < deadline, f"{got} != {value}"
        await asyncio.sleep(0.05)
