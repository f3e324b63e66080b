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

from onceflow.state.cache import ENTRY_OVERHEAD
from onceflow.state.typing import StorePartition
from onceflow.state.windowed import WindowedStorePartition

__all__ = ["RETRY_COPY_AFTER", "RangeStorePartition"]

_MAX_SLOT = 2**63 - 1
RETRY_COPY_AFTER = 64


class RangeStorePartition(WindowedStorePartition):
    """``WindowedStorePartition`` with ``fetch_tail``, served from per-key copies of the key's
    windows. The copies are bounded like the read cache: least recently used keys go first once
    they hold more than ``max_bytes`` (each window counted as its value's length plus
    ``ENTRY_OVERHEAD``) or ``max_keys`` keys; a key with more than ``max_rows`` windows is not
    copied at all (it is read from the store every time)."""

    def __init__(
        self,
        inner: StorePartition,
        *,
        segment_interval_ms: int,
        max_bytes: int = 2 * 2**20,
        max_keys: int = 20_000,
        max_rows: int = 256,
    ) -> None:
        super().__init__(inner, segment_interval_ms=segment_interval_ms)
        self.max_bytes = max_bytes
        self.max_keys = max_keys
        self.max_rows = max_rows
        # key -> (first slot covered, {slot: value} of every live window from that slot on)
        self._tails: OrderedDict[bytes, tuple[int, dict[int, bytes]]] = OrderedDict()
        self._bytes = 0
        self._uncopyable: dict[bytes, int] = {}  # key -> reads left before copying is retried

    @property
    def copied_bytes(self) -> int:
        """What the copies hold, as counted against ``max_bytes``."""
        return self._bytes

    def fetch_tail(
        self, key: bytes, from_ms: int, to_ms: int = _MAX_SLOT
    ) -> list[tuple[int, bytes]]:
        """``fetch(key, from_ms, to_ms)`` (through the open transaction), from the key's copy when
        it covers ``from_ms``; otherwise the key's windows from ``from_ms`` on are read and copied.
        A key found too large to copy is read with ``fetch`` for its next ``RETRY_COPY_AFTER``
        reads before a copy is tried again."""
        entry = self._tails.get(key)
        if entry is not None and entry[0] <= from_ms:
            self._tails.move_to_end(key)
            return sorted((s, v) for s, v in entry[1].items() if from_ms <= s <= to_ms)
        countdown = self._uncopyable.pop(key, 0)
        if countdown > 0:
            self._uncopyable[key] = countdown - 1
            return self.fetch(key, from_ms, to_ms)
        rows = self.fetch(key, from_ms, _MAX_SLOT)
        self._remember(key, from_ms, rows)
        return [(s, v) for s, v in rows if s <= to_ms]

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

    def put(self, key: bytes, start: int, value: bytes) -> None:
        """See ``WindowedStorePartition.put``; the key's copy follows."""
        super().put(key, start, value)
        entry = self._tails.get(key)
        if entry is None or start < entry[0]:
            return
        rows = entry[1]
        old = rows.get(start)
        rows[start] = value
        self._bytes += len(value) + (ENTRY_OVERHEAD if old is None else -len(old))
        if len(rows) > self.max_rows:
            self._forget(key)
            self._uncopyable[key] = RETRY_COPY_AFTER
        self._trim()

    def delete(self, key: bytes, start: int) -> None:
        """See ``WindowedStorePartition.delete``; the key's copy follows."""
        super().delete(key, start)
        entry = self._tails.get(key)
        if entry is not None and (old := entry[1].pop(start, None)) is not None:
            self._bytes -= ENTRY_OVERHEAD + len(old)

    def restore_batch(
        self,
        records: Sequence[tuple[bytes, bytes | None]],
        last_offset: int,
        *,
        min_start: int | None = None,
    ) -> None:
        """See ``WindowedStorePartition.restore_batch``; drops every copy."""
        self._clear()
        super().restore_batch(records, last_offset, min_start=min_start)

    def discard(self) -> None:
        """See ``WindowedStorePartition.discard``: the copies saw the dropped writes."""
        self._clear()
        super().discard()

    def wipe(self) -> None:
        """See ``WindowedStorePartition.wipe``; drops every copy."""
        self._clear()
        super().wipe()

    def _remember(self, key: bytes, from_ms: int, rows: list[tuple[int, bytes]]) -> None:
        self._forget(key)
        if len(rows) > self.max_rows:
            self._uncopyable[key] = RETRY_COPY_AFTER
            if len(self._uncopyable) > self.max_keys:
                del self._uncopyable[next(iter(self._uncopyable))]
            return
        self._tails[key] = (from_ms, dict(rows))
        self._bytes += _cost(key, (v for _, v in rows))
        self._trim()

    def _forget(self, key: bytes) -> None:
        entry = self._tails.pop(key, None)
        if entry is not None:
            self._bytes -= _cost(key, entry[1].values())

    def _trim(self) -> None:
        tails = self._tails
        while tails and (self._bytes > self.max_bytes or len(tails) > self.max_keys):
            self._forget(next(iter(tails)))

    def _clear(self) -> None:
        self._tails.clear()
        self._bytes = 0


def _cost(key: bytes, values: Iterable[bytes]) -> int:
    """A copy's size as counted against ``max_bytes``: the key and each window, with overheads."""
    return ENTRY_OVERHEAD + len(key) + sum(ENTRY_OVERHEAD + len(v) for v in values)
