"""When each task commits: on its own schedule, staggered over the commit interval.

Every task commits at most once per ``ONCEFLOW_COMMIT_INTERVAL_MS`` (sooner when it holds
``ONCEFLOW_COMMIT_EVERY`` uncommitted records), but not all at the same moment: task ``g_p``'s
commits fall at ``(p + crc32(g)) mod P / P`` of the interval (``P``: the group's partitions), so
the tasks of one worker spread their commits evenly over it whichever partitions it owns. A
task commits in the background (``Task.commit_in_background``): the worker goes on fetching and
processing every task, the committing one's records into its next transaction
(docs/architecture.md, *Commit scheduling*).

A commit that comes late (the loop was busy) keeps the task's place in the grid: the next one is
due at the next grid point, not a whole interval after the late one.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Iterable, Mapping
from typing import Generic, Protocol, TypeVar

__all__ = ["CommitSchedule", "Committable", "phase_of"]

K = TypeVar("K")


class Committable(Protocol):
    """What the schedule reads of a task."""

    @property
    def can_commit(self) -> bool:
        """Running, not committing, the last commit's SQLite write over: a commit may begin."""
        ...

    @property
    def has_work(self) -> bool: ...

    @property
    def uncommitted(self) -> int: ...


def phase_of(group: str, partition: int, partitions: int) -> float:
    """Where in the commit interval task ``group_partition`` commits, in ``[0, 1)``."""
    if partitions <= 1:
        return 0.0
    return ((partition + zlib.crc32(group.encode())) % partitions) / partitions


class CommitSchedule(Generic[K]):
    """Each task's next commit time (``time.monotonic()`` seconds), by task key.

    ``interval_ms``: the commit interval; ``commit_every``: uncommitted records that make a
    commit due at once; ``phase``: a task's place in the interval (``phase_of``)."""

    def __init__(self, interval_ms: int, commit_every: int, phase: Callable[[K], float]) -> None:
        if interval_ms <= 0:
            raise ValueError(f"commit interval must be > 0 ms, got {interval_ms}")
        self._interval = interval_ms / 1000
        self._commit_every = commit_every
        self._phase = phase
        self._due: dict[K, float] = {}

    def due(self, tasks: Mapping[K, Committable], now: float) -> list[K]:
        """The tasks whose commit should begin now: able to, with work, and at or past their
        time or holding ``commit_every`` records. A task seen able to for the first time is
        placed (its first commit at its phase of the next interval), not due; a key no longer in
        ``tasks`` is forgotten."""
        for gone in self._due.keys() - tasks.keys():
            del self._due[gone]
        due = []
        for key, task in tasks.items():
            at = self._due.get(key)
            if at is None:
                if task.can_commit:
                    phase = self._phase(key)
                    self._due[key] = now + self._interval * (phase if phase > 0 else 1.0)
                continue
            if (
                task.can_commit
                and task.has_work
                and (now >= at or task.uncommitted >= self._commit_every)
            ):
                due.append(key)
        return due

    def begun(self, key: K, now: float) -> None:
        """A commit of ``key`` began at ``now``: when it was due by time, the next is due at the
        next point of the task's grid; a commit that ``commit_every`` brought forward leaves the
        time as it was."""
        at = self._due.get(key, now)
        if now >= at:
            self._due[key] = at + self._interval * (math.floor((now - at) / self._interval) + 1)

    def next_due(self, keys: Iterable[K]) -> float | None:
        """The earliest commit time among ``keys``, or None."""
        return min((self._due[k] for k in keys if k in self._due), default=None)
