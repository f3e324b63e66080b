"""``onceflow reset`` and ``onceflow describe`` as operators run them, against the real broker and
real worker subprocesses: a reset refuses while a worker is in the group and names it; a dry run
changes nothing; after a reset a restart reproduces a fresh run's outputs exactly, and a second
reset finds nothing to do; the offsets land where --to-datetime / --by-duration / --to-latest
say; describe lists every internal topic the worker created, and ``GET /topology`` serves
describe's topology."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

import httpx
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import OffsetAndMetadata, TopicPartition
from kafka_helpers import REPO, create_topics, load_kafka_local, read_to_end, unique_name
from sql_helpers import create_schema, start_payments, wait_first_row
from test_windowed_count import WINDOW, expected_outputs
from workers import WorkerProcess, by_partition, collect, onceflow_command, produce, worker_env

WINDOWED = "onceflow.examples.windowed_count"


def onceflow(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*onceflow_command(), *args],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


async def committed(bootstrap: str, group: str) -> dict[tuple[str, int], int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return {(tp.topic, tp.partition): meta.offset for tp, meta in offsets.items()}


async def topics_with_prefix(bootstrap: str, prefix: str) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return {t for t in await admin.list_topics() if t.startswith(prefix)}
    finally:
        await admin.close()


def files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def windowed_inputs(n: int) -> list[tuple[bytes, bytes, int]]:
    start = int(time.time() * 1000) - 3 * 3_600_000
    start -= start % WINDOW
    records = []
    for i in range(n):
        ts = start + i * 700  # ~4 windows over the run
        if i % 97 == 96:
            records.append((b"k-late", b"x", ts - WINDOW - 1))  # late: dropped, not counted
        records.append((f"user-{i % 11}".encode(), b"click", ts))
    return records


async def test_reset_then_restart_reproduces_a_fresh_run(
    bootstrap_servers: str, new_topic, tmp_path: Path
) -> None:
    source = await new_topic("rs-in", partitions=3)
    first_out = await new_topic("rs-out1", partitions=3)
    second_out = await new_topic("rs-out2", partitions=3)
    await produce(bootstrap_servers, source, windowed_inputs(1500))
    expected, _late = expected_outputs(await read_to_end(bootstrap_servers, source))
    total = sum(len(v) for v in expected.values())
    app_id = unique_name("rs-app")
    state = tmp_path / "state"
    env = worker_env(
        bootstrap_servers, app_id, state,
        ONCEFLOW_APP_ID=app_id, ONCEFLOW_INPUT_TOPIC=source, ONCEFLOW_OUTPUT_TOPIC=first_out,
    )  # fmt: skip
    worker = WorkerProcess(WINDOWED, env, tmp_path / "first.log").start()
    try:
        first = await collect(bootstrap_servers, first_out, total, timeout=90, workers=[worker])
        # (a) refused while the worker is in the group, naming it
        refused = onceflow(env, "reset", WINDOWED)
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert "has live group members" in refused.stderr
        assert f"{app_id}-{socket.gethostname()}-{worker.proc.pid}" in refused.stderr  # type: ignore[union-attr]
    finally:
        assert worker.stop() == 0, worker.log_text()[-3000:]
    assert by_partition(first) == expected

    # (c) a dry run prints the plan and changes nothing
    before = (
        await committed(bootstrap_servers, app_id),
        await topics_with_prefix(bootstrap_servers, app_id),
        files(state),
    )
    assert before[0] and f"{app_id}-counts-changelog" in before[1] and before[2]
    dry = onceflow(env, "reset", WINDOWED, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"delete topic {app_id}-counts-changelog (changelog)" in dry.stdout
    assert f"keep topic {app_id}-dlq" in dry.stdout
    assert "dry run: nothing changed" in dry.stdout
    after = (
        await committed(bootstrap_servers, app_id),
        await topics_with_prefix(bootstrap_servers, app_id),
        files(state),
    )
    assert after == before

    done = onceflow(env, "reset", WINDOWED)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"deleted topic {app_id}-counts-changelog" in done.stdout
    assert f"wiped local state {state / app_id}" in done.stdout
    assert await committed(bootstrap_servers, app_id) == {(source, p): 0 for p in range(3)}
    assert await topics_with_prefix(bootstrap_servers, app_id) == {f"{app_id}-dlq"}
    assert not (state / app_id).exists()
    again = onceflow(env, "reset", WINDOWED)  # idempotent, and says so
    assert again.returncode == 0, again.stdout + again.stderr
    assert "internal topics: none to delete" in again.stdout
    assert "committed 0 partition offset(s) (the earliest offset), 3 already there" in again.stdout
    assert f"local state {state / app_id}: nothing to wipe" in again.stdout

    # (b) the restart reproduces the fresh run, record for record, partition by partition
    env["ONCEFLOW_OUTPUT_TOPIC"] = second_out
    worker = WorkerProcess(WINDOWED, env, tmp_path / "second.log").start()
    try:
        second = await collect(bootstrap_servers, second_out, total, timeout=90, workers=[worker])
    finally:
        assert worker.stop() == 0, worker.log_text()[-3000:]
    assert by_partition(second) == by_partition(first)


async def test_offsets_land_where_the_flags_say(
    bootstrap_servers: str, new_topic, tmp_path: Path
) -> None:
    source = await new_topic("rt-in", partitions=2)
    now = int(time.time() * 1000)
    ages_min = [240, 180, 120, 90, 30, 10]  # record ages, far from the boundaries used below
    await produce(
        bootstrap_servers,
        source,
        [(f"k{k}".encode(), b"v", now - age * 60_000) for age in ages_min for k in range(4)],
    )
    records = await read_to_end(bootstrap_servers, source)
    ends: dict[int, int] = defaultdict(int)
    for r in records:
        ends[r.partition] = max(ends[r.partition], r.offset + 1)

    def first_at(ms: int) -> dict[tuple[str, int], int]:
        out = dict.fromkeys(((source, p) for p in range(2)), 0)
        for p in range(2):
            mine = [r.offset for r in records if r.partition == p and r.timestamp >= ms]
            out[(source, p)] = min(mine) if mine else ends[p]
        return out

    app_id = unique_name("rt-app")
    env = worker_env(
        bootstrap_servers, app_id, tmp_path / "state",
        ONCEFLOW_APP_ID=app_id, ONCEFLOW_INPUT_TOPIC=source, ONCEFLOW_OUTPUT_TOPIC="unused",
    )  # fmt: skip
    at = now - 150 * 60_000
    iso = datetime.fromtimestamp(at / 1000, UTC).isoformat()
    cases = [
        (["--to-datetime", iso], first_at(at)),
        (["--by-duration", "PT1H"], first_at(now - 3_600_000)),
        (["--to-latest"], {(source, p): ends[p] for p in range(2)}),
        (["--to-datetime", "2999-01-01T00:00:00Z"], {(source, p): ends[p] for p in range(2)}),
        ([], {(source, p): 0 for p in range(2)}),
    ]
    for flags, want in cases:
        result = onceflow(env, "reset", WINDOWED, *flags)
        assert result.returncode == 0, (flags, result.stdout + result.stderr)
        assert await committed(bootstrap_servers, app_id) == want, flags
    # sanity: the cases differ, so each one moved the offsets
    assert len({tuple(sorted(w.items())) for _, w in cases[:3]}) == 3

    bad = onceflow(env, "reset", WINDOWED, "--local-state-only", "--to-latest")
    assert bad.returncode == 2 and "--local-state-only" in bad.stderr
    assert "--to-latest" in bad.stderr
    both = onceflow(env, "reset", WINDOWED, "--to-latest", "--to-earliest")
    assert both.returncode == 2 and "not allowed with argument" in both.stderr
    wrong = onceflow(env, "reset", WINDOWED, "--by-duration", "1h")
    assert wrong.returncode == 1 and "--by-duration '1h'" in wrong.stderr


async def test_describe_lists_what_the_worker_created_and_reset_removes_it(
    bootstrap_servers: str, new_topic, tmp_path: Path
) -> None:
    source = await new_topic("rd-in", partitions=2)
    sink = await new_topic("rd-out", partitions=2)
    app_id = unique_name("rd-app")
    port = load_kafka_local().free_ports(1)[0]
    env = worker_env(
        bootstrap_servers, app_id, tmp_path / "state",
        ONCEFLOW_TEST_INPUT=source, ONCEFLOW_TEST_OUTPUT=sink,
        ONCEFLOW_HTTP_HOST="127.0.0.1", ONCEFLOW_HTTP_PORT=port, ONCEFLOW_HTTP_TOKEN="t0k",
    )  # fmt: skip
    module = "tests.apps.page_counts"
    worker = WorkerProcess(module, env, tmp_path / "worker.log").start()
    try:
        await produce(bootstrap_servers, source, [(f"u{i}".encode(), b"/p") for i in range(20)])
        await collect(bootstrap_servers, sink, 20, timeout=90, workers=[worker])
        async with httpx.AsyncClient(timeout=10) as http:
            served = await http.get(
                f"http://127.0.0.1:{port}/topology", headers={"Authorization": "Bearer t0k"}
            )
        described = onceflow(env, "describe", module, "--json")  # the env sets the bootstrap
        assert described.returncode == 0, described.stderr
        text = onceflow(env, "describe", module)
    finally:
        assert worker.stop() == 0, worker.log_text()[-3000:]
    description = json.loads(described.stdout)
    assert served.status_code == 200
    assert served.json() == description["topology"]
    on_cluster = await topics_with_prefix(bootstrap_servers, f"{app_id}-")
    internal = {t["name"] for t in description["topology"]["internal_topics"]}
    assert (
        internal
        == on_cluster
        == {
            f"{app_id}-by-page-repartition",
            f"{app_id}-per-page-changelog",
            f"{app_id}-dlq",
        }
    )
    statuses = {t["name"]: t["status"] for t in description["cluster"]["topics"]}
    assert statuses == {name: "ok" for name in [source, *sorted(internal)]}
    assert f"ok       {app_id}-per-page-changelog [changelog] partitions=2" in text.stdout

    # a table an older version declared, and a topic of app "<app_id>-v2" (a longer group id)
    stale, foreign = f"{app_id}-old-changelog", f"{app_id}-v2-x-changelog"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        await create_topics(admin, [stale, foreign], partitions=1)
    finally:
        await admin.close()
    other = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, group_id=f"{app_id}-v2")
    await other.start()
    try:
        other.assign([TopicPartition(foreign, 0)])
        await other.commit({TopicPartition(foreign, 0): OffsetAndMetadata(0, "")})
    finally:
        await other.stop()
    cluster = json.loads(onceflow(env, "describe", module, "--json").stdout)["cluster"]
    assert (cluster["stale"], cluster["foreign"]) == ([stale], [foreign])

    hop = f"{app_id}-by-page-repartition"
    assert any(topic == hop for topic, _ in await committed(bootstrap_servers, app_id))
    done = onceflow(env, "reset", module, "--include-dlq")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"delete topic {stale} (changelog the topology no longer declares)" in done.stdout
    assert f"keep topic {foreign} (named under another app's consumer group" in done.stdout
    assert await topics_with_prefix(bootstrap_servers, f"{app_id}-") == {foreign}
    # the deleted repartition topic's committed offsets did not survive it
    assert await committed(bootstrap_servers, app_id) == {(source, p): 0 for p in range(2)}
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        await admin.delete_topics([foreign])
    finally:
        await admin.close()


async def test_reset_refuses_while_a_sql_sink_runs(
    bootstrap_servers: str, new_topic, tmp_path: Path
) -> None:
    """An app of SQL sinks alone has no task group: its workers are members of the sinks'
    groups (``<app_id>-sink-<name>``), and the reset refuses on those too."""
    dsn = f"sqlite+aiosqlite:///{tmp_path / 'payments.db'}"
    await create_schema(dsn)
    worker, _, app_id, _ = await start_payments(
        bootstrap_servers, new_topic, tmp_path, dsn, 200, ONCEFLOW_TEST_SINK_ONLY=1
    )
    try:
        await wait_first_row(dsn, worker)
        env = {**worker.env, "ONCEFLOW_APP_ID": app_id}
        refused = onceflow(env, "reset", "tests.apps.sql_payments", "--dry-run")
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert f"of group '{app_id}-sink-payments'" in refused.stderr, refused.stderr
    finally:
        assert worker.stop() == 0, worker.log_text()[-3000:]
