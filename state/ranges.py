"""A windowed store partition that remembers each key's windows: for range-read tables.

Session and sliding-window tables find a record's windows with a range read of its key
(docs/architecture.md, *Windowed tables*). A range read cannot use the point-read cache, so each
would cost SQLite statements on the event loop — one per segment of the range, more for an open
end. ``RangeStorePartition`` keeps, per recently used key, the key's windows from some slot on
*as the open transaction sees them*, and keeps that copy exact by applying every ``put`` and
``delete`` to it. Flushes move data between the write buffers and SQLite without changing that
view, so they leave the copy alone; ``discard``, ``wipe`` and ``restore_batch`` drop it.

Only ``fetch_tail`` uses the copy. ``fetch`` (and so every committed read of a query) is the
parent's, unchanged. Slots that expiry deleted may linger in a copy: readers bound what they ask
for by their own expiry (their stream time minus retention), which is never below the store's.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence

from onceflow.state.typing import StorePartition
from onceflow.state.windowed import WindowedStorePartition

__all__ = ["RangeStorePartition"]

_MAX_SLOT = 2**63 - 1


class RangeStorePartition(WindowedStorePartition):
    """``WindowedStorePartition`` with ``fetch_tail``, served from a per-key copy of the key's
    windows for up to ``max_keys`` keys (least recently used go first). A key with more than
    ``max_rows`` windows is not copied: it is read from the store every time."""

    def __init__(
        self,
        inner: StorePartition,
        *,
        segment_interval_ms: int,
        max_keys: int = 20_000,
        max_rows: int = 256,
    ) -> None:
        super().__init__(inner, segment_interval_ms=segment_interval_ms)
        self.max_keys = max_keys
        self.max_rows = max_rows
        # key -> (first slot covered, {slot: value} of every live window from that slot on)
        self._tails: OrderedDict[bytes, tuple[int, dict[int, bytes]]] = OrderedDict()

    def fetch_tail(self, key: bytes, from_ms: int) -> list[tuple[int, bytes]]:
        """``key``'s windows with a slot of at least ``from_ms``, by slot, through the open
        transaction: ``fetch(key, from_ms, 2**63 - 1)``, from the copy when it covers ``from_ms``.
        """
        tails = self._tails
        entry = tails.get(key)
        if entry is not None and entry[0] <= from_ms:
            tails.move_to_end(key)
            return sorted((s, v) for s, v in entry[1].items() if s >= from_ms)
        rows = self.fetch(key, from_ms, _MAX_SLOT)
        self._remember(key, from_ms, rows)
        return rows

    def prefetch_tails(self, keys: Iterable[bytes], from_ms: int) -> None:
        """Copy the windows from ``from_ms`` on of every key in ``keys`` not copied yet: one read
        per live segment for them all, then one per key and live segment. Blocking: for a worker
        thread, before the records of ``keys`` are processed (nothing else may use the store
        meanwhile)."""
        tails = self._tails
        missing = {k for k in keys if (e := tails.get(k)) is None or e[0] > from_ms}
        if not missing:
            return
        segments = self.live_segments(from_ms, _MAX_SLOT)
        # No window of any key lies past the last live segment: a bounded range per key.
        last = min(_MAX_SLOT, (segments[-1] + 1) * self.segment_interval_ms - 1) if segments else 0
        for key in missing:
            self._remember(key, from_ms, self.fetch(key, from_ms, last) if segments else [])

    def _remember(self, key: bytes, from_ms: int, rows: list[tuple[int, bytes]]) -> None:
        tails = self._tails
        if len(rows) > self.max_rows:
            tails.pop(key, None)
            return
        tails[key] = (from_ms, dict(rows))
        tails.move_to_end(key)
        if len(tails) > self.max_keys:
            tails.popitem(last=False)

    def put(self, key: bytes, start: int, value: bytes) -> None:
        """See ``WindowedStorePartition.put``; the key's copy follows."""
        super().put(key, start, value)
        entry = self._tails.get(key)
        if entry is not None and start >= entry[0]:
            entry[1][start] = value
            if len(entry[1]) > self.max_rows:
                del self._tails[key]

    def delete(self, key: bytes, start: int) -> None:
        """See ``WindowedStorePartition.delete``; the key's copy follows."""
        super().delete(key, start)
        entry = self._tails.get(key)
        if entry is not None:
            entry[1].pop(start, None)

    def restore_batch(
        self,
        records: Sequence[tuple[bytes, bytes | None]],
        last_offset: int,
        *,
        min_start: int | None = None,
    ) -> None:
        """See ``WindowedStorePartition.restore_batch``; drops every copy."""
        self._tails.clear()
        super().restore_batch(records, last_offset, min_start=min_start)

    def discard(self) -> None:
        """See ``WindowedStorePartition.discard``: the copies saw the dropped writes."""
        self._tails.clear()
        super().discard()

    def wipe(self) -> None:
        """See ``WindowedStorePartition.wipe``; drops every copy."""
        self._tails.clear()
        super().wipe()
