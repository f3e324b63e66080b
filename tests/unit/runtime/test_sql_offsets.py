"""The offsets table of the SQL sinks against a real SQLite file: claims bump the epoch and read
the offset, a batch's offset update is a fence, settings resolve to a DSN or fail naming the
variable, and errors are told apart (a record's data vs. the database)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from onceflow.errors import ConfigurationError
from onceflow.runtime.sql_offsets import (
    PartitionKey,
    advance,
    claim,
    create_tables,
    is_outage,
    make_engine,
    position,
    resolve_dsn,
)
from onceflow.settings import load_settings

KEY = PartitionKey("app-sink-orders", "orders", 3)


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncEngine:
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'sink.db'}", load_settings())
    await create_tables(engine)
    await create_tables(engine)  # twice: idempotent
    return engine


async def _claim(engine: AsyncEngine, owner: str) -> tuple[int, int]:
    async with engine.begin() as conn:
        return await claim(conn, KEY, owner)


async def test_claims_bump_the_epoch_and_keep_the_offset(engine: AsyncEngine) -> None:
    assert await _claim(engine, "a") == (1, 0)
    async with engine.begin() as conn:
        assert await advance(conn, KEY, epoch=1, expected=0, next_offset=10)
    assert await _claim(engine, "b") == (2, 10)
    async with engine.connect() as conn:
        assert await position(conn, KEY) == (2, 10)
        claims = (
            await conn.execute(text("SELECT epoch, next_offset, owner FROM onceflow_claims"))
        ).all()
    assert [tuple(r) for r in claims] == [(1, 0, "a"), (2, 10, "b")]
    await engine.dispose()


async def test_an_old_epoch_cannot_move_the_offset(engine: AsyncEngine) -> None:
    await _claim(engine, "old")
    await _claim(engine, "new")
    async with engine.begin() as conn:
        assert not await advance(conn, KEY, epoch=1, expected=0, next_offset=5)
        assert await advance(conn, KEY, epoch=2, expected=0, next_offset=5)
    async with engine.begin() as conn:
        # The right epoch but a stale expected offset (an ambiguous commit that went through)
        assert not await advance(conn, KEY, epoch=2, expected=0, next_offset=9)
    async with engine.connect() as conn:
        assert await position(conn, KEY) == (2, 5)
    await engine.dispose()


async def test_a_fenced_batch_rolls_back_its_rows(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE rows (v INTEGER)"))
    await _claim(engine, "old")
    await _claim(engine, "new")
    with pytest.raises(RuntimeError):
        async with engine.begin() as conn:
            await conn.execute(text("INSERT INTO rows VALUES (1)"))
            if not await advance(conn, KEY, epoch=1, expected=0, next_offset=1):
                raise RuntimeError("fenced")
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM rows"))).scalar() == 0
    await engine.dispose()


async def test_other_partitions_and_groups_are_separate(engine: AsyncEngine) -> None:
    await _claim(engine, "a")
    async with engine.begin() as conn:
        other = PartitionKey(KEY.group, KEY.topic, 4)
        assert await claim(conn, other, "a") == (1, 0)
        assert await claim(conn, PartitionKey("g2", KEY.topic, 3), "a") == (1, 0)
    await engine.dispose()


def test_dsn_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ONCEFLOW_SQL_SINK_DSN", raising=False)
    with pytest.raises(ConfigurationError, match="ONCEFLOW_SQL_SINK_DSN"):
        resolve_dsn(None, load_settings(), "orders")
    dsn = "postgresql+asyncpg://u:secret@db/x"
    assert resolve_dsn(None, load_settings(sql_sink_dsn=dsn), "orders") == dsn
    named = load_settings(sql_databases={"main": dsn})
    assert resolve_dsn("main", named, "orders") == dsn
    with pytest.raises(ConfigurationError, match=r"ONCEFLOW_SQL_DATABASES.*has: main"):
        resolve_dsn("other", named, "orders")
    assert (
        resolve_dsn("sqlite+aiosqlite:///x.db", load_settings(), "o") == "sqlite+aiosqlite:///x.db"
    )
    with pytest.raises(ConfigurationError, match="mysql"):
        resolve_dsn("mysql://db/x", load_settings(), "orders")


def test_named_databases_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ONCEFLOW_SQL_DATABASES", '{"main": "sqlite+aiosqlite:///m.db"}')
    assert resolve_dsn("main", load_settings(), "s") == "sqlite+aiosqlite:///m.db"
    monkeypatch.setenv("ONCEFLOW_SQL_DATABASES", "not json")
    with pytest.raises(ConfigurationError, match="ONCEFLOW_SQL_DATABASES"):
        load_settings()


async def test_errors_of_a_record_are_not_outages(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE t (v INTEGER NOT NULL CHECK (v >= 0))"))
    with pytest.raises(IntegrityError) as integrity:
        async with engine.begin() as conn:
            await conn.execute(text("INSERT INTO t VALUES (-1)"))
    assert not is_outage(integrity.value)
    assert not is_outage(ValueError("bad record"))
    with pytest.raises(OperationalError) as missing:
        async with engine.begin() as conn:
            await conn.execute(text("INSERT INTO missing VALUES (1)"))
    assert is_outage(missing.value)
    assert is_outage(ConnectionRefusedError())
    await engine.dispose()
