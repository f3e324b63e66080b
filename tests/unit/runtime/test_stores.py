"""A task's stores with real SQLite files and real processes: opening a store is safe to cancel,
closing waits for the SQLite write the stores started, and a store out of sync with its changelog
for longer than the changelog keeps tombstones is restored from the beginning."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.errors import KafkaError
from aiokafka.structs import TopicPartition

from onceflow import App
from onceflow.runtime.cleanup import last_in_sync, mark_in_sync
from onceflow.runtime.metrics import Metrics
from onceflow.runtime.stores import TaskStores, open_store_cancellable
from onceflow.settings import Settings
from onceflow.state.sqlite.partition import open_store

ROOT = Path(__file__).resolve().parents[3]
HOLD_LOCK = (
    "import sys; from pathlib import Path; from onceflow.state.sqlite.lock import TaskLock; "
    "lock = TaskLock(Path(sys.argv[1])); lock.acquire(); print('locked', flush=True); "
    "sys.stdin.readline()"
)


def _hold_lock(path: Path) -> subprocess.Popen[str]:
    """Another process holding the store's lock until a line arrives on its stdin."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, (os.environ.get("PYTHONPATH"), str(ROOT)))),
        },
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    return holder


async def test_a_cancelled_open_releases_the_lock_it_takes_later(tmp_path: Path) -> None:
    # A task revoked while it starts is cancelled while open_store waits for the lock in its
    # thread; the thread goes on, takes the lock once the other process lets go, and opens the
    # store. That store must be closed, or its lock stays held by this process for good.
    holder = _hold_lock(tmp_path)
    try:
        opening = asyncio.ensure_future(
            open_store_cancellable(
                tmp_path, cache_bytes=2**20, page_cache_mib=1, lock_timeout_s=10.0
            )
        )
        await asyncio.sleep(0.3)  # the thread is waiting for the lock now
        opening.cancel()
        with pytest.raises(asyncio.CancelledError):
            await opening
    finally:
        holder.communicate("release\n", timeout=10)  # closes its pipes too
    # The orphaned thread takes the lock within its 50 ms retry interval, then (the fix) the
    # store it opened is closed. Without the fix the lock stays held by this process for good.
    await asyncio.sleep(1.0)
    store, _ = await asyncio.to_thread(open_store, tmp_path, lock_timeout_s=5.0)
    store.close()


def _counts_app() -> App:
    app = App("stores-test")
    source = app.topic("in", key_serde="str", value_serde="str")
    app.table("counts", default=0, value_serde="int64")

    @app.handler(source)
    async def handle(ctx: Any, key: str, value: str) -> None: ...

    return app


async def test_close_waits_for_the_flush_it_started(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Closing right after a commit started its background SQLite write closed the store under
    # the write: "store ... is closed" from the flush thread, an exception nobody retrieved, and
    # a checkpoint never written (the next owner replays the tail it did not need).
    app = _counts_app()
    stores = TaskStores(app.tables_of("0"), partition=0)
    store = (await open_store_cancellable(tmp_path, cache_bytes=2**20, page_cache_mib=1)).store
    stores.attach(app.tables["counts"], store)
    release = threading.Event()
    flush = store.flush

    def slow_flush(checkpoint: int | None, *, seal: bool = True) -> None:
        release.wait(5)
        flush(checkpoint, seal=seal)

    store.flush = slow_flush  # type: ignore[method-assign]
    stores.apply("counts", b"alice", b"\x00" * 7 + b"\x01")
    stores.persist({"counts": 41})  # after the Kafka commit: seal, write in the background
    closing = asyncio.ensure_future(stores.close())
    await asyncio.sleep(0.2)
    assert not closing.done()  # it waits for the write
    release.set()
    with caplog.at_level(logging.WARNING):
        await asyncio.wait_for(closing, 10)
    assert "failed" not in caplog.text
    reopened, _ = await asyncio.to_thread(open_store, tmp_path, lock_timeout_s=5.0)
    try:
        assert reopened.checkpoint == 41
        assert reopened.committed_get(b"alice") == b"\x00" * 7 + b"\x01"
    finally:
        reopened.close()


async def test_close_twice_is_safe(tmp_path: Path) -> None:
    app = _counts_app()
    stores = TaskStores(app.tables_of("0"), partition=0)
    store = (await open_store_cancellable(tmp_path, cache_bytes=2**20, page_cache_mib=1)).store
    stores.attach(app.tables["counts"], store)
    started = time.monotonic()
    await stores.close()
    await stores.close()
    assert store.closed and time.monotonic() - started < 5


# -- how long a store was out of sync with its changelog ----------------------------------------

APP_ID = "stores-test"


class QuietChangelog:
    """The restore consumer of a changelog partition holding offsets ``[begin, end)`` and
    nothing a store with checkpoint ``end - 1`` lacks; ``end_offsets`` raises ``fail``."""

    def __init__(self, begin: int, end: int, fail: Exception | None = None) -> None:
        self.begin, self.end, self.fail = begin, end, fail
        cluster = SimpleNamespace(partitions_for_topic=lambda topic: {0})

        async def fetch_all_metadata() -> Any:
            return cluster

        self._client = SimpleNamespace(fetch_all_metadata=fetch_all_metadata)

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def assign(self, tps: Any) -> None: ...

    async def beginning_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return dict.fromkeys(tps, self.begin)

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        if self.fail is not None:
            raise self.fail
        return dict.fromkeys(tps, self.end)


def store_dir(tmp_path: Path) -> Path:
    return tmp_path / APP_ID / "counts" / "0"


def seed(tmp_path: Path, *, checkpoint: int, in_sync_s_ago: float) -> Path:
    """A closed store holding ``alice`` up to ``checkpoint``, last in sync that long ago."""
    path = store_dir(tmp_path)
    store, _ = open_store(path)
    store.put(b"alice", b"\x00" * 7 + b"\x01")
    store.flush(checkpoint)
    store.close()
    mark_in_sync(path, time.time() - in_sync_s_ago)
    return path


async def open_counts(
    tmp_path: Path, changelog: QuietChangelog, delete_retention_ms: int | None
) -> TaskStores:
    app = _counts_app()
    stores = TaskStores(app.tables_of("0"), partition=0)
    await stores.open_and_restore(
        app.tables["counts"],
        app_id=APP_ID,
        settings=Settings(state_dir=tmp_path),
        metrics=Metrics(APP_ID, eos=True),
        consumer_factory=lambda **_: changelog,
        delete_retention_ms=delete_retention_ms,
    )
    return stores


async def test_a_store_out_of_sync_longer_than_delete_retention_restores_from_the_beginning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Tombstones of deletes it missed may be compacted away: restoring only its tail would
    # bring the deleted keys back.
    path = seed(tmp_path, checkpoint=41, in_sync_s_ago=100)
    started = time.time()
    with caplog.at_level(logging.WARNING):
        stores = await open_counts(tmp_path, QuietChangelog(42, 42), delete_retention_ms=10_000)
    try:
        store = stores.store("counts")
        assert store.checkpoint is None and store.committed_get(b"alice") is None
        expected = (
            "store counts partition 0: last in sync 100 s ago, longer than the changelog's "
            "delete.retention.ms (10000 ms): deletes it missed may have been compacted away; "
            "restoring from the beginning"
        )
        assert [r.getMessage() for r in caplog.records] == [expected]
        reason = stores.restores["counts"].wiped_because
        assert reason is not None and reason.startswith("last in sync 100 s ago")
        in_sync_at = last_in_sync(path)
        assert in_sync_at is not None and in_sync_at >= started  # restored: in sync now
    finally:
        await stores.close()


@pytest.mark.parametrize(("age_s", "retention_ms"), [(5, 10_000), (100, None)])
async def test_a_store_in_sync_recently_restores_its_tail(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, age_s: float, retention_ms: int | None
) -> None:
    seed(tmp_path, checkpoint=41, in_sync_s_ago=age_s)
    with caplog.at_level(logging.WARNING):
        stores = await open_counts(tmp_path, QuietChangelog(0, 42), retention_ms)
    try:
        store = stores.store("counts")
        assert store.checkpoint == 41 and store.committed_get(b"alice") is not None
        assert stores.restores["counts"].wiped_because is None and not caplog.records
    finally:
        await stores.close()


async def test_flush_and_close_mark_the_store_in_sync(tmp_path: Path) -> None:
    path = seed(tmp_path, checkpoint=41, in_sync_s_ago=5)
    stores = await open_counts(tmp_path, QuietChangelog(0, 42), 10_000)
    long_ago = time.time() - 1000
    mark_in_sync(path, long_ago)
    stores.apply("counts", b"bob", b"\x00" * 7 + b"\x02")
    assert [len(records) for _, records in stores.changelog_records(-1)] == [1]
    stores.persist({"counts": 42})
    await stores.flushed()
    assert (last_in_sync(path) or 0) > long_ago + 900  # the flush wrote what the changelog has
    mark_in_sync(path, long_ago)
    await stores.close()
    assert (last_in_sync(path) or 0) > long_ago + 900  # closed in sync


async def test_a_store_never_in_sync_keeps_its_old_time_at_close(tmp_path: Path) -> None:
    # Opening and closing SQLite create and delete its WAL files, which moves the directory's
    # mtime; a store whose restore did not finish is no fresher than before: its time is put
    # back, or the next open would take a stale store for a fresh one.
    path = seed(tmp_path, checkpoint=41, in_sync_s_ago=100)
    before = last_in_sync(path)
    broken = QuietChangelog(0, 42, fail=KafkaError("broker gone"))
    app = _counts_app()
    stores = TaskStores(app.tables_of("0"), partition=0)
    with pytest.raises(KafkaError):
        await stores.open_and_restore(
            app.tables["counts"],
            app_id=APP_ID,
            settings=Settings(state_dir=tmp_path),
            metrics=Metrics(APP_ID, eos=True),
            consumer_factory=lambda **_: broken,
            delete_retention_ms=1_000_000,
        )
    await stores.close()
    assert last_in_sync(path) == before


async def test_changelog_records_never_flushed_keep_the_last_in_sync_time(tmp_path: Path) -> None:
    # A commit handed records to the changelog and then failed (its outcome unknown): the store
    # lacks them, so at close it is only as fresh as its last flush (here: its restore).
    path = seed(tmp_path, checkpoint=41, in_sync_s_ago=5)
    stores = await open_counts(tmp_path, QuietChangelog(0, 42), 10_000)
    restored_at = last_in_sync(path)
    await asyncio.sleep(0.05)
    stores.apply("counts", b"bob", b"\x00" * 7 + b"\x02")
    assert [len(records) for _, records in stores.changelog_records(-1)] == [1]
    await stores.close()
    assert last_in_sync(path) == restored_at
