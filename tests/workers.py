"""Run ``onceflow worker`` as subprocesses, the way users and the chaos tests do, and drive data
through them: produce inputs, wait for outputs, kill and stop workers."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from kafka_helpers import REPO, end_offsets, partitions_of, unique_name

ONCEFLOW = shutil.which("onceflow", path=str(Path(sys.executable).parent))


def onceflow_command() -> list[str]:
    """The ``onceflow`` command of this environment (``python -m onceflow`` if not installed)."""
    return [ONCEFLOW] if ONCEFLOW else [sys.executable, "-m", "onceflow"]


class WorkerProcess:
    """One ``onceflow worker MODULE`` subprocess with its own log file."""

    def __init__(self, module: str, env: dict[str, str], log_path: Path) -> None:
        self.module = module
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [*onceflow_command(), "worker", self.module],
            cwd=REPO,
            env={**os.environ, **self.env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive:
            assert self.proc is not None
            self.proc.send_signal(sig)

    def kill(self) -> None:
        """kill -9 and reap."""
        self.signal(signal.SIGKILL)
        self.wait(10)

    def wait(self, timeout: float) -> int | None:
        if self.proc is None:
            return None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float = 30) -> int | None:
        """SIGTERM, then wait for a clean exit (SIGKILL if it does not come)."""
        if not self.alive:
            return self.proc.returncode if self.proc else None
        self.signal(signal.SIGTERM)
        code = self.wait(timeout)
        if code is None:
            self.kill()
        return code

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def worker_env(bootstrap: str, app_id: str, state_dir: Path, **extra: str | int) -> dict[str, str]:
    env = {
        "ONCEFLOW_BOOTSTRAP_SERVERS": bootstrap,
        "ONCEFLOW_TEST_APP_ID": app_id,
        "ONCEFLOW_STATE_DIR": str(state_dir),
        "ONCEFLOW_HTTP_PORT": "0",
        "ONCEFLOW_SESSION_TIMEOUT_MS": "6000",
        "ONCEFLOW_HEARTBEAT_INTERVAL_MS": "1000",
        "ONCEFLOW_LOG_LEVEL": "INFO",
    }
    env.update({k.upper() if k.islower() else k: str(v) for k, v in extra.items()})
    return env


async def produce(
    bootstrap: str,
    topic: str,
    records: Iterable[tuple[bytes | None, bytes | None] | tuple[bytes | None, bytes | None, int]],
    *,
    rate: float | None = None,
    max_request_size: int = 1_048_576,
) -> int:
    """Produce (key, value[, timestamp_ms]) records with an idempotent producer (default
    partitioner: murmur2 of the key, as Kafka's Java clients); ``rate`` limits records/s."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        enable_idempotence=True,
        linger_ms=5,
        acks="all",
        max_request_size=max_request_size,
    )
    await producer.start()
    count = 0
    started = time.monotonic()
    try:
        futures = []
        for record in records:
            timestamp = record[2] if len(record) == 3 else None
            futures.append(
                await producer.send(topic, value=record[1], key=record[0], timestamp_ms=timestamp)
            )
            count += 1
            if rate and count % 100 == 0:
                ahead = count / rate - (time.monotonic() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return count


async def collect(
    bootstrap: str,
    topic: str,
    expected: int,
    timeout: float,
    *,
    workers: Iterable[WorkerProcess] = (),
    settle: float = 2.0,
    distinct: bool = False,
) -> list[ConsumerRecord[bytes, bytes]]:
    """Read ``topic`` with read_committed until ``expected`` records arrived (then ``settle``
    seconds more, to catch duplicates) or ``timeout``; fail early if a worker died.

    ``distinct``: count distinct (key, value) pairs, for at-least-once runs whose duplicates
    would otherwise reach ``expected`` before the last inputs were processed."""
    partitions = await partitions_of(bootstrap, topic)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
    )
    await consumer.start()
    records: list[ConsumerRecord[bytes, bytes]] = []
    seen: set[tuple[bytes | None, bytes | None]] = set()
    try:
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        deadline = time.monotonic() + timeout
        settle_until: float | None = None
        while time.monotonic() < (settle_until or deadline):
            batches = await consumer.getmany(timeout_ms=200, max_records=50_000)
            fetched = [r for batch in batches.values() for r in batch]
            records += fetched
            if distinct:
                seen.update((r.key, r.value) for r in fetched)
            if settle_until is None and len(seen if distinct else records) >= expected:
                settle_until = min(deadline, time.monotonic() + settle)
            for worker in workers:
                code = worker.proc.returncode if worker.proc else None
                assert worker.alive or code in (None, 0, -9, -15), (
                    f"worker exited with {code}:\n{worker.log_text()[-3000:]}"
                )
    finally:
        await consumer.stop()
    return sorted(records, key=lambda r: (r.partition, r.offset))


Records = list[ConsumerRecord[bytes, bytes]]


def by_partition(records: Records) -> dict[int, list[tuple[bytes | None, bytes | None]]]:
    out: dict[int, list[tuple[bytes | None, bytes | None]]] = defaultdict(list)
    for r in records:
        out[r.partition].append((r.key, r.value))
    return dict(out)


async def assert_no_hanging_transactions(bootstrap: str, topic: str) -> None:
    committed = await end_offsets(bootstrap, topic, "read_committed")
    uncommitted = await end_offsets(bootstrap, topic, "read_uncommitted")
    assert committed == uncommitted, f"open transaction on {topic}: {committed} != {uncommitted}"


@dataclass
class AppUnderTest:
    """A test app (``module``) wired to its source and sink: ``spawn(i)`` starts worker ``i``,
    logging to ``tmp_path/worker-{i}.log``. With ``state_dirs=k`` worker ``i`` keeps its stores in
    ``tmp_path/state-{i % k}``, as on k hosts (a task that moves restores from Kafka); otherwise
    all workers share ``tmp_path/state``."""

    module: str
    source: str
    sink: str
    env: dict[str, str]
    tmp_path: Path
    state_dirs: int | None = None

    def spawn(self, i: int, **env: str | int) -> WorkerProcess:
        own = dict(self.env)
        if self.state_dirs:
            own["ONCEFLOW_STATE_DIR"] = str(self.tmp_path / f"state-{i % self.state_dirs}")
        own.update({k: str(v) for k, v in env.items()})
        return WorkerProcess(self.module, own, self.tmp_path / f"worker-{i}.log").start()


def app_under_test(
    bootstrap: str,
    module: str,
    source: str,
    sink: str,
    tmp_path: Path,
    *,
    state_dirs: int | None = None,
    **env: str | int,
) -> AppUnderTest:
    """``app_under_test(bootstrap, "tests.apps.echo", source, sink, tmp_path)``: a fresh app id
    and the worker environment; ``env`` adds settings (``ONCEFLOW_COMMIT_INTERVAL_MS=500``)."""
    app_id = unique_name(module.rsplit(".", 1)[-1])
    base = worker_env(
        bootstrap,
        app_id,
        tmp_path / "state",
        ONCEFLOW_TEST_INPUT=source,
        ONCEFLOW_TEST_OUTPUT=sink,
        **env,
    )
    return AppUnderTest(module, source, sink, base, tmp_path, state_dirs)


async def wait_until_processing(worker: WorkerProcess, timeout: float = 60) -> bool:
    """Wait until ``worker`` logs a running task, so that a fault injected next lands while it
    processes (a worker takes seconds to start, join and restore); False if it never did."""
    deadline = time.monotonic() + timeout
    while worker.alive and time.monotonic() < deadline:
        if " running (stream time " in worker.log_text():
            return True
        await asyncio.sleep(0.2)
    return False
