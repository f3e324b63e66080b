"""What happens in a task when time passes: final window results and timers
(docs/architecture.md, *Time*).

A task's ``Punctuator`` knows the next stream time at which it has work (``due``): the first
moment a window of an ``emit="close"`` table can close, or a stream-time timer's next multiple.
The task compares each record's timestamp with it — one integer comparison on the hot path —
and calls ``stream_time_advanced`` when stream time reaches it, *before* the record's handler,
inside the open transaction. Everything is decided by stream time alone, which the committed
offsets carry: a replay after a crash closes the same windows and fires the same timers at the
same records, and what a committed transaction emitted is never emitted again.

Wall-clock timers are driven by the worker loop (``wall_clock_due`` / ``run_wall_clock``).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from onceflow.context import Context
from onceflow.runtime.dead_letters import CallbackSource
from onceflow.scope import TaskScope
from onceflow.tables import WindowedTable, WindowValue
from onceflow.timers import Timer

__all__ = ["CallbackRunner", "Punctuator", "callback_context"]

NEVER = 2**63 - 1


class CallbackRunner(TaskScope, Protocol):
    """The task, as the punctuator uses it: a scope for contexts, and a way to run a callback
    in the open transaction (its effects applied if it returns; if it raises, a dead letter
    describing ``source``, or the task fails under error policy ``fail``)."""

    async def run_callback(
        self, ctx: Context, call: Awaitable[None], source: CallbackSource
    ) -> None: ...


def callback_context(scope: TaskScope, timestamp: int, key_bytes: bytes | None = None) -> Context:
    """The ``ctx`` of a callback that handles no record: empty topic, offset -1."""
    return Context(scope, "", scope.partition, -1, timestamp, (), key_bytes)


class Punctuator:
    """The final-result tables and the timers of one task, and when they are next due."""

    def __init__(
        self,
        task: CallbackRunner,
        tables: Sequence[Any],
        timers: Sequence[Timer],
        *,
        count: Callable[[str, str], None] = lambda stage, name: None,
        clock: Callable[[], float] = time.monotonic,
        now_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
    ) -> None:
        self._task = task
        self._closing: list[WindowedTable[Any, Any]] = [
            t for t in tables if isinstance(t, WindowedTable) and t.emit == "close"
        ]
        self._stream_timers = [t for t in timers if t.on == "stream_time"]
        self._wall_timers = [t for t in timers if t.on == "wall_clock"]
        self._count = count  # (stage, table or timer name) per callback run, for the metrics
        self._clock = clock
        self._now_ms = now_ms
        started = clock()
        self._wall_next = [started + t.every_ms / 1000 for t in self._wall_timers]
        self.due = NEVER

    def start(self, stream_time: int) -> None:
        """Compute the first ``due`` from the stream time the task starts with."""
        self.due = self._next_due(stream_time)

    def _next_due(self, stream_time: int) -> int:
        due = NEVER
        for table in self._closing:
            due = min(due, table.next_close(stream_time))
        for timer in self._stream_timers:
            due = min(due, (max(stream_time, -1) // timer.every_ms + 1) * timer.every_ms)
        return due

    # -- stream time -----------------------------------------------------------------------------

    async def stream_time_advanced(self, previous: int, now: int) -> None:
        """Stream time moved from ``previous`` to ``now`` (``now >= due``): emit every window
        that closed, table by table in declaration order, by window start then key; then fire
        each stream-time timer whose period boundary was crossed, once."""
        for table in self._closing:
            await self._close_windows(table, previous, now)
        for timer in self._stream_timers:
            every = timer.every_ms
            if now // every > previous // every:
                at = now // every * every
                await self._fire(timer, at)
        self.due = self._next_due(now)

    async def _close_windows(self, table: WindowedTable[Any, Any], previous: int, now: int) -> None:
        lo, hi = table.closing_starts(previous, now)
        if hi < 0:
            return
        store = self._task.windowed_store(table.name)
        key_of, value_of = table.key_serde.deserialize, table.value_serde.deserialize
        size = table.window.size_ms
        for start, rows in store.windows_starting(max(lo, 0), hi):
            end = start + size
            for key_bytes, raw in rows:
                window = WindowValue(start, end, value_of(raw))
                key = key_of(key_bytes)
                source = CallbackSource("on_close", table.name, end - 1, key_bytes, raw, start)
                for fn in table.closers:
                    ctx = callback_context(self._task, end - 1, key_bytes)
                    await self._task.run_callback(ctx, fn(ctx, key, window), source)
                self._count("on_close", table.name)

    async def _fire(self, timer: Timer, timestamp: int) -> None:
        ctx = callback_context(self._task, timestamp)
        source = CallbackSource("timer", timer.name, timestamp)
        await self._task.run_callback(ctx, timer.fn(ctx), source)
        self._count("timer", timer.name)

    # -- wall clock ------------------------------------------------------------------------------

    @property
    def wall_clock_due(self) -> float | None:
        """When (the clock's seconds) the next wall-clock timer fires; None without any."""
        return min(self._wall_next, default=None)

    async def run_wall_clock(self) -> bool:
        """Fire the wall-clock timers that are due (each once, however late); whether any."""
        now = self._clock()
        fired = False
        for i, timer in enumerate(self._wall_timers):
            if self._wall_next[i] > now:
                continue
            period = timer.every_ms / 1000
            # Next at the following period boundary after now: a stalled task skips, not bursts.
            missed = int((now - self._wall_next[i]) // period) + 1
            self._wall_next[i] += missed * period
            await self._fire(timer, self._now_ms())
            fired = True
        return fired
