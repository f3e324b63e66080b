"""What the chart's Grafana dashboard and alert rules read from running workers (real ``onceflow
worker`` subprocesses on the real broker, scraped over HTTP): every metric name they use is
exported, and a partition's lag is reported by its owner only, so that sums over the pods (the
dashboard's lag, OnceflowNotProcessing) hold no frozen value of a worker that lost it."""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import httpx
from kafka_helpers import load_kafka_local, recent_window_start
from monitoring import missing_names, used_names
from prometheus_client.parser import text_string_to_metric_families
from sql_helpers import create_schema, start_payments, wait_rows
from workers import AppUnderTest, WorkerProcess, app_under_test, produce

# The series the inputs below must have moved before the scrape counts.
MOVED = (
    "onceflow_records_processed_total",
    "onceflow_transactions_total",
    "onceflow_windows_closed_total",
    "onceflow_timer_firings_total",
    "onceflow_late_records_dropped_total",
    "onceflow_dead_letter_records_total",
)
ONE = struct.pack(">q", 1)
T = TypeVar("T")


def samples(exposition: str, name: str) -> list[tuple[dict[str, str], float]]:
    return [
        (sample.labels, sample.value)
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
        if sample.name == name
    ]


def moved(exposition: str) -> set[str]:
    return {name for name in MOVED if any(value > 0 for _, value in samples(exposition, name))}


async def scrape(http: httpx.AsyncClient, worker: WorkerProcess, port: int) -> str:
    assert worker.alive, f"worker exited:\n{worker.log_text()[-3000:]}"
    try:
        return (await http.get(f"http://127.0.0.1:{port}/metrics")).text
    except httpx.TransportError:
        return ""  # not listening yet


async def finals_app(bootstrap: str, new_topic, tmp_path: Path, partitions: int) -> AppUnderTest:
    """tests.apps.finals: windows with emit="close", a table, a stream-time timer, the DLQ."""
    source = await new_topic("mon-in", partitions=partitions)
    sink = await new_topic("mon-out", partitions=partitions)
    ticks = await new_topic("mon-ticks", partitions=partitions)
    return app_under_test(
        bootstrap, "tests.apps.finals", source, sink, tmp_path, state_dirs=2,
        ONCEFLOW_TEST_TICKS=ticks, ONCEFLOW_COMMIT_INTERVAL_MS=200, ONCEFLOW_HTTP_HOST="127.0.0.1",
    )  # fmt: skip


async def poll(read: Callable[[], Awaitable[T]], done: Callable[[T], bool]) -> T:
    """``read()`` until ``done`` with what it read, for at most 90 s; the last value read."""
    deadline = time.monotonic() + 90
    value = await read()
    while not done(value) and time.monotonic() < deadline:
        await asyncio.sleep(0.3)
        value = await read()
    return value


async def test_every_metric_the_dashboard_and_rules_read_is_exported(
    bootstrap_servers: str, new_topic, tmp_path: Path
) -> None:
    app = await finals_app(bootstrap_servers, new_topic, tmp_path, partitions=1)
    port = load_kafka_local().free_ports(1)[0]
    worker = app.spawn(0, ONCEFLOW_HTTP_PORT=port)
    base = recent_window_start(1000)
    # 8 s of event time: windows close, the 3 s stream-time timer fires.
    inputs = [(f"k{i % 4}".encode(), ONE, base + i * 100) for i in range(80)]
    # Then a record for a window closed long ago (late) and one the int64 serde cannot read.
    inputs += [(b"k0", ONE, base), (b"k1", b"not an int64", base + 8000)]
    await produce(bootstrap_servers, app.source, inputs)
    # And a worker of an app with a SQL sink (into a SQLite file): the sink_* series.
    dsn = f"sqlite+aiosqlite:///{tmp_path / 'payments.db'}"
    await create_schema(dsn)
    (tmp_path / "sink").mkdir()
    sinking, good, _, sink_port = await start_payments(
        bootstrap_servers, new_topic, tmp_path / "sink", dsn, 300, ONCEFLOW_TEST_SINK_ONLY=1
    )
    try:
        await wait_rows(dsn, len(good), sinking, timeout=90)
        async with httpx.AsyncClient(timeout=5) as http:
            exposition = await poll(
                lambda: scrape(http, worker, port), lambda e: moved(e) == set(MOVED)
            )
            sink_exposition = await scrape(http, sinking, sink_port)
    finally:
        worker.stop()
        sinking.stop()
    assert moved(exposition) == set(MOVED), f"not moved: {set(MOVED) - moved(exposition)}"
    assert any(v > 0 for _, v in samples(sink_exposition, "onceflow_sink_records_total"))
    assert len(used_names()) >= 20
    assert missing_names(exposition + sink_exposition) == {}


def lagging(exposition: str) -> set[str]:
    return {labels["partition"] for labels, _ in samples(exposition, "onceflow_consumer_lag")}


def tasks(exposition: str) -> float:
    return sum(value for _, value in samples(exposition, "onceflow_assigned_tasks"))


def settled(expositions: list[str]) -> bool:
    """One task each, each reporting the lag of its own partition only."""
    first, second = (lagging(e) for e in expositions)
    return [tasks(e) for e in expositions] == [1, 1] and len(first) == len(second) == 1


async def test_a_partition_that_moves_leaves_no_lag_behind(
    bootstrap_servers: str, new_topic, tmp_path: Path
) -> None:
    app = await finals_app(bootstrap_servers, new_topic, tmp_path, partitions=2)
    ports = load_kafka_local().free_ports(2)
    workers = [app.spawn(0, ONCEFLOW_HTTP_PORT=ports[0])]
    base = recent_window_start(1000)
    inputs = [(f"k{i % 8}".encode(), ONE, base + i * 10) for i in range(200)]
    await produce(bootstrap_servers, app.source, inputs)

    async def scrape_all() -> list[str]:
        return [await scrape(http, w, port) for w, port in zip(workers, ports, strict=False)]

    try:
        async with httpx.AsyncClient(timeout=5) as http:
            (alone,) = await poll(scrape_all, lambda e: lagging(e[0]) == {"0", "1"})
            assert lagging(alone) == {"0", "1"}, alone
            # Balance moves one task to the new worker (once its warm-up caught up). A task
            # reports its lag after its commits: with new records, each worker reports the lag
            # of its own partition, and the first one no longer that of the partition it lost.
            workers.append(app.spawn(1, ONCEFLOW_HTTP_PORT=ports[1]))
            await poll(scrape_all, lambda e: [tasks(x) for x in e] == [1, 1])
            await produce(bootstrap_servers, app.source, inputs)
            both = await poll(scrape_all, settled)
    finally:
        for worker in workers:
            worker.stop()
    assert [tasks(e) for e in both] == [1, 1], both
    assert [lagging(e) for e in both] in ([{"0"}, {"1"}], [{"1"}, {"0"}])
