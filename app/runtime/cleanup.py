"""Removing the stores of tasks this worker no longer owns (Kafka Streams'
``state.cleanup.delay.ms``).

A store left on disk after its task moved away is worth keeping while the task may come back: it
then restores only its changelog tail. Once nobody used it for ``ONCEFLOW_STATE_CLEANUP_DELAY_MS``
the worker deletes its database files (``data.sqlite`` and its WAL files). The directory and its
lock file stay: ``TaskLock`` never deletes a lock file another process may be waiting on.

"Last used" is the store directory's mtime, which ``TaskStores`` keeps at the time the store was
last known in sync with its changelog (``mark_in_sync``): after a restore, after every flush,
and at close. The same time decides whether a store is too old to restore only its tail
(``TaskStores.open_and_restore``; docs/architecture.md, *State*).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from onceflow.errors import StoreLockedError
from onceflow.state.sqlite.file import db_files
from onceflow.state.sqlite.lock import TaskLock

if TYPE_CHECKING:
    from onceflow.runtime.assignor import TaskKey
    from onceflow.settings import Settings
    from onceflow.topology import App

__all__ = [
    "MAX_INTERVAL_S",
    "MIN_INTERVAL_S",
    "Removed",
    "StateCleaner",
    "last_in_sync",
    "mark_in_sync",
    "out_of_sync_too_long",
]

log = logging.getLogger("onceflow.cleanup")

MAX_INTERVAL_S = 60.0
"""The longest pause between two cleanups (for long delays)."""
MIN_INTERVAL_S = 1.0
"""The shortest pause between two cleanups (for delays of a second or less)."""


def last_in_sync(directory: Path) -> float | None:
    """When the store in ``directory`` was last known in sync with its changelog (its mtime, in
    seconds since the epoch); None if there is no such directory."""
    try:
        return directory.stat().st_mtime
    except FileNotFoundError:
        return None


def out_of_sync_too_long(
    in_sync_at: float | None, delete_retention_ms: int | None, now: float
) -> bool:
    """Whether a store last in sync at ``in_sync_at`` (None: never) has been out of sync with
    its changelog longer than the changelog keeps tombstones (``delete_retention_ms``; None: not
    known, never too long): deletes it missed may be gone, so its checkpoint is worth nothing."""
    if in_sync_at is None or delete_retention_ms is None:
        return False
    return (now - in_sync_at) * 1000 > delete_retention_ms


def mark_in_sync(directory: Path, at: float | None = None) -> None:
    """Record that the store in ``directory`` was in sync with its changelog ``at`` (now by
    default). A failure is only logged: an mtime left older makes the store look staler than it
    is, which costs a restore from the beginning at worst, never a wrong state."""
    try:
        os.utime(directory, None if at is None else (at, at))
    except OSError as exc:
        log.debug("cannot set the mtime of %s: %r", directory, exc)


@dataclass(frozen=True)
class Removed:
    """A store partition whose database files ``StateCleaner.clean`` deleted."""

    table: str
    partition: int
    age_s: float


class StateCleaner:
    """Deletes the database files of store partitions under ``root`` (``state_dir/<app_id>``)
    that the worker does not own and that were last used more than ``delay_ms`` ago.

    ``groups`` maps each table the app declares to its task group; directories of other tables
    are left alone (logged once at DEBUG). A store whose lock another worker holds, or this one
    (an open store), is skipped.
    """

    def __init__(
        self,
        root: Path,
        groups: Mapping[str, str],
        delay_ms: int,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.root = Path(root)
        self.groups = dict(groups)
        self.delay_s = delay_ms / 1000
        self._clock = clock
        self._unknown: set[str] = set()

    @classmethod
    def of(cls, app: App, settings: Settings) -> StateCleaner:
        """The cleaner of ``app``'s stores under ``settings.state_dir``."""
        return cls(
            Path(settings.state_dir) / app.app_id,
            {t.name: t.group for t in app.tables.values()},
            settings.state_cleanup_delay_ms,
        )

    @property
    def interval_s(self) -> float:
        """The pause between two cleanups: the delay, kept within 1 s and 60 s."""
        return max(MIN_INTERVAL_S, min(self.delay_s, MAX_INTERVAL_S))

    async def run(
        self, owned: Callable[[], Collection[TaskKey] | None], stop: asyncio.Event
    ) -> None:
        """Clean every ``interval_s`` until ``stop`` is set. ``owned()`` gives the tasks whose
        stores stay, or None to skip a round (while a rebalance leaves that open)."""
        if not self.groups:
            return
        while not stop.is_set():
            await asyncio.sleep(self.interval_s)
            keep = owned()
            if keep is None:
                continue
            try:
                await asyncio.to_thread(self.clean, frozenset(keep))
            except OSError as exc:
                log.warning("cleaning the state directory %s failed: %r", self.root, exc)
            except Exception:  # a bug here must not end the loop, nor go unnoticed
                log.exception("cleaning the state directory %s failed", self.root)

    def clean(self, owned: Collection[TaskKey]) -> list[Removed]:
        """One round: remove what is unowned and unused for longer than the delay; blocking."""
        removed = []
        for table, partition, directory in self._store_dirs():
            if (self.groups[table], partition) in owned:
                continue
            age = self._remove_if_unused(directory)
            if age is None:
                continue
            log.info(
                "removed the state of store %s partition %d: not owned by this worker, last used "
                "%.0f s ago (ONCEFLOW_STATE_CLEANUP_DELAY_MS=%d)",
                table,
                partition,
                age,
                round(self.delay_s * 1000),
            )
            removed.append(Removed(table, partition, age))
        return removed

    def _store_dirs(self) -> Iterator[tuple[str, int, Path]]:
        """(table, partition, directory) of every store partition of a declared table."""
        if not self.root.is_dir():
            return
        for table_dir in sorted(self.root.iterdir()):
            if not table_dir.is_dir():
                continue
            if table_dir.name not in self.groups:
                if table_dir.name not in self._unknown:
                    self._unknown.add(table_dir.name)
                    log.debug(
                        "state directory %s: the app declares no table %r; left alone",
                        table_dir,
                        table_dir.name,
                    )
                continue
            for directory in sorted(table_dir.iterdir()):
                if directory.name.isdigit() and directory.is_dir():
                    yield table_dir.name, int(directory.name), directory

    def _age_s(self, directory: Path) -> float | None:
        at = last_in_sync(directory)
        return None if at is None else self._clock() - at

    def _remove_if_unused(self, directory: Path) -> float | None:
        """Delete the store's database files if it has some, was last used more than the delay
        ago and no worker holds its lock; how long ago it was used, or None when it stays."""
        if not any(f.exists() for f in db_files(directory)):
            return None  # never written, or removed already
        age = self._age_s(directory)
        if age is None or age <= self.delay_s:
            return None
        lock = TaskLock(directory)
        try:
            lock.acquire()
        except StoreLockedError:
            return None  # open in a worker on this host (this one included)
        try:
            age = self._age_s(directory)  # its last owner may have used it until it let go
            if age is None or age <= self.delay_s:
                return None
            for file in db_files(directory):
                file.unlink(missing_ok=True)
        finally:
            lock.close()
        return age
