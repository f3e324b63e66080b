"""The fence of the SQL sinks under PostgreSQL's READ COMMITTED, step by step, on a real server:
a zombie's offset update after the new owner's claim matches no row, whether the claim committed
before it or commits while it waits on the row lock; a claim that waits on a batch still open
starts after that batch's offset; and a zombie paused inside its transaction is ended by the
server (idle_in_transaction_session_timeout) so that the next claim goes through."""

from __future__ import annotations

import asyncio
import contextlib

from kafka_helpers import unique_name
from sql_helpers import PostgresServer, query
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from onceflow.runtime.sql_offsets import PartitionKey, advance, claim, create_tables, make_engine
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
