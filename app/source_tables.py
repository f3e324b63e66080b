"""Tables fed by a topic (Kafka Streams' ``KTable`` from a topic): ``SourceTable``.

A source table is declared on the App with ``app.source_table(topic, ...)``. Its store is
partition ``p`` of the topic, materialized in task ``p`` of its task group: the topic is one of
the group's co-partitioned sources, and its records are not handled by a handler: the task
applies each one to the store (a value is a put, a tombstone a delete) inside its transaction,
in its processing order, and commits their offsets with its own. The topic itself is the
table's changelog (no second copy): a restart restores the store from the topic up to the
task's committed offset, never beyond (docs/architecture.md, *Tables fed by a topic*).

Handlers of the group read it with ``get`` (a stream-table join); they cannot write it: only the
topic's producer does.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from onceflow.errors import ConfigurationError
from onceflow.records import ABSENT
from onceflow.tables import TableBase

if TYPE_CHECKING:
    from onceflow.context import Context
    from onceflow.serdes import Serde

__all__ = ["SourceTable", "validate_source_tables"]

K = TypeVar("K")
V = TypeVar("V")


class SourceTable(TableBase[K, V]):
    """A read-only table holding the latest value per key of a (compacted) topic.

    Example::

        customers = app.source_table("customers", key_serde="str", value_serde="json")

        @app.handler(orders)  # orders keyed by customer id, as many partitions as "customers"
        async def enrich(ctx: Context, customer_id: str, order: dict) -> None:
            customer = customers.get(ctx, customer_id)  # as of this order's place in the task
            await ctx.send(out, customer_id, {**order, "customer": customer})

    ``get`` reads through the task's open transaction: an order handled after a customer record
    in the same transaction sees it. ``None`` (or ``default``) for a key the topic never had, or
    whose last record is a tombstone. Records with a null key, or a key or value that does not
    deserialize, are not applied (the latter go to the dead-letter topic, stage
    ``deserialize``).
    """

    kind = "source table"
    ttl_ms: int | None = None  # what the runtime and queries ask of a key-value table

    def __init__(
        self,
        name: str,
        *,
        topic: str,
        app_id: str,
        key_serde: Serde[K],
        value_serde: Serde[V],
        default: Any,
        group: str,
    ) -> None:
        super().__init__(
            name,
            app_id=app_id,
            key_serde=key_serde,
            value_serde=value_serde,
            default=default,
            group=group,
        )
        self.topic = topic
        # The topic is the changelog: restores read it, nothing is ever written to it by us.
        self.changelog_topic = topic

    def get(self, ctx: Context, key: K) -> V:
        """The key's value as of this record's place in the task (the default when the topic
        has none for it)."""
        data = self._key_bytes(ctx, key)
        raw = ctx.staged(self.name, data)  # never staged by a handler: kept for symmetry
        if raw is ABSENT:
            raw = ctx.scope.store(self.name).get(data)
        return self._value(raw)

    def set(self, ctx: Context, key: K, value: V) -> None:
        """Refused: a source table changes only through its topic."""
        raise self._read_only("set")

    def delete(self, ctx: Context, key: K) -> None:
        """Refused: a source table changes only through its topic."""
        raise self._read_only("delete")

    def _read_only(self, what: str) -> ConfigurationError:
        return ConfigurationError(
            f"source table {self.name!r} is read-only ({what}): it holds what topic "
            f"{self.topic!r} holds; send a record to that topic (a tombstone to delete) instead"
        )

    def store_key(self, data: bytes) -> bytes:
        """The store key of serialized key ``data`` (itself)."""
        return data

    def visible(self, raw: bytes | None, stream_time: int) -> bytes | None:
        """The stored value as queries see it (no expiry)."""
        return raw

    def layout(self) -> dict[str, Any]:
        """The kind and the topic: a store filled from another topic is rebuilt."""
        return {**super().layout(), "topic": self.topic}

    def accepts(self, key: bytes | None, value: bytes | None) -> bool:
        """Whether a record of the topic is applied: it has a key and both deserialize (raises
        ``SerdeError`` otherwise). The task and the restore use it alike, so a restored store
        holds what processing applied."""
        if key is None:
            return False
        self.key_serde.deserialize(key)
        if value is not None:
            self.value_serde.deserialize(value)
        return True


def validate_source_tables(
    tables: Iterable[SourceTable[Any, Any]],
    handlers: Mapping[str, str],
    groups: Mapping[str, list[str]],
) -> None:
    """A source table's topic feeds that table only (``handlers``: topic -> handler name), and
    its task group has handlers (``groups``: ``App.groups()``)."""
    fed: dict[str, str] = {}
    for table in tables:
        if table.topic in handlers:
            raise ConfigurationError(
                f"topic {table.topic!r} feeds source table {table.name!r} and has handler "
                f"{handlers[table.topic]}: a task applies its records to the table, no handler "
                "sees them. Read the table from the handlers of the other topics instead"
            )
        if table.topic in fed:
            raise ConfigurationError(
                f"topic {table.topic!r} feeds source tables {fed[table.topic]!r} and "
                f"{table.name!r}; declare one and read it from both places"
            )
        fed[table.topic] = table.name
        if not any(t in handlers for t in groups.get(table.group, ())):
            raise ConfigurationError(
                f"source table {table.name!r} is in task group {table.group!r}, which has no "
                "handlers: declare it with the group= of the handlers that read it"
            )
