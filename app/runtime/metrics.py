"""Prometheus metrics of one worker process, in a registry of their own. Their names are a
public contract (README, *Metrics*).

Every metric carries the ``app`` label; per-partition ones add ``topic`` and ``partition``,
per-store ones ``store``. ``commit_latency_seconds`` is a histogram: commit-latency-avg is its
sum / count.
"""

from __future__ import annotations

from bisect import bisect_left

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from onceflow.runtime.compat import histogram_add, histogram_bounds

__all__ = ["BatchedHistogram", "Metrics"]

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    """The worker's metrics. Create one per worker; it owns its ``registry``."""

    def __init__(self, app_id: str, *, eos: bool, registry: CollectorRegistry | None = None):
        self.app_id = app_id
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        tp = ["app", "topic", "partition"]
        self.records_consumed = Counter(
            "onceflow_records_consumed", "Records fetched from source topics", tp, registry=r
        )
        self.records_processed = Counter(
            "onceflow_records_processed", "Records whose handler completed", tp, registry=r
        )
        self.records_produced = Counter(
            "onceflow_records_produced", "Records sent by handlers", ["app", "topic"], registry=r
        )
        self.process_latency = Histogram(
            "onceflow_process_latency_seconds",
            "Time a handler took for one record",
            ["app"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.commit_latency = Histogram(
            "onceflow_commit_latency_seconds",
            "Time one task commit took (sends flushed, offsets, commit, state persisted)",
            ["app"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.transactions = Counter(
            "onceflow_transactions", "Transactions by outcome", ["app", "result"], registry=r
        )
        self.eos_enabled = Gauge(
            "onceflow_eos_enabled", "1 when exactly-once processing is on", ["app"], registry=r
        )
        self.task_failures = Counter(
            "onceflow_task_failures",
            "Task failures (fenced, send or commit errors)",
            ["app", "reason"],
            registry=r,
        )
        self.producer_errors = Counter(
            "onceflow_producer_errors", "Failed sends", ["app"], registry=r
        )
        self.consumer_lag = Gauge(
            "onceflow_consumer_lag", "Records behind the end (LSO under EOS)", tp, registry=r
        )
        self.rebalances = Counter("onceflow_rebalances", "Rebalances seen", ["app"], registry=r)
        self.restore_remaining = Gauge(
            "onceflow_restore_remaining_records",
            "Changelog records left to restore",
            ["app", "store", "partition"],
            registry=r,
        )
        self.restored_records = Counter(
            "onceflow_restored_records",
            "Changelog records restored",
            ["app", "store", "partition"],
            registry=r,
        )
        self.late_records_dropped = Counter(
            "onceflow_late_records_dropped",
            "Records after window close + grace",
            ["app", "store"],
            registry=r,
        )
        self.windows_closed = Counter(
            "onceflow_windows_closed",
            "Final window results emitted (emit='close')",
            ["app", "store"],
            registry=r,
        )
        self.timer_firings = Counter(
            "onceflow_timer_firings", "Timer runs", ["app", "timer"], registry=r
        )
        self.dead_letter_records = Counter(
            "onceflow_dead_letter_records",
            "Records sent to the dead-letter topic",
            ["app", "topic", "reason"],
            registry=r,
        )
        self.assigned_tasks = Gauge("onceflow_assigned_tasks", "Tasks owned", ["app"], registry=r)
        self.standby_tasks = Gauge(
            "onceflow_standby_tasks",
            "Standby tasks kept here (warm-ups apart)",
            ["app"],
            registry=r,
        )
        self.warmup_tasks = Gauge(
            "onceflow_warmup_tasks", "Warm-up tasks kept here", ["app"], registry=r
        )
        self.standby_lag = Gauge(
            "onceflow_standby_lag_records",
            "Changelog records a standby or warm-up copy lacks",
            ["app", "task"],
            registry=r,
        )
        self.standby_records = Counter(
            "onceflow_standby_records",
            "Changelog records applied by standby and warm-up copies",
            ["app"],
            registry=r,
        )
        self.probing_rebalances = Counter(
            "onceflow_probing_rebalances",
            "Rebalances this instance asked for to move tasks whose warm-up caught up",
            ["app"],
            registry=r,
        )
        self.eos_enabled.labels(app_id).set(1 if eos else 0)
        self.assigned_tasks.labels(app_id).set(0)
        self.standby_tasks.labels(app_id).set(0)
        self.warmup_tasks.labels(app_id).set(0)


class BatchedHistogram:
    """Observations of one histogram child counted locally and added to it once per batch.

    ``Histogram.observe`` takes a lock twice per call (the bucket and the sum): per record, that
    was 15 % of echo's CPU (py-spy, docs/benchmarks.md). ``observe`` here is a bisect and a list
    increment; ``publish`` moves the counts into the child. Scrapes between two ``publish`` calls
    miss at most one batch. It reaches into prometheus_client's ``Histogram`` child through
    ``onceflow.runtime.compat``.
    """

    __slots__ = ("_bounds", "_child", "_counts", "_pending", "_sum")

    def __init__(self, child: Histogram) -> None:
        self._child = child
        self._bounds: list[float] = list(histogram_bounds(child))
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0
        self._pending = False

    def observe(self, value: float) -> None:
        # The first bucket whose upper bound is >= value, as Histogram.observe picks it.
        self._counts[bisect_left(self._bounds, value)] += 1
        self._sum += value
        self._pending = True

    def publish(self) -> None:
        if not self._pending:
            return
        histogram_add(self._child, self._counts, self._sum)
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0
        self._pending = False
