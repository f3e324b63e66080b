"""Local stores that fell out of sync with their changelog, on a real broker.

A store away from its changelog for longer than ``delete.retention.ms`` may have missed deletes
whose tombstones compaction has since dropped: restoring only its tail would bring the deleted
keys back, so it is restored from the beginning instead. And a worker removes the stores of the
tasks it no longer owns once ``ONCEFLOW_STATE_CLEANUP_DELAY_MS`` passed (docs/architecture.md,
*State*).
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import httpx
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from kafka_helpers import load_kafka_local, read_to_end
from workers import WorkerProcess, app_under_test, collect, produce

# Compaction as fast as the broker allows: a tombstone lives for a second after its first
# cleaning; segments roll every 200 ms (when a record arrives), so little stays in the active
# segment, which is never cleaned.
FAST_COMPACTION = {
    "cleanup.policy": "compact",
    "delete.retention.ms": "1000",
    "segment.ms": "200",
    "min.cleanable.dirty.ratio": "0.01",
    "min.compaction.lag.ms": "0",
    "max.compaction.lag.ms": "1000",
}
KEY = "gone"
FILLERS = [f"filler-{i}" for i in range(10)]


async def create_changelog(bootstrap: str, name: str, config: dict[str, str]) -> None:
    """The app's changelog, made before its first worker starts (``ensure`` keeps it)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        response = await admin.create_topics([NewTopic(name, 1, 1, topic_configs=config)])
        errors = [(t[0], t[1]) for t in response.topic_errors if t[1] != 0]
        assert not errors, f"create_topics failed (topic, error code): {errors}"
    finally:
        await admin.close()


async def delete_topic(bootstrap: str, name: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics([name])
    finally:
        await admin.close()


async def wait_compacted_away(
    bootstrap: str, changelog: str, source: str, key: bytes, timeout: float = 120
) -> float:
    """Feed the running app filler records (so segments roll and the log stays dirty) until
    compaction removed every record of ``key`` from the changelog, its tombstone included;
    the seconds it took."""
    started = time.monotonic()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True)
    await producer.start()
    try:
        checked = 0.0
        round_ = 0
        while True:
            round_ += 1
            for name in FILLERS:
                await producer.send(source, key=name.encode(), value=f"r{round_}".encode())
            await producer.flush()
            if time.monotonic() - checked > 2:
                checked = time.monotonic()
                keys = {r.key for r in await read_to_end(bootstrap, changelog)}
                if key not in keys:
                    return time.monotonic() - started
            assert time.monotonic() - started < timeout, (
                f"compaction kept a record of {key!r} in {changelog} for {timeout}s"
            )
            await asyncio.sleep(0.3)
    finally:
        await producer.stop()


async def lookup(url: str, key: str, timeout: float = 90) -> httpx.Response:
    """``GET /tables/kv/keys/<key>`` once the owner answers from its restored store (not 503)."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=5) as http:
        while True:
            try:
                response = await http.get(f"{url}/tables/kv/keys/{key}")
                if response.status_code != 503:
                    return response
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"no answer for {key!r} from {url}"
            await asyncio.sleep(0.1)


def stop(worker: WorkerProcess) -> None:
    assert worker.stop() == 0, worker.log_text()[-3000:]


async def test_a_store_older_than_the_tombstones_restores_from_the_beginning(
    bootstrap_servers: str, new_topic, tmp_path: Path
) -> None:
    source = await new_topic("stale-in")
    sink = await new_topic("stale-out")
    aut = app_under_test(
        bootstrap_servers, "tests.apps.deletes", source, sink, tmp_path, state_dirs=2
    )
    changelog = f"{aut.env['ONCEFLOW_TEST_APP_ID']}-kv-changelog"
    await create_changelog(bootstrap_servers, changelog, FAST_COMPACTION)
    try:
        # Host A (state-0) holds KEY and the fillers, checkpointed, then leaves.
        a = aut.spawn(0)
        written = [(KEY, "kept"), *((name, "r0") for name in FILLERS)]
        await produce(bootstrap_servers, source, ((k.encode(), v.encode()) for k, v in written))
        await collect(bootstrap_servers, sink, len(written), timeout=90, workers=[a], settle=0)
        stop(a)
        # Host B (state-1) deletes KEY; compaction then drops the tombstone.
        b = aut.spawn(1)
        await produce(bootstrap_servers, source, [(KEY.encode(), b"DEL")])
        outputs = await collect(
            bootstrap_servers, sink, len(written) + 1, timeout=90, workers=[b], settle=0
        )
        assert (outputs[-1].key, outputs[-1].value) == (KEY.encode(), b"<absent>")
        waited = await wait_compacted_away(bootstrap_servers, changelog, source, KEY.encode())
        stop(b)
        # A comes back to its old store: its checkpoint is older than the tombstone's retention.
        port = load_kafka_local().free_ports(1)[0]
        a = aut.spawn(2, ONCEFLOW_HTTP_HOST="127.0.0.1", ONCEFLOW_HTTP_PORT=port)
        url = f"http://127.0.0.1:{port}"
        try:
            assert (await lookup(url, FILLERS[0])).status_code == 200, a.log_text()[-3000:]
            answer = await lookup(url, KEY)
            assert answer.status_code == 404, (
                f"deleted key {KEY!r} came back ({answer.status_code} {answer.text}) after "
                f"compaction dropped its tombstone ({waited:.0f}s)"
            )
            log = a.log_text()
            assert "last in sync" in log and "delete.retention.ms (1000 ms)" in log, log[-3000:]
            assert "restoring from the beginning" in log
        finally:
            stop(a)
    finally:
        await delete_topic(bootstrap_servers, changelog)


def assigned(log: str) -> set[int] | None:
    """The partitions of a worker's latest assignment (its last ``assigned tasks`` line)."""
    lines = re.findall(r"assigned tasks (.*)$", log, re.MULTILINE)
    if not lines:
        return None
    return {int(t.split("_")[1]) for t in lines[-1].split(", ") if "_" in t}


def removed(log: str) -> set[int]:
    return {int(p) for p in re.findall(r"removed the state of store kv partition (\d+)", log)}


async def test_a_worker_removes_the_stores_it_no_longer_owns(
    bootstrap_servers: str, new_topic, tmp_path: Path
) -> None:
    source = await new_topic("cleanup-in", partitions=4)
    sink = await new_topic("cleanup-out", partitions=4)
    aut = app_under_test(
        bootstrap_servers,
        "tests.apps.deletes",
        source,
        sink,
        tmp_path,
        state_dirs=2,
        ONCEFLOW_STATE_CLEANUP_DELAY_MS=2000,
    )
    stores = tmp_path / "state-0" / aut.env["ONCEFLOW_TEST_APP_ID"] / "kv"
    first = aut.spawn(0)
    second: WorkerProcess | None = None
    try:
        records = [(f"key-{i}".encode(), f"v{i}".encode()) for i in range(200)]
        await produce(bootstrap_servers, source, records)
        await collect(bootstrap_servers, sink, len(records), timeout=90, workers=[first], settle=0)
        assert {p.name for p in stores.iterdir() if (p / "data.sqlite").exists()} == {
            "0",
            "1",
            "2",
            "3",
        }
        second = aut.spawn(1)  # scale 1 -> 2: the first worker hands over two tasks
        deadline = time.monotonic() + 45
        while True:
            log = first.log_text()
            owned = assigned(log)
            if owned is not None and len(owned) == 2 and removed(log) == {0, 1, 2, 3} - owned:
                break
            assert first.alive and second.alive, log[-3000:]
            assert time.monotonic() < deadline, (
                f"owned {owned}, removed {removed(log)} after 45s:\n{log[-3000:]}"
            )
            await asyncio.sleep(0.2)
        for partition in range(4):
            directory = stores / str(partition)
            files = {p.name for p in directory.iterdir()}
            if partition in owned:
                assert "data.sqlite" in files, (partition, files)
            else:  # the database is gone; the directory and its lock file stay
                assert files == {"onceflow.lock"}, (partition, files)
        assert re.search(r"removed the state of store kv partition \d+: .*last used \d+ s ago", log)
    finally:
        stop(first)
        if second is not None:
            stop(second)
