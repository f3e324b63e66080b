"""Standby tasks: copies of other instances' task state, kept current by tailing the changelogs
(docs/architecture.md, *High availability*).

A standby of task t opens t's SQLite stores like an active task would (same directories, same
checks: corrupt, stale, layout, topic id) and applies the records of t's changelog partitions
as a restore does — each batch with its checkpoint in one SQLite transaction, read with
``read_committed`` — but it never stops at the end: it follows the log. It has no producer and
processes nothing. One consumer (no group) per worker serves every standby. A task promoted here
closes its standby first (``release``), then starts as any task: fence, seek, restore the tail
from the standby's checkpoint.

A warm-up is a standby the assignor placed because balance wants the task here but this member
is not caught up; when its lag falls to ``ONCEFLOW_ACCEPTABLE_RECOVERY_LAG`` the worker asks the
group to rebalance, so that the task can move here without a long restore.

Tables fed by a topic (``app.source_table``) have no changelog: their standby copies are not
kept, and a promoted task restores them as any task does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError
from aiokafka.structs import TopicPartition

from onceflow.errors import ChangelogMissingError, StateError
from onceflow.runtime.restore import (
    BATCH_RECORDS,
    RestoreProgress,
    changelog_reader,
    start_offset,
)
from onceflow.runtime.stores import TaskStores
from onceflow.source_tables import SourceTable
from onceflow.state.windowed import WindowedStorePartition, parse_changelog_key
from onceflow.tables import WindowedTable
from onceflow.window_ranges import RangeTable

if TYPE_CHECKING:
    from onceflow.runtime.assignor import TaskKey
    from onceflow.runtime.metrics import Metrics
    from onceflow.settings import Settings
    from onceflow.state.typing import Restorable, StorePartition
    from onceflow.topology import AnyTable, App

__all__ = ["StandbyTask", "Standbys", "changelog_tables"]

log = logging.getLogger("onceflow.standby")

LOCK_TIMEOUT_S = 5.0
"""How long a standby waits for a store another worker on this host still holds."""
FETCH_TIMEOUT_MS = 200
"""The longest a fetch of the standby consumer waits (and a promotion waits for it)."""
WARM_REPORT_AFTER_S = 10.0
"""A warm-up reports itself caught up no sooner than this after its assignment, and once per
assignment: a task that keeps writing faster than the acceptable lag between the warm-up's last
fetch and the leader's read of the ends would otherwise keep the group rebalancing."""


def changelog_tables(app: App, group: str) -> list[AnyTable]:
    """The tables of ``group`` a standby keeps: those with a changelog of their own."""
    return [t for t in app.tables_of(group) if not isinstance(t, SourceTable)]


class StandbyTask:
    """The standby copy of one task: its stores, and per changelog partition the next offset to
    apply (``positions``) and the end offset last seen (``ends``, the last stable offset)."""

    def __init__(self, key: TaskKey, tables: list[AnyTable]) -> None:
        self.key = key
        self.task_id = f"{key[0]}_{key[1]}"
        self.stores = TaskStores(tables, key[1])
        self.warmup = False
        self.targets: dict[TopicPartition, Restorable] = {}
        self.table_of: dict[TopicPartition, str] = {}
        self.positions: dict[TopicPartition, int] = {}
        self.ends: dict[TopicPartition, int] = {}
        self.applied = 0
        # Windowed tables: retention, and the newest window start applied (-> expiry)
        self.retention_ms: dict[TopicPartition, int] = {}
        self.newest: dict[TopicPartition, int] = {}

    # What interactive queries read of it (``?stale_ok=true``; http/_types.py, StandbyView).
    state = "standby"
    committed_stream_time = -1  # a standby knows no stream time
    restores: Mapping[str, RestoreProgress] = {}

    def store(self, name: str) -> StorePartition:
        return self.stores.store(name)

    def windowed_store(self, name: str) -> WindowedStorePartition:
        return self.stores.windowed_store(name)

    @property
    def lag(self) -> int:
        """Changelog records this copy lacks, as of the last fetch."""
        return sum(max(0, self.ends.get(tp, p) - p) for tp, p in self.positions.items())

    @property
    def position(self) -> int:
        """The sum of its changelog positions: what the assignor compares with the ends."""
        return sum(self.positions.values())

    def table_lag(self, table: str) -> int | None:
        """Records the copy of ``table`` lacks; None if this standby does not keep it."""
        for tp, name in self.table_of.items():
            if name == table:
                return max(0, self.ends.get(tp, self.positions[tp]) - self.positions[tp])
        return None

    async def open(
        self,
        consumer: AIOKafkaConsumer,
        *,
        app_id: str,
        settings: Settings,
        delete_retention_ms: Mapping[str, int],
        changelog_ids: Mapping[str, str],
    ) -> None:
        """Open every store and find where its changelog tail starts (``restore.start_offset``:
        a checkpoint beyond the log end, or of another topic id, raises
        ``ChangelogMissingError``, as the restore of an active task would)."""
        partition = self.key[1]
        tps = {TopicPartition(t.changelog_topic, partition): t for t in self.stores.tables}
        begins = await consumer.beginning_offsets(list(tps))
        ends = await consumer.end_offsets(list(tps))
        for tp, table in tps.items():
            target, reason = await self.stores.open(
                table,
                app_id=app_id,
                settings=settings,
                delete_retention_ms=delete_retention_ms.get(tp.topic),
                lock_timeout_s=LOCK_TIMEOUT_S,
            )
            progress = RestoreProgress(table.name, partition, wiped_because=reason)
            start = await asyncio.to_thread(
                start_offset, target, progress, tp.topic, begins[tp], ends[tp],
                changelog_ids.get(tp.topic),
            )  # fmt: skip
            self.targets[tp] = target
            self.table_of[tp] = table.name
            if isinstance(target, WindowedStorePartition) and isinstance(
                table, WindowedTable | RangeTable
            ):
                self.retention_ms[tp] = table.retention_ms
            self.positions[tp] = start
            self.ends[tp] = ends[tp]
            if start >= ends[tp]:
                self.stores.synced(table.name)

    async def apply(self, tp: TopicPartition, records: list[Any], end: int | None) -> int:
        """Apply fetched ``records`` of ``tp`` (those before the position were applied already)
        with their checkpoint; returns how many."""
        position = self.positions[tp]
        if records and records[0].offset < position:
            records = [r for r in records if r.offset >= position]
        if records:
            batch = [(r.key, r.value) for r in records]
            target = self.targets[tp]
            if tp in self.retention_ms and isinstance(target, WindowedStorePartition):
                await asyncio.to_thread(self._apply_windows, tp, target, batch, records[-1].offset)
            else:
                await asyncio.to_thread(target.restore_batch, batch, records[-1].offset)
            self.positions[tp] = records[-1].offset + 1
            self.applied += len(batch)
        if end is not None:
            self.ends[tp] = max(end, self.positions[tp])
        if self.positions[tp] >= self.ends[tp]:
            self.stores.synced(self.table_of[tp])
        return len(records)

    def _apply_windows(
        self,
        tp: TopicPartition,
        store: WindowedStorePartition,
        batch: list[tuple[bytes, bytes | None]],
        last_offset: int,
    ) -> None:
        """Apply a windowed table's changelog records and expire its old windows, as the active
        does at each commit: without it a standby's store would grow for as long as it lives.

        A standby knows no stream time; the newest window start it applied stands in for it.
        Every window kind starts at most 1 ms after the record that made it (a sliding window's
        right window), so that start - 1 is at most the stream time, and what expires here by
        it the active expired already (docs/architecture.md, *High availability*)."""
        retention = self.retention_ms[tp]
        before = self.newest.get(tp)
        newest = max((parse_changelog_key(key)[1] for key, _ in batch), default=before)
        bound = None if before is None else before - 1 - retention
        store.restore_batch(batch, last_offset, min_start=bound)
        if newest is None or (before is not None and newest <= before):
            return
        self.newest[tp] = newest
        old, new = (before or 0) - 1 - retention, newest - 1 - retention
        if before is None or new // store.segment_interval_ms > old // store.segment_interval_ms:
            store.expire_before(new)  # whole segments: one range deletion
            store.flush(None)

    def follow(self, tp: TopicPartition, position: int, end: int | None) -> None:
        """The consumer is at ``position`` of ``tp`` with nothing fetched before it: transaction
        markers and compacted-away offsets count as applied."""
        if position > self.positions[tp]:
            self.positions[tp] = position
        if end is not None:
            self.ends[tp] = max(end, self.positions[tp])
        if self.positions[tp] >= self.ends[tp]:
            self.stores.synced(self.table_of[tp])

    async def close(self) -> None:
        await self.stores.close()


class Standbys:
    """Every standby task of one worker, and the consumer that feeds them.

    ``update`` (after each assignment) opens and closes standbys; ``release`` closes the one of
    a task about to start here as active; ``run`` fetches and applies until stopped. All three
    hold one lock: a store is never written while its standby opens or closes.
    """

    def __init__(
        self,
        app: App,
        settings: Settings,
        consumer_factory: Callable[..., AIOKafkaConsumer],
        metrics: Metrics,
        *,
        delete_retention_ms: Mapping[str, int],
        changelog_ids: Mapping[str, str],
        on_fatal: Callable[[BaseException], None],
        on_warm: Callable[[StandbyTask], None],
    ) -> None:
        self.app = app
        self.settings = settings
        self.metrics = metrics
        self.tasks: dict[TaskKey, StandbyTask] = {}
        self._consumer_factory = consumer_factory
        self._consumer: AIOKafkaConsumer | None = None
        self._delete_retention_ms = delete_retention_ms
        self._changelog_ids = changelog_ids
        self._on_fatal = on_fatal
        self._on_warm = on_warm
        self._lock = asyncio.Lock()
        self._by_tp: dict[TopicPartition, StandbyTask] = {}
        self._changed = asyncio.Event()
        self._assigned_at = 0.0
        self._warm_reported = False
        self._watched: set[TaskKey] = set()  # copies of tasks waiting to move here
        self._behind: set[TaskKey] = set()  # of those, seen behind since the assignment

    @property
    def consumer(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            raise StateError("the standby consumer is not started")
        return self._consumer

    async def start(self) -> None:
        self._consumer = changelog_reader(self._consumer_factory)
        await self._consumer.start()

    def positions(self) -> dict[TaskKey, int]:
        """Per standby task, the sum of its changelog positions."""
        return {key: standby.position for key, standby in self.tasks.items()}

    async def ends(self, partitions: Mapping[str, int]) -> dict[TaskKey, int]:
        """Per stateful task of the app, the sum of its changelog partitions' end offsets (the
        last stable offsets) now. ``partitions``: task group -> partition count."""
        tps: dict[TopicPartition, TaskKey] = {}
        for group, count in partitions.items():
            for table in changelog_tables(self.app, group):
                for p in range(count):
                    tps[TopicPartition(table.changelog_topic, p)] = (group, p)
        if not tps:
            return {}
        offsets = await self.consumer.end_offsets(list(tps))
        ends: dict[TaskKey, int] = {}
        for tp, key in tps.items():
            ends[key] = ends.get(key, 0) + offsets.get(tp, 0)
        return ends

    async def update(
        self,
        wanted: Mapping[TaskKey, bool],
        active: Collection[TaskKey] = (),
        moving: Collection[TaskKey] = (),
    ) -> None:
        """Keep a standby of exactly the tasks in ``wanted`` (-> whether it is a warm-up);
        those in ``active`` now run here: their standby is promoted. ``moving``: tasks the
        group waits to move here, whose copy (standby or warm-up) reports when it caught up."""
        async with self._lock:
            for key in [k for k in self.tasks if k not in wanted]:
                if key in active:
                    log.info(
                        "task %s promoted from its standby here: %d changelog records behind",
                        self.tasks[key].task_id,
                        self.tasks[key].lag,
                    )
                await self._close(key)
            for key in sorted(wanted):
                if key not in self.tasks:
                    await self._open(key)
                if key in self.tasks:
                    self.tasks[key].warmup = wanted[key]
            self._reassign()
            self._gauges()
            self._assigned_at = time.monotonic()
            self._warm_reported = False
            self._watched = {k for k in self.tasks if k in moving}
            self._behind = set(self._watched)
        if wanted:
            standbys = sorted(s.task_id for s in self.tasks.values() if not s.warmup)
            warmups = sorted(s.task_id for s in self.tasks.values() if s.warmup)
            log.info(
                "standby tasks %s; warm-up tasks %s",
                ", ".join(standbys) or "(none)",
                ", ".join(warmups) or "(none)",
            )

    async def release(self, key: TaskKey) -> None:
        """Close the standby of ``key`` (it starts here as active): its stores are free. Without
        one there is nothing to wait for (an ``update`` closing it drops it first; the task's
        store lock waits for the close)."""
        if key not in self.tasks:
            return
        async with self._lock:
            if key in self.tasks:
                await self._close(key)
                self._reassign()

    async def close(self) -> None:
        async with self._lock:
            for key in list(self.tasks):
                await self._close(key)
            if self._consumer is not None:
                with contextlib.suppress(KafkaError):
                    await self._consumer.stop()
                self._consumer = None

    async def run(self, stop: asyncio.Event) -> None:
        """Apply what the changelogs of the standby tasks get, until ``stop``."""
        while not stop.is_set():
            if not self._by_tp:
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), 1.0)
                continue
            try:
                async with self._lock:
                    await self._fetch_and_apply()
            except KafkaError as exc:
                log.warning("standby fetch failed: %r; retrying", exc)
                await asyncio.sleep(0.5)
            self._report()

    # -- internals -------------------------------------------------------------------------------

    async def _fetch_and_apply(self) -> None:
        consumer = self.consumer
        fetched = await consumer.getmany(timeout_ms=FETCH_TIMEOUT_MS, max_records=BATCH_RECORDS)
        applied = 0
        for tp, standby in list(self._by_tp.items()):
            records = fetched.get(tp, [])
            end = consumer.last_stable_offset(tp)
            try:
                if records:
                    applied += await standby.apply(tp, records, end)
                else:
                    standby.follow(tp, await consumer.position(tp), end)
            except (StateError, OSError) as exc:
                log.warning(
                    "standby task %s: applying its changelog failed (%s); dropping the copy, the "
                    "next assignment opens it again",
                    standby.task_id,
                    exc,
                )
                await self._close(standby.key)
                self._reassign()
                return
        if applied:
            self.metrics.standby_records.labels(self.app.app_id).inc(applied)

    def _report(self) -> None:
        app_id = self.app.app_id
        for standby in self.tasks.values():
            self.metrics.standby_lag.labels(app_id, standby.task_id).set(standby.lag)
            if standby.key in self._watched and standby.lag > self.settings.acceptable_recovery_lag:
                self._behind.add(standby.key)
        if self._warm_reported or time.monotonic() - self._assigned_at < WARM_REPORT_AFTER_S:
            return
        for key in sorted(self._behind):
            warm = self.tasks.get(key)
            if warm is not None and warm.lag <= self.settings.acceptable_recovery_lag:
                self._warm_reported = True
                self._on_warm(warm)
                return

    async def _open(self, key: TaskKey) -> None:
        tables = changelog_tables(self.app, key[0])
        if not tables:
            return
        standby = StandbyTask(key, tables)
        try:
            await standby.open(
                self.consumer,
                app_id=self.app.app_id,
                settings=self.settings,
                delete_retention_ms=self._delete_retention_ms,
                changelog_ids=self._changelog_ids,
            )
        except ChangelogMissingError as exc:
            await standby.close()
            self._on_fatal(exc)
            return
        except (StateError, OSError, KafkaError) as exc:
            await standby.close()
            log.warning("standby task %s not kept: %s", standby.task_id, exc)
            return
        self.tasks[key] = standby
        log.info(
            "standby task %s opened: %d changelog records behind", standby.task_id, standby.lag
        )

    async def _close(self, key: TaskKey) -> None:
        standby = self.tasks.pop(key, None)
        if standby is None:
            return
        await standby.close()
        with contextlib.suppress(KeyError):
            self.metrics.standby_lag.remove(self.app.app_id, standby.task_id)
        self._gauges()

    def _reassign(self) -> None:
        """Point the consumer at the changelog partitions of the standbys, each at its position
        (``assign`` forgets every position)."""
        self._by_tp = {tp: s for s in self.tasks.values() for tp in s.positions}
        consumer = self.consumer
        consumer.assign(list(self._by_tp))
        for tp, standby in self._by_tp.items():
            consumer.seek(tp, standby.positions[tp])
        self._changed.set()

    def _gauges(self) -> None:
        app_id = self.app.app_id
        warmups = sum(1 for s in self.tasks.values() if s.warmup)
        self.metrics.standby_tasks.labels(app_id).set(len(self.tasks) - warmups)
        self.metrics.warmup_tasks.labels(app_id).set(warmups)
