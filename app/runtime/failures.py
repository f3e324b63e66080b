"""What the worker does with a task that failed: classify the error, back off, revive.

Pure decisions, kept apart from the worker's I/O so that they can be tested on their own
(docs/architecture.md, *Failures*). The classification is the error class's ``disposition``
(``onceflow.errors``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Hashable
from dataclasses import dataclass

from aiokafka.errors import KafkaError

from onceflow.errors import Disposition, StateError, TaskCorruptedError, disposition_of

__all__ = [
    "FAILURE_MEMORY_S",
    "FATAL_GRACE_S",
    "MAX_BACKOFF_S",
    "Backoff",
    "Verdict",
    "judge",
    "should_revive",
]

# After a fatal error, tasks abort (nothing more is committed) within this bound: a transaction
# stuck on a deleted topic never aborts, and the next owner's InitProducerId ends it anyway.
FATAL_GRACE_S = 5.0
# A task that failed this long ago and fails again starts its backoff over.
FAILURE_MEMORY_S = 300.0
MAX_BACKOFF_S = 30.0


@dataclass(frozen=True)
class Verdict:
    """How to handle one task failure."""

    disposition: Disposition
    log_level: int  # of the line that reports it
    traceback: bool  # whether that line carries the traceback (an unexpected error)


def judge(exc: BaseException) -> Verdict:
    """Classify a task's failure. Expected failures (the broker, the transaction, the store)
    are logged in one line; a state error (full disk, I/O error) at ERROR, as it needs the
    operator; anything else with its traceback."""
    disposition = disposition_of(exc)
    if disposition != "retriable":
        return Verdict(disposition, logging.WARNING, traceback=False)
    expected = isinstance(exc, (TaskCorruptedError, StateError, KafkaError, TimeoutError))
    level = logging.ERROR if isinstance(exc, StateError) else logging.WARNING
    return Verdict(disposition, level, traceback=not expected)


class Backoff:
    """Delay before rebuilding a failed task: exponential while the same task keeps failing (a
    broker outage, a full disk) — rebuilding it in a tight loop would only add load.

    The streak ends with the task's next successful commit (``healthy``), not its next start: a
    task on a full disk restores, runs and fails at its first flush, over and over.
    """

    def __init__(self, base_s: float, clock: Callable[[], float]) -> None:
        self._base_s = base_s
        self._clock = clock
        self._streaks: dict[Hashable, tuple[int, float]] = {}  # key -> (failures, last at)

    def failed(self, key: Hashable) -> float:
        """Record a failure of ``key``; the delay before rebuilding it."""
        now = self._clock()
        streak, last = self._streaks.get(key, (0, now))
        if now - last > FAILURE_MEMORY_S:
            streak = 0
        self._streaks[key] = (streak + 1, now)
        # The exponent is capped first: 2.0**1024 overflows (a day-long outage, ~3k failures).
        return min(MAX_BACKOFF_S, self._base_s * 2.0 ** min(streak, 60))

    def healthy(self, key: Hashable) -> None:
        """``key`` committed: its next failure starts a new streak."""
        self._streaks.pop(key, None)


def should_revive(
    key: Hashable,
    *,
    rebalances_then: int,
    rebalances_now: int,
    assigned: Collection[Hashable],
    running: Collection[Hashable],
) -> bool:
    """Whether to rebuild failed task ``key`` after its delay: only if no rebalance happened
    meanwhile (the rebalance decides anew), the worker still owns it and nothing rebuilt it."""
    return rebalances_then == rebalances_now and key in assigned and key not in running
