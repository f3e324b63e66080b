"""Repartition topics at start, on the real broker: the worker creates one with its reading
group's partitions and Kafka Streams' config; an existing one with another partition count
stops the worker naming both counts; ``onceflow topics create`` lists it but leaves it to the
worker. (Exactly-once across the hop and purging: tests/chaos/test_rekey_eos.py.)"""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient
from kafka_helpers import REPO, create_topics, partitions_of, unique_name
from workers import WorkerProcess, collect, onceflow_command, produce, worker_env


def _env(bootstrap: str, tmp_path: Path, source: str, sink: str) -> dict[str, str]:
    return worker_env(
        bootstrap, unique_name("rekey"), tmp_path / "state",
        ONCEFLOW_TEST_INPUT=source, ONCEFLOW_TEST_OUTPUT=sink,
    )  # fmt: skip


async def test_the_worker_creates_the_repartition_topic_and_counts_across_it(
    bootstrap_servers: str, new_topic, tmp_path: Path
) -> None:
    source = await new_topic("clicks", partitions=3)
    sink = await new_topic("counts", partitions=3)
    env = _env(bootstrap_servers, tmp_path, source, sink)
    worker = WorkerProcess("tests.apps.page_counts", env, tmp_path / "w.log").start()
    try:
        records = [(f"u{i}".encode(), b"/home" if i % 3 else b"/about") for i in range(30)]
        await produce(bootstrap_servers, source, records)
        out = await collect(bootstrap_servers, sink, 30, timeout=90, workers=[worker])
    finally:
        assert worker.stop() == 0, worker.log_text()[-3000:]
    per_page: dict[bytes, list[int]] = {}
    for r in out:
        per_page.setdefault(r.key, []).append(int(r.value))
    assert {k: sorted(v) for k, v in per_page.items()} == {
        b"/home": list(range(1, 21)),
        b"/about": list(range(1, 11)),
    }
    hop = f"{env['ONCEFLOW_TEST_APP_ID']}-by-page-repartition"
    assert len(await partitions_of(bootstrap_servers, hop)) == 3
    assert "created internal topic " + hop in worker.log_text()


async def test_a_repartition_topic_with_another_partition_count_is_refused(
    bootstrap_servers: str, new_topic, tmp_path: Path
) -> None:
    source = await new_topic("clicks", partitions=3)
    env = _env(bootstrap_servers, tmp_path, source, "unused")
    hop = f"{env['ONCEFLOW_TEST_APP_ID']}-by-page-repartition"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        await create_topics(admin, [hop], partitions=2)
    finally:
        await admin.close()
    worker = WorkerProcess("tests.apps.page_counts", env, tmp_path / "w.log").start()
    assert worker.wait(60) == 1
    log = worker.log_text()
    assert f"repartition topic {hop!r} has 2 partitions, but it should have 3" in log, log[-2000:]


async def test_topics_create_leaves_the_repartition_topic_to_the_worker(
    bootstrap_servers: str, tmp_path: Path
) -> None:
    source = unique_name("clicks")
    env = {**os.environ, "ONCEFLOW_BOOTSTRAP_SERVERS": bootstrap_servers,
           "ONCEFLOW_INPUT_TOPIC": source}  # fmt: skip
    command = [*onceflow_command(), "topics", "create", "onceflow.examples.page_views"]
    done = await asyncio.to_thread(
        subprocess.run, command, env=env, cwd=REPO, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert f"{source}: created" in done.stdout
    assert "page-views-by-page-repartition: internal (repartition), created by the worker" in (
        done.stdout
    )
