"""The SQLite-backed key-value store of one (store, partition).

Directory layout (``state_dir/<app_id>/<store>/<partition>/``)::

    onceflow.lock       flock held while the store is open (lock.py)
    data.sqlite         the database, WAL mode (file.py describes the layout)
    data.sqlite-wal     present only while open, or after an unclean shutdown

Reads go buffer -> sealed/flushing batches -> LRU cache of committed values -> SQLite.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from onceflow.errors import StateError, StoreCorruptError
from onceflow.state.base import BufferedStorePartition
from onceflow.state.buffer import WriteBatch
from onceflow.state.cache import MISS, LruCache, ReadCache
from onceflow.state.sqlite.file import (
    DB_FILE,
    META_LAYOUT,
    META_TOPIC_ID,
    SqliteFile,
    check_file,
    db_files,
)
from onceflow.state.sqlite.lock import TaskLock

__all__ = [
    "CACHE_BYTES",
    "PAGE_CACHE_MIB",
    "Integrity",
    "SqliteStorePartition",
    "open_store",
]

log = logging.getLogger("onceflow.state")

Integrity = Literal["auto", "always", "never"]
"""When to run ``PRAGMA quick_check`` at open: ``auto`` after an unclean shutdown only."""

CACHE_BYTES = 2 * 2**20
"""Default bound of a store partition's read cache (~11k entries: 12-byte keys, int64 values)."""
PAGE_CACHE_MIB = 4
"""Default SQLite page cache of a store partition, both connections together."""

# Loaded values stored into the read cache per hold of the state lock (``prefetch``).
_STORE_SLICE = 256
# User keys live under b"k"; metadata under b"m" (see file.py).
_DATA = b"k"
_DATA_END = b"l"


class SqliteStorePartition(BufferedStorePartition):
    """Key-value store for one (store, partition) in ``path/data.sqlite``; bytes in, bytes out.

    Example::

        with SqliteStorePartition(path) as store:
            store.put(b"k", b"v")
            store.flush(checkpoint=41)       # data and checkpoint commit together

    Opening takes the directory's ``TaskLock`` (or adopts ``lock``, already acquired: the store
    then owns it on success; on failure the caller still does), checks the file and raises
    ``StoreCorruptError`` for a corrupt one — ``open_store`` wipes and reopens in that case.

    ``integrity``: the schema and layout version are always checked (sub-millisecond);
    ``PRAGMA quick_check`` reads the whole file (~0.25 s per million 100-byte rows), so by
    default (``auto``) it only runs when a WAL file shows the last owner did not close cleanly.

    Point reads that miss the cache cost a SQLite lookup in the calling thread (a few µs);
    ``prefetch`` loads a batch's keys in one query.

    Memory, mostly while it is open: the read cache — ``cache``, a view of the worker's shared
    budget (``SharedCache.view()``), or without one a cache of its own of at most ``cache_size``
    entries and ``cache_bytes`` (see ``onceflow.state.cache``) — and SQLite's page caches,
    ``page_cache_mib`` split over the writer and reader connections. SQLite misses are served
    from the OS page cache, which costs RSS nothing.
    """

    def __init__(
        self,
        path: Path,
        *,
        cache_size: int = 50_000,
        cache_bytes: int | None = CACHE_BYTES,
        lock: TaskLock | None = None,
        lock_timeout_s: float = 0.0,
        integrity: Integrity = "auto",
        page_cache_mib: int = PAGE_CACHE_MIB,
        offload: bool | None = None,
        cache: ReadCache | None = None,
    ) -> None:
        self.path = Path(path)
        self._offload = offload
        super().__init__(str(self.path))
        self.file = self.path / DB_FILE
        # Both connections get half; SQLite's own default is 2 MiB per connection.
        self._page_cache_kib = max(64, page_cache_mib * 1024 // 2)
        # The worker's shared budget (``SharedCache.view()``), or a cache of its own.
        self._cache: ReadCache = LruCache(cache_size, cache_bytes) if cache is None else cache
        # Reads of SQLite that run outside the state lock, and the keys flushes changed
        # meanwhile: such a read may have seen the value before the flush, so it must not
        # cache those keys (``_begin_read`` / ``_end_read``). A restore or a wipe changes every
        # key: ``_epoch`` tells a read that began before one to cache nothing.
        self._reads = 0
        self._changed: set[bytes] | None = None
        self._epoch = 0
        self._size: tuple[int, int] | None = None  # (generation, count)
        self.path.mkdir(parents=True, exist_ok=True)
        owned = lock is None
        if lock is None:
            lock = TaskLock(self.path)
            lock.acquire(lock_timeout_s)
        elif not lock.locked:
            raise StateError(f"the lock passed for store {self._name!r} is not acquired")
        try:
            if not self.file.exists():
                # A WAL without its database belongs to a deleted store: never let SQLite see it.
                for stale in db_files(self.path)[1:]:
                    stale.unlink(missing_ok=True)
            unclean = db_files(self.path)[1].exists()  # the WAL outlived its last connection
            check_file(self.file, deep=integrity == "always" or (integrity == "auto" and unclean))
            self._db = self._open_file()
        except BaseException:
            if owned:
                lock.close()
            raise
        self._lock = lock
        self._checkpoint = self._db.checkpoint_at_open
        self._changelog_topic_id = self._db.topic_id_at_open
        # How the rows are laid out (durable), and the layout the next write records.
        self._layout = self._db.layout_at_open
        self._current_layout: bytes | None = None

    def _open_file(self) -> SqliteFile:
        return SqliteFile(self.file, page_cache_kib=self._page_cache_kib, offload=self._offload)

    @property
    def layout(self) -> bytes | None:
        """The layout recorded with the rows (opaque to the store; the runtime's JSON), or None
        if none was: an empty store, or one written before layouts were recorded."""
        return self._layout

    def set_layout(self, layout: bytes) -> None:
        """The layout of every row written from now on: the next write (``flush``,
        ``restore_batch``) records it in its transaction, so the recorded layout is never out of
        step with the rows. Until then ``layout`` is unchanged."""
        self._check_open()
        self._current_layout = layout

    def approximate_size(self) -> int:
        """Number of committed keys: an index scan (~0.3 s per million), cached until the next
        flush, restore or wipe. Blocking; call it off the event loop for big stores."""
        self._check_open()
        generation = self._generation
        if self._size is not None and self._size[0] == generation:
            return self._size[1]
        count = self._db.count(_DATA, _DATA_END)
        self._size = (generation, count)
        return count

    def prefetch(self, keys: Iterable[bytes]) -> None:
        """Load the committed values of ``keys`` into the read cache, one SQLite round trip per
        1,024 uncached keys instead of one per key. Blocking: run it in a worker thread before
        processing a batch of records whose keys are known. A flush that commits meanwhile
        does not void it: only the keys it wrote are left out."""
        self._check_open()
        cache = self._cache
        # The cache is looked up without the state lock (the event loop reads this store
        # meanwhile): a key a flush changes after this look-up is read below, after
        # ``_begin_read``, and so tracked.
        missing = [key for key in set(keys) if cache.lookup(key) is MISS]
        if not missing:
            return
        with self._state_lock:
            epoch = self._begin_read()
        try:
            found = self._db.get_many([_DATA + key for key in missing])
            # In slices, each under the lock: the event loop's reads of this store wait for one
            # slice at most. The read stays open meanwhile, so a flush that commits between two
            # slices adds its keys to ``_changed`` and the later slices leave them out.
            for start in range(0, len(missing), _STORE_SLICE):
                with self._state_lock:
                    changed = self._changed
                    if self._epoch != epoch or changed is None:
                        break  # a restore or a wipe came between: cache nothing
                    cache.store_many(
                        (key, found.get(_DATA + key))
                        for key in missing[start : start + _STORE_SLICE]
                        if key not in changed
                    )
        finally:
            with self._state_lock:
                self._end_read(epoch)

    def _read_committed(self, key: bytes) -> bytes | None:
        # A hit needs no lock (the cache's lookups take none): the cache holds committed values
        # only, and a flush stores its values before it drops its batch (``committed_get``).
        cached = self._cache.lookup(key)
        if cached is not MISS:
            return cached
        with self._state_lock:
            cached = self._cache.lookup(key)
            if cached is not MISS:
                return cached
            epoch = self._begin_read()
        value: bytes | None = None
        try:
            value = self._db.get(_DATA + key)
        finally:
            with self._state_lock:
                # A flush that committed meanwhile may have changed the key: never cache a
                # value that may be stale.
                changed = self._end_read(epoch)
                if changed is not None and key not in changed:
                    self._cache.store(key, value)
        return value

    def _begin_read(self) -> int:
        """A read of SQLite starts (under the state lock): track what flushes change."""
        if self._reads == 0:
            self._changed = set()
        self._reads += 1
        return self._epoch

    def _end_read(self, epoch: int) -> set[bytes] | None:
        """A read begun at ``epoch`` ended (under the state lock): the keys it must not cache
        (flushes changed them meanwhile), or None if it must cache nothing (a restore or a wipe
        came between)."""
        changed = self._changed
        self._reads -= 1
        if self._reads == 0:
            self._changed = None
        return changed if epoch == self._epoch else None

    def _committed_range(
        self, lo: bytes, hi: bytes, limit: int | None
    ) -> list[tuple[bytes, bytes]]:
        rows = self._db.range(_DATA + lo, _DATA + hi, limit)
        return [(key[1:], value) for key, value in rows]

    def _commit(self, batch: WriteBatch, checkpoint: int | None) -> list[bytes] | None:
        removed = self._db.apply(
            _DATA,
            batch.writes,
            ranges=list(batch.ranges),
            meta=self._meta(checkpoint),
            checkpoint=checkpoint,
        )
        self._layout_recorded()
        return removed

    def _layout_recorded(self) -> None:
        if self._current_layout is not None:
            self._layout = self._current_layout

    def _meta(self, checkpoint: int | None) -> list[tuple[bytes, bytes]]:
        """The metadata rows a write of ``checkpoint`` carries: the changelog's topic id."""
        topic_id = self._topic_id_to_record(checkpoint)
        meta = [] if topic_id is None else [(META_TOPIC_ID, topic_id.encode("ascii"))]
        layout = self._current_layout
        if layout is not None and layout != self._layout:
            meta.append((META_LAYOUT, layout))
        return meta

    def _after_commit(self, batch: WriteBatch, range_deleted: list[bytes] | None) -> None:
        if range_deleted is None:  # which keys the ranges removed is unknown: forget them all
            self._epoch += 1
            self._cache.clear()
            self._cache.store_many(batch.writes.items())
            return
        changed = self._changed
        if changed is not None:  # reads in flight may have seen these keys' old values
            changed.update(range_deleted)
            changed.update(batch.writes)
        for key in range_deleted:
            self._cache.forget(key)
        self._cache.store_many(batch.writes.items())

    def _restore(self, latest: dict[bytes, bytes | None], last_offset: int) -> None:
        self._db.apply(_DATA, latest, meta=self._meta(last_offset), checkpoint=last_offset)
        self._layout_recorded()

    def _after_restore(self, latest: dict[bytes, bytes | None]) -> None:
        # Restore runs before processing: the cache is nearly empty, clearing is cheapest.
        self._epoch += 1
        self._cache.clear()

    def _wipe_storage(self) -> None:
        self._epoch += 1
        self._cache.clear()
        self._layout = None  # the next write records the current one
        self._db.close()
        for file in db_files(self.path):
            file.unlink(missing_ok=True)
        self._db = self._open_file()

    def _close_storage(self) -> None:
        try:
            self._db.close()
        finally:
            self._cache.close()
            self._lock.close()


def open_store(
    path: Path,
    *,
    cache_size: int = 50_000,
    cache_bytes: int | None = CACHE_BYTES,
    lock_timeout_s: float = 0.0,
    integrity: Integrity = "auto",
    page_cache_mib: int = PAGE_CACHE_MIB,
    lock: TaskLock | None = None,
    cache: ReadCache | None = None,
) -> tuple[SqliteStorePartition, str | None]:
    """Open the store in ``path``, wiping it first if it is corrupt.

    Returns the store and, when it had to wipe, why (for the restore's log line and progress).
    Blocking (it may wait ``lock_timeout_s`` for the lock and check the file): run it in a
    worker thread. Raises StoreLockedError when another worker on this host holds the store.

    ``lock``: the directory's ``TaskLock``, already acquired (to look at the directory before
    anything in it changes); the store owns it on success, the caller still does on failure.
    """
    path = Path(path)
    owned = lock is None
    if lock is None:
        lock = TaskLock(path)
        lock.acquire(lock_timeout_s)
    make = functools.partial(
        SqliteStorePartition,
        path,
        lock=lock,
        cache_size=cache_size,
        cache_bytes=cache_bytes,
        integrity=integrity,
        page_cache_mib=page_cache_mib,
        cache=cache,
    )
    try:
        try:
            return make(), None
        except StoreCorruptError as exc:
            reason = str(exc)
        log.warning("wiping store %s: %s", path, reason, extra={"store_path": str(path)})
        for file in db_files(path):
            file.unlink(missing_ok=True)
        return make(), reason
    except BaseException:
        if owned:
            lock.close()
        raise
