"""What session and sliding-window tables share: windows of a key found by range reads.

A tumbling or hopping window is found from the record's timestamp alone; a session or a sliding
window is found by looking at the key's neighbouring windows. Both tables keep their windows in a
``WindowedStorePartition`` under ``(key, slot)`` — the session's end, the sliding window's start —
with an 8-byte signed big-endian stamp before the serialized value (the session's start, the
sliding window's latest record time), so the changelog, segment expiry and restore are the
windowed tables' own (docs/architecture.md, *State*, *Windowed tables*).

Reads inside a handler see the store through the open transaction *and* what this handler
attempt staged (``Context.staged_writes``), and hide every slot expired by the task's current
stream time, whether or not a commit has expired it yet.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from onceflow.context import Context
from onceflow.errors import ConfigurationError
from onceflow.serdes import Serde
from onceflow.state.ranges import RangeStorePartition
from onceflow.state.windowed import changelog_key, parse_changelog_key
from onceflow.tables import TableBase, WindowValue

if TYPE_CHECKING:
    from onceflow.state.windowed import WindowedStorePartition

__all__ = ["MAX_SLOT", "CommittedFetch", "RangeTable", "pack", "unpack"]

K = TypeVar("K")
V = TypeVar("V")
_STAMP = struct.Struct(">q")
MAX_SLOT = 2**63 - 1
CommittedFetch = Callable[[bytes, int, int], list[tuple[int, bytes]]]
"""``fetch(key, from_slot, to_slot)`` of committed rows: ``WindowedStorePartition.fetch`` with
``committed=True``, as a query or the test driver reads it."""


def pack(stamp: int, value: bytes) -> bytes:
    """A stored value: ``stamp`` (8 bytes, signed big-endian), then the serialized value."""
    return _STAMP.pack(stamp) + value


def unpack(raw: bytes) -> tuple[int, bytes]:
    """Inverse of ``pack``."""
    return int(_STAMP.unpack_from(raw)[0]), raw[_STAMP.size :]


class RangeTable(TableBase[K, V]):
    """Base of ``SessionTable`` and ``SlidingWindowedTable`` (not used on its own).

    Retention is at least ``span_ms + grace`` (what Kafka Streams requires: a session's gap; two
    sizes of a sliding window, which a record reads back to).
    """

    def __init__(
        self,
        name: str,
        *,
        app_id: str,
        span_ms: int,
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
        what = f"{self.kind} table {name!r}"
        if emit != "update":
            raise ConfigurationError(
                f"{what}: emit={emit!r} is not supported for session or sliding windows yet; "
                "use emit='update' (each update returns the window's new value)"
            )
        if grace_ms < 0:
            raise ConfigurationError(f"{what}: grace must be >= 0, got {grace_ms} ms")
        if retention_ms is not None and retention_ms < 0:
            raise ConfigurationError(f"{what}: retention must be >= 0, got {retention_ms} ms")
        self.grace_ms = grace_ms
        self.retention_ms = max(retention_ms or 0, span_ms + grace_ms)
        self.emit = emit
        # As for windowed tables: segments of retention/2 keep expiry to whole-range deletes.
        self.segment_interval_ms = max(self.retention_ms // 2, span_ms, 60_000)

    def _store(self, ctx: Context) -> WindowedStorePartition:
        return ctx.scope.windowed_store(self.name)

    def layout(self) -> dict[str, Any]:
        """The kind, the retention (which slots exist) and the segment interval (the store
        key's first field); subclasses add what defines their windows."""
        return {
            **super().layout(),
            "retention_ms": self.retention_ms,
            "segment_interval_ms": self.segment_interval_ms,
        }

    def live_from(self, stream_time: int) -> int:
        """The first slot not expired at ``stream_time`` (retention, by the slot)."""
        return stream_time - self.retention_ms

    def _rows(self, ctx: Context, data: bytes, lo: int, hi: int) -> list[tuple[int, bytes]]:
        """``(slot, stored value)`` of the key's live slots in ``[lo, hi]``, by slot, as this
        handler attempt sees them: the store through the open transaction, then its own writes."""
        lo = max(lo, self.live_from(ctx.scope.stream_time))
        if lo > hi:
            return []
        store = self._store(ctx)
        if isinstance(store, RangeStorePartition):  # the key's windows are likely in its copy
            rows = dict(store.fetch_tail(data, lo, hi))
        else:
            rows = dict(store.fetch(data, lo, hi))
        writes = ctx.staged_writes
        if writes:
            name = self.name
            for (table, staged_key), raw in writes.items():
                if table != name or not staged_key.startswith(data):
                    continue
                key, slot = parse_changelog_key(staged_key)
                if key == data and lo <= slot <= hi:
                    if raw is None:
                        rows.pop(slot, None)
                    else:
                        rows[slot] = raw
        return sorted(rows.items())

    def _stage(self, ctx: Context, data: bytes, slot: int, stored: bytes | None) -> None:
        ctx.stage(self.name, changelog_key(data, slot), stored)

    def _window(self, slot: int, stamp: int) -> tuple[int, int]:
        """``(start, end)`` (both inclusive) of the window stored at ``slot``."""
        raise NotImplementedError

    def _committed_span(self, from_ms: int, to_ms: int) -> tuple[int, int]:
        """The slots that may hold windows starting in ``[from_ms, to_ms]``."""
        raise NotImplementedError

    def committed_windows(
        self, fetch: CommittedFetch, data: bytes, from_ms: int, to_ms: int, stream_time: int
    ) -> list[WindowValue[V]]:
        """The key's committed windows that start in ``[from_ms, to_ms]``, by start, hiding those
        that ``stream_time`` (the task's committed stream time) expired. For HTTP queries and the
        test driver; ``data`` is the serialized key. Blocking."""
        lo, hi = self._committed_span(from_ms, to_ms)
        lo = max(lo, self.live_from(stream_time))
        if lo > hi:
            return []
        out = []
        for slot, raw in fetch(data, lo, hi):
            stamp, value = unpack(raw)
            start, end = self._window(slot, stamp)
            if from_ms <= start <= to_ms:
                out.append(WindowValue(start, end, self.value_serde.deserialize(value)))
        out.sort(key=lambda w: (w.start, w.end))
        return out
