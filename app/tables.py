"""Tables: per-partition state that handlers read and write inside the task's transaction.

A ``Table`` is a key-value table; a ``WindowedTable`` keeps one value per key and event-time
window. Both are declared on the App, stored per task in SQLite and changelogged to
``<app_id>-<name>-changelog``. Every access names the handler's ``ctx``: a table is always
scoped to the partition the current record came from.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, cast

from onceflow.context import Context
from onceflow.errors import ConfigurationError, WrongPartitionError
from onceflow.naming import changelog_topic
from onceflow.partitioner import cached_partition_for_key
from onceflow.records import ABSENT
from onceflow.serdes import Serde
from onceflow.state.ttl import encode_row, live_value, row_key
from onceflow.state.windowed import changelog_key
from onceflow.windows import Hopping, Tumbling

if TYPE_CHECKING:
    from onceflow.state.typing import StorePartition
    from onceflow.state.windowed import WindowedStorePartition

__all__ = ["CloseFn", "Table", "TableBase", "WindowValue", "WindowedTable"]

K = TypeVar("K")
V = TypeVar("V")


def _default_of(default: Any) -> Callable[[], Any]:
    return default if callable(default) else (lambda: default)


class TableBase(Generic[K, V]):
    """What every table shares: name, changelog topic, serdes, default, task group, the key's
    partition check and ``layout()``. The base of ``Table``, ``WindowedTable`` and the range
    tables (``onceflow.window_ranges``); not declared on its own."""

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

    def layout(self) -> dict[str, Any]:
        """What decides which rows the table's store holds and under which keys (JSON-able).

        Recorded in each store partition; a store recorded with another layout is rebuilt from
        the changelog at start (docs/architecture.md, *State*). Subclasses add their fields:
        a field named ``*_ms`` is logged as milliseconds when it changes.
        """
        return {"kind": self.kind}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class Table(TableBase[K, V]):
    """A key-value table. Reads see this task's uncommitted writes; queries see committed ones.

    With ``ttl_ms``, a key not written for that long in stream time is gone: handlers read the
    default once the task's stream time says so, queries once its committed stream time does,
    and each commit deletes expired keys, with tombstones in the changelog
    (docs/architecture.md, *Tables with TTL*).

    Example::

        totals = app.table("totals", default=0, key_serde="str", value_serde="json")

        @app.handler(payments)
        async def total(ctx: Context, user: str, amount: int) -> None:
            await ctx.send(out, user, totals.add(ctx, user, amount))
    """

    kind = "table"

    def __init__(
        self,
        name: str,
        *,
        app_id: str,
        key_serde: Serde[K],
        value_serde: Serde[V],
        default: Any,
        group: str,
        ttl_ms: int | None = None,
    ) -> None:
        super().__init__(
            name,
            app_id=app_id,
            key_serde=key_serde,
            value_serde=value_serde,
            default=default,
            group=group,
        )
        if ttl_ms is not None and ttl_ms <= 0:
            raise ConfigurationError(f"table {name!r}: ttl must be positive, got {ttl_ms} ms")
        self.ttl_ms = ttl_ms

    def _store(self, ctx: Context) -> StorePartition:
        return ctx.scope.store(self.name)

    def store_key(self, data: bytes) -> bytes:
        """The store key of serialized key ``data`` (for committed reads: queries, tests)."""
        return data if self.ttl_ms is None else row_key(data)

    def visible(self, raw: bytes | None, stream_time: int) -> bytes | None:
        """The serialized value of store value ``raw`` as of ``stream_time`` (None: absent, or
        expired in a ttl table)."""
        return raw if self.ttl_ms is None else live_value(raw, self.ttl_ms, stream_time)

    def get(self, ctx: Context, key: K) -> V:
        """The key's value (the table's default when it has none, or when it expired)."""
        return self._get(ctx, self._key_bytes(ctx, key))

    def _get(self, ctx: Context, data: bytes) -> V:
        raw = ctx.staged(self.name, data)
        if self.ttl_ms is not None:
            if raw is ABSENT:
                raw = self._store(ctx).get(row_key(data))
            return self._value(live_value(raw, self.ttl_ms, ctx.scope.stream_time))
        if raw is ABSENT:
            raw = self._store(ctx).get(data)
        return self._value(raw)

    def set(self, ctx: Context, key: K, value: V) -> None:
        """Replace the key's value (in a ttl table, also its time of last write)."""
        self._set(ctx, self._key_bytes(ctx, key), value)

    def _set(self, ctx: Context, data: bytes, value: V) -> None:
        raw = self.value_serde.serialize(value)
        if self.ttl_ms is not None:
            raw = encode_row(ctx.scope.stream_time, raw)
        ctx.stage(self.name, data, raw)

    def delete(self, ctx: Context, key: K) -> None:
        """Remove the key (a tombstone in the changelog)."""
        ctx.stage(self.name, self._key_bytes(ctx, key), None)

    def update(self, ctx: Context, key: K, fn: Callable[[V], V]) -> V:
        """Read-modify-write: store ``fn(current)`` and return it."""
        data = self._key_bytes(ctx, key)  # serialized and checked once for both
        value = fn(self._get(ctx, data))
        self._set(ctx, data, value)
        return value

    def add(self, ctx: Context, key: K, delta: Any) -> V:
        """``update`` with ``current + delta``: counters and sums."""
        return self.update(ctx, key, lambda current: current + delta)

    def layout(self) -> dict[str, Any]:
        """A ttl table's changelog records carry their write time: another kind of table. The
        ttl's length is not recorded: every row carries its own write time, so changing it
        needs no rebuild."""
        return {"kind": "table" if self.ttl_ms is None else "table with ttl"}


@dataclass(frozen=True, slots=True)
class WindowValue(Generic[V]):
    """One window of a key: ``[start, end)`` in epoch milliseconds, and its value (session and
    sliding windows: ``[start, end]``, ``end`` inclusive, as in Kafka Streams)."""

    start: int
    end: int
    value: V


CloseFn = Callable[[Context, Any, WindowValue[Any]], Awaitable[None]]
C = TypeVar("C", bound=CloseFn)


class WindowedTable(TableBase[K, V]):
    """A table with one value per key and event-time window (tumbling or hopping).

    Event time is the record timestamp (or the ``timestamp=`` given to ``add``,
    ``add_windows`` or ``update_windows``); stream time is the largest event time the task has
    seen. A record is late for a window once ``stream_time >= window end + grace``: it is
    dropped for that window and counted in ``onceflow_late_records_dropped_total``. A window is
    expired once ``stream_time - retention`` passes its start: reads see the default, queries
    leave it out, and commits delete it segment by segment.

    ``emit="update"`` (the default): ``add`` and friends return the values they wrote, for the
    handler to send on every update. ``emit="close"``: they return nothing, and each window's
    final value goes, once, to the table's ``on_close`` coroutine when stream time passes the
    window's end + grace (docs/architecture.md, *Time*)::

        counts = app.windowed_table("c", window=Tumbling(minutes=5), emit="close", default=0)

        @counts.on_close
        async def final(ctx: Context, key: str, window: WindowValue[int]) -> None:
            await ctx.send(out, key, str(window.value))
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
        if emit not in ("update", "close"):
            raise ConfigurationError(
                f"windowed table {name!r}: emit must be 'update' or 'close', not {emit!r}"
            )
        self.window = window
        self.grace_ms = grace_ms
        self.retention_ms = max(
            retention_ms if retention_ms is not None else 0, window.size_ms + grace_ms
        )
        self.emit = emit
        self.closers: list[CloseFn] = []
        if emit == "close":
            # One window start per segment: the windows that close together are one range.
            self.segment_interval_ms = window.advance_ms
        else:
            # Segments of retention/2 (at least one window) keep expiry to whole-range deletes.
            self.segment_interval_ms = max(self.retention_ms // 2, window.size_ms, 60_000)

    def on_close(self, fn: C) -> C:
        """Register ``async def fn(ctx, key, window)`` to receive each window's final value
        (``window``: a ``WindowValue``) once, in the transaction whose stream time closes it.
        Only for ``emit="close"``. ``ctx.timestamp`` (what sends default to) is the window's
        last millisecond; ``ctx.topic`` is empty and ``ctx.offset`` -1: no record is handled."""
        name = getattr(fn, "__qualname__", repr(fn))
        if self.emit != "close":
            raise ConfigurationError(
                f"windowed table {self.name!r}: on_close needs emit='close' (with emit="
                f"'update' a handler sends the values add() returns); {name} is not registered"
            )
        if not inspect.iscoroutinefunction(cast(Any, fn)):
            raise ConfigurationError(f"on_close {name} must be an async def (ctx, key, window)")
        self.closers.append(fn)
        return fn

    def expired_before(self, stream_time: int) -> int:
        """Windows that start before this are expired at ``stream_time``."""
        return stream_time - self.retention_ms if stream_time >= 0 else -(2**63)

    def closing_starts(self, previous: int, now: int) -> tuple[int, int]:
        """The window starts ``[lo, hi]`` whose windows close when stream time moves from
        ``previous`` to ``now`` (close = end + grace, in ``(previous, now]``)."""
        span = self.window.size_ms + self.grace_ms
        return previous - span + 1, now - span

    def next_close(self, stream_time: int) -> int:
        """The first stream time after ``stream_time`` at which some window (of any key) can
        close: ``start + size + grace`` for the next aligned start."""
        advance, span = self.window.advance_ms, self.window.size_ms + self.grace_ms
        start = max(0, (stream_time - span) // advance * advance + advance)
        return start + span

    def layout(self) -> dict[str, Any]:
        """The kind, the windows (their starts), the retention (which windows exist) and the
        segment interval (the store key's first field)."""
        return {
            **super().layout(),
            "window_size_ms": self.window.size_ms,
            "window_advance_ms": self.window.advance_ms,
            "retention_ms": self.retention_ms,
            "segment_interval_ms": self.segment_interval_ms,
        }

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
        if start < self.expired_before(ctx.scope.stream_time):
            return self._value(None)
        raw = ctx.staged(self.name, changelog_key(data, start))
        if raw is ABSENT:
            raw = self._store(ctx).get(data, start)
        return self._value(raw)

    def update_windows(
        self, ctx: Context, key: K, fn: Callable[[V], V], *, timestamp: int | None = None
    ) -> list[WindowValue[V]]:
        """Apply ``fn`` to the key's value in every open window of the record's event time.

        Returns the new values (an empty list when the record is late for all its windows);
        always an empty list with ``emit="close"``, whose values go to ``on_close``.
        """
        data = self._key_bytes(ctx, key)
        results = []
        for start, end in self._open_windows(
            ctx, ctx.timestamp if timestamp is None else timestamp
        ):
            value = fn(self._get_window(ctx, data, start))
            ctx.stage(self.name, changelog_key(data, start), self.value_serde.serialize(value))
            results.append(WindowValue(start, end, value))
        return results if self.emit == "update" else []

    def add_windows(
        self, ctx: Context, key: K, delta: Any, *, timestamp: int | None = None
    ) -> list[WindowValue[V]]:
        """``update_windows`` with ``current + delta``."""
        return self.update_windows(ctx, key, lambda v: v + delta, timestamp=timestamp)

    def add(self, ctx: Context, key: K, delta: Any, *, timestamp: int | None = None) -> V | None:
        """Add ``delta`` in the record's one tumbling window; None if the record is late, and
        always None with ``emit="close"``.

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
        """The key's value in the window that starts at ``window_start`` (the default once the
        window expired)."""
        return self._get_window(ctx, self._key_bytes(ctx, key), window_start)
