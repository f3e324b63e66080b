"""Expiry is decided by stream time, not by when a commit happens to run (docs/architecture.md,
*Time*), on a real broker: a window past retention whose rows are still on disk (the commit
deletes whole segments only) is never served over HTTP — not before the restart, not after it
while the partition stays idle. Before, the bound that hid it lived in memory until the next
commit, so a restarted worker served the expired window again, forever on an idle partition.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
from kafka_helpers import load_kafka_local, recent_window_start
from workers import WorkerProcess, app_under_test, collect, produce

MINUTE = 60_000
T0 = recent_window_start(10 * MINUTE)  # the first window of a 5-minute segment


async def status_of(url: str, key: str, timeout: float = 60) -> tuple[int, object]:
    """The first answer other than 503 (restoring, joining) for ``key``'s windows."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=5) as http:
        while True:
            try:
                response = await http.get(f"{url}/tables/counts/keys/{key}")
                if response.status_code != 503:
                    return response.status_code, response.json()
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"no answer for {key!r} from {url}"
            await asyncio.sleep(0.2)


def stop(worker: WorkerProcess) -> None:
    assert worker.stop() == 0, worker.log_text()[-3000:]


async def test_an_expired_window_stays_hidden_after_a_restart_on_an_idle_partition(
    bootstrap_servers: str, new_topic, tmp_path: Path
) -> None:
    source = await new_topic("expiry-in", partitions=1)
    sink = await new_topic("expiry-out", partitions=1)
    port = load_kafka_local().free_ports(1)[0]
    aut = app_under_test(
        bootstrap_servers, "tests.apps.window_layout", source, sink, tmp_path,
        ONCEFLOW_TEST_WINDOW_MS=MINUTE, ONCEFLOW_TEST_RETENTION_MS=10 * MINUTE,
        ONCEFLOW_HTTP_PORT=port, ONCEFLOW_COMMIT_INTERVAL_MS=200,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    worker = aut.spawn(0)
    try:
        await produce(bootstrap_servers, source, [(b"old", b"x", T0), (b"old", b"x", T0 + 1)])
        await collect(bootstrap_servers, sink, 2, timeout=60, workers=[worker], settle=0)
        assert (await status_of(url, "old"))[0] == 200
        # Stream time T0 + 11 min: the window at T0 expires (retention 10 min). Segments are
        # 5 minutes: the commit cannot delete its segment yet, only hide the window.
        await produce(bootstrap_servers, source, [(b"new", b"x", T0 + 11 * MINUTE)])
        await collect(bootstrap_servers, sink, 3, timeout=60, workers=[worker], settle=1)
        assert (await status_of(url, "old"))[0] == 404
    finally:
        stop(worker)
    worker = aut.spawn(1)  # same state dir; no record comes: the partition stays idle
    try:
        code, body = await status_of(url, "old")
        assert code == 404, f"the expired window is served again after a restart: {body}"
        code, body = await status_of(url, "new")
        assert code == 200 and body["windows"][0]["value"] == 1, body  # type: ignore[index]
    finally:
        stop(worker)
