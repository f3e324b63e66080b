"""A task's stores: its partition of every table of its group.

``TaskStores`` opens and restores them when the task starts (hand-over step 3), applies the
writes a handler staged, loads a fetched batch's keys ahead of the handlers, hands the changelog
records to the commit, and writes each committed buffer to SQLite in the background
(docs/architecture.md, *State*).

Each store directory's mtime says when the store was last known in sync with its changelog
(``cleanup.mark_in_sync``): set when its restore reached the end, after every flush and at a
clean close, and put back where it was whenever SQLite moved it otherwise. A store out of sync
for longer than its changelog's ``delete.retention.ms`` may have missed deletes whose tombstones
compaction dropped since: it is wiped and restored from the beginning.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from aiokafka.structs import TopicPartition

from onceflow.runtime.cleanup import last_in_sync, mark_in_sync, out_of_sync_too_long
from onceflow.runtime.layout import WindowsFrom, reconcile
from onceflow.runtime.restore import RestoreProgress, restore_partition
from onceflow.runtime.source_tables import SourceRestore, source_checkpoints
from onceflow.source_tables import SourceTable
from onceflow.state.cache import ReadCache, SharedCache
from onceflow.state.ranges import RangeStorePartition
from onceflow.state.sqlite.lock import TaskLock
from onceflow.state.sqlite.partition import CACHE_BYTES, SqliteStorePartition, open_store
from onceflow.state.ttl import TtlStorePartition
from onceflow.state.windowed import WindowedStorePartition, parse_changelog_key
from onceflow.tables import WindowedTable
from onceflow.topology import AnyTable
from onceflow.window_ranges import RangeTable

if TYPE_CHECKING:
    from aiokafka.structs import ConsumerRecord

    from onceflow.runtime.metrics import Metrics
    from onceflow.runtime.restore import ConsumerFactory
    from onceflow.settings import Settings
    from onceflow.state.typing import Restorable, StorePartition

__all__ = [
    "AnyTable",
    "OpenedStore",
    "TaskStores",
    "open_in_sync",
    "open_store_cancellable",
    "shared_cache",
]

log = logging.getLogger("onceflow.task")
# Seconds between two restore progress lines of one store partition.
RESTORE_LOG_INTERVAL_S = 5.0


@functools.cache
def shared_cache(max_bytes: int) -> SharedCache:
    """The read cache every store partition of this process draws on (``ONCEFLOW_STATE_CACHE_MIB``:
    one worker per process; workers of one process with the same setting share it)."""
    return SharedCache(max_bytes)


class TaskStores:
    """The store partitions of one task, by table name."""

    def __init__(self, tables: Sequence[AnyTable], partition: int) -> None:
        self.tables = list(tables)
        self.partition = partition
        self.restores: dict[str, RestoreProgress] = {}
        self._stores: dict[str, StorePartition] = {}
        self._windowed: dict[str, WindowedStorePartition] = {}
        self._ttl: dict[str, TtlStorePartition] = {}
        self._flushing: asyncio.Future[None] | None = None  # the last commit's SQLite writes
        self._dirs: dict[str, Path] = {}  # the directory of each SQLite store, by table
        self._in_sync_at: dict[str, float | None] = {}  # when each was last in sync (epoch s)
        # Tables whose store may lack records of its changelog partition: not restored yet, or
        # changelog records sent that no flush wrote yet.
        self._behind: set[str] = set()

    # -- access ------------------------------------------------------------------------------

    def store(self, name: str) -> StorePartition:
        return self._stores[name]

    def windowed_store(self, name: str) -> WindowedStorePartition:
        return self._windowed[name]

    def __bool__(self) -> bool:
        return bool(self._stores)

    def attach(
        self, table: AnyTable, store: StorePartition, *, copy_bytes: int = 2 * 2**20
    ) -> StorePartition | WindowedStorePartition | TtlStorePartition | SourceRestore:
        """Give the task ``store`` as its partition of ``table``; returns what restores it.
        ``copy_bytes`` bounds a session or sliding-window table's per-key copies."""
        self._stores[table.name] = store
        if isinstance(table, SourceTable):  # restored from its topic, record by record as fed
            return SourceRestore(table, store)
        if isinstance(table, RangeTable):  # found by range reads: a per-key copy serves them
            ranges = RangeStorePartition(
                store, segment_interval_ms=table.segment_interval_ms, max_bytes=copy_bytes
            )
            self._windowed[table.name] = ranges
            return ranges
        if isinstance(table, WindowedTable):
            windowed = WindowedStorePartition(store, segment_interval_ms=table.segment_interval_ms)
            self._windowed[table.name] = windowed
            return windowed
        if table.ttl_ms is not None:
            ttl = TtlStorePartition(store, ttl_ms=table.ttl_ms, name=table.name)
            ttl.check_layout()  # a table that had no ttl before: refused, naming it
            self._ttl[table.name] = ttl
            return ttl
        return store

    # -- start -------------------------------------------------------------------------------

    async def open(
        self,
        table: AnyTable,
        *,
        app_id: str,
        settings: Settings,
        delete_retention_ms: int | None = None,
        lock_timeout_s: float = 30.0,
    ) -> tuple[Restorable, str | None]:
        """Open the table's SQLite store (wiped if corrupt, if it was out of sync with its
        changelog for longer than the changelog's ``delete_retention_ms``, or if its rows are
        laid out for another definition of the table: ``layout.reconcile``) and attach it;
        returns what restores it and why it was wiped (None if it was not)."""
        path = Path(settings.state_dir) / app_id / table.name / str(self.partition)
        opened = await open_store_cancellable(
            path,
            cache=shared_cache(int(settings.state_cache_mib * 2**20)).view(),
            page_cache_mib=settings.state_page_cache_mib,
            lock_timeout_s=lock_timeout_s,
            delete_retention_ms=delete_retention_ms,
            layout=table.layout(),
        )
        reason = opened.wiped_because
        if opened.stale:
            log.warning("store %s partition %d: %s", table.name, self.partition, reason)
        elif reason:
            log.warning("store %s partition %d wiped: %s", table.name, self.partition, reason)
        self._dirs[table.name] = path
        self._in_sync_at[table.name] = opened.in_sync_at
        self._behind.add(table.name)
        return self.attach(table, opened.store), reason

    async def open_and_restore(
        self,
        table: AnyTable,
        *,
        app_id: str,
        settings: Settings,
        metrics: Metrics,
        consumer_factory: ConsumerFactory,
        delete_retention_ms: int | None = None,
        changelog_topic_id: str | None = None,
        stream_time: int = -1,
        until: int | None = None,
    ) -> None:
        """``open`` the table's store and bring it up to the end of its changelog partition
        (``until``: up to that offset, a source table's committed one), checking that its
        checkpoint is of the topic with ``changelog_topic_id`` (``restore_partition``). Windows
        expired at ``stream_time`` (the task's, -1 if none) are not restored."""
        target, reason = await self.open(
            table, app_id=app_id, settings=settings, delete_retention_ms=delete_retention_ms
        )
        # Windows a commit would expire at once are not restored.
        if (
            isinstance(target, WindowedStorePartition)
            and isinstance(table, WindowedTable)
            and stream_time >= 0
        ):
            target = WindowsFrom(target, stream_time - table.retention_ms)
        progress = RestoreProgress(table.name, self.partition, wiped_because=reason)
        self.restores[table.name] = progress
        labels = (app_id, table.name, str(self.partition))
        gauge = metrics.restore_remaining.labels(*labels)
        await restore_partition(
            consumer_factory,
            table.changelog_topic,
            self.partition,
            target,
            progress,
            on_batch=_progress_reporter(gauge, metrics.restored_records.labels(*labels)),
            topic_id=changelog_topic_id,
            until=until,
        )
        gauge.set(0)
        self.synced(table.name)
        if progress.restored:
            log.info(
                "restored %s partition %d: %d records from offset %d in %.2fs",
                table.name,
                self.partition,
                progress.restored,
                progress.start_offset,
                time.monotonic() - progress.started_at,
            )

    def cancel_restores(self) -> None:
        """Stop every restore between two batches (the task was revoked while starting)."""
        for progress in self.restores.values():
            progress.cancelled = True

    # -- processing --------------------------------------------------------------------------

    def load(self, tables: Iterable[AnyTable], records: Sequence[ConsumerRecord[Any, Any]]) -> None:
        """Load the committed values of the batch's keys, one SQLite round trip per store instead
        of one per record (blocking: runs in a worker thread; a wrong guess costs the lookup)."""
        for table in tables:
            if isinstance(table, WindowedTable):
                windows = table.window.windows_for
                self._windowed[table.name].prefetch(
                    (r.key, start)
                    for r in records
                    if r.key is not None
                    for start, _ in windows(r.timestamp)
                )
            elif (ttl := self._ttl.get(table.name)) is not None:
                ttl.prefetch(r.key for r in records if r.key is not None)
            elif isinstance(table, RangeTable):
                self._load_tails(table, records)
            else:
                self._stores[table.name].prefetch(r.key for r in records if r.key is not None)

    def _load_tails(
        self, table: RangeTable[Any, Any], records: Sequence[ConsumerRecord[Any, Any]]
    ) -> None:
        """Copy the windows of the batch's keys (a session or sliding-window table finds them by
        range reads): from the oldest slot any of its records can read, the earliest timestamp
        minus retention (stream time is at least each record's timestamp)."""
        store = self._windowed[table.name]
        if records and isinstance(store, RangeStorePartition):
            oldest = min(r.timestamp for r in records) - table.retention_ms
            store.prefetch_tails((r.key for r in records if r.key is not None), oldest)

    def apply(self, name: str, key: bytes, raw: bytes | None) -> None:
        """Apply one staged write (None: a delete) to the open transaction's buffer. A windowed
        table's key is its changelog key (``onceflow.state.windowed.changelog_key``); a ttl
        table's value is a row value (``onceflow.state.ttl.encode_row``)."""
        windowed = self._windowed.get(name)
        if windowed is not None:
            data, start = parse_changelog_key(key)
            if raw is None:
                windowed.delete(data, start)
            else:
                windowed.put(data, start, raw)
        elif (ttl := self._ttl.get(name)) is not None:
            if raw is None:
                ttl.delete(key)
            else:
                ttl.put(key, raw)
        elif raw is None:
            self._stores[name].delete(key)
        else:
            self._stores[name].put(key, raw)

    # -- commit ------------------------------------------------------------------------------

    def changelog_records(
        self, stream_time: int
    ) -> Iterable[tuple[AnyTable, list[tuple[bytes, bytes | None]]]]:
        """Per table, the open transaction's changelog records (last value per key), after
        expiring the windows that ``stream_time`` put past retention and deleting the keys of
        ttl tables it expired (tombstones among the records)."""
        for table in self.tables:
            windowed = self._windowed.get(table.name)
            if (
                windowed is not None
                and isinstance(table, WindowedTable | RangeTable)
                and stream_time >= 0
            ):
                windowed.expire_before(stream_time - table.retention_ms)
        for expiring in self._ttl.values():
            expiring.expire(stream_time)
        for table in self.tables:
            windowed = self._windowed.get(table.name)
            ttl = self._ttl.get(table.name)
            if isinstance(table, SourceTable):
                continue  # its topic is its changelog: nothing to send
            if windowed is not None:
                records = windowed.pending_changelog()
            elif ttl is not None:
                records = ttl.pending_changelog()
            else:
                records = list(self._stores[table.name].pending().items())
            if records:
                self._behind.add(table.name)  # until the flush of this commit wrote them
            yield table, records

    def checkpoints(
        self,
        delivered: Mapping[TopicPartition, int],
        positions: Mapping[TopicPartition, int] | None = None,
    ) -> dict[str, int]:
        """Per table, the offset of the last changelog record the commit wrote (a source table:
        of the last record of its topic the task consumed, from ``positions``)."""
        return {
            **{
                table.name: delivered[tp]
                for table in self.tables
                if (tp := TopicPartition(table.changelog_topic, self.partition)) in delivered
                and not isinstance(table, SourceTable)  # a handler may send to its topic
            },
            **source_checkpoints(self.tables, self.partition, positions or {}),
        }

    def cut(self) -> None:
        """The Kafka commit of the open transaction begins: every store's buffer becomes its cut
        batch, and the writes of records processed meanwhile go to fresh buffers
        (``StorePartition.cut``)."""
        for store in self._stores.values():
            store.cut()

    def persist(self, checkpoints: dict[str, int]) -> None:
        """After the Kafka commit: seal every cut batch (on the loop) and write the sealed batches
        with their checkpoints to SQLite in a worker thread. ``flushed()`` waits for that
        write."""
        if not self._stores:
            return
        for store in self._stores.values():
            store.seal()
        self._flushing = asyncio.ensure_future(asyncio.to_thread(self._flush, checkpoints))

    def _flush(self, checkpoints: dict[str, int]) -> None:
        for name, store in self._stores.items():
            store.flush(checkpoints.get(name), seal=False)
            if name in checkpoints or name not in self._behind:
                self.synced(name)

    def synced(self, name: str) -> None:
        """The table's store holds everything its changelog partition does, as of now (a
        standby: as of its last fetch)."""
        path = self._dirs.get(name)
        if path is None:
            return  # not a store of ours on disk (attached by a test driver)
        now = time.time()
        mark_in_sync(path, now)
        self._in_sync_at[name] = now
        self._behind.discard(name)

    async def flushed(self) -> None:
        """Wait for the last commit's SQLite writes; raises what they raised."""
        flushing, self._flushing = self._flushing, None
        if flushing is not None:
            await flushing

    @property
    def flushing(self) -> bool:
        """The last commit's SQLite writes are still running."""
        return self._flushing is not None and not self._flushing.done()

    def check_flushed(self) -> None:
        """``flushed()`` when the writes are over: raises what they raised."""
        flushing, self._flushing = self._flushing, None
        if flushing is not None:
            assert flushing.done(), "check_flushed() while the SQLite writes run"
            flushing.result()

    # -- close -------------------------------------------------------------------------------

    async def close(self) -> None:
        """Wait for the SQLite write this object started (a store closed under it would fail it,
        and its checkpoint would be lost: the next owner would replay the tail for nothing),
        then drop uncommitted writes and close every store. Safe to call twice."""
        try:
            await self.flushed()
        except Exception as exc:  # the changelog has it all: the next restore replays it
            log.warning(
                "store partition %d: writing state to SQLite failed (%s); the next owner "
                "restores it from the changelog",
                self.partition,
                exc,
            )
        for name, store in self._stores.items():
            store.discard()
            await asyncio.to_thread(self._close_store, name, store)

    def _close_store(self, name: str, store: StorePartition) -> None:
        store.close()
        path = self._dirs.get(name)
        if path is None:
            return
        if name not in self._behind:
            self.synced(name)
            return
        # Closing moved the mtime (SQLite deletes its WAL files) but the store is no fresher
        # than when it was last in sync: a restore stopped half-way, or a flush that never came.
        at = self._in_sync_at.get(name)
        if at is not None:
            mark_in_sync(path, at)


class OpenedStore(NamedTuple):
    """What ``open_in_sync`` opened."""

    store: SqliteStorePartition
    wiped_because: str | None
    """Why it was wiped (corrupt, or stale), None if it was not."""
    stale: bool
    """Wiped because it was out of sync longer than its changelog keeps tombstones."""
    in_sync_at: float | None
    """When it was last known in sync with its changelog (the directory's mtime at open)."""


def stale_reason(age_s: float, delete_retention_ms: int) -> str:
    return (
        f"last in sync {age_s:.0f} s ago, longer than the changelog's delete.retention.ms "
        f"({delete_retention_ms} ms): deletes it missed may have been compacted away; restoring "
        "from the beginning"
    )


def open_in_sync(
    path: Path,
    *,
    cache_bytes: int = CACHE_BYTES,
    page_cache_mib: int,
    cache: ReadCache | None = None,
    lock_timeout_s: float = 30.0,
    delete_retention_ms: int | None = None,
    layout: Mapping[str, Any] | None = None,
) -> OpenedStore:
    """``open_store``, and wipe a store with a checkpoint that was last in sync with its
    changelog more than ``delete_retention_ms`` ago: compaction may have dropped the tombstones
    of deletes it never saw, so restoring its tail would bring deleted keys back. ``layout``: the
    table's (``path`` is ``.../<table>/<partition>``); a store recorded with another one is
    wiped too, one without is adopted (``layout.reconcile``).

    Blocking: run it in a worker thread. The directory's mtime is read under the store's lock,
    before SQLite opens (and so moves it), and put back afterwards.
    """
    lock = TaskLock(path)
    lock.acquire(lock_timeout_s)
    try:
        in_sync_at = last_in_sync(path)
        store, reason = open_store(
            path, lock=lock, cache_bytes=cache_bytes, page_cache_mib=page_cache_mib, cache=cache
        )
    except BaseException:
        lock.close()
        raise
    stale = False
    try:
        now = time.time()
        if (
            reason is None
            and out_of_sync_too_long(in_sync_at, delete_retention_ms, now)
            and store.checkpoint is not None
        ):
            assert in_sync_at is not None and delete_retention_ms is not None
            reason, stale = stale_reason(now - in_sync_at, delete_retention_ms), True
            store.wipe()  # as open_store wipes a corrupt store: every file, then a fresh one
        if layout is not None:
            changed = reconcile(store, layout, table=path.parent.name)
            reason = reason or changed
        if in_sync_at is not None:
            mark_in_sync(path, in_sync_at)
    except BaseException:
        store.close()
        raise
    return OpenedStore(store, reason, stale, in_sync_at)


async def open_store_cancellable(
    path: Path,
    *,
    cache_bytes: int = CACHE_BYTES,
    page_cache_mib: int,
    cache: ReadCache | None = None,
    lock_timeout_s: float = 30.0,
    delete_retention_ms: int | None = None,
    layout: Mapping[str, Any] | None = None,
) -> OpenedStore:
    """``open_in_sync`` in a worker thread. If the caller is cancelled meanwhile (a task revoked
    while it starts), the thread still runs to its end: the store it opens then is closed, so
    its lock is released instead of leaking for the life of the process."""
    opening = asyncio.ensure_future(
        asyncio.to_thread(
            functools.partial(
                open_in_sync,
                path,
                lock_timeout_s=lock_timeout_s,
                cache_bytes=cache_bytes,
                page_cache_mib=page_cache_mib,
                cache=cache,
                delete_retention_ms=delete_retention_ms,
                layout=layout,
            )
        )
    )
    try:
        return await asyncio.shield(opening)
    except asyncio.CancelledError:
        opening.add_done_callback(_close_opened)
        raise


def _close_opened(opening: asyncio.Future[OpenedStore]) -> None:
    if opening.cancelled() or opening.exception() is not None:
        return  # nothing was opened (a failed open releases its lock itself)
    opened = opening.result()
    opened.store.close()  # no transaction is open yet: a quick close on the loop
    if opened.in_sync_at is not None:  # closing moved the mtime; the store is no fresher
        mark_in_sync(opened.store.path, opened.in_sync_at)


def _progress_reporter(gauge: Any, counter: Any) -> Callable[[RestoreProgress, int], None]:
    """Metrics for every restored batch, and a progress line every few seconds."""
    logged_at = 0.0

    def on_batch(p: RestoreProgress, n: int) -> None:
        nonlocal logged_at
        gauge.set(p.remaining)
        counter.inc(n)
        now = time.monotonic()
        if p.remaining and now - logged_at < RESTORE_LOG_INTERVAL_S:
            return
        logged_at = now
        log.info(
            "restoring %s partition %d: %d done, %d remaining, %.0f records/s",
            p.store,
            p.partition,
            p.restored,
            p.remaining,
            p.rate,
        )

    return on_batch
