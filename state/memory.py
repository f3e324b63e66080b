"""An in-memory store partition with the SQLite store's semantics, for the in-memory test driver.

Same buffer, seal/flush, checkpoint and range semantics (both pass the same contract tests);
"durable" state is a dict that lives as long as the object. ``wipe`` empties it; ``close`` drops
it.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Iterable

from onceflow.state.base import BufferedStorePartition
from onceflow.state.buffer import WriteBatch

__all__ = ["InMemoryStorePartition"]


class InMemoryStorePartition(BufferedStorePartition):
    """In-memory key-value store for one (store, partition); bytes in, bytes out.

    Example::

        store = InMemoryStorePartition("counts/0")
        store.put(b"k", b"v")
        store.flush(checkpoint=0)
        assert store.committed_get(b"k") == b"v"
    """

    def __init__(self, name: str = "memory") -> None:
        super().__init__(name)
        self._data: dict[bytes, bytes] = {}
        self._sorted: list[bytes] | None = []  # sorted keys, rebuilt lazily after changes
        # flush may run in a worker thread while the loop reads.
        self._data_lock = threading.Lock()

    def approximate_size(self) -> int:
        """Number of committed keys (exact)."""
        self._check_open()
        return len(self._data)

    def prefetch(self, keys: Iterable[bytes]) -> None:
        """Nothing to load: every value is in memory."""
        self._check_open()

    def _read_committed(self, key: bytes) -> bytes | None:
        with self._data_lock:
            return self._data.get(key)

    def _committed_range(
        self, lo: bytes, hi: bytes, limit: int | None
    ) -> list[tuple[bytes, bytes]]:
        with self._data_lock:
            if self._sorted is None:
                self._sorted = sorted(self._data)
            keys = self._sorted[bisect_left(self._sorted, lo) : bisect_left(self._sorted, hi)]
            if limit is not None:
                keys = keys[:limit]
            return [(key, self._data[key]) for key in keys]

    def _commit(self, batch: WriteBatch, checkpoint: int | None) -> list[bytes]:
        with self._data_lock:
            removed = [key for key in self._data if key in batch.ranges] if batch.ranges else []
            for key in removed:
                del self._data[key]
            self._apply(batch.writes)
        return removed

    def _apply(self, writes: dict[bytes, bytes | None]) -> None:
        for key, value in writes.items():
            if value is None:
                self._data.pop(key, None)
            else:
                self._data[key] = value
        self._sorted = None

    def _after_commit(self, batch: WriteBatch, range_deleted: list[bytes] | None) -> None:
        pass  # no read cache

    def _restore(self, latest: dict[bytes, bytes | None], last_offset: int) -> None:
        with self._data_lock:
            self._apply(latest)

    def _after_restore(self, latest: dict[bytes, bytes | None]) -> None:
        pass  # no read cache

    def _wipe_storage(self) -> None:
        with self._data_lock:
            self._data.clear()
            self._sorted = []

    def _close_storage(self) -> None:
        with self._data_lock:
            self._data = {}
            self._sorted = []
