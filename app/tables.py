"""Tables: per-partition state that handlers read and write inside the task's transaction.

A ``Table`` is a key-value table; a ``WindowedTable`` keeps one value per key and event-time
window. Both are declared on the App, stored per task in SQLite and changelogged to
``<app_id>-<name>-changelog``. Every access names the handler's ``ctx``: a table is always
scoped to the partition the current record came from.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

from onceflow.context import Context
from onceflow.errors import ConfigurationError, WrongPartitionError
from onceflow.naming import changelog_topic
from onceflow.partitioner import cached_partition_for_key
from onceflow.records import ABSENT
from onceflow.serdes import Serde
from onceflow.state.windowed import changelog_key
from onceflow.windows import Hopping, Tumbling

if TYPE_CHECKING:
    from onceflow.state.typing import StorePartition
    from onceflow.state.windowed import WindowedStorePartition

__all__ = ["Table", "WindowValue", "WindowedTable"]

K = TypeVar("K")
V = TypeVar("V")


def _default_of(default: Any) -> Callable[[], Any]:
    return default if callable(default) else (lambda: default)


class _TableBase(Generic[K, V]):
    kind: str = ""

    def __init__(
        self,
        name: str,
        *,
        app_id: str,
        key_serde: Serde[K],
        value_serde: Serde[V],
        default: Any,
        group: str,
    ) -> None:
        self.name = name
        self.changelog_topic = changelog_topic(app_id, name)
        self.key_serde = key_serde
        self.value_serde = value_serde
        self.group = group
        self._default = _default_of(default)

    def _key_bytes(self, ctx: Context, key: K) -> bytes:
        data = self.key_serde.serialize(key)
        partitions = ctx.scope.num_partitions
        owner = cached_partition_for_key(data, partitions)
        if owner != ctx.partition:
            raise WrongPartitionError(
                f"table {self.name!r}: key {key!r} belongs to partition {owner} of {partitions}, "
                f"but this record came from partition {ctx.partition} (task {ctx.task_id}). "
                "Tables are partitioned like their source topics: key the input by the table key "
                "(repartition upstream) before writing."
            )
        return data

    def _value(self, raw: bytes | None) -> V:
        """A stored or staged value, deserialized (the default for a missing key)."""
        return self._default() if raw is None else self.value_serde.deserialize(raw)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class Table(_TableBase[K, V]):
    """A key-value table. Reads see this task's uncommitted writes; queries see committed ones.

    Example::

        totals = app.table("totals", default=0, key_serde="str", value_serde="json")

        @app.handler(payments)
        async def total(ctx: Context, user: str, amount: int) -> None:
            await ctx.send(out, user, totals.add(ctx, user, amount))
    """

    kind = "table"

    def _store(self, ctx: Context) -> StorePartition:
        return ctx.scope.store(self.name)

    def get(self, ctx: Context, key: K) -> V:
        """The key's value (the table's default when it has none)."""
        data = self._key_bytes(ctx, key)
        raw = ctx.staged(self.name, data)
        if raw is ABSENT:
            raw = self._store(ctx).get(data)
        return self._value(raw)

    def set(self, ctx: Context, key: K, value: V) -> None:
        """Replace the key's value."""
        ctx.stage(self.name, self._key_bytes(ctx, key), self.value_serde.serialize(value))

    def delete(self, ctx: Context, key: K) -> None:
        """Remove the key (a tombstone in the changelog)."""
        ctx.stage(self.name, self._key_bytes(ctx, key), None)

    def update(self, ctx: Context, key: K, fn: Callable[[V], V]) -> V:
        """Read-modify-write: store ``fn(current)`` and return it."""
        value = fn(self.get(ctx, key))
        self.set(ctx, key, value)
        return value

    def add(self, ctx: Context, key: K, delta: Any) -> V:
        """``update`` with ``current + delta``: counters and sums."""
        return self.update(ctx, key, lambda current: current + delta)


@dataclass(frozen=True, slots=True)
class WindowValue(Generic[V]):
    """One window of a key: ``[start, end)`` in epoch milliseconds, and its value (session and
    sliding windows: ``[start, end]``, ``end`` inclusive, as in Kafka Streams)."""

    start: int
    end: int
    value: V


class WindowedTable(_TableBase[K, V]):
    """A table with one value per key and event-time window (tumbling or hopping).

    Event time is the record timestamp (or the ``timestamp=`` given to ``add``,
    ``add_windows`` or ``update_windows``); stream time
    is the largest event time the task has seen. A record is late for a window once
    ``stream_time >= window end + grace``: it is dropped for that window and counted in
    ``onceflow_late_records_dropped_total``. Windows older than ``retention`` are deleted segment
    by segment.
    """

    kind = "windowed"

    def __init__(
        self,
        name: str,
        *,
        app_id: str,
        window: Tumbling | Hopping,
        grace_ms: int,
        retention_ms: int | None,
        emit: Literal["update", "close"],
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
        if grace_ms < 0:
            raise ConfigurationError(f"windowed table {name!r}: grace must be >= 0")
        self.window = window
        self.grace_ms = grace_ms
        self.retention_ms = max(
            retention_ms if retention_ms is not None else 0, window.size_ms + grace_ms
        )
        self.emit = emit
        # Segments of retention/2 (at least one window) keep expiry to whole-range deletes.
        self.segment_interval_ms = max(self.retention_ms // 2, window.size_ms, 60_000)

    def _store(self, ctx: Context) -> WindowedStorePartition:
        return ctx.scope.windowed_store(self.name)

    def _open_windows(self, ctx: Context, timestamp: int) -> list[tuple[int, int]]:
        stream_time = ctx.scope.stream_time
        windows = []
        for start, end in self.window.windows_for(timestamp):
            if stream_time >= end + self.grace_ms:
                ctx.mark_late(self.name)
            else:
                windows.append((start, end))
        return windows

    def _get_window(self, ctx: Context, data: bytes, start: int) -> V:
        raw = ctx.staged(self.name, changelog_key(data, start))
        if raw is ABSENT:
            raw = self._store(ctx).get(data, start)
        return self._value(raw)

    def update_windows(
        self, ctx: Context, key: K, fn: Callable[[V], V], *, timestamp: int | None = None
    ) -> list[WindowValue[V]]:
        """Apply ``fn`` to the key's value in every open window of the record's event time.

        Returns the new values; an empty list when the record is late for all its windows.
        """
        data = self._key_bytes(ctx, key)
        results = []
        for start, end in self._open_windows(
            ctx, ctx.timestamp if timestamp is None else timestamp
        ):
            value = fn(self._get_window(ctx, data, start))
            ctx.stage(self.name, changelog_key(data, start), self.value_serde.serialize(value))
            results.append(WindowValue(start, end, value))
        return results

    def add_windows(
        self, ctx: Context, key: K, delta: Any, *, timestamp: int | None = None
    ) -> list[WindowValue[V]]:
        """``update_windows`` with ``current + delta``."""
        return self.update_windows(ctx, key, lambda v: v + delta, timestamp=timestamp)

    def add(self, ctx: Context, key: K, delta: Any, *, timestamp: int | None = None) -> V | None:
        """Add ``delta`` in the record's one tumbling window; None if the record is late.

        For hopping windows (several windows per record) use ``add_windows``.
        """
        if not isinstance(self.window, Tumbling):
            raise ConfigurationError(
                f"windowed table {self.name!r}: add() needs tumbling windows; a hopping window "
                "puts a record in several windows — use add_windows()"
            )
        results = self.add_windows(ctx, key, delta, timestamp=timestamp)
        return results[0].value if results else None

    def get(self, ctx: Context, key: K, window_start: int) -> V:
        """The key's value in the window that starts at ``window_start``."""
        return self._get_window(ctx, self._key_bytes(ctx, key), window_start)
