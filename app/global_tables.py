"""Global tables (Kafka Streams' ``GlobalKTable``): every worker holds all of a topic.

``app.global_table("countries")`` declares one. Each worker reads every partition of the topic
into a local SQLite store before it joins its group, then keeps it up to date in the background
(``read_committed``); any handler of any task group reads any key with ``get(ctx, key)``, without
co-partitioning (docs/architecture.md, *Global tables*).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from onceflow.context import Context
from onceflow.errors import ConfigurationError
from onceflow.serdes import Serde

__all__ = ["GlobalTable"]

K = TypeVar("K")
V = TypeVar("V")


class GlobalTable(Generic[K, V]):
    """A read-only table of all partitions of ``topic``, on every worker.

    The topic is written by someone else (another app, a connector, a handler of this app) and is
    the table's only copy: no changelog. A record sets its key's value; a tombstone (null value)
    deletes the key; the last record applied for a key wins. A record whose key or value does not
    deserialize is logged and skipped (the key keeps its previous value): it is no task's input,
    so there is no transaction for a dead letter to join.

    Reads are not part of the reading task's transaction: ``get`` returns the value the worker
    has applied so far, so a record replayed after a failure may see a newer value than its
    first attempt did (Kafka Streams' semantics for global tables: no time synchronisation).

    Example::

        countries = app.global_table("countries", key_serde="str", value_serde="json")

        @app.handler(orders)
        async def enrich(ctx: Context, order_id: str, order: dict) -> None:
            country = countries.get(ctx, order["country"])    # any key, any partition
            await ctx.send(enriched, order_id, {**order, "country_name": country["name"]})
    """

    kind = "global"

    def __init__(
        self,
        name: str,
        *,
        topic: str,
        key_serde: Serde[K],
        value_serde: Serde[V],
        default: Any = None,
    ) -> None:
        if not topic:
            raise ConfigurationError(f"global table {name!r}: the topic name is empty")
        if name.isdigit():
            raise ConfigurationError(
                f"global table name {name!r} must not be a number (it names a directory beside "
                "partition directories); pass name="
            )
        self.name = name
        self.topic = topic
        self.key_serde = key_serde
        self.value_serde = value_serde
        self._default: Callable[[], Any] = default if callable(default) else (lambda: default)

    def get(self, ctx: Context, key: K) -> V:
        """The key's current value on this worker (the table's default when it has none)."""
        raw = ctx.scope.global_store(self.name).get(self.key_serde.serialize(key))
        return self.value(raw)

    def value(self, raw: bytes | None) -> V:
        """A stored value, deserialized (the default for a missing key)."""
        return self._default() if raw is None else self.value_serde.deserialize(raw)

    def check(self, key: bytes | None, value: bytes | None) -> str | None:
        """Why a record of the topic cannot be applied (None: it can): a null key, or a key or
        value its serdes do not read."""
        if key is None:
            return "null key"
        try:
            self.key_serde.deserialize(key)
            if value is not None:
                self.value_serde.deserialize(value)
        except Exception as exc:  # user serdes may raise anything
            return f"does not deserialize: {exc}"
        return None

    def layout(self) -> dict[str, Any]:
        """What the store holds (docs/architecture.md, *Layout changes*): the topic's latest
        value per key. Another layout in a store at start reloads it from the topic."""
        return {"kind": self.kind, "topic": self.topic}

    def __repr__(self) -> str:
        return f"GlobalTable({self.name!r}, topic={self.topic!r})"
