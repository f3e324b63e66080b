"""Local faults under the stateful EOS oracle: a state disk that refuses writes, and a changelog
topic deleted under a running app.

The disk fault is real, not mocked: the worker runs with ``RLIMIT_FSIZE`` (``ulimit -f``) so small
that SQLite's writes past it fail with EFBIG, as they would on a full disk. Its log goes through a
pipe, which the limit does not apply to.
"""

from __future__ import annotations

import asyncio
import os
import re
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from kafka_helpers import create_topics, read_to_end, unique_name
from oracle import check_aggregates, expected_by_key, make_inputs, outputs_by_key
from workers import ONCEFLOW, REPO, WorkerProcess, collect, produce
from workers import worker_env as base_env

pytestmark = pytest.mark.chaos

APP = "tests.apps.aggregates"


class LimitedWorker(WorkerProcess):
    """A worker whose files may not grow past ``fsize`` bytes (SIGXFSZ ignored: EFBIG instead).

    stdout goes through a pipe copied to the log file by a thread, so the log is not limited.
    """

    def __init__(self, env: dict[str, str], log_path: Path, fsize: int) -> None:
        super().__init__(APP, env, log_path)
        self.fsize = fsize
        self._copier: threading.Thread | None = None

    def _limit(self) -> None:  # runs in the child between fork and exec
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (self.fsize, self.fsize))

    def start(self) -> LimitedWorker:
        command = [ONCEFLOW] if ONCEFLOW else [sys.executable, "-m", "onceflow"]
        self.proc = subprocess.Popen(
            [*command, "worker", self.module],
            cwd=REPO,
            env={**os.environ, **self.env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            preexec_fn=self._limit,
        )
        self._copier = threading.Thread(target=self._copy, daemon=True)
        self._copier.start()
        return self

    def _copy(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        with self.proc.stdout, self.log_path.open("ab") as log:
            for line in self.proc.stdout:
                log.write(line)
                log.flush()

    def wait(self, timeout: float) -> int | None:
        code = super().wait(timeout)
        if code is not None and self._copier is not None:
            self._copier.join(5)  # the pipe is at its end: the log is complete
        return code


async def _topics(new_topic) -> tuple[str, str]:
    return await new_topic("lf-in", partitions=6), await new_topic("lf-out", partitions=6)


def _env(bootstrap: str, app_id: str, state: Path, source: str, sink: str) -> dict[str, str]:
    return base_env(
        bootstrap,
        app_id,
        state,
        ONCEFLOW_TEST_INPUT=source,
        ONCEFLOW_TEST_OUTPUT=sink,
        ONCEFLOW_SHUTDOWN_GRACE_MS=10_000,
    )


async def _wait_for(predicate, timeout: float, what: str, worker: WorkerProcess) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}:\n{worker.log_text()[-4000:]}")


async def _assert_correct_prefix(bootstrap: str, source: str, sink: str) -> int:
    """What a read_committed reader sees of ``sink`` is, per key, a prefix of the exact running
    aggregates: nothing inconsistent was committed. Returns the number of outputs."""
    expected = expected_by_key(await read_to_end(bootstrap, source))
    output = await read_to_end(bootstrap, sink)
    for key, got in outputs_by_key(output).items():
        assert got == expected[key][: len(got)], f"{key!r}: {got} is not a prefix of the oracle"
    return len(output)


def _assert_clean_log(log: str) -> None:
    # One line per failure: no stack traces.
    assert "Traceback" not in log, log[-4000:]


async def test_full_disk_fails_the_task_and_a_restart_restores_exactly(
    bootstrap_servers: str, new_topic, tmp_path: Path
) -> None:
    source, sink = await _topics(new_topic)
    env = _env(bootstrap_servers, unique_name("lf-disk"), tmp_path / "state", source, sink)
    # 1. A healthy run: the stores hold data and checkpoints.
    await produce(bootstrap_servers, source, make_inputs(4_000, 21))
    worker = WorkerProcess(APP, env, tmp_path / "healthy.log").start()
    try:
        await collect(bootstrap_servers, sink, 4_000, timeout=60, workers=[worker], settle=1.5)
    finally:
        assert worker.stop() == 0
    # 2. The disk fills: no write past 36 KiB, less than the databases already are (SQLite's
    # 32 KiB shared-memory file still fits: the stores open, and the first flushes land).
    worker = LimitedWorker(env, tmp_path / "limited.log", fsize=36 * 1024).start()
    producing = asyncio.create_task(
        # Enough new keys that every store must grow its files (free pages left by earlier
        # writes would otherwise absorb a small batch under the limit).
        produce(bootstrap_servers, source, make_inputs(12_000, 22), rate=2_000)
    )
    failure = re.compile(
        r"ERROR +onceflow\.worker: task (\S+) failed: SQLite failed while \w+ '[^']+/data\.sqlite'"
        r": .*EFBIG \(File too large\).*; rebuilding it from the committed state in ([\d.]+)s"
    )
    try:
        await _wait_for(lambda: failure.search(worker.log_text()), 60, "a write failure", worker)
        await producing
        await asyncio.sleep(8)  # it keeps failing and retrying, with backoff
        assert worker.alive, worker.log_text()[-4000:]
    finally:
        producing.cancel()
        code = worker.stop()
    log = worker.log_text()
    assert code == 0, log[-4000:]
    _assert_clean_log(log)
    delays: dict[str, list[float]] = {}
    for task, delay in failure.findall(log):
        delays.setdefault(task, []).append(float(delay))
    assert all(d == sorted(d) for d in delays.values()), delays  # backs off: 0.1, 0.2, 0.4 ...
    assert max(max(d) for d in delays.values()) >= 1.6, delays
    # A flush runs only after its Kafka transaction committed: the failing worker committed
    # outputs that its SQLite files never got, and all it committed is consistent.
    assert await _assert_correct_prefix(bootstrap_servers, source, sink) > 4_000
    # 3. Space is back: the restart replays the changelog tail the failed flushes missed.
    await produce(bootstrap_servers, source, make_inputs(1_000, 23))
    worker = WorkerProcess(APP, env, tmp_path / "restarted.log").start()
    try:
        output = await collect(bootstrap_servers, sink, 17_000, timeout=90, workers=[worker])
    finally:
        assert worker.stop() == 0
    log = worker.log_text()
    _assert_clean_log(log)
    assert re.search(r"restored \w+ partition \d+: \d+ records from offset [1-9]", log), log
    await check_aggregates(bootstrap_servers, source, sink, output)


async def test_deleted_changelog_stops_the_worker_and_a_recreated_one_is_refused(
    bootstrap_servers: str, new_topic, tmp_path: Path
) -> None:
    source, sink = await _topics(new_topic)
    app_id = unique_name("lf-cl")
    changelog = f"{app_id}-sum-changelog"
    env = _env(bootstrap_servers, app_id, tmp_path / "state", source, sink)
    worker = WorkerProcess(APP, env, tmp_path / "worker.log").start()
    producing = asyncio.create_task(
        produce(bootstrap_servers, source, make_inputs(20_000, 31), rate=1_000)
    )
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        await collect(bootstrap_servers, sink, 1_000, timeout=60, workers=[worker], settle=0)
        await admin.delete_topics([changelog])
        deleted_at = time.monotonic()
        code = await asyncio.to_thread(worker.wait, 60)
        took = time.monotonic() - deleted_at
        log = worker.log_text()
        assert code == 1, f"exit code {code}:\n{log[-4000:]}"
        assert re.search(rf"ERROR .*failed fatally: changelog topic '{changelog}' was deleted", log)
        print(f"worker exited {took:.1f}s after the changelog was deleted")
        # Found by the worker's topic check (every 10 s) or a failed send, then 5 s to abort.
        assert took < 30, log[-4000:]
        _assert_clean_log(log)
        producing.cancel()
        await _assert_correct_prefix(bootstrap_servers, source, sink)
        # A restart does not recreate it: the committed offsets say the table had state.
        worker = WorkerProcess(APP, env, tmp_path / "restarted.log").start()
        code = await asyncio.to_thread(worker.wait, 60)
        log = worker.log_text()
        assert code == 1, f"exit code {code}:\n{log[-4000:]}"
        assert f"changelog topic '{changelog}' of table 'sum' does not exist" in log, log[-4000:]
        assert changelog not in await admin.list_topics()
        # Recreated empty by hand (or by a broker's auto-create): the stores' checkpoints are
        # beyond its end, and the restore refuses it.
        await create_topics(admin, [changelog], 6, config={"cleanup.policy": "compact"})
        worker = WorkerProcess(APP, env, tmp_path / "recreated.log").start()
        code = await asyncio.to_thread(worker.wait, 60)
        log = worker.log_text()
        assert code == 1, f"exit code {code}:\n{log[-4000:]}"
        # "Empty" may hold an abort marker: the killed worker's open transaction named the old
        # topic's partitions, and the coordinator writes its marker when the transaction times
        # out, by name, into the recreated topic (end offset 1).
        refused = re.search(
            rf"store 'sum' partition \d has checkpoint (\d+) but changelog topic '{changelog}' "
            r"partition \d ends at offset (\d+)",
            log,
        )
        assert refused and int(refused[1]) > int(refused[2]) <= 1, log[-4000:]
        await _assert_correct_prefix(bootstrap_servers, source, sink)
    finally:
        producing.cancel()
        worker.stop()
        await admin.delete_topics([changelog])
        await admin.close()
