"""Failover: three workers of a stateful app with a big table, one killed with SIGKILL while input
flows; how long its tasks stop, what latency does, how much state the survivors restore.

The app is ``bench/apps/stamped_sum.py`` (a count per key in the ``sum`` table, each output
carrying its input's send stamp). Its changelog is filled directly (``bench.restore.Changelog``,
5M keys over 6 partitions), and shared by every HA run of a bench invocation; each run has its
own input and output topics and empty state directories, so the three workers first restore the
store (and, with standbys, build their standby copies) before the clock starts.

One run:

1. start 3 workers (own state directory and HTTP port each); wait until they run 2 tasks each
   (the first to join takes all 6, the others warm up and take theirs at probing rebalances:
   the HA scenarios set ``ONCEFLOW_PROBING_REBALANCE_INTERVAL_MS`` to 15 s) with no warm-up
   left and, with ``ONCEFLOW_NUM_STANDBY_REPLICAS`` > 0, until ``/metrics`` shows every
   standby within 1,000 records of its changelog's end;
2. offer ``--ha-rate`` stamped records/s (``bench.observe.Traffic``); after ``SETTLE_S`` + the
   ``before`` window, SIGKILL the last worker (no leave-group: its tasks move after
   ``session.timeout.ms``);
3. keep the input flowing for the ``after`` window and until the survivors run all 6 tasks;
   then stop it, and wait until every record sent has its output.

Figures: per output partition (= task), the longest stretch with no output from 1 s before the
kill on, and when it ended (``resume_s``: kill -> first output again; the killed worker's tasks
are the figure, the others show the rebalance's own pause); the p99 end-to-end latency of the
records sent in the ``before`` window (ending 1 s before the kill) and in the ``after`` window
(from the kill); the changelog records the survivors' active tasks restored after the kill
(``restored_records``: the ``onceflow_restored_records`` counters' growth, which counts
restores a rebalance cut short; the ``restored ...`` log lines, written only when a restore
completes, are kept beside it), against the store's size (the changelog's end offsets at the
kill), and what their standby copies applied (``onceflow_standby_records``); from the
survivors' logs, when the group rebalanced after the kill and when each moved task ran again
(with its fencing, offsets and stores times); latency per 5 s of send time from 10 s before
the kill (``latency_timeline``).
``verified``: exactly one output per input.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench.fleet import Fleet, Member, first_assignment_at, restored_lines, started_lines
from bench.kafka_io import count_committed, create_topics, end_offsets, unique
from bench.observe import Traffic, latency_in, latency_timeline, longest_gap
from bench.procs import wait_ready
from bench.restore import Changelog
from bench.scenarios import PARTITIONS, RunContext, Scenario

__all__ = ["run_failover", "setting"]

SETTLE_S = 10.0  # after the input starts: caches warm, first commits; not measured
STANDBY_CAUGHT_UP = 1_000  # records: a standby this close to its changelog's end is warm
TIMELINE_STEP_S = 5.0  # latency per 5 s of send time around the kill
SETTLED_S = 5.0  # the start-up assignment must hold this long before the clock starts


def setting(scenario: Scenario, name: str, default: int) -> int:
    return int(scenario.env.get(f"ONCEFLOW_{name}", default))


def windows(ctx: RunContext) -> tuple[float, float]:
    """(before, after) windows in seconds."""
    return (10.0, 30.0) if ctx.quick else (30.0, 60.0)


async def start_fleet(
    ctx: RunContext, scenario: Scenario, store: Changelog, members: int
) -> tuple[Fleet, str, str, dict[str, Any]]:
    """Fresh input/output topics of ``store``'s app; ``members`` workers started and running
    every task (and their standbys caught up)."""
    run = unique("run")
    inp, out = f"{store.app_id}-in-{run}", f"{store.app_id}-out-{run}"
    await create_topics(ctx.bootstrap, [inp, out], PARTITIONS)
    fleet = Fleet(ctx, scenario, store.app_id, inp, out)
    for _ in range(members):
        fleet.start()
    started = time.monotonic()
    await wait_ready(fleet.procs(), PARTITIONS, timeout=1800)
    ready = time.monotonic() - started
    standbys = min(setting(scenario, "NUM_STANDBY_REPLICAS", 0), members - 1)
    settled, totals = await fleet.wait_settled(
        PARTITIONS, standbys * PARTITIONS, STANDBY_CAUGHT_UP, SETTLED_S, timeout=1800
    )
    if settled is None:
        fleet.stop()
        raise TimeoutError(
            f"{members} workers not balanced with {standbys} standby per task, caught up, after "
            f"30 min (metrics {totals}); logs in {fleet.logs}"
        )
    figures = {"ready_s": ready, "settled_s": ready + settled, "settled_metrics": totals}
    return fleet, inp, out, figures


async def _sleep_checking(fleet: Fleet, traffic: Traffic, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        fleet.check_alive()
        traffic.check()
        await asyncio.sleep(0.5)


def _after_kill(
    survivors: list[Member], marks: dict[int, int], moved: set[int], kill: float
) -> dict[str, Any]:
    """What the survivors logged after the kill: restores, the rebalance, the moved tasks'
    starts (seconds after the kill, and how long fencing, offsets and stores took)."""
    logs = {m.index: m.log_since(marks[m.index]) for m in survivors}
    lines = [{"worker": i, **r.__dict__} for i, log in logs.items() for r in restored_lines(log)]
    rebalanced = [at for log in logs.values() if (at := first_assignment_at(log)) is not None]
    starts: dict[str, dict[str, float]] = {}
    for i, log in logs.items():
        for s in started_lines(log):  # the first start of each moved task after the kill
            at, first = s.at - kill, starts.get(s.task)
            if int(s.task.split("_")[1]) in moved and (
                first is None or at < first["running_after_kill_s"]
            ):
                starts[s.task] = {"worker": i, "running_after_kill_s": at, "fenced_s": s.fenced_s,
                                  "offsets_s": s.offsets_s, "stores_s": s.stores_s}  # fmt: skip
    return {
        "restored_logged_after_kill": sum(r["records"] for r in lines),
        "restore_lines_after_kill": lines,
        "rebalance_after_kill_s": min(rebalanced) - kill if rebalanced else float("nan"),
        "moved_task_starts": starts,
    }


def _delta(after: dict[int, float], before: dict[int, float]) -> dict[int, float]:
    return {p: n - before.get(p, 0.0) for p, n in after.items() if n > before.get(p, 0.0)}


def _task_stops(traffic: Traffic, since: float, until: float, kill: float) -> dict[int, Any]:
    out = {}
    for p, arrivals in traffic.output.arrivals.items():
        gap = longest_gap((r for r, _ in arrivals), since, until)
        out[p] = {"stop_s": gap.seconds, "stop_ended_after_kill_s": gap.end - kill}
    return out


async def run_failover(ctx: RunContext, scenario: Scenario, store: Changelog) -> dict[str, Any]:
    """One failover run (module docstring)."""
    before_s, after_s = windows(ctx)
    session_ms = setting(scenario, "SESSION_TIMEOUT_MS", 10_000)
    fleet, inp, out, start_figures = await start_fleet(ctx, scenario, store, scenario.workers)
    traffic = Traffic(ctx.bootstrap, inp, out, PARTITIONS, ctx.ha_rate)
    try:
        await traffic.start()
        await _sleep_checking(fleet, traffic, SETTLE_S + before_s + 1)
        victim, survivors = fleet.members[-1], fleet.members[:-1]
        moved = sorted(int(t.split("_")[1]) for t in victim.tasks())
        marks = {m.index: m.mark() for m in survivors}
        store_sizes = await end_offsets(ctx.bootstrap, store.topic, PARTITIONS)
        totals_before = await fleet.metric_totals(survivors)
        restored_before = await fleet.restored_records(survivors)
        kill = victim.kill()
        ready = asyncio.create_task(wait_ready(fleet.procs(), PARTITIONS, timeout=1800))
        await _sleep_checking(fleet, traffic, after_s)
        await ready
        await _sleep_checking(fleet, traffic, 5.0)  # outputs after the last resume
        metrics = await fleet.metric_totals()
        restored_by_partition = _delta(await fleet.restored_records(), restored_before)
        sent = await traffic.finish(timeout=300)
        restores = _after_kill(survivors, marks, set(moved), kill)
        restored = sum(restored_by_partition.values())
        standby_applied = (
            metrics["standby_records_applied"] - totals_before["standby_records_applied"]
        )
        peak_rss = fleet.peak_rss_mb()
        workers = fleet.summary()
    finally:
        await traffic.close()
        fleet.stop()
    seen, _ = await count_committed(ctx.bootstrap, out, PARTITIONS, timeout=120)
    stops = _task_stops(traffic, kill - 1.0, traffic.stopped_at, kill)
    arrivals = traffic.output.all()
    store_records = sum(store_sizes.values())
    resume = max((stops[p]["stop_ended_after_kill_s"] for p in moved), default=float("nan"))
    return {
        "records": sent,
        "rate": ctx.ha_rate,
        "store_records": store_records,
        "moved_store_records": sum(store_sizes[p] for p in moved),
        "standby_replicas": setting(scenario, "NUM_STANDBY_REPLICAS", 0),
        "session_timeout_ms": session_ms,
        "killed_worker": fleet.members[-1].index,
        "killed_at": kill,
        "moved_tasks": [f"0_{p}" for p in moved],
        "resume_s": resume,
        "resume_target_s": 2 * session_ms / 1000 + 2,
        "task_stops": stops,
        "latency_before_ms": latency_in(arrivals, kill - before_s - 1.0, kill - 1.0),
        "latency_after_ms": latency_in(arrivals, kill, kill + after_s),
        "latency_timeline": latency_timeline(arrivals, kill, -10.0, after_s, TIMELINE_STEP_S),
        "windows_s": {"before": before_s, "after": after_s},
        **restores,
        # The figure: what the restore metric counted after the kill (restores cut short by a
        # rebalance included), against the store; the log lines' sum is kept beside it.
        "restored_records": restored,
        "restored_by_partition": restored_by_partition,
        "restored_fraction": restored / store_records,
        "restored_moved_fraction": sum(restored_by_partition.get(p, 0.0) for p in moved)
        / max(1, sum(store_sizes[p] for p in moved)),
        "standby_records_applied_after_kill": standby_applied,
        "ha_metrics_at_end": metrics,
        "output_records": seen,
        "verified": seen == sent,
        "peak_rss_mb": peak_rss,
        **start_figures,
        "workers": workers,
    }
