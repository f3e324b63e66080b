"""The SQLite store of a global table: one database holding every partition of its topic.

A global table's store is a ``SqliteStorePartition`` whose checkpoint is a *position per topic
partition* (the next offset to read), recorded as the metadata row ``mglobal_positions`` (JSON
``{"<partition>": next_offset}``) in the same SQLite transaction as the rows it covers, by
``restore_batch`` and by ``flush`` alike (Invariant 2: a position is never ahead of the data).
The plain ``mcheckpoint`` beside it holds the sum of the positions: it only tells a store that
was ever written from an empty one.

One store for all partitions, not one per partition: a lookup by key must not assume how the
topic's producer partitioned it (murmur2 for Java clients, CRC32 for librdkafka's default), and
the last record applied for a key wins wherever it came from, as in Kafka Streams.

Directory: ``<dir>/<slot>/`` with slot ``0``, ``1``, ...: each worker process on a host takes the
first slot whose ``TaskLock`` is free (``open_global_store``), so several workers sharing one
``ONCEFLOW_STATE_DIR`` keep a copy each, and a restarted worker finds its copy again.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from onceflow.errors import StateError, StoreCorruptError, StoreLockedError
from onceflow.state.sqlite.file import db_files
from onceflow.state.sqlite.lock import TaskLock
from onceflow.state.sqlite.partition import SqliteStorePartition

__all__ = ["MAX_SLOTS", "META_POSITIONS", "GlobalStorePartition", "open_global_store"]

log = logging.getLogger("onceflow.state")

META_POSITIONS = b"mglobal_positions"
MAX_SLOTS = 64
"""Worker processes on one host that can share a state directory, per global table."""


class GlobalStorePartition(SqliteStorePartition):
    """A ``SqliteStorePartition`` with a read position per topic partition (``positions``).

    Example::

        store.set_positions({0: 120, 1: 98})
        store.restore_batch(records, last_offset=218)   # rows and positions in one transaction
    """

    def __init__(self, path: Path, **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        raw = self._db.get(META_POSITIONS)
        try:
            loaded = json.loads(raw) if raw is not None else {}
            self._positions = {int(p): int(o) for p, o in loaded.items()}
        except (ValueError, TypeError, AttributeError) as exc:
            self._db.close()  # the lock stays the caller's: it wipes the files and retries
            raise StoreCorruptError(
                f"global store {str(path)!r} has unreadable positions {raw!r:.80} ({exc}); "
                "it will be wiped and reloaded from its topic"
            ) from None
        self._pending_positions: dict[int, int] | None = None
        self._writing_positions: dict[int, int] | None = None  # in the write under way

    @property
    def positions(self) -> dict[int, int]:
        """Durable position (next offset to read) per topic partition; empty for a new store."""
        return dict(self._positions)

    def set_positions(self, positions: dict[int, int]) -> None:
        """The positions the next write (``flush`` with a checkpoint, ``restore_batch``) records
        in its transaction: those of the rows it writes."""
        self._check_open()
        self._pending_positions = dict(positions)

    def _meta(self, checkpoint: int | None) -> list[tuple[bytes, bytes]]:
        meta = super()._meta(checkpoint)
        self._writing_positions = None
        if checkpoint is not None and self._pending_positions is not None:
            self._writing_positions = self._pending_positions
            encoded = {str(p): o for p, o in sorted(self._pending_positions.items())}
            meta.append((META_POSITIONS, json.dumps(encoded).encode("ascii")))
        return meta

    def _layout_recorded(self) -> None:
        # Called right after every successful write (flush and restore): its positions are durable.
        super()._layout_recorded()
        if self._writing_positions is not None:
            self._positions, self._writing_positions = self._writing_positions, None

    def _wipe_storage(self) -> None:
        super()._wipe_storage()
        self._positions = {}
        self._pending_positions = self._writing_positions = None


def open_global_store(directory: Path, **kwargs: Any) -> tuple[GlobalStorePartition, str | None]:
    """Open the first free slot of ``directory`` (wiping a corrupt file); blocking.

    Returns the store and, when it had to wipe, why. Raises ``StateError`` when all
    ``MAX_SLOTS`` slots are held by other workers on this host.
    """
    for slot in range(MAX_SLOTS):
        path = Path(directory) / str(slot)
        lock = TaskLock(path)
        try:
            lock.acquire(0.0)
        except StoreLockedError:
            continue
        try:
            try:
                return GlobalStorePartition(path, lock=lock, **kwargs), None
            except StoreCorruptError as exc:
                reason = str(exc)
            log.warning("wiping global store %s: %s", path, reason)
            for file in db_files(path):
                file.unlink(missing_ok=True)
            return GlobalStorePartition(path, lock=lock, **kwargs), reason
        except BaseException:
            lock.close()
            raise
    raise StateError(
        f"all {MAX_SLOTS} slots of global store {str(directory)!r} are held by other workers on "
        "this host; give the workers separate ONCEFLOW_STATE_DIRs"
    )
