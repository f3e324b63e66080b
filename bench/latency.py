"""End-to-end latency at a fixed offered load: echo under exactly-once, commit every 100 ms.

A paced producer (idempotent, ``linger_ms=1``) stamps each record's send time (``time.time_ns``)
into its 100-byte value; echo copies the value; a ``read_committed`` consumer (``fetch_max_wait_ms``
10) computes receive time minus stamp. Producer and consumer share this process, on the same
clock. Records sent in the first ``WARMUP_S`` seconds are not counted.

Two harnesses (``--harness``): ``rdkafka`` (default; ``bench.load_rdkafka``, librdkafka in C
threads, a small fraction of a core) and ``aiokafka`` (the first one, below: both clients in this
process's event loop, over half a core at 50 % load), kept to compare old and new figures.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from bench import load_rdkafka
from bench.kafka_io import create_topics, key_of, padded, unique
from bench.procs import Proc, wait_ready
from bench.scenarios import (
    PARTITIONS,
    RunContext,
    Scenario,
    cpu_mark,
    start_workers,
    stop_workers,
)
from bench.worker_metrics import commit_figures, commit_totals

__all__ = ["percentiles", "produce_paced", "run_latency"]

WARMUP_S = 3.0
TICK_S = 0.005
QUANTILES = (50.0, 90.0, 99.0, 99.9)


def percentiles(samples: list[float], qs: tuple[float, ...] = QUANTILES) -> dict[str, float]:
    """Nearest-rank percentiles of ``samples`` (ms), keyed ``p50``, ``p99``, ``p99.9``..."""
    ordered = sorted(samples)
    out = {}
    for q in qs:
        rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered)) - 1))
        out[f"p{q:g}"] = ordered[rank]
    return out


async def produce_paced(
    bootstrap: str, topic: str, rate: float, seconds: float, stop: asyncio.Event | None = None
) -> int:
    """Send ``rate`` stamped records/s (keys ``key_of(n % 10_000)``) for ``seconds`` or until
    ``stop`` is set; returns how many were sent (all acknowledged)."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, enable_idempotence=True, acks="all", linger_ms=1
    )
    await producer.start()
    sent = 0
    failed: list[BaseException] = []

    def check(future: asyncio.Future[Any]) -> None:
        if not future.cancelled() and future.exception() is not None:
            failed.append(future.exception())  # type: ignore[arg-type]

    try:
        started = time.monotonic()
        while (elapsed := time.monotonic() - started) < seconds and not (stop and stop.is_set()):
            for _ in range(int(elapsed * rate) - sent):  # catch up with the schedule
                value = padded(b"%d" % time.time_ns())
                future = await producer.send(topic, value=value, key=key_of(sent % 10_000))
                future.add_done_callback(check)
                sent += 1
            await asyncio.sleep(TICK_S)
        # Not one gather over every future: building it stalls this loop (and so the consumer
        # measuring latency) for a second at the end of the run.
        await producer.flush()
    finally:
        await producer.stop()
    if failed:
        raise RuntimeError(f"{len(failed)} sends failed, the first: {failed[0]!r}")
    return sent


async def _consume(
    bootstrap: str, topic: str, expected: asyncio.Future[int], since_ns: int
) -> list[float]:
    tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
        fetch_max_wait_ms=10,
    )
    await consumer.start()
    latencies: list[float] = []
    seen = 0
    try:
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        while not expected.done() or seen < expected.result():
            batches = await consumer.getmany(timeout_ms=100)
            now = time.time_ns()
            for records in batches.values():
                seen += len(records)
                for r in records:
                    stamp = int(r.value.split(b" ", 1)[0])
                    if stamp >= since_ns:
                        latencies.append((now - stamp) / 1e6)
    finally:
        await consumer.stop()
    return latencies


async def _consume_rdkafka(
    bootstrap: str, topic: str, expected: asyncio.Future[int], since_ns: int
) -> list[float]:
    """``load_rdkafka.consume_stamps`` in a thread, until it has seen what was sent."""

    def done(seen: int) -> bool:  # read from the thread: a done future's result is fixed
        return expected.done() and seen >= expected.result()

    return await asyncio.to_thread(
        load_rdkafka.consume_stamps, bootstrap, topic, PARTITIONS, since_ns, done
    )


async def run_latency(ctx: RunContext, scenario: Scenario, rate: float) -> dict[str, Any]:
    """Offer ``rate`` records/s for ``ctx.latency_seconds``; latency percentiles in ms."""
    app_id = unique(f"bench-{scenario.name}")
    inp, out = f"{app_id}-in", f"{app_id}-out"
    await create_topics(ctx.bootstrap, [inp, out], PARTITIONS)
    procs = start_workers(ctx, scenario, app_id, inp, out)
    try:
        await wait_ready(procs, PARTITIONS)
        sent: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        since_ns = time.time_ns() + int(WARMUP_S * 1e9)
        # Where the machine's cores go while the load runs: the workers, the broker, and this
        # process (the paced producer and the timing consumer share its one event loop).
        marks = (cpu_mark(ctx, procs), time.process_time(), time.monotonic())
        commits_before = await commit_totals(procs)
        if ctx.harness == "rdkafka":
            consumer = asyncio.create_task(_consume_rdkafka(ctx.bootstrap, out, sent, since_ns))
            sent.set_result(
                await asyncio.to_thread(
                    load_rdkafka.produce_paced, ctx.bootstrap, inp, rate, ctx.latency_seconds
                )
            )
        else:
            consumer = asyncio.create_task(_consume(ctx.bootstrap, out, sent, since_ns))
            sent.set_result(await produce_paced(ctx.bootstrap, inp, rate, ctx.latency_seconds))
        cpu = _cpu_shares(ctx, procs, marks)
        commits = commit_figures(
            commits_before, await commit_totals(procs), time.monotonic() - marks[2]
        )
        async with asyncio.timeout(120):
            latencies = await consumer
        for proc in procs:
            proc.sample_rss()
    finally:
        stop_workers(ctx, procs, app_id)
    stats = percentiles(latencies)
    return {
        "harness": ctx.harness,
        "offered_rate": rate,
        "records": sent.result(),
        "measured_records": len(latencies),
        "seconds": ctx.latency_seconds,
        "latency_ms": {**stats, "max": max(latencies), "mean": sum(latencies) / len(latencies)},
        "histogram_ms": percentiles(latencies, (*(float(q) for q in range(1, 100)), 99.9)),
        "peak_rss_mb": max(p.peak_rss for p in procs) / 2**20,
        "cpu_cores": cpu,
        "worker_commits": commits,
    }


def _cpu_shares(
    ctx: RunContext, procs: list[Proc], marks: tuple[tuple[float, float], float, float]
) -> dict[str, float]:
    """Cores used since ``marks`` by the workers, the broker and this harness (and their sum),
    against ``os.cpu_count()``: a sum near it means the figures measure a saturated machine."""
    (workers0, broker0), harness0, at = marks
    workers1, broker1 = cpu_mark(ctx, procs)
    seconds = max(time.monotonic() - at, 1e-9)
    shares = {
        "workers": (workers1 - workers0) / seconds,
        "broker": (broker1 - broker0) / seconds,
        "harness": (time.process_time() - harness0) / seconds,
    }
    return {**shares, "total": sum(shares.values()), "machine": float(os.cpu_count() or 1)}
