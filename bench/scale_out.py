"""Scale-out: one worker holding the whole store (6 tasks), then two more join while input flows;
how long any task stops, whether a new member restores a task's full store before running it,
and whether the group ends balanced (2 tasks each) after the probing rebalances.

Same app and store as ``bench.failover`` (``bench/apps/stamped_sum.py``, the shared 5M-record
``sum`` changelog). One run:

1. start one worker (empty state directory) and wait until it runs the 6 tasks (a full restore);
2. offer ``--ha-rate`` stamped records/s; after ``SETTLE_S`` + the ``before`` window, start two
   more workers at once (empty state directories);
3. poll logs and metrics every second until every worker's latest assignment holds 2 tasks,
   all running, with no warm-up left, unchanged for ``STABLE_S`` (or give up after ``max_s``);
   stop the input, wait for every output.

Figures: per output partition (= task), the longest stretch with no output from the joins on
(``stop_s``; target ≤ 5 s) and, for reference, in the ``before`` window; p99 latency before
and after the joins, and per 5 s of send time; the new members' ``restored ...`` lines and
``onceflow_restored_records`` counters (changelog records their active tasks restored),
``full_restores`` the partitions where that is at least half of the partition's changelog; the
assignments each worker logged; ``balanced`` and ``balanced_after_s`` (joins -> the balanced
assignment first held).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench.failover import SETTLE_S, setting, start_fleet, windows
from bench.fleet import restored_lines
from bench.kafka_io import count_committed, end_offsets
from bench.observe import Traffic, latency_in, latency_timeline, longest_gap
from bench.restore import Changelog
from bench.scenarios import PARTITIONS, RunContext, Scenario

__all__ = ["run_scale_out"]

STABLE_S = 20.0  # a balanced assignment must hold this long (longer than a probing interval)
JOINING = 2


async def run_scale_out(ctx: RunContext, scenario: Scenario, store: Changelog) -> dict[str, Any]:
    """One scale-out run (module docstring)."""
    before_s, _ = windows(ctx)
    max_s = 300.0 if ctx.quick else 900.0
    fleet, inp, out, start_figures = await start_fleet(ctx, scenario, store, 1)
    traffic = Traffic(ctx.bootstrap, inp, out, PARTITIONS, ctx.ha_rate)
    try:
        await traffic.start()
        await asyncio.sleep(SETTLE_S + before_s)
        store_sizes = await end_offsets(ctx.bootstrap, store.topic, PARTITIONS)
        joined = time.time()
        for _ in range(JOINING):
            fleet.start()
        settling = asyncio.create_task(fleet.wait_settled(PARTITIONS, 0, 0, STABLE_S, max_s))
        try:
            while not settling.done():  # the input and its reader must stay alive meanwhile
                traffic.check()
                await asyncio.sleep(0.5)
        finally:
            settling.cancel()
        balanced_after, metrics = await settling
        restored_new = await fleet.restored_records(fleet.members[1:])
        sent = await traffic.finish(timeout=300)
        peak_rss = fleet.peak_rss_mb()
        workers = fleet.summary()
        new_restores = [
            {"worker": m.index, **r.__dict__}
            for m in fleet.members[1:]
            for r in restored_lines(m.log_since())
        ]
    finally:
        await traffic.close()
        fleet.stop()
    seen, _ = await count_committed(ctx.bootstrap, out, PARTITIONS, timeout=120)
    stops, baseline = {}, {}
    for p, arrivals in traffic.output.arrivals.items():
        received = [r for r, _ in arrivals]
        stops[p] = longest_gap(received, joined, traffic.stopped_at).seconds
        baseline[p] = longest_gap(received, joined - before_s, joined).seconds
    # A restore a rebalance cut short logs no line: the counters tell it.
    full = [p for p, n in restored_new.items() if n >= store_sizes[p] / 2]
    arrivals = traffic.output.all()
    after_s = traffic.stopped_at - joined
    return {
        "records": sent,
        "rate": ctx.ha_rate,
        "store_records": sum(store_sizes.values()),
        "probing_interval_ms": setting(scenario, "PROBING_REBALANCE_INTERVAL_MS", 600_000),
        "max_stop_s": max(stops.values()),
        "task_stops_s": stops,
        "before_max_stop_s": max(baseline.values()),
        "latency_before_ms": latency_in(arrivals, joined - before_s, joined),
        "latency_after_ms": latency_in(arrivals, joined, traffic.stopped_at),
        "latency_timeline": latency_timeline(arrivals, joined, -10.0, after_s, 5.0),
        "rebalances_seen": len(workers[0]["assignments"]) - 1,
        "new_member_restores": new_restores,
        "new_member_restored_records": restored_new,
        "full_restores": full,
        "balanced": balanced_after is not None,
        "balanced_after_s": balanced_after,
        "ha_metrics_at_end": metrics,
        "output_records": seen,
        "verified": seen == sent,
        "peak_rss_mb": peak_rss,
        **start_figures,
        "workers": workers,
    }
