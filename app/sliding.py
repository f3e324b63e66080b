"""``SlidingWindowedTable``: one value per key and sliding window (Kafka Streams'
``SlidingWindows``).

A window is ``[start, start + size]``, both inclusive. The windows are those that records define:
for each record at ``t``, the window ending at ``t`` (``[t - size, t]``, or ``[0, size]`` while
``t < size``: no window starts before 0) and, if some record lies within ``(t, t + 1 + size]``,
the window starting at ``t + 1``. Each distinct set of records within ``size`` of each other
thus has one window, and a window's value is ``fn`` applied once per record in it. A record
updates every existing window that contains it and creates its own windows, copying a neighbour's
value where Kafka Streams does (the new window holds the same records).

A window closes once stream time passes ``end + grace``; a record is not written to closed
windows (and counts as late), and is dropped altogether when even ``[t, t + size]`` is closed.
Retention is at least ``2 * size + grace`` (Kafka Streams' minimum): a record reads the windows
that start up to ``2 * size`` before it.

Stored by ``(key, window start)`` with the latest record time in the window before the value
(``window_ranges.pack``): the algorithm needs it to tell which neighbour windows are empty. The
port follows Kafka Streams' ``KStreamSlidingWindowAggregate`` (``processInOrder``,
``processEarly``, ``createWindows``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, TypeVar

from onceflow.context import Context
from onceflow.serdes import Serde
from onceflow.tables import WindowValue
from onceflow.window_ranges import RangeTable, pack, unpack
from onceflow.windows import Sliding

__all__ = ["SlidingWindowedTable"]

K = TypeVar("K")
V = TypeVar("V")
_Agg = tuple[int, bytes]  # (latest record time, serialized value) of a window


class _Record:
    """One record's pass over its key's windows: what it wrote, by window start."""

    __slots__ = ("ctx", "data", "fn", "out", "t", "table")

    def __init__(
        self, table: SlidingWindowedTable[Any, Any], ctx: Context, data: bytes, fn: Any, t: int
    ) -> None:
        self.table, self.ctx, self.data, self.fn, self.t = table, ctx, data, fn, t
        self.out: dict[int, WindowValue[Any]] = {}

    def update(self, start: int, agg: _Agg | None) -> None:
        """Apply the record to window ``start`` (``agg``: its value, None for the default)."""
        table, t = self.table, self.t
        if table.window.is_closed(start, self.ctx.scope.stream_time, table.grace_ms):
            self.ctx.mark_late(table.name)
            return
        if agg is None:
            stamp, old = t, table._default()
        else:
            stamp, old = max(t, agg[0]), table.value_serde.deserialize(agg[1])
        self.put(start, stamp, table.value_serde.serialize(self.fn(old)))

    def put(self, start: int, stamp: int, value: bytes) -> None:
        table = self.table
        table._stage(self.ctx, self.data, start, pack(stamp, value))
        end = start + table.window.size_ms
        self.out[start] = WindowValue(start, end, table.value_serde.deserialize(value))


class SlidingWindowedTable(RangeTable[K, V]):
    """A table with one value per key and sliding window; declare it with
    ``app.windowed_table(name, window=Sliding(size=...), ...)``.

    Example: the number of a card's payments within any 10 minutes::

        recent = app.windowed_table(
            "recent", window=Sliding(size=timedelta(minutes=10)), default=0, value_serde="int64"
        )

        @app.handler(payments)
        async def check(ctx: Context, card: str, payment: dict) -> None:
            if any(w.value > 5 for w in recent.add_windows(ctx, card, 1)):
                await ctx.send(alerts, card, "more than 5 payments in 10 minutes")

    ``WindowValue.end`` is inclusive: ``start + size``.
    """

    kind = "sliding"

    def __init__(
        self,
        name: str,
        *,
        app_id: str,
        window: Sliding,
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
            span_ms=2 * window.size_ms,  # Kafka Streams' minimum: a record reads back 2 sizes
            grace_ms=grace_ms,
            retention_ms=retention_ms,
            emit=emit,
            key_serde=key_serde,
            value_serde=value_serde,
            default=default,
            group=group,
        )
        self.window = window

    def update_windows(
        self, ctx: Context, key: K, fn: Callable[[V], V], *, timestamp: int | None = None
    ) -> list[WindowValue[V]]:
        """Apply ``fn`` once for the record (event time ``timestamp``, default the record's) in
        every window of its key that contains it, creating the windows it defines. Returns the
        windows written, by start: those updated, and new ones (a new window that the record is
        not in holds a copy of a neighbour's value). Empty when the record is late."""
        data = self._key_bytes(ctx, key)
        t = ctx.timestamp if timestamp is None else timestamp
        size = self.window.size_ms
        if t < 0:
            return []  # as in Kafka Streams, no window starts before 0
        if self.window.is_closed(t, ctx.scope.stream_time, self.grace_ms):
            ctx.mark_late(self.name)  # even [t, t + size], its last window, is closed
            return []
        record = _Record(self, ctx, data, fn, t)
        if t < size:
            self._early(record)
        else:
            self._in_order(record)
        return [record.out[s] for s in sorted(record.out)]

    def add_windows(
        self, ctx: Context, key: K, delta: Any, *, timestamp: int | None = None
    ) -> list[WindowValue[V]]:
        """``update_windows`` with ``value + delta``."""
        return self.update_windows(ctx, key, lambda v: v + delta, timestamp=timestamp)

    def get(self, ctx: Context, key: K, window_start: int) -> V:
        """The key's value in the window that starts at ``window_start`` (the default if none)."""
        rows = self._rows(ctx, self._key_bytes(ctx, key), window_start, window_start)
        return self.value_serde.deserialize(unpack(rows[0][1])[1]) if rows else self._default()

    def fetch(self, ctx: Context, key: K, from_ms: int, to_ms: int) -> list[WindowValue[V]]:
        """The key's windows that start in ``[from_ms, to_ms]``, by start."""
        size, serde = self.window.size_ms, self.value_serde
        return [
            WindowValue(start, start + size, serde.deserialize(unpack(raw)[1]))
            for start, raw in self._rows(ctx, self._key_bytes(ctx, key), from_ms, to_ms)
        ]

    def _in_order(self, r: _Record) -> None:
        t, size = r.t, self.window.size_ms
        starts: set[int] = set()
        left_agg: _Agg | None = None  # the latest window ending before t
        right_agg: _Agg | None = None  # the latest window containing t and ending after it
        left_created = right_created = False
        previous: int | None = None  # the latest record time before t, if known
        for start, raw in self._rows(r.ctx, r.data, max(0, t - 2 * size), t + 1):
            agg = unpack(raw)
            starts.add(start)
            end = start + size
            if end < t:
                left_agg, previous = agg, agg[0]
            elif end == t:
                left_created = True
                if agg[0] < t:
                    previous = agg[0]
                r.update(start, agg)
            elif start <= t:
                right_agg = agg
                r.update(start, agg)
            else:  # start == t + 1
                right_created = True
        if previous is not None:
            right_of_previous = previous + 1
            if right_of_previous not in starts and right_of_previous + size >= t:
                r.update(right_of_previous, None)
        if not left_created:
            if left_agg is not None and previous is not None and t - size <= previous:
                r.update(t - size, (t, left_agg[1]))
            else:
                r.update(t - size, None)
        if not right_created and right_agg is not None and right_agg[0] > t:
            r.put(t + 1, *right_agg)

    def _early(self, r: _Record) -> None:
        """A record before ``size``: its left window is ``[0, size]``, which holds every early
        record (Kafka Streams' ``processEarly``)."""
        t = r.t
        starts: set[int] = set()
        combined: _Agg | None = None
        right_agg: _Agg | None = None
        right_created = False
        previous: int | None = None
        for start, raw in self._rows(r.ctx, r.data, 0, t + 1):
            agg = unpack(raw)
            starts.add(start)
            if start == 0:
                combined = agg
                if agg[0] < t:
                    previous = agg[0]
            elif start <= t:
                right_agg = agg
                r.update(start, agg)
            else:  # start == t + 1
                right_created = True
        if right_agg is None and combined is not None and combined[0] > t:
            right_agg = combined  # it holds only records after t: they make t's right window
        if not right_created and right_agg is not None and right_agg[0] > t:
            r.put(t + 1, *right_agg)
        if previous is not None and previous + 1 not in starts:
            r.update(previous + 1, None)
        r.update(0, combined)

    def _window(self, slot: int, stamp: int) -> tuple[int, int]:
        return slot, slot + self.window.size_ms

    def _committed_span(self, from_ms: int, to_ms: int) -> tuple[int, int]:
        return from_ms, to_ms

    def layout(self) -> dict[str, Any]:
        """The window definition besides retention and segments: another one is a rebuild."""
        return {**super().layout(), "window_size_ms": self.window.size_ms}
