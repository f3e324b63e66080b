"""What this instance holds of each task's state, for the lag-aware assignor
(docs/architecture.md, *High availability*).

``process_id``: a uuid kept in ``state_dir/<app_id>/onceflow.process``; members that share a
state directory report the same one, and the assignor never puts two copies of a task on them.

``stored_positions``: per task whose stores are on disk here (a task that moved away, a worker
restarted), the sum of its changelog positions (checkpoint + 1 per table; 0 for a table without
a store), read at every group join. Stores another worker on this host has open are skipped
(that worker reports them), and so are stores a start would wipe as stale (out of sync longer
than their changelog's ``delete.retention.ms``): their state is worth nothing. Blocking, about
0.2 ms per store partition on disk: run where the join would wait anyway.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from onceflow.errors import StoreLockedError
from onceflow.runtime.cleanup import last_in_sync, out_of_sync_too_long
from onceflow.runtime.standby import changelog_tables
from onceflow.state.sqlite.file import DB_FILE, stored_checkpoint
from onceflow.state.sqlite.lock import TaskLock

if TYPE_CHECKING:
    from onceflow.runtime.assignor import TaskKey
    from onceflow.topology import App

__all__ = ["PROCESS_FILE", "process_id", "stored_positions"]

PROCESS_FILE = "onceflow.process"


def process_id(root: Path) -> str:
    """The id of the state directory ``root`` (``state_dir/<app_id>``), made on first use."""
    path = root / PROCESS_FILE
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        text = ""
    if text:
        return text
    root.mkdir(parents=True, exist_ok=True)
    text = uuid.uuid4().hex
    # Written whole under a name of its own, then linked into place: of two workers starting
    # at once on one directory the first link wins, and both read the winner's id.
    tmp = path.with_name(f"{PROCESS_FILE}.{os.getpid()}.{text}.tmp")
    tmp.write_text(text + "\n")
    try:
        os.link(tmp, path)
    except FileExistsError:
        winner = path.read_text().strip()
        if winner:
            text = winner
        else:  # an empty file (written by hand, or cut short): ours replaces it
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return text


def stored_positions(
    app: App,
    root: Path,
    partitions: Mapping[str, int],
    delete_retention_ms: Mapping[str, int],
    skip: Collection[TaskKey] = (),
) -> dict[TaskKey, int]:
    """Per task not in ``skip`` with a usable store under ``root``, its position sum."""
    found: dict[TaskKey, int] = {}
    now = time.time()
    for group, count in partitions.items():
        tables = changelog_tables(app, group)
        for partition in range(count):
            if (group, partition) in skip:
                continue
            total, any_state = 0, False
            for table in tables:
                directory = root / table.name / str(partition)
                retention = delete_retention_ms.get(table.changelog_topic)
                checkpoint = _checkpoint(directory, now, retention)
                if checkpoint is not None:
                    total += checkpoint + 1
                    any_state = True
            if any_state:
                found[(group, partition)] = total
    return found


def _checkpoint(directory: Path, now: float, retention_ms: int | None) -> int | None:
    if not (directory / DB_FILE).exists():
        return None
    lock = TaskLock(directory)
    try:
        lock.acquire(0.0)
    except StoreLockedError:
        return None
    try:
        synced = last_in_sync(directory)
        if synced is None or out_of_sync_too_long(synced, retention_ms, now):
            return None
        return stored_checkpoint(directory / DB_FILE)
    finally:
        lock.close()
