"""Start-up checks, driven through ``onceflow worker`` as an operator meets them."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from pathlib import Path

from kafka_helpers import REPO, partitions_of, unique_name
from workers import WorkerProcess, collect, onceflow_command, produce, worker_env


def _env(bootstrap: str, tmp_path: Path, **extra: str | int) -> dict[str, str]:
    return worker_env(bootstrap, unique_name("startup"), tmp_path / "state", **extra)


async def test_missing_source_topic_fails_with_its_name(bootstrap_servers: str, tmp_path: Path):
    missing = unique_name("nope")
    env = _env(bootstrap_servers, tmp_path, ONCEFLOW_TEST_INPUT=missing, ONCEFLOW_TEST_OUTPUT="x")
    worker = WorkerProcess("tests.apps.echo", env, tmp_path / "w.log").start()
    assert worker.wait(60) == 1
    assert f"source topic(s) '{missing}' do not exist" in worker.log_text()
    assert "Traceback" not in worker.log_text()


async def test_copartitioning_mismatch_names_topics_and_counts(
    bootstrap_servers: str, new_topic, tmp_path: Path
):
    a = await new_topic("left", partitions=3)
    b = await new_topic("right", partitions=2)
    env = _env(
        bootstrap_servers,
        tmp_path,
        ONCEFLOW_TEST_INPUT=a,
        ONCEFLOW_TEST_INPUT2=b,
        ONCEFLOW_TEST_OUTPUT="unused",
    )
    worker = WorkerProcess("tests.apps.copartitioned", env, tmp_path / "w.log").start()
    assert worker.wait(60) == 1
    log = worker.log_text()
    assert f"'{a}': 3" in log and f"'{b}': 2" in log, log


async def test_bad_setting_fails_naming_the_variable(bootstrap_servers: str, tmp_path: Path):
    env = _env(
        bootstrap_servers,
        tmp_path,
        ONCEFLOW_TEST_INPUT="a",
        ONCEFLOW_TEST_OUTPUT="b",
        ONCEFLOW_PROCESSING_GUARANTEE="maybe_once",
    )
    worker = WorkerProcess("tests.apps.echo", env, tmp_path / "w.log").start()
    assert worker.wait(30) == 2
    assert "ONCEFLOW_PROCESSING_GUARANTEE" in worker.log_text()


async def test_copartitioned_topics_share_one_task_and_its_table(
    bootstrap_servers: str, new_topic, tmp_path: Path
):
    a = await new_topic("left", partitions=4)
    b = await new_topic("right", partitions=4)
    out = await new_topic("joined", partitions=4)
    env = _env(
        bootstrap_servers,
        tmp_path,
        ONCEFLOW_TEST_INPUT=a,
        ONCEFLOW_TEST_INPUT2=b,
        ONCEFLOW_TEST_OUTPUT=out,
        ONCEFLOW_GROUP_INSTANCE_ID="static-1",
    )
    workers = [
        WorkerProcess(
            "tests.apps.copartitioned",
            {
                **env,
                "ONCEFLOW_GROUP_INSTANCE_ID": f"s{i}",
                "ONCEFLOW_STATE_DIR": str(tmp_path / f"s{i}"),
            },
            tmp_path / f"w{i}.log",
        ).start()
        for i in range(2)
    ]
    await produce(bootstrap_servers, a, [(f"k{i}".encode(), b"L") for i in range(200)])
    try:
        first = await collect(bootstrap_servers, out, 200, timeout=60, workers=workers, settle=0.5)
        await produce(bootstrap_servers, b, [(f"k{i}".encode(), b"R") for i in range(200)])
        joined = await collect(bootstrap_servers, out, 400, timeout=60, workers=workers)
    finally:
        for w in workers:
            w.signal(signal.SIGTERM)
        codes = [w.wait(30) for w in workers]
    assert codes == [0, 0], [w.log_text()[-2000:] for w in workers]
    assert len(first) == 200
    # every right-hand record saw the left-hand value of its key: same task, same table partition
    assert sorted(r.value for r in joined if r.value.endswith(b"|R")) == [b"L|R"] * 200


async def test_topics_create_makes_the_sources_once(bootstrap_servers: str, tmp_path: Path):
    """``onceflow topics create`` creates the App's missing source topics (replication factor -1:
    the broker's default) and says which it found."""
    source = unique_name("created")
    env = {**os.environ, **_env(bootstrap_servers, tmp_path), "ONCEFLOW_INPUT_TOPIC": source}
    command = [*onceflow_command(), "topics", "create", "onceflow.examples.windowed_count"]

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            command, env=env, cwd=REPO, capture_output=True, text=True, check=False
        )

    first = await asyncio.to_thread(run)
    assert first.returncode == 0, first.stderr
    assert f"{source}: created" in first.stdout
    partitions = await partitions_of(bootstrap_servers, source)
    assert len(partitions) == 6
    again = await asyncio.to_thread(run)
    assert again.returncode == 0, again.stderr
    assert f"{source}: exists" in again.stdout
