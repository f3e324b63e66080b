"""A task's stores: its partition of every table of its group.

``TaskStores`` opens and restores them when the task starts (hand-over step 3), applies the
writes a handler staged, loads a fetched batch's keys ahead of the handlers, hands the changelog
records to the commit, and writes each committed buffer to SQLite in the background
(docs/architecture.md, *State*).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiokafka.structs import TopicPartition

from onceflow.runtime.restore import RestoreProgress, restore_partition
from onceflow.state.sqlite.partition import open_store
from onceflow.state.windowed import WindowedStorePartition, parse_changelog_key
from onceflow.tables import Table, WindowedTable

if TYPE_CHECKING:
    from aiokafka.structs import ConsumerRecord

    from onceflow.runtime.metrics import Metrics
    from onceflow.runtime.restore import ConsumerFactory
    from onceflow.settings import Settings
    from onceflow.state.typing import StorePartition

__all__ = ["AnyTable", "TaskStores", "open_store_cancellable"]

log = logging.getLogger("onceflow.task")
AnyTable = Table[Any, Any] | WindowedTable[Any, Any]
# Seconds between two restore progress lines of one store partition.
RESTORE_LOG_INTERVAL_S = 5.0


class TaskStores:
    """The store partitions of one task, by table name."""

    def __init__(self, tables: Sequence[AnyTable], partition: int) -> None:
        self.tables = list(tables)
        self.partition = partition
        self.restores: dict[str, RestoreProgress] = {}
        self._stores: dict[str, StorePartition] = {}
        self._windowed: dict[str, WindowedStorePartition] = {}
        self._flushing: asyncio.Future[None] | None = None  # the last commit's SQLite writes

    # -- access ------------------------------------------------------------------------------

    def store(self, name: str) -> StorePartition:
        return self._stores[name]

    def windowed_store(self, name: str) -> WindowedStorePartition:
        return self._windowed[name]

    def __bool__(self) -> bool:
        return bool(self._stores)

    def attach(
        self, table: AnyTable, store: StorePartition
    ) -> StorePartition | WindowedStorePartition:
        """Give the task ``store`` as its partition of ``table``; returns what restores it."""
        self._stores[table.name] = store
        if isinstance(table, WindowedTable):
            windowed = WindowedStorePartition(store, segment_interval_ms=table.segment_interval_ms)
            self._windowed[table.name] = windowed
            return windowed
        return store

    # -- start -------------------------------------------------------------------------------

    async def open_and_restore(
        self,
        table: AnyTable,
        *,
        app_id: str,
        settings: Settings,
        metrics: Metrics,
        consumer_factory: ConsumerFactory,
    ) -> None:
        """Open the table's SQLite store (wiped if corrupt) and bring it up to the end of its
        changelog partition."""
        path = Path(settings.state_dir) / app_id / table.name / str(self.partition)
        store, reason = await open_store_cancellable(
            path,
            cache_bytes=int(settings.state_read_cache_mib * 2**20),
            page_cache_mib=settings.state_page_cache_mib,
        )
        if reason:
            log.warning("store %s partition %d wiped: %s", table.name, self.partition, reason)
        target = self.attach(table, store)
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
        )
        gauge.set(0)
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
            else:
                self._stores[table.name].prefetch(r.key for r in records if r.key is not None)

    def apply(self, name: str, key: bytes, raw: bytes | None) -> None:
        """Apply one staged write (None: a delete) to the open transaction's buffer. A windowed
        table's key is its changelog key (``onceflow.state.windowed.changelog_key``)."""
        windowed = self._windowed.get(name)
        if windowed is not None:
            data, start = parse_changelog_key(key)
            if raw is None:
                windowed.delete(data, start)
            else:
                windowed.put(data, start, raw)
        elif raw is None:
            self._stores[name].delete(key)
        else:
            self._stores[name].put(key, raw)

    # -- commit ------------------------------------------------------------------------------

    def changelog_records(
        self, stream_time: int
    ) -> Iterable[tuple[AnyTable, list[tuple[bytes, bytes | None]]]]:
        """Per table, the open transaction's changelog records (last value per key), after
        expiring the windows that ``stream_time`` put past retention."""
        for table in self.tables:
            windowed = self._windowed.get(table.name)
            if windowed is not None and isinstance(table, WindowedTable) and stream_time >= 0:
                windowed.expire_before(stream_time - table.retention_ms)
        for table in self.tables:
            windowed = self._windowed.get(table.name)
            if windowed is not None:
                yield table, windowed.pending_changelog()
            else:
                yield table, list(self._stores[table.name].pending().items())

    def checkpoints(self, delivered: Mapping[TopicPartition, int]) -> dict[str, int]:
        """Per table, the offset of the last changelog record the commit wrote."""
        return {
            table.name: delivered[tp]
            for table in self.tables
            if (tp := TopicPartition(table.changelog_topic, self.partition)) in delivered
        }

    def persist(self, checkpoints: dict[str, int]) -> None:
        """After the Kafka commit: seal every buffer (on the loop, so later writes go to a fresh
        one) and write the sealed buffers with their checkpoints to SQLite in a worker thread.
        ``flushed()`` waits for that write."""
        if not self._stores:
            return
        for store in self._stores.values():
            store.seal()
        self._flushing = asyncio.ensure_future(asyncio.to_thread(self._flush, checkpoints))

    def _flush(self, checkpoints: dict[str, int]) -> None:
        for name, store in self._stores.items():
            store.flush(checkpoints.get(name), seal=False)

    async def flushed(self) -> None:
        """Wait for the last commit's SQLite writes; raises what they raised."""
        flushing, self._flushing = self._flushing, None
        if flushing is not None:
            await flushing

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
        for store in self._stores.values():
            store.discard()
            await asyncio.to_thread(store.close)


async def open_store_cancellable(
    path: Path, *, cache_bytes: int, page_cache_mib: int, lock_timeout_s: float = 30.0
) -> tuple[StorePartition, str | None]:
    """``open_store`` in a worker thread. If the caller is cancelled meanwhile (a task revoked
    while it starts), the thread still runs to its end: the store it opens then is closed, so
    its lock is released instead of leaking for the life of the process."""
    opening = asyncio.ensure_future(
        asyncio.to_thread(
            functools.partial(
                open_store,
                path,
                lock_timeout_s=lock_timeout_s,
                cache_bytes=cache_bytes,
                page_cache_mib=page_cache_mib,
            )
        )
    )
    try:
        store, reason = await asyncio.shield(opening)
    except asyncio.CancelledError:
        opening.add_done_callback(_close_opened)
        raise
    return store, reason


def _close_opened(opening: asyncio.Future[Any]) -> None:
    if opening.cancelled() or opening.exception() is not None:
        return  # nothing was opened (a failed open releases its lock itself)
    store, _ = opening.result()
    store.close()  # no transaction is open yet: a quick close on the loop


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
