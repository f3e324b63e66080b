"""A task's stores with real SQLite files and real processes: opening a store is safe to cancel,
and closing waits for the SQLite write the stores started."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from onceflow import App
from onceflow.runtime.stores import TaskStores, open_store_cancellable
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
        env={**os.environ, "PYTHONPATH": str(ROOT)},
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
    store, _ = await open_store_cancellable(tmp_path, cache_bytes=2**20, page_cache_mib=1)
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
    store, _ = await open_store_cancellable(tmp_path, cache_bytes=2**20, page_cache_mib=1)
    stores.attach(app.tables["counts"], store)
    started = time.monotonic()
    await stores.close()
    await stores.close()
    assert store.closed and time.monotonic() - started < 5
