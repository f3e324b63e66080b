"""The benchmark scenarios and the throughput runner.

Timing (every throughput scenario): topics are created fresh (6 partitions), the input backlog is
written in one open transaction, the worker processes start and join their group (idle: a
``read_committed`` consumer sees nothing of an open transaction), and only then is the backlog
committed. The clock runs from that commit until every input record's output is durable and
visible to ``read_committed`` readers (see ``kafka_io.Progress``): start-up, group join and
rebalances are outside the window, and nothing else of the benchmark competes for the cores.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import psutil

from bench.kafka_io import (
    Backlog,
    Progress,
    ProgressSource,
    count_committed,
    create_topics,
    numbered,
    unique,
)
from bench.peers import PeerSettings, peer_proc, wait_group_ready
from bench.procs import Proc, onceflow_worker, raw_loop, wait_ready

__all__ = ["SCENARIOS", "RunContext", "Scenario", "run_throughput", "start_workers", "verify"]

PARTITIONS = 6
Kind = Literal["throughput", "latency", "restore", "failover", "scale-out"]
# Scenarios run only when named with --only or when their suite's flag is given.
Suite = Literal["peers", "scaling"]
Peer = Literal["faust", "quix"]


@dataclass(frozen=True)
class Scenario:
    """One benchmark. ``keys`` distinct keys (``quick_keys`` under ``--quick``); throughput
    scenarios process the run's ``--records``, ``stateful`` ones ``2 * keys`` (each key hit
    twice), ``min_hits`` ones at least ``min_hits * keys``; ``env`` is added to the worker's
    environment. ``peer`` runs another framework's app instead of onceflow (``bench.peers``),
    ``baseline`` names the scenario its ``x baseline`` ratio is to (scaling, peers)."""

    name: str
    kind: Kind
    title: str
    module: str | None = None  # onceflow app; None with ``raw`` set
    raw: Literal["alos", "eos"] | None = None
    raw_batch: bool = False
    guarantee: Literal["exactly_once", "at_least_once"] = "exactly_once"
    keys: int = 10_000
    quick_keys: int = 10_000
    stateful: bool = False
    workers: int = 1
    env: dict[str, str] = field(default_factory=dict)
    experiment: bool = False  # run only when named with --only (experiments, the HA scenarios)
    load: float = 0.5  # latency scenarios: offered load, a fraction of echo-eos's median
    # False: the app emits final results, fewer than its inputs (checked: some, at most one each)
    output_per_record: bool = True
    # Transactional runs are done when this topic's offsets are committed ("{app_id}" is
    # replaced): the last hop of a pipeline; None: the input topic.
    watch: str | None = None
    groups: int = 1  # task groups: the workers own PARTITIONS tasks per group
    event_step_ms: int | None = None  # the input's event times, this far apart (else: fill time)
    # True: a compacted ``<input>-table`` topic, one value per key, fills a source table first
    table: bool = False
    partitions: int = PARTITIONS  # of the input and output topics
    min_hits: int = 0  # records >= min_hits * keys (the run's --records when more)
    peer: Peer | None = None
    commit_interval_ms: int | None = None  # peers: theirs; onceflow: ONCEFLOW_COMMIT_INTERVAL_MS
    suite: Suite | None = None
    baseline: str | None = None

    @property
    def transactional(self) -> bool:
        return self.raw == "eos" if self.raw else self.guarantee == "exactly_once"


ECHO = "bench.apps.echo"
SUMCOUNT = "bench.apps.sumcount"
WINDOWED = "onceflow.examples.windowed_count"
WINDOWED_CLOSE = "bench.apps.windowed_close"
SESSIONS = "bench.apps.sessions"
REKEY = "bench.apps.rekey"
JOIN = "bench.apps.join"
STAMPED_SUM = "bench.apps.stamped_sum"
HA_ENV = {"ONCEFLOW_PROBING_REBALANCE_INTERVAL_MS": "15000"}
# Failover deletes the stores a worker left behind 5 s after they moved away: the start-up's
# shuffle leaves copies, and the 0-standby baseline must not find a warm one by chance.
FAILOVER_ENV = {**HA_ENV, "ONCEFLOW_STATE_CLEANUP_DELAY_MS": "5000"}


# SQLite in the worker process, not in store I/O children: what the children bring.
IN_PROCESS = {"ONCEFLOW_STATE_IO_PROCESSES": "0"}


def _peer_suite(keys: int, suffix: str) -> list[Scenario]:
    """onceflow's reference app with 1 s commits and each peer's, over ``keys`` keys."""
    base = f"windowed-eos-1s{suffix}"
    common: dict[str, Any] = {"keys": keys, "quick_keys": min(keys, 20_000), "min_hits": 2,
                              "commit_interval_ms": 1_000, "suite": "peers"}  # fmt: skip
    return [
        Scenario(base, "throughput", f"windowed_count, exactly_once, 1 s commits, {keys:,} keys",
                 WINDOWED, **common),
        Scenario(f"peer-quix{suffix}", "throughput", f"Quix Streams windowed count, "
                 f"exactly-once, 1 s commits, {keys:,} keys", peer="quix", baseline=base,
                 **common),
        Scenario(f"peer-faust{suffix}", "throughput", f"faust-streaming windowed count, "
                 f"exactly_once, 1 s commits, {keys:,} keys", peer="faust", baseline=base,
                 **common),
    ]  # fmt: skip


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in [
        Scenario("raw-alos", "throughput", "raw aiokafka loop, at-least-once", raw="alos"),
        Scenario(
            "raw-alos-batch",
            "throughput",
            "raw loop, at-least-once, create_batch/send_batch",
            raw="alos",
            raw_batch=True,
        ),
        Scenario("raw-eos", "throughput", "raw aiokafka loop, one transaction / 100 ms", raw="eos"),
        Scenario("echo-alos", "throughput", "onceflow echo, at_least_once", ECHO,
                 guarantee="at_least_once"),
        Scenario("echo-eos", "throughput", "onceflow echo, exactly_once", ECHO),
        Scenario("echo-eos-2w", "throughput", "onceflow echo, exactly_once, 2 workers", ECHO,
                 workers=2, baseline="echo-eos"),
        Scenario("windowed-eos", "throughput", "windowed_count (reference app), exactly_once",
                 WINDOWED),
        # Scaling (--scaling): workers and partitions, each against its one-worker 6-partition run.
        Scenario("echo-eos-3w", "throughput", "onceflow echo, exactly_once, 3 workers", ECHO,
                 workers=3, suite="scaling", baseline="echo-eos"),
        Scenario("echo-eos-12p", "throughput", "onceflow echo, exactly_once, 12 partitions", ECHO,
                 partitions=12, suite="scaling", baseline="echo-eos"),
        Scenario("windowed-eos-2w", "throughput", "windowed_count, exactly_once, 2 workers",
                 WINDOWED, workers=2, suite="scaling", baseline="windowed-eos"),
        Scenario("windowed-eos-3w", "throughput", "windowed_count, exactly_once, 3 workers",
                 WINDOWED, workers=3, suite="scaling", baseline="windowed-eos"),
        Scenario("windowed-eos-12p", "throughput", "windowed_count, exactly_once, 12 partitions",
                 WINDOWED, partitions=12, suite="scaling", baseline="windowed-eos"),
        # Peers (--peers): the comparison, windowed count, 6 partitions, exactly-once,
        # 1 s commits, one process each, 2k and 200k keys (200k: 2 records per key).
        *_peer_suite(2_000, ""),
        *_peer_suite(200_000, "-200k"),
        Scenario("windowed-close-eos", "throughput",
                 "windowed count, 1 s windows, emit='close' (final results), 1 ms of event time "
                 "per record, exactly_once", WINDOWED_CLOSE, output_per_record=False,
                 event_step_ms=1),
        Scenario("session-eos", "throughput", "session-window count per key, exactly_once",
                 SESSIONS),
        Scenario("rekey-eos", "throughput",
                 "re-key through a repartition topic, two hops, exactly_once", REKEY,
                 watch="{app_id}-rekey-repartition", groups=2),
        Scenario("join-eos", "throughput",
                 "stream-table join with a source table (10k keys), exactly_once", JOIN,
                 table=True),
        Scenario("windowed-200k", "throughput",
                 "windowed_count (reference app), 200k keys x2, exactly_once", WINDOWED,
                 keys=200_000, quick_keys=20_000, stateful=True),
        Scenario("sum-100k", "throughput", "sum/count, 100k keys x2, exactly_once", SUMCOUNT,
                 keys=100_000, quick_keys=10_000, stateful=True),
        Scenario("sum-1m", "throughput", "sum/count, 1M keys x2, exactly_once", SUMCOUNT,
                 keys=1_000_000, quick_keys=20_000, stateful=True),
        # Experiments (only with --only): settings.
        Scenario("exp-echo-commit1s", "throughput", "echo EOS, commit interval 1 s", ECHO,
                 env={"ONCEFLOW_COMMIT_INTERVAL_MS": "1000"}, experiment=True),
        Scenario("exp-windowed-200k-inproc", "throughput",
                 "windowed-200k, SQLite in the worker process", WINDOWED, keys=200_000,
                 quick_keys=20_000, stateful=True, env=IN_PROCESS, experiment=True),
        Scenario("exp-sum-100k-commit1s", "throughput", "sum-100k, commit interval 1 s",
                 SUMCOUNT, keys=100_000, quick_keys=10_000, stateful=True,
                 env={"ONCEFLOW_COMMIT_INTERVAL_MS": "1000"}, experiment=True),
        Scenario("exp-sum-100k-inproc", "throughput", "sum-100k, SQLite in the worker process",
                 SUMCOUNT, keys=100_000, quick_keys=10_000, stateful=True, env=IN_PROCESS,
                 experiment=True),
        Scenario("latency", "latency", "echo exactly_once at 50 % of max echo-eos", ECHO),
        Scenario("latency-25", "latency", "echo exactly_once at 25 % of max echo-eos", ECHO,
                 load=0.25),
        Scenario("latency-10", "latency", "echo exactly_once at 10 % of max echo-eos", ECHO,
                 load=0.1),
        Scenario("restore", "restore", "restore a 1M-record changelog (sum table)", SUMCOUNT,
                 keys=1_000_000, quick_keys=200_000),
        # High availability (issue 16), only with --only: 3 workers, a 5M-record store, probing
        # rebalances every 15 s (the start-up of failover balances sooner too).
        Scenario("failover", "failover", "kill -9 one of 3 workers, 5M-record store, "
                 "no standby", STAMPED_SUM, keys=5_000_000, quick_keys=200_000, workers=3,
                 env={"ONCEFLOW_NUM_STANDBY_REPLICAS": "0", **FAILOVER_ENV}, experiment=True),
        Scenario("failover-standby", "failover", "kill -9 one of 3 workers, 5M-record store, "
                 "1 standby", STAMPED_SUM, keys=5_000_000, quick_keys=200_000, workers=3,
                 env={"ONCEFLOW_NUM_STANDBY_REPLICAS": "1", **FAILOVER_ENV}, experiment=True),
        Scenario("scale-out", "scale-out", "1 -> 3 workers, 5M-record store, probing every 15 s",
                 STAMPED_SUM, keys=5_000_000, quick_keys=200_000, workers=3, env=HA_ENV,
                 experiment=True),
    ]
}  # fmt: skip


@dataclass
class RunContext:
    """What every scenario run shares: the broker, where files go, the run's sizes."""

    bootstrap: str
    workdir: Path
    records: int
    quick: bool
    python: str = sys.executable
    broker_pid: int | None = None
    latency_rate: float | None = None
    latency_seconds: float = 30.0
    harness: Literal["rdkafka", "aiokafka"] = "rdkafka"  # latency load generator (bench.latency)
    ha_rate: float = 2_000.0  # records/s offered in the HA scenarios
    on_release: Callable[[list[Proc]], Awaitable[Callable[[], Awaitable[None]]]] | None = None

    def keys_of(self, scenario: Scenario) -> int:
        return scenario.quick_keys if self.quick else scenario.keys

    def records_of(self, scenario: Scenario) -> int:
        if scenario.stateful:
            return 2 * self.keys_of(scenario)
        return max(self.records, scenario.min_hits * self.keys_of(scenario))


def broker_cpu_seconds(ctx: RunContext) -> float:
    """CPU time the broker process has used so far; 0 when it does not run here."""
    if ctx.broker_pid is None:
        return 0.0
    try:
        times = psutil.Process(ctx.broker_pid).cpu_times()
    except psutil.Error:
        return 0.0
    return float(times.user + times.system)


def cpu_figures(
    ctx: RunContext, procs: list[Proc], since: tuple[float, float], records: int, seconds: float
) -> dict[str, float]:
    """Worker and broker CPU over a timed window: robust to a noisy machine, unlike records/s."""
    worker = sum(p.cpu_seconds() for p in procs) - since[0]
    broker = broker_cpu_seconds(ctx) - since[1] if ctx.broker_pid else float("nan")
    return {
        "worker_cpu_s": worker,
        "worker_cpu_util": worker / seconds,
        "worker_cpu_us_per_record": 1e6 * worker / records,
        "broker_cpu_us_per_record": 1e6 * broker / records,
    }


def cpu_mark(ctx: RunContext, procs: list[Proc]) -> tuple[float, float]:
    return sum(p.cpu_seconds() for p in procs), broker_cpu_seconds(ctx)


def checkout_pythonpath(path: Path) -> str:
    """The workers' PYTHONPATH to run the onceflow of the checkout at ``path`` (its
    ``build/typecheck`` view, then the checkout: ``python3 scripts/typecheck_view.py`` there
    first), for comparing code versions in one run (``--base``, ``bench.ab``)."""
    root = path.resolve()
    view = root / "build" / "typecheck"
    if not (view / "onceflow").is_dir() or not (root / "app" / "runtime").is_dir():
        raise SystemExit(
            f"{path}: not a onceflow checkout with {view}/onceflow; run scripts/typecheck_view.py "
            "there"
        )
    return os.pathsep.join([str(view), str(root)])


def worker_env(
    ctx: RunContext, scenario: Scenario, app_id: str, inp: str, out: str
) -> dict[str, str]:
    interval = scenario.commit_interval_ms
    commit = {"ONCEFLOW_COMMIT_INTERVAL_MS": str(interval)} if interval else {}
    return {
        "ONCEFLOW_BOOTSTRAP_SERVERS": ctx.bootstrap,
        "ONCEFLOW_APP_ID": app_id,
        "ONCEFLOW_PROCESSING_GUARANTEE": scenario.guarantee,
        "ONCEFLOW_STATE_DIR": str(ctx.workdir / "state" / app_id),
        "ONCEFLOW_HTTP_PORT": "0",
        "ONCEFLOW_LOG_LEVEL": "INFO",
        "BENCH_INPUT": inp,
        "BENCH_OUTPUT": out,
        "ONCEFLOW_INPUT_TOPIC": inp,
        "ONCEFLOW_OUTPUT_TOPIC": out,
        **commit,
        **scenario.env,
    }


def stop_workers(ctx: RunContext, procs: list[Proc], app_id: str) -> None:
    """Stop a run's workers and delete their state directory."""
    for proc in procs:
        proc.stop()
    shutil.rmtree(ctx.workdir / "state" / app_id, ignore_errors=True)


def start_workers(
    ctx: RunContext, scenario: Scenario, app_id: str, inp: str, out: str
) -> list[Proc]:
    # A new log file per start: readiness and restore figures are read from it, and the restore
    # scenario starts workers of one app id again and again.
    logs = ctx.workdir / "logs" / unique(app_id)
    if scenario.raw is not None:
        args = ["--bootstrap", ctx.bootstrap, "--group", app_id, "--input", inp, "--output", out]
        args += ["--mode", scenario.raw] + (["--batch"] if scenario.raw_batch else [])
        return [raw_loop(scenario.name, args, logs / "raw.log", python=ctx.python).start()]
    if scenario.peer is not None:
        settings = PeerSettings(
            ctx.bootstrap,
            app_id,
            inp,
            out,
            scenario.partitions,
            scenario.commit_interval_ms or 1_000,
            str(ctx.workdir / "state" / app_id),
        )
        return [peer_proc(scenario.peer, scenario.name, settings, logs / "peer.log").start()]
    assert scenario.module is not None
    env = worker_env(ctx, scenario, app_id, inp, out)
    # Several workers: a state directory each, as on separate hosts (and two starting at once
    # in one directory can race on its process id file: app/runtime/local_state.process_id).
    dirs = (
        [env["ONCEFLOW_STATE_DIR"]]
        if scenario.workers == 1
        else [f"{env['ONCEFLOW_STATE_DIR']}/w{i}" for i in range(scenario.workers)]
    )
    return [
        onceflow_worker(
            f"{scenario.name}[{i}]", scenario.module, {**env, "ONCEFLOW_STATE_DIR": dirs[i]},
            logs / f"worker-{i}.log", python=ctx.python,
        ).start()
        for i in range(scenario.workers)
    ]  # fmt: skip


async def _watch(
    progress: Progress, procs: list[Proc], total: int, timeout: float
) -> tuple[float, float]:
    """Poll until ``total`` records are done; returns (first progress, done) times."""
    first = 0.0
    started = time.monotonic()
    deadline = started + timeout
    polls = 0
    while time.monotonic() < deadline:
        done = await progress.read()
        now = time.monotonic()
        if done and not first:
            first = now
        if done >= total:
            return first, now
        polls += 1
        if polls % 4 == 0:
            for proc in procs:
                proc.check_alive()
                proc.sample_rss()
        if polls % 600 == 0:  # every ~30 s: long runs show how far they are
            rss = max(p.peak_rss for p in procs) / 2**20
            print(
                f"    ... {done:,}/{total:,} after {now - started:.0f}s "
                f"({done / (now - started):,.0f}/s), peak RSS so far {rss:.0f} MB",
                flush=True,
            )
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{total} records not processed within {timeout:.0f}s")


async def fill_table(ctx: RunContext, topic: str, keys: int, partitions: int) -> None:
    """A compacted table topic with one value (100 bytes) per key, not transactional."""
    await create_topics(ctx.bootstrap, [topic], partitions, {"cleanup.policy": "compact"})
    async with Backlog(ctx.bootstrap, topic, partitions, transactional=False) as backlog:
        await backlog.fill(numbered(keys, keys))


async def _wait_committed(
    ctx: RunContext, group: str, topic: str, total: int, procs: list[Proc], partitions: int
) -> None:
    async with Progress(ctx.bootstrap, "committed", group, topic, partitions) as progress:
        await _watch(progress, procs, total, 120 + total / 500)


async def _wait_started(
    ctx: RunContext, scenario: Scenario, procs: list[Proc], group: str, inp: str
) -> float:
    """onceflow and the raw loop say in their logs when every task runs; a peer is ready when
    its group holds every input partition, unchanged for a while (``bench.peers``)."""
    if scenario.peer is None:
        return await wait_ready(procs, scenario.partitions * scenario.groups)
    return await wait_group_ready(ctx.bootstrap, group, inp, scenario.partitions, procs)


def verify(scenario: Scenario, total: int, seen: int, end: int) -> tuple[bool, str]:
    """Whether a run's output is what its guarantee promises, and if not, why: ``seen`` records
    read ``read_committed`` for ``total`` inputs, ``end`` the output's end offsets (records and
    transaction markers)."""
    if not scenario.output_per_record:
        ok = 0 < seen <= total
    else:
        ok = seen == total if scenario.transactional else seen >= total
    if not ok:
        return False, f"{seen:,} output records for {total:,} inputs"
    # A transactional run's output carries commit markers; none means it was written outside
    # any transaction (faust's exactly_once does that with an app's sends): the count proves
    # nothing then.
    if scenario.transactional and end <= seen:
        return False, "no transaction markers in the output: written outside transactions"
    return True, ""


async def run_throughput(ctx: RunContext, scenario: Scenario) -> dict[str, Any]:
    """One timed run: records/s from the backlog's release to the last committed output."""
    total, keys = ctx.records_of(scenario), ctx.keys_of(scenario)
    app_id = unique(f"bench-{scenario.name}")
    inp, out = f"{app_id}-in", f"{app_id}-out"
    n = scenario.partitions
    await create_topics(ctx.bootstrap, [inp, out], n)
    if scenario.table:
        await fill_table(ctx, f"{inp}-table", keys, n)
    procs: list[Proc] = []
    try:
        async with Backlog(ctx.bootstrap, inp, n, transactional=True) as backlog:
            filled = time.monotonic()
            await backlog.fill(numbered(keys, total), event_step_ms=scenario.event_step_ms)
            filled = time.monotonic() - filled
            procs = start_workers(ctx, scenario, app_id, inp, out)
            startup = await _wait_started(ctx, scenario, procs, app_id, inp)
            if scenario.table:  # the table loaded before the clock starts
                await _wait_committed(ctx, app_id, f"{inp}-table", keys, procs, n)
            stop_profile = await ctx.on_release(procs) if ctx.on_release else None
            released = await backlog.release()
            cpu_at_release = cpu_mark(ctx, procs)
            loop_at_release = sum(p.loop_cpu_seconds() for p in procs)
        # Transactional runs count committed input offsets, the others the output's end offsets.
        watched = inp if scenario.transactional else out
        if scenario.transactional and scenario.watch:
            watched = scenario.watch.format(app_id=app_id)
        source: ProgressSource = "committed" if scenario.transactional else "output"
        # Peers may be much slower than onceflow (faust: ~300 records/s here).
        timeout = 120 + total / (50 if scenario.peer else 500)
        async with Progress(ctx.bootstrap, source, app_id, watched, n) as progress:
            first, done = await _watch(progress, procs, total, timeout)
        cpu = cpu_figures(ctx, procs, cpu_at_release, total, done - released)
        # The event loop's thread alone: near 1 per worker, the loop is the bottleneck; well
        # below, it waits (for SQLite, the broker, or a share of a busy machine's cores).
        loop = sum(p.loop_cpu_seconds() for p in procs) - loop_at_release
        cpu["loop_cpu_util"] = loop / max(done - released, 1e-9) / len(procs)
        if stop_profile is not None:
            await stop_profile()
    finally:
        stop_workers(ctx, procs, app_id)
    seen, end = await count_committed(ctx.bootstrap, out, n, timeout=120 + total / 20_000)
    verified, note = verify(scenario, total, seen, end)
    return {
        "records": total,
        "keys": keys,
        "seconds": done - released,
        "throughput": total / (done - released),
        "first_commit_s": first - released,
        "startup_s": startup,
        "fill_s": filled,
        "peak_rss_mb": max(p.peak_rss for p in procs) / 2**20,  # with the worker's children
        "worker_peak_rss_mb": max(p.peak_own_rss for p in procs) / 2**20,
        "output_records": seen,
        # Commit markers in the output: the transactions that wrote to it, per output partition.
        "output_markers": end - seen,
        "verified": verified,
        "verify_note": note,
        "workers": len(procs),
        "partitions": n,
        **cpu,
    }
