"""``SessionTable``: one value per key and session (Kafka Streams' session windows).

A session of a key is ``[start, end]`` (inclusive): the event times of its first and last record.
A record at ``t`` joins every *open* session of its key that it is within ``gap`` of (``end >=
t - gap`` and ``start <= t + gap``); when it touches several, they merge into one, their values
combined with the table's ``merge`` function, and the record's update applies to the result.

A session closes once stream time passes ``end + gap + grace`` (``Session.is_closed``): no record
can join it any more, so a closed session is final. A record whose session — the merged one —
would already be closed is late: dropped and counted (``ctx.mark_late``). Kafka Streams judges
lateness the same way; unlike Kafka Streams, a closed session still within retention is not
merged back into a new one, so a session is final at the same moment whatever the retention.

Stored by ``(key, session end)`` with the start in the value (``window_ranges.pack``), so the
sessions a record may join are one range read (ends from ``t - gap``), and retention expires
sessions by their end, as Kafka Streams' segmented session stores do.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import reduce
from typing import Any, Literal, TypeVar

from onceflow.context import Context
from onceflow.errors import ConfigurationError
from onceflow.serdes import Serde
from onceflow.tables import WindowValue
from onceflow.window_ranges import MAX_SLOT, RangeTable, pack, unpack
from onceflow.windows import Session

__all__ = ["SessionTable"]

K = TypeVar("K")
V = TypeVar("V")


class SessionTable(RangeTable[K, V]):
    """A table with one value per key and session; declare it with
    ``app.windowed_table(name, window=Session(gap=...), merge=fn, ...)``.

    Example: count clicks per user session, sending each session's running count::

        sessions = app.windowed_table(
            "sessions", window=Session(gap=timedelta(minutes=30)), merge=operator.add,
            default=0, value_serde="int64",
        )

        @app.handler(clicks)
        async def count(ctx: Context, user: str, click: str) -> None:
            session = sessions.add(ctx, user, 1)
            if session is not None:
                await ctx.send(out, user, f"{session.start}-{session.end}: {session.value}")

    ``WindowValue.end`` of a session is inclusive: the event time of its last record.
    """

    kind = "session"

    def __init__(
        self,
        name: str,
        *,
        app_id: str,
        window: Session,
        merge: Callable[[V, V], V],
        grace_ms: int,
        retention_ms: int | None,
        emit: Literal["update", "close"],
        key_serde: Serde[K],
        value_serde: Serde[V],
        default: Any,
        group: str,
    ) -> None:
        if not callable(merge):
            raise ConfigurationError(
                f"session table {name!r}: merge must be a function (a, b) -> value combining the "
                f"values of two sessions a record joins, got {merge!r:.40}"
            )
        super().__init__(
            name,
            app_id=app_id,
            span_ms=window.gap_ms,
            grace_ms=grace_ms,
            retention_ms=retention_ms,
            emit=emit,
            key_serde=key_serde,
            value_serde=value_serde,
            default=default,
            group=group,
        )
        self.window = window
        self.merge = merge

    def update(
        self, ctx: Context, key: K, fn: Callable[[V], V], *, timestamp: int | None = None
    ) -> WindowValue[V] | None:
        """Put the record (event time ``timestamp``, default the record's) in its key's session
        and store ``fn(value)`` there: ``value`` is the session's value, the merged value of the
        sessions the record joins, or the default for a new session. Returns the session after
        the update, or None when the record is late (nothing is written)."""
        data = self._key_bytes(ctx, key)
        t = ctx.timestamp if timestamp is None else timestamp
        stream_time = ctx.scope.stream_time
        gap, grace = self.window.gap_ms, self.grace_ms
        # Open sessions end at stream_time - gap - grace or later; joinable ones at t - gap.
        lo = max(t - gap, stream_time - gap - grace)
        joined = []
        start, end = t, t
        for slot, raw in self._rows(ctx, data, lo, MAX_SLOT):
            first, stored = unpack(raw)
            if first <= t + gap:
                joined.append((slot, stored))
                start, end = min(start, first), max(end, slot)
        if self.window.is_closed(end, stream_time, grace):
            ctx.mark_late(self.name)
            return None
        if joined:
            current = reduce(self.merge, (self.value_serde.deserialize(v) for _, v in joined))
        else:
            current = self._default()
        value = fn(current)
        for slot, _ in joined:
            if slot != end:
                self._stage(ctx, data, slot, None)
        self._stage(ctx, data, end, pack(start, self.value_serde.serialize(value)))
        return WindowValue(start, end, value)

    def add(
        self, ctx: Context, key: K, delta: Any, *, timestamp: int | None = None
    ) -> WindowValue[V] | None:
        """``update`` with ``value + delta``: session counts and sums."""
        return self.update(ctx, key, lambda v: v + delta, timestamp=timestamp)

    def sessions(self, ctx: Context, key: K) -> list[WindowValue[V]]:
        """The key's sessions within retention, by start, as this handler sees them."""
        data = self._key_bytes(ctx, key)
        found = [
            WindowValue(start, slot, self.value_serde.deserialize(value))
            for slot, raw in self._rows(ctx, data, -MAX_SLOT - 1, MAX_SLOT)
            for start, value in (unpack(raw),)
        ]
        return sorted(found, key=lambda w: w.start)

    def _window(self, slot: int, stamp: int) -> tuple[int, int]:
        return stamp, slot

    def _committed_span(self, from_ms: int, to_ms: int) -> tuple[int, int]:
        return from_ms, MAX_SLOT  # a session starting in the range ends at its start or later

    def layout(self) -> dict[str, Any]:
        """The window definition besides retention and segments: another one is a rebuild."""
        return {**super().layout(), "gap_ms": self.window.gap_ms}
