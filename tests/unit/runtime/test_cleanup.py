"""Removing the stores of tasks a worker no longer owns, with real directories, files and locks:
only unowned, unlocked store partitions last used more than the delay ago lose their database
files; the directory and its lock file stay."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from onceflow.runtime import cleanup
from onceflow.runtime.cleanup import StateCleaner, last_in_sync, mark_in_sync
from onceflow.state.sqlite.lock import LOCK_FILE_NAME, TaskLock

ROOT = Path(__file__).resolve().parents[3]
HOLD_LOCK = (
    "import sys; from pathlib import Path; from onceflow.state.sqlite.lock import TaskLock; "
    "lock = TaskLock(Path(sys.argv[1])); lock.acquire(); print('locked', flush=True); "
    "sys.stdin.readline()"
)
DB_FILES = {"data.sqlite", "data.sqlite-wal", "data.sqlite-shm"}
GROUPS = {"counts": "0", "totals": "1"}  # table -> task group
DELAY_MS = 60_000


def make_store(root: Path, table: str, partition: int | str, age_s: float) -> Path:
    """A store directory as a closed store leaves it: lock file, database and WAL files, last
    in sync ``age_s`` seconds ago."""
    directory = root / table / str(partition)
    with TaskLock(directory):
        pass
    for name in DB_FILES:
        (directory / name).write_bytes(b"x" * 100)
    mark_in_sync(directory, time.time() - age_s)
    return directory


def files(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir()}


def test_an_unowned_store_unused_past_the_delay_loses_its_database(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    old = make_store(tmp_path, "counts", 3, age_s=120)
    cleaner = StateCleaner(tmp_path, GROUPS, DELAY_MS)
    with caplog.at_level(logging.INFO, logger="onceflow.cleanup"):
        removed = cleaner.clean(owned=set())
    assert [(r.table, r.partition) for r in removed] == [("counts", 3)]
    assert 119 < removed[0].age_s < 130
    assert files(old) == {LOCK_FILE_NAME}  # the lock file is never deleted
    (line,) = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert "store counts partition 3" in line and "last used 120 s ago" in line
    # Nothing left to remove: the next round neither removes nor logs it again.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="onceflow.cleanup"):
        assert cleaner.clean(owned=set()) == []
    assert not caplog.records


def test_owned_recent_and_locked_stores_stay(tmp_path: Path) -> None:
    owned = make_store(tmp_path, "totals", 0, age_s=120)  # group "1", partition 0
    recent = make_store(tmp_path, "counts", 1, age_s=5)
    open_here = make_store(tmp_path, "counts", 2, age_s=120)
    elsewhere = make_store(tmp_path, "counts", 4, age_s=120)
    gone = make_store(tmp_path, "counts", 5, age_s=120)
    lock = TaskLock(open_here)
    lock.acquire()  # a store open in this process
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(elsewhere)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, (os.environ.get("PYTHONPATH"), str(ROOT)))),
        },
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        removed = StateCleaner(tmp_path, GROUPS, DELAY_MS).clean(owned={("1", 0)})
    finally:
        holder.communicate("release\n", timeout=10)
        lock.close()
    assert [(r.table, r.partition) for r in removed] == [("counts", 5)]
    for kept in (owned, recent, open_here, elsewhere):
        assert files(kept) >= DB_FILES, kept
    assert files(gone) == {LOCK_FILE_NAME}


def test_the_age_is_read_again_under_the_lock(tmp_path: Path) -> None:
    # The last owner may use the store until the moment it lets go of it: the age that counts
    # is the one read once the cleaner holds the lock.
    directory = make_store(tmp_path, "counts", 0, age_s=120)
    clock_calls: list[float] = []

    def clock() -> float:
        clock_calls.append(time.time())
        if len(clock_calls) == 1:  # the first look read the mtime: the owner uses it now
            mark_in_sync(directory)
        return time.time()

    assert StateCleaner(tmp_path, GROUPS, DELAY_MS, clock=clock).clean(owned=set()) == []
    assert files(directory) >= DB_FILES


def test_unknown_tables_and_stray_entries_are_left_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dropped = make_store(tmp_path, "dropped-table", 0, age_s=120)
    stray = make_store(tmp_path, "counts", "backup", age_s=120)
    (tmp_path / "counts" / "7").write_text("a file, not a store")
    (tmp_path / "notes.txt").write_text("not a table")
    cleaner = StateCleaner(tmp_path, GROUPS, DELAY_MS)
    with caplog.at_level(logging.DEBUG, logger="onceflow.cleanup"):
        assert cleaner.clean(owned=set()) == []
        assert cleaner.clean(owned=set()) == []
    assert files(dropped) >= DB_FILES and files(stray) >= DB_FILES
    about = [r for r in caplog.records if "dropped-table" in r.getMessage()]
    assert [r.levelno for r in about] == [logging.DEBUG]  # once, at DEBUG


def test_a_missing_state_directory_is_nothing_to_clean(tmp_path: Path) -> None:
    assert StateCleaner(tmp_path / "no-such-app", GROUPS, 0).clean(owned=set()) == []
    assert last_in_sync(tmp_path / "no-such-dir") is None


@pytest.mark.parametrize(("delay_ms", "interval_s"), [(0, 1.0), (2_000, 2.0), (600_000, 60.0)])
def test_the_interval_follows_the_delay_within_bounds(delay_ms: int, interval_s: float) -> None:
    assert StateCleaner(Path("/nonexistent"), GROUPS, delay_ms).interval_s == interval_s


async def test_run_cleans_only_while_ownership_is_known(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cleanup, "MIN_INTERVAL_S", 0.02)
    directory = make_store(tmp_path, "counts", 0, age_s=120)
    cleaner = StateCleaner(tmp_path, GROUPS, 0)
    stop, skipped_five = asyncio.Event(), asyncio.Event()
    known = False
    rounds = 0

    def owned() -> set[tuple[str, int]] | None:
        nonlocal rounds
        rounds += 1
        if rounds == 5:
            skipped_five.set()
        return set() if known else None  # None: a rebalance is under way

    running = asyncio.ensure_future(cleaner.run(owned, stop))
    try:
        await asyncio.wait_for(skipped_five.wait(), 5)
        assert files(directory) >= DB_FILES  # skipped while nobody knows what is owned
        known = True
        deadline = time.monotonic() + 5
        while files(directory) != {LOCK_FILE_NAME}:
            assert time.monotonic() < deadline, files(directory)
            await asyncio.sleep(0.02)
    finally:
        stop.set()
        await asyncio.wait_for(running, 5)
