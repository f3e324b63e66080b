"""SQL sinks as the App declares them: ``@app.sql_sink(topic)`` on ``async def f(tx, records)``.

A sink reads ``topic`` (read_committed) and turns each batch of one partition's records into SQL
in **one database transaction** that also moves the partition's offset, kept in the database
(``onceflow_offsets``), fenced by an epoch per partition: each input record changes the database
exactly once (docs/architecture.md, *Exactly-once into a database*). The worker runs it
(``onceflow.runtime.sql_sinks``).

Example::

    orders = app.topic("orders-enriched", key_serde="str", value_serde="json")

    @app.sql_sink(orders, name="orders")
    async def store(tx: SinkTransaction, records: list[SinkRecord]) -> None:
        await tx.execute(text("INSERT INTO orders (id, amount) VALUES (:id, :amount)"),
                         [{"id": r.key, "amount": r.value["amount"]} for r in records])
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from onceflow.records import Header
from onceflow.topics import Topic

if TYPE_CHECKING:
    from sqlalchemy.engine import Result
    from sqlalchemy.ext.asyncio import AsyncConnection

__all__ = ["SinkFn", "SinkRecord", "SinkTransaction", "SqlSink"]

K = TypeVar("K")
V = TypeVar("V")

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


@dataclass(frozen=True, slots=True)
class SinkRecord(Generic[K, V]):
    """One input record of a sink batch, decoded with its topic's serdes."""

    key: K
    value: V
    topic: str
    partition: int
    offset: int
    timestamp: int
    headers: tuple[Header, ...]


class SinkTransaction:
    """The open database transaction of one batch of one partition.

    ``execute`` runs a statement in it (SQLAlchemy Core: ``text(...)``, ``insert(...)``, with a
    dict or a list of dicts for executemany); ``connection`` is the SQLAlchemy ``AsyncConnection``
    itself. ``epoch`` is this owner's epoch of the partition (a row may record it). Do not commit
    or roll back: the sink does, after it has moved the offset in the same transaction.
    """

    __slots__ = ("connection", "epoch", "partition", "sink", "topic")

    def __init__(
        self, connection: AsyncConnection, *, sink: str, topic: str, partition: int, epoch: int
    ) -> None:
        self.connection = connection
        self.sink = sink
        self.topic = topic
        self.partition = partition
        self.epoch = epoch

    async def execute(self, statement: Any, parameters: Any = None) -> Result[Any]:
        """``await tx.execute(text("UPDATE t SET n = n + :d WHERE k = :k"), {"d": 1, "k": "a"})``"""
        result: Result[Any] = await self.connection.execute(statement, parameters)
        return result


SinkFn = Callable[[SinkTransaction, Sequence[SinkRecord[Any, Any]]], Awaitable[None]]


@dataclass(frozen=True)
class SqlSink:
    """A registered SQL sink: its coroutine, source topic, database and batch size.

    ``database``: None = the DSN in ``ONCEFLOW_SQL_SINK_DSN``; a name = that entry of the JSON
    object ``ONCEFLOW_SQL_DATABASES``; a URL with ``://`` = that DSN as is (only for databases
    without a secret, e.g. ``sqlite+aiosqlite:///orders.db``). ``batch``: None = the setting
    ``ONCEFLOW_SQL_SINK_BATCH_SIZE``.
    """

    fn: SinkFn
    topic: Topic[Any, Any]
    name: str
    database: str | None
    batch: int | None

    @staticmethod
    def check_name(name: str) -> str:
        from onceflow.errors import ConfigurationError

        if not _NAME.match(name):
            raise ConfigurationError(
                f"sql sink name {name!r} must be lower-case letters, digits and _, starting "
                "with a letter (it names the sink's consumer group and its metrics)"
            )
        return name
