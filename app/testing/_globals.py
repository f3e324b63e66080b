"""The test driver's global tables: one in-memory store per table, shared by every task.

A record sent to (or produced to) a global table's topic is applied at once, as the worker's
background consumer would apply it; handlers of every task then read it
(docs/architecture.md, *Global tables*).
"""

from __future__ import annotations

import logging
from typing import Any

from onceflow.global_tables import GlobalTable
from onceflow.state.memory import InMemoryStorePartition
from onceflow.topology import App

__all__ = ["GlobalView", "InMemoryGlobals"]

log = logging.getLogger("onceflow.testing")


class GlobalView:
    """The current state of one global table (what ``/tables/{name}/keys/{key}`` answers)."""

    def __init__(self, table: GlobalTable[Any, Any], store: InMemoryStorePartition) -> None:
        self._table, self._store = table, store

    def get(self, key: Any, default: Any = None) -> Any:
        """The key's value, or ``default`` when it has none."""
        raw = self._store.committed_get(self._table.key_serde.serialize(key))
        return default if raw is None else self._table.value_serde.deserialize(raw)


class InMemoryGlobals:
    """Every global table of ``app``, by name and by topic."""

    def __init__(self, app: App) -> None:
        self.tables = dict(app.global_tables)
        self.stores = {name: InMemoryStorePartition(name) for name in self.tables}
        self._by_topic = {t.topic: t for t in self.tables.values()}

    def table_of(self, ref: Any) -> GlobalTable[Any, Any] | None:
        """The global table ``ref`` names: the table, its topic's name, or a ``Topic`` of it."""
        if isinstance(ref, GlobalTable):
            return ref
        return self._by_topic.get(ref if isinstance(ref, str) else getattr(ref, "name", ""))

    def apply(self, topic: str, key: bytes | None, value: bytes | None) -> bool:
        """Apply a record of ``topic`` if it feeds a global table; whether it did. A record the
        table cannot read is logged and skipped, as the worker does."""
        table = self._by_topic.get(topic)
        if table is None:
            return False
        why = table.check(key, value)
        if why is not None or key is None:
            log.warning("global table %s: skipped record of %s: %s", table.name, topic, why)
            return True
        store = self.stores[table.name]
        if value is None:
            store.delete(key)
        else:
            store.put(key, value)
        store.flush(None)
        return True

    def view(self, name: str) -> GlobalView:
        return GlobalView(self.tables[name], self.stores[name])
