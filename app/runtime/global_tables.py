"""Global tables at run time: one consumer per worker keeps a local copy of every global topic.

``GlobalTables.start()`` runs before the worker joins its group (Kafka Streams' global thread
blocks the stream threads the same way): it opens each table's store
(``state_dir/<app_id>/global/<name>/<slot>/``), checks the store's positions against the topic
and reads every partition from them to the end offset (the LSO: ``read_committed``), in batches
applied with their positions in one SQLite transaction. ``run()`` then keeps consuming in the
background: records go to the store's write buffer (handlers see them at once) and every commit
interval the buffer and the positions are flushed together in a worker thread
(docs/architecture.md, *Global tables*).

A store that does not match its topic (another topic id, a position beyond a partition's end, a
partition the topic no longer has, another layout) is wiped and reloaded at start: a global table
holds no state of the app's own, the topic is its whole truth. While running, a topic deleted,
recreated or repartitioned stops the worker (``GlobalTopicChangedError``); the restart reloads.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError
from aiokafka.structs import TopicPartition

from onceflow.global_tables import GlobalTable
from onceflow.runtime.clients import Clients
from onceflow.runtime.global_topics import changed, describe, layout_of, mismatch
from onceflow.settings import Settings
from onceflow.state.sqlite.global_store import GlobalStorePartition, open_global_store
from onceflow.state.typing import StorePartition
from onceflow.topology import App

__all__ = ["GlobalProgress", "GlobalTables", "global_dir"]

log = logging.getLogger("onceflow.global")
BATCH_RECORDS = 10_000
FETCH_BYTES = 2 * 2**20
WARN_EVERY_S = 5.0


def global_dir(settings: Settings, app_id: str, name: str) -> Any:
    """The directory of global table ``name``'s store slots."""
    return settings.state_dir / app_id / "global" / name


@dataclass
class GlobalProgress:
    """How far one global table's load is: per partition, position and end offset."""

    table: str
    positions: dict[int, int] = field(default_factory=dict)
    ends: dict[int, int] = field(default_factory=dict)
    loaded: bool = False
    read: int = 0  # records read by the load at start
    skipped: int = 0  # records that could not be applied (null key, bad key or value)

    @property
    def remaining(self) -> int:
        return sum(max(0, end - self.positions.get(p, 0)) for p, end in self.ends.items())


class GlobalTables:
    """The worker's global table stores and the consumer that feeds them."""

    def __init__(
        self,
        app: App,
        settings: Settings,
        clients: Clients,
        *,
        check_interval_s: float = 10.0,
        on_fatal: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.app = app
        self.settings = settings
        self.tables = dict(app.global_tables)
        self.progress = {name: GlobalProgress(name) for name in self.tables}
        self._clients = clients
        self._check_interval_s = check_interval_s
        self._on_fatal = on_fatal
        self._stores: dict[str, GlobalStorePartition] = {}
        self._by_topic = {t.topic: t for t in self.tables.values()}
        self._counts: dict[str, int] = {}
        self._ids: dict[str, str] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._last_warning = 0.0

    @property
    def stores(self) -> Mapping[str, StorePartition]:
        """The open stores, by table name (what tasks read)."""
        return self._stores

    def store(self, name: str) -> StorePartition:
        return self._stores[name]

    def partitions(self, name: str) -> list[int]:
        """The topic partitions table ``name`` holds (empty before ``start`` read them)."""
        return sorted(self.progress[name].ends)

    def loading(self) -> str | None:
        """Why the global tables are not ready (readiness), or None once all are loaded."""
        for name, progress in self.progress.items():
            if not progress.loaded:
                if not progress.ends:
                    return f"loading global table {name}: reading the topic's end offsets"
                return f"loading global table {name}: {progress.remaining} records left"
        return None

    # -- start ---------------------------------------------------------------------------------

    async def start(self, on_progress: Callable[[], None] = lambda: None) -> None:
        """Open the stores and load every partition to its end offset; ``on_progress`` is
        called after each batch (the worker counts it as a sign of life)."""
        if not self.tables:
            return
        self._counts, self._ids = await describe(
            self._clients, self.settings.replication_factor, self._by_topic
        )
        for table in self.tables.values():
            directory = global_dir(self.settings, self.app.app_id, table.name)
            store, wiped = await asyncio.to_thread(open_global_store, directory)
            self._stores[table.name] = store
            if wiped:
                log.warning("global table %s: store wiped (%s); reloading", table.name, wiped)
        self._consumer = consumer = self._clients.consumer(
            group_id=None, max_partition_fetch_bytes=FETCH_BYTES, fetch_max_bytes=FETCH_BYTES
        )
        await consumer.start()
        tps = [
            TopicPartition(t.topic, p)
            for t in self.tables.values()
            for p in range(self._counts[t.topic])
        ]
        consumer.assign(tps)
        begins = await consumer.beginning_offsets(tps)
        ends = await consumer.end_offsets(tps)
        for table in self.tables.values():
            await self._seek(table, begins, ends)
        started = time.monotonic()
        await self._load(on_progress)
        for name, progress in self.progress.items():
            keys = await asyncio.to_thread(self._stores[name].approximate_size)
            log.info(
                "global table %s loaded: %d partitions, read %d records, %d keys, in %.1fs "
                "(store %s)",
                name, len(progress.ends), progress.read, keys, time.monotonic() - started,
                self._stores[name].path,
            )  # fmt: skip

    async def _seek(
        self,
        table: GlobalTable[Any, Any],
        begins: dict[TopicPartition, int],
        ends: dict[TopicPartition, int],
    ) -> None:
        store = self._stores[table.name]
        count = self._counts[table.topic]
        topic_id = self._ids.get(table.topic)
        why = await asyncio.to_thread(mismatch, table, store, count, ends, topic_id)
        if why is not None:
            log.warning("global table %s: %s; reloading it from the beginning", table.name, why)
            await asyncio.to_thread(store.wipe)
        store.set_layout(layout_of(table))
        if topic_id is not None:
            store.set_changelog_topic_id(topic_id)
        progress = self.progress[table.name]
        positions = store.positions
        assert self._consumer is not None
        for p in range(count):
            tp = TopicPartition(table.topic, p)
            start = max(positions.get(p, begins[tp]), begins[tp])
            self._consumer.seek(tp, start)
            progress.positions[p] = start
            progress.ends[p] = ends[tp]

    async def _load(self, on_progress: Callable[[], None]) -> None:
        assert self._consumer is not None
        pending = {name for name, pr in self.progress.items() if pr.remaining > 0}
        last_log = time.monotonic()
        while pending:
            fetched = await self._consumer.getmany(timeout_ms=200, max_records=BATCH_RECORDS)
            by_table: dict[str, list[tuple[bytes, bytes | None]]] = {}
            for tp, records in fetched.items():
                table = self._by_topic[tp.topic]
                self.progress[table.name].read += len(records)
                by_table.setdefault(table.name, []).extend(self._applicable(table, records))
            await self._note_positions()
            for name in list(pending) + [n for n in by_table if n not in pending]:
                store, progress = self._stores[name], self.progress[name]
                rows = by_table.get(name, [])
                if rows or progress.remaining == 0:
                    store.set_positions(progress.positions)
                    total = sum(progress.positions.values())
                    await asyncio.to_thread(store.restore_batch, rows, total)
                if progress.remaining == 0:
                    pending.discard(name)
            on_progress()
            if time.monotonic() - last_log >= 5:
                last_log = time.monotonic()
                for name in sorted(pending):
                    log.info(
                        "loading global table %s: %d records left",
                        name,
                        self.progress[name].remaining,
                    )
        for progress in self.progress.values():
            progress.loaded = True

    async def _note_positions(self) -> None:
        assert self._consumer is not None
        for table in self.tables.values():
            progress = self.progress[table.name]
            for p in progress.positions:
                progress.positions[p] = await self._consumer.position(
                    TopicPartition(table.topic, p)
                )

    def _applicable(
        self, table: GlobalTable[Any, Any], records: list[Any]
    ) -> list[tuple[bytes, bytes | None]]:
        rows = []
        for r in records:
            why = table.check(r.key, r.value)
            if why is None:
                rows.append((r.key, r.value))
                continue
            progress = self.progress[table.name]
            progress.skipped += 1
            now = time.monotonic()
            if now - self._last_warning >= WARN_EVERY_S:
                self._last_warning = now
                log.warning(
                    "global table %s: skipped record at %s partition %d offset %d: %s (%d skipped "
                    "so far; the key keeps its previous value)",
                    table.name, r.topic, r.partition, r.offset, why, progress.skipped,
                )  # fmt: skip
        return rows

    # -- running -------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Keep the stores up to date until ``stop``: apply records to the write buffers as they
        come, flush buffers and positions every commit interval, check the topics every
        ``check_interval_s``. A changed topic, or a store that cannot be written (the table
        would silently stop following its topic), calls ``on_fatal``."""
        if not self.tables or self._consumer is None:
            return
        try:
            error = await self._follow(self._consumer, stop)
        except Exception as exc:
            error = exc
        if error is not None and self._on_fatal is not None:
            self._on_fatal(error)

    async def _follow(self, consumer: AIOKafkaConsumer, stop: asyncio.Event) -> Exception | None:
        interval = max(0.1, self.settings.effective_commit_interval_ms / 1000)
        last_flush = last_check = time.monotonic()
        while not stop.is_set():
            try:
                fetched = await consumer.getmany(timeout_ms=100, max_records=BATCH_RECORDS)
            except KafkaError as exc:
                log.warning("global tables: fetch failed: %r; retrying", exc)
                await asyncio.sleep(0.5)
                continue
            for tp, records in fetched.items():
                table = self._by_topic[tp.topic]
                store = self._stores[table.name]
                for key, value in self._applicable(table, records):
                    if value is None:
                        store.delete(key)
                    else:
                        store.put(key, value)
            now = time.monotonic()
            if now - last_flush >= interval:
                await self.flush()
                last_flush = time.monotonic()
            if now - last_check >= self._check_interval_s:
                last_check = now
                error = await changed(
                    self._clients, self.settings.replication_factor, self._by_topic,
                    self._counts, self._ids,
                )  # fmt: skip
                if error is not None:
                    return error
        return None

    async def flush(self) -> None:
        """Write every store's buffered records with the positions they reach, in one SQLite
        transaction per store (off the event loop)."""
        if self._consumer is None:
            return
        await self._note_positions()
        for name, store in self._stores.items():
            progress = self.progress[name]
            if not store.has_pending and store.positions == progress.positions:
                continue
            store.seal()  # later records go to a fresh buffer while this one is written
            store.set_positions(progress.positions)
            total = sum(progress.positions.values())
            await asyncio.to_thread(store.flush, total, seal=False)

    async def close(self) -> None:
        """Flush what was applied (a clean stop resumes from there), stop the consumer, close
        the stores."""
        try:
            if self._consumer is not None and all(p.loaded for p in self.progress.values()):
                await self.flush()
        except Exception as exc:  # the next start re-reads from the last durable positions
            log.warning("global tables: last flush failed: %r", exc)
        finally:
            if self._consumer is not None:
                await self._consumer.stop()
                self._consumer = None
            for store in self._stores.values():
                await asyncio.to_thread(store.close)
