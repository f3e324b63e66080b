"""How a SQL sink reports its health: its metrics (``onceflow_sink_*``) and its database
outages (one log line when the database goes, one when it is back, backoff in between, and the
reason readiness gives meanwhile)."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable

from prometheus_client import Counter, Gauge

from onceflow.runtime.metrics import Metrics
from onceflow.runtime.sql_offsets import is_outage

__all__ = ["Outage", "SinkMetrics"]

log = logging.getLogger("onceflow.sql_sink")

MAX_BACKOFF_S = 5.0


class SinkMetrics:
    """``onceflow_sink_*``: transactions by result, records written, failures by reason (per
    sink), and the lag of each partition (records behind the last stable offset)."""

    def __init__(self, metrics: Metrics) -> None:
        r = metrics.registry
        self.app_id = metrics.app_id
        self.dead_letters = metrics.dead_letter_records
        self.transactions = Counter(
            "onceflow_sink_transactions",
            "SQL sink batch transactions by result (committed, rolled_back, fenced)",
            ["app", "sink", "result"],
            registry=r,
        )
        self.records = Counter(
            "onceflow_sink_records",
            "Records a SQL sink committed to its database (dead letters apart)",
            ["app", "sink"],
            registry=r,
        )
        self.failures = Counter(
            "onceflow_sink_failures",
            "SQL sink failures by reason (database, record, fenced)",
            ["app", "sink", "reason"],
            registry=r,
        )
        self.lag = Gauge(
            "onceflow_sink_lag",
            "Records of a partition not yet committed to the database",
            ["app", "sink", "partition"],
            registry=r,
        )


class Outage:
    """The database of one sink as this worker sees it: up, or down since when and why."""

    def __init__(self, sink: str, metrics: SinkMetrics) -> None:
        self._sink = sink
        self._metrics = metrics
        self._down: tuple[float, str] | None = None  # since, why
        self._streak = 0

    async def attempt(self, coro: Awaitable[None]) -> bool:
        """Await ``coro``; False if the database could not be used (an outage, recorded)."""
        try:
            await coro
        except Exception as exc:
            if not is_outage(exc):
                raise
            self.failed(exc)
            return False
        self.healthy()
        return True

    def failed(self, exc: BaseException) -> None:
        m = self._metrics
        m.failures.labels(m.app_id, self._sink, "database").inc()
        self._streak += 1
        if self._down is None:
            first = str(exc).splitlines()[0][:200] if str(exc) else ""
            why = f"{type(exc).__name__}: {first}"
            self._down = (time.monotonic(), why)
            log.error(
                "sql sink %r: database unavailable (%s); partitions wait, retrying with backoff",
                self._sink, why,
            )  # fmt: skip

    def healthy(self) -> None:
        self._streak = 0
        if self._down is not None:
            down_for = time.monotonic() - self._down[0]
            log.info("sql sink %r: database back after %.1fs", self._sink, down_for)
            self._down = None

    def backoff(self) -> float:
        """Seconds before the next attempt: doubling from 0.1 s while it keeps failing, to 5 s."""
        return min(MAX_BACKOFF_S, 0.1 * 2.0 ** min(self._streak, 10))

    def not_ready(self) -> str | None:
        if self._down is None:
            return None
        since, why = self._down
        down_for = time.monotonic() - since
        return f"sql sink {self._sink}: database unavailable for {down_for:.0f}s: {why}"
