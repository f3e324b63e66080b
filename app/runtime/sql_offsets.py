"""The database side of a SQL sink: the engine, the offsets table, claiming a partition (the
epoch bump) and the fenced offset update that ends every batch transaction.

``onceflow_offsets`` holds one row per (consumer group, topic, partition): the next offset to
apply and the epoch of its current owner. ``onceflow_claims`` keeps one row per claim (epoch,
the offset it started from, the owner): an audit trail of who owned what from where. See
docs/architecture.md, *Exactly-once into a database*, for why the update is a fence under
PostgreSQL's READ COMMITTED and SQLite's single writer.

The SQL is the subset PostgreSQL and SQLite share (``INSERT ... ON CONFLICT DO NOTHING``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from onceflow.errors import ConfigurationError
from onceflow.settings import Settings

__all__ = [
    "PartitionKey",
    "advance",
    "claim",
    "create_tables",
    "is_outage",
    "make_engine",
    "position",
    "resolve_dsn",
]

log = logging.getLogger("onceflow.sql_sink")

_DDL = (
    """CREATE TABLE IF NOT EXISTS onceflow_offsets (
        consumer_group VARCHAR(255) NOT NULL,
        topic VARCHAR(255) NOT NULL,
        topic_partition INTEGER NOT NULL,
        next_offset BIGINT NOT NULL,
        epoch BIGINT NOT NULL,
        PRIMARY KEY (consumer_group, topic, topic_partition))""",
    """CREATE TABLE IF NOT EXISTS onceflow_claims (
        consumer_group VARCHAR(255) NOT NULL,
        topic VARCHAR(255) NOT NULL,
        topic_partition INTEGER NOT NULL,
        epoch BIGINT NOT NULL,
        next_offset BIGINT NOT NULL,
        owner VARCHAR(255) NOT NULL,
        PRIMARY KEY (consumer_group, topic, topic_partition, epoch))""",
)
_WHERE = "consumer_group = :g AND topic = :t AND topic_partition = :p"


@dataclass(frozen=True, slots=True)
class PartitionKey:
    """One partition of one sink's source topic, as ``onceflow_offsets`` keys it."""

    group: str
    topic: str
    partition: int

    def params(self) -> dict[str, Any]:
        return {"g": self.group, "t": self.topic, "p": self.partition}


def resolve_dsn(database: str | None, settings: Settings, sink: str) -> str:
    """The DSN of a sink's ``database=`` (see ``onceflow.sql_sink.SqlSink``), or a
    ``ConfigurationError`` naming the setting to set."""
    if database is None:
        if settings.sql_sink_dsn is None:
            raise ConfigurationError(
                f"sql sink {sink!r} has no database: set ONCEFLOW_SQL_SINK_DSN (e.g. "
                "postgresql+asyncpg://user:password@host/db or sqlite+aiosqlite:///path.db), "
                "or name an entry of ONCEFLOW_SQL_DATABASES with database="
            )
        dsn = settings.sql_sink_dsn.get_secret_value()
    elif "://" in database:
        dsn = database
    else:
        entry = settings.sql_databases.get(database)
        if entry is None:
            known = ", ".join(sorted(settings.sql_databases)) or "none"
            raise ConfigurationError(
                f"sql sink {sink!r} uses database {database!r}, which ONCEFLOW_SQL_DATABASES "
                f'does not name (it has: {known}); set ONCEFLOW_SQL_DATABASES=\'{{"{database}": '
                '"postgresql+asyncpg://..."}\''
            )
        dsn = entry.get_secret_value()
    if not dsn.startswith(("postgresql+asyncpg://", "sqlite+aiosqlite://")):
        where = "ONCEFLOW_SQL_SINK_DSN" if database is None else f"database {database!r}"
        raise ConfigurationError(
            f"sql sink {sink!r}: {where} must be a postgresql+asyncpg:// or sqlite+aiosqlite:// "
            f"URL (got scheme {dsn.split('://')[0]!r}): the sinks support these two drivers"
        )
    return dsn


def make_engine(dsn: str, settings: Settings) -> AsyncEngine:
    """An async engine with the sink settings: pool size, and the statement timeout (PostgreSQL:
    ``statement_timeout``; SQLite: how long to wait for the write lock)."""
    timeout_ms = settings.sql_sink_statement_timeout_ms
    if dsn.startswith("sqlite"):
        engine = create_async_engine(
            dsn,
            pool_size=settings.sql_sink_pool_size,
            connect_args={"timeout": timeout_ms / 1000},
        )
        _begin_immediate(engine)
        return engine
    return create_async_engine(
        dsn,
        pool_size=settings.sql_sink_pool_size,
        max_overflow=0,
        # No pre-ping (a round trip per batch): a connection the server dropped fails its
        # transaction, which is retried on a new one (an outage of one attempt).
        connect_args={
            # A paused owner's open transaction holds the offsets row's lock: the server ends
            # its session after this long, so that the next owner's claim goes through.
            "server_settings": {
                "statement_timeout": str(timeout_ms),
                "idle_in_transaction_session_timeout": str(timeout_ms),
            },
            "timeout": timeout_ms / 1000,  # connecting
            "command_timeout": timeout_ms / 1000 + 5,  # a server that stopped answering
        },
    )


def _begin_immediate(engine: AsyncEngine) -> None:
    """SQLite: every transaction takes the write lock at BEGIN (``BEGIN IMMEDIATE``), so that
    two writers queue on the lock (busy timeout) instead of one failing to upgrade its read
    lock; pysqlite's own implicit BEGIN is turned off."""

    @event.listens_for(engine.sync_engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine.sync_engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


async def create_tables(engine: AsyncEngine) -> None:
    """Create the offsets and claims tables if absent (two workers may race: a loser whose
    CREATE failed finds the table there on its retry)."""
    for attempt in range(2):
        try:
            async with engine.begin() as conn:
                for ddl in _DDL:
                    await conn.execute(text(ddl))
            return
        except (IntegrityError, DBAPIError):
            if attempt == 1:
                raise


async def claim(conn: AsyncConnection, key: PartitionKey, owner: str) -> tuple[int, int]:
    """Step 1 of owning a partition, in the caller's transaction: bump its epoch (the row is
    created at offset 0, epoch 0, if absent) and read where to start. Returns (epoch, next
    offset). The bump waits on the row lock of a previous owner's open batch transaction, and
    every later batch of that owner finds the epoch changed (fenced)."""
    params = key.params()
    await conn.execute(
        text(
            "INSERT INTO onceflow_offsets (consumer_group, topic, topic_partition, next_offset, "
            "epoch) VALUES (:g, :t, :p, 0, 0) ON CONFLICT DO NOTHING"
        ),
        params,
    )
    await conn.execute(
        text(f"UPDATE onceflow_offsets SET epoch = epoch + 1 WHERE {_WHERE}"), params
    )
    epoch, next_offset = await position(conn, key)
    await conn.execute(
        text(
            "INSERT INTO onceflow_claims (consumer_group, topic, topic_partition, epoch, "
            "next_offset, owner) VALUES (:g, :t, :p, :e, :n, :o)"
        ),
        {**params, "e": epoch, "n": next_offset, "o": owner[:255]},
    )
    return epoch, next_offset


async def advance(
    conn: AsyncConnection, key: PartitionKey, *, epoch: int, expected: int, next_offset: int
) -> bool:
    """The last statement of a batch transaction: move the partition's offset from ``expected``
    to ``next_offset`` if ``epoch`` still owns it. False: fenced (a newer owner bumped the
    epoch, or moved the offset): the caller must roll back."""
    result = await conn.execute(
        text(
            f"UPDATE onceflow_offsets SET next_offset = :n WHERE {_WHERE} "
            "AND epoch = :e AND next_offset = :x"
        ),
        {**key.params(), "n": next_offset, "e": epoch, "x": expected},
    )
    return result.rowcount == 1


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` means the database cannot be used now (down, unreachable, a deadlock, a
    timeout) rather than that a record's data is wrong: retried with backoff, never dead-lettered.
    Constraint violations and bad values (``IntegrityError``, ``DataError``) are the record's;
    so is any other exception raised by the sink's own function."""
    if isinstance(exc, (IntegrityError, DataError)):
        return False
    return isinstance(exc, (SQLAlchemyError, OSError, TimeoutError, ConnectionError))


async def position(conn: AsyncConnection, key: PartitionKey) -> tuple[int, int]:
    """The partition's (epoch, next offset) as committed."""
    row = (
        await conn.execute(
            text(f"SELECT epoch, next_offset FROM onceflow_offsets WHERE {_WHERE}"), key.params()
        )
    ).one()
    return int(row[0]), int(row[1])
