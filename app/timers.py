"""Timers: periodic work per task, on stream time or on the wall clock (Kafka Streams'
punctuators, Faust's timers).

A timer is declared with ``@app.timer(every=..., on=..., group=...)`` and runs once per task of
its group, inside the task's transaction, with a ``ctx`` that can send and read and write the
group's tables (docs/architecture.md, *Time*)::

    @app.timer(every=timedelta(minutes=1), on="stream_time")
    async def report(ctx: Context) -> None:
        await ctx.send(out, f"task-{ctx.task_id}", str(ctx.timestamp))

* ``on="stream_time"`` fires whenever the task's stream time crosses a multiple of ``every``
  (epoch-aligned), once per advance however many multiples it crossed, with ``ctx.timestamp``
  the last multiple crossed. It fires with the input: a replay fires it at the same records.
* ``on="wall_clock"`` fires every ``every`` of real time, whether or not records arrive; on an
  idle task it opens and commits a transaction of its own. ``ctx.timestamp`` is the wall time.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal, cast

from onceflow.errors import ConfigurationError
from onceflow.windows import to_millis

if TYPE_CHECKING:
    from onceflow.context import Context

__all__ = ["Timer", "TimerFn", "TimerOn"]

TimerFn = Callable[["Context"], Awaitable[None]]
TimerOn = Literal["stream_time", "wall_clock"]


@dataclass(frozen=True)
class Timer:
    """A declared timer: its coroutine, period (ms), clock and task group."""

    fn: TimerFn
    every_ms: int
    on: TimerOn
    group: str

    @property
    def name(self) -> str:
        return getattr(self.fn, "__qualname__", repr(self.fn))

    @classmethod
    def of(cls, fn: Any, every: timedelta, on: str, group: str) -> Timer:
        """Check a declaration and build the timer; ConfigurationError naming what is wrong."""
        name = getattr(fn, "__qualname__", repr(fn))
        if not inspect.iscoroutinefunction(fn):
            raise ConfigurationError(f"timer {name} must be an async def taking ctx")
        if on not in ("stream_time", "wall_clock"):
            raise ConfigurationError(
                f"timer {name}: on= must be 'stream_time' or 'wall_clock', not {on!r}"
            )
        every_ms = to_millis(every, what=f"timer {name}: every")
        if every_ms <= 0:
            raise ConfigurationError(f"timer {name}: every must be positive, got {every}")
        return cls(cast(TimerFn, fn), every_ms, cast(TimerOn, on), group)
