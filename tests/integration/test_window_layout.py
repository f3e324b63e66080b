"""A windowed table restarted with another window size, grace or retention on the same state
directory, on a real broker: each store laid out for the old definition is rebuilt from its
changelog, with one log line per partition naming the change, and the open windows go on
counting (docs/architecture.md, *State*, *Layout changes*).

Before layouts were recorded, the rows stayed under the old segment prefixes while the checkpoint
said the store was current: the restarted app read every open window as empty and counted
from 1 again.
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import httpx
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from kafka_helpers import load_kafka_local, recent_window_start, unique_name
from workers import AppUnderTest, WorkerProcess, app_under_test, collect, produce

from onceflow import App, Tumbling
from onceflow.runtime import TopicAdmin
from onceflow.runtime.admin import internal_topics

FIVE_MIN, TEN_MIN, DAY = 300_000, 600_000, 86_400_000
T0 = recent_window_start(TEN_MIN)  # a window start of both sizes
KEYS = [f"user-{i}" for i in range(8)]
CHANGED = re.compile(r"store counts partition (\d+) wiped: table layout changed \((.*)\)")


def stop(worker: WorkerProcess) -> None:
    assert worker.stop() == 0, worker.log_text()[-3000:]


async def run(aut: AppUnderTest, i: int, n: int, total: int, **env: str | int) -> WorkerProcess:
    """Worker ``i`` with ``env``: ``n`` more records per key, each at T0 + seconds (the open
    window), until the sink holds ``total`` outputs; returns the running worker."""
    worker = aut.spawn(i, **env)
    records = [(k.encode(), b"x", T0 + 1000 * j) for j in range(n) for k in KEYS]
    await produce(aut.env["ONCEFLOW_BOOTSTRAP_SERVERS"], aut.source, records)
    await collect(
        aut.env["ONCEFLOW_BOOTSTRAP_SERVERS"], aut.sink, total, timeout=90, workers=[worker]
    )
    return worker


async def counts_by_key(aut: AppUnderTest, total: int) -> dict[str, list[str]]:
    outputs = await collect(aut.env["ONCEFLOW_BOOTSTRAP_SERVERS"], aut.sink, total, 30, settle=1)
    found: dict[str, list[str]] = {}
    for r in outputs:
        found.setdefault(r.key.decode(), []).append(r.value.decode())
    return found


def changes(worker: WorkerProcess) -> list[tuple[int, str]]:
    return [(int(p), what) for p, what in CHANGED.findall(worker.log_text())]


async def windows_of(url: str, key: str, timeout: float = 60) -> list[dict[str, int]]:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=5) as http:
        while True:
            try:
                response = await http.get(f"{url}/tables/counts/keys/{key}")
                if response.status_code == 200:
                    windows: list[dict[str, int]] = response.json()["windows"]
                    return windows
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"no answer for {key!r} from {url}"
            await asyncio.sleep(0.2)


async def test_a_restart_with_another_grace_or_window_size_rebuilds_the_windows(
    bootstrap_servers: str, new_topic, tmp_path: Path
) -> None:
    source = await new_topic("layout-in", partitions=2)
    sink = await new_topic("layout-out", partitions=2)
    aut = app_under_test(bootstrap_servers, "tests.apps.window_layout", source, sink, tmp_path)
    n = len(KEYS)
    # 1. Five-minute windows, no grace: three records per key into the window at T0.
    stop(await run(aut, 0, 3, 3 * n, ONCEFLOW_TEST_WINDOW_MS=FIVE_MIN))
    # 2. Grace 10 minutes: retention 5 -> 15 minutes, segments of 5 -> 7.5 minutes.
    worker = await run(
        aut, 1, 2, 5 * n, ONCEFLOW_TEST_WINDOW_MS=FIVE_MIN, ONCEFLOW_TEST_GRACE_MS=TEN_MIN
    )
    stop(worker)
    found = await counts_by_key(aut, 5 * n)
    expected = [f"{T0}:{c}" for c in range(1, 6)]
    assert found == dict.fromkeys(KEYS, expected), (
        f"the open windows did not go on counting after the grace changed: {found}"
    )
    what = "retention 300000 -> 900000 ms, segment interval 300000 -> 450000 ms"
    assert sorted(changes(worker)) == [(0, what), (1, what)], worker.log_text()[-3000:]
    # 3. Ten-minute windows: every record so far is in the first half of the one at T0.
    port = load_kafka_local().free_ports(1)[0]
    env = {"ONCEFLOW_TEST_GRACE_MS": TEN_MIN, "ONCEFLOW_HTTP_PORT": port}
    worker = await run(aut, 2, 2, 7 * n, ONCEFLOW_TEST_WINDOW_MS=TEN_MIN, **env)
    try:
        window = {"start": T0, "end": T0 + TEN_MIN, "value": 7}
        for key in KEYS:
            assert await windows_of(f"http://127.0.0.1:{port}", key) == [window]
    finally:
        stop(worker)
    found = await counts_by_key(aut, 7 * n)
    assert found == {key: [f"{T0}:{c}" for c in range(1, 8)] for key in KEYS}, found
    what = (
        "window size 300000 -> 600000 ms, window advance 300000 -> 600000 ms, retention "
        "900000 -> 1200000 ms, segment interval 450000 -> 600000 ms"
    )
    assert sorted(changes(worker)) == [(0, what), (1, what)], worker.log_text()[-3000:]
    changelog = f"{aut.env['ONCEFLOW_TEST_APP_ID']}-counts-changelog"
    assert (await topic_config(bootstrap_servers, changelog))["retention.ms"] == str(
        1_200_000 + DAY
    )


async def topic_config(bootstrap: str, topic: str) -> dict[str, str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        [response] = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
        [(_code, _msg, _type, _name, entries)] = response.resources
        return {str(e[0]): str(e[1]) for e in entries}
    finally:
        await admin.close()


def windowed_app(app_id: str, retention_ms: int) -> App:
    app = App(app_id)
    source = app.topic("unused-source", key_serde="str", value_serde="str")
    app.windowed_table("counts", window=Tumbling(minutes=5), retention=retention_ms)

    @app.handler(source)
    async def handle(ctx: object, key: str, value: str) -> None: ...

    return app


async def test_a_changelog_kept_shorter_than_its_tables_retention_is_widened(
    bootstrap_servers: str,
) -> None:
    # Created for a 5-minute retention, with an override of the operator's own.
    app_id = unique_name("widen")
    changelog = f"{app_id}-counts-changelog"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        config = {
            "cleanup.policy": "compact,delete",
            "retention.ms": str(FIVE_MIN + DAY),
            "max.message.bytes": "123456",
        }
        response = await admin.create_topics([NewTopic(changelog, 1, 1, topic_configs=config)])
        assert [t[1] for t in response.topic_errors] == [0]
        topics = TopicAdmin(admin, replication_factor=1)
        for _ in range(100):  # metadata lags behind a creation
            if await topics.partition_counts([changelog]):
                break
            await asyncio.sleep(0.1)
        await topics.ensure(internal_topics(windowed_app(app_id, 2 * DAY), {"0": 1}))
        widened = await topic_config(bootstrap_servers, changelog)
        assert widened["retention.ms"] == str(3 * DAY)
        assert widened["max.message.bytes"] == "123456"  # kept
        assert widened["cleanup.policy"] == "compact,delete"
        # A shorter retention later leaves the longer one alone.
        await topics.ensure(internal_topics(windowed_app(app_id, FIVE_MIN), {"0": 1}))
        assert (await topic_config(bootstrap_servers, changelog))["retention.ms"] == str(3 * DAY)
    finally:
        await admin.delete_topics([changelog, f"{app_id}-dlq"])
        await admin.close()
