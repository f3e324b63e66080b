"""Restore rate: a worker rebuilding its stores from a changelog, with no local state.

The sum/count app's ``sum`` changelog (``<app_id>-sum-changelog``, compacted, 6 partitions) is
filled directly in the format the app writes: key bytes (the str key, UTF-8) -> value bytes (int64,
8 bytes big-endian), each key placed by murmur2 like the app's own writes. Then, per repeat, a
worker starts with an empty state directory; the figures come from its restore log lines
(``restored <store> partition N: X records from offset Y in Zs``):

* ``restore_rate``: restored records / the restores' wall-clock span (first start to last end;
  partitions restore concurrently);
* ``ready_rate``: restored records / (process start -> every task running), start-up included;
* ``cpu_us_per_record``: CPU the worker and its store I/O children used until every task ran,
  per restored record (start-up included: ~1 us of it), which the machine's other load changes
  far less than the rates; ``peak_rss_mb``: the worker's and its live children's peaks added up
  (an upper bound), ``worker_peak_rss_mb`` the worker alone, ``child_peak_rss_mb`` the largest
  child's.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import struct
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil

from bench.kafka_io import Backlog, create_topics, key_of, unique
from bench.procs import Proc, wait_ready
from bench.scenarios import PARTITIONS, RunContext, Scenario, start_workers, stop_workers

__all__ = ["Changelog", "restore_once"]

_RESTORED = re.compile(
    r"^(?P<ts>\S+ \S+) .*restored (?P<store>\S+) partition (?P<p>\d+): (?P<n>\d+) records "
    r"from offset \d+ in (?P<s>[\d.]+)s"
)
_INT64 = struct.Struct(">q")


def changelog_records(keys: int) -> Iterator[tuple[bytes, bytes]]:
    for i in range(keys):
        yield key_of(i), _INT64.pack(i)


class Changelog:
    """An app id whose ``sum`` changelog is filled, shared by a scenario's repeats (``restore``)
    or by the runs of the HA scenarios (``failover``, ``scale-out``: each run with its own input
    and output topics and empty state directories)."""

    def __init__(self, ctx: RunContext, scenario: Scenario, name: str | None = None) -> None:
        self.ctx = ctx
        self.scenario = scenario
        self.records = ctx.keys_of(scenario)
        self.app_id = unique(f"bench-{name or scenario.name}")
        self.topic = f"{self.app_id}-sum-changelog"
        self.fill_s = 0.0

    async def fill(self) -> None:
        inp, out = f"{self.app_id}-in", f"{self.app_id}-out"
        await create_topics(self.ctx.bootstrap, [inp, out], PARTITIONS)
        topic = self.topic
        await create_topics(self.ctx.bootstrap, [topic], PARTITIONS, {"cleanup.policy": "compact"})
        started = time.monotonic()
        backlog = Backlog(self.ctx.bootstrap, topic, PARTITIONS, transactional=False, memo=False)
        async with backlog as log:
            await log.fill(changelog_records(self.records))
        self.fill_s = time.monotonic() - started


def _cpu_and_children(proc: Proc) -> tuple[float, float]:
    """CPU seconds of the worker and its children (live, and those it reaped), and the largest
    live child's peak RSS in MB (restore writer children idle 10 s before they exit)."""
    try:
        worker = psutil.Process(proc.pid)
        times = worker.cpu_times()
        cpu = times.user + times.system + times.children_user + times.children_system
        peak = 0
        for child in worker.children(recursive=True):
            with contextlib.suppress(psutil.Error, OSError):
                t = child.cpu_times()
                cpu += t.user + t.system
                status = Path(f"/proc/{child.pid}/status").read_text()
                match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
                peak = max(peak, int(match.group(1)) * 1024 if match else 0)
    except psutil.Error:
        return float("nan"), float("nan")
    return float(cpu), peak / 2**20


def _restores(proc: Proc) -> list[tuple[float, float, int]]:
    """(start, end, records) of each partition's restore, from the worker's log."""
    spans = []
    for line in proc.log_text().splitlines():
        match = _RESTORED.search(line)
        if match:
            end = datetime.strptime(match["ts"], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            spans.append((end - float(match["s"]), end, int(match["n"])))
    return spans


async def restore_once(
    changelog: Changelog, repeat: int, scenario: Scenario | None = None
) -> dict[str, Any]:
    """Start a worker with no local state and time its restore. ``scenario``: the one to run
    (its code and settings: ``restore.base`` shares the changelog ``restore`` filled), by default
    the changelog's."""
    ctx = changelog.ctx
    app_id = changelog.app_id
    inp, out = f"{app_id}-in", f"{app_id}-out"
    shutil.rmtree(ctx.workdir / "state" / app_id, ignore_errors=True)
    procs = start_workers(ctx, scenario or changelog.scenario, app_id, inp, out)
    try:
        stop_profile = await ctx.on_release(procs) if ctx.on_release else None
        ready_s = await wait_ready(procs, PARTITIONS, timeout=600)
        spans = _restores(procs[0])
        cpu_s, child_rss_mb = _cpu_and_children(procs[0])
        if stop_profile is not None:
            await stop_profile()
    finally:
        stop_workers(ctx, procs, app_id)
    restored = sum(n for _, _, n in spans)
    span = max(e for _, e, _ in spans) - min(s for s, _, _ in spans) if spans else float("nan")
    return {
        "records": changelog.records,
        "restored_records": restored,
        "verified": restored == changelog.records,
        "partitions_logged": len(spans),
        "restore_span_s": span,
        "restore_rate": restored / span if spans else 0.0,
        "ready_s": ready_s,
        "ready_rate": restored / ready_s,
        "fill_s": changelog.fill_s,
        "peak_rss_mb": max(p.peak_rss for p in procs) / 2**20,
        "worker_peak_rss_mb": max(p.peak_own_rss for p in procs) / 2**20,
        "cpu_us_per_record": cpu_s / restored * 1e6 if restored else float("nan"),
        "child_peak_rss_mb": child_rss_mb,
        "repeat": repeat,
    }
