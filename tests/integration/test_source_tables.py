"""Tables fed by a topic on a real broker (tests/apps/enrich.py: orders joined with a customers
source table): the join sees the table's updates and tombstones, a store on another host is
restored from the topic up to the committed offset, a store that comes back restores only its
tail, no changelog topic is created, queries answer, and a table topic with another partition
count than the orders is refused (docs/architecture.md, *Tables fed by a topic*)."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import time
from pathlib import Path

import httpx
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError
from aiokafka.structs import TopicPartition
from kafka_helpers import REPO, end_offsets, load_kafka_local, partitions_of, unique_name
from workers import (
    AppUnderTest,
    WorkerProcess,
    app_under_test,
    collect,
    onceflow_command,
    produce,
)

from onceflow.partitioner import partition_for_key

CUSTOMERS = [f"c{i}" for i in range(12)]
COMPACT = {"cleanup.policy": "compact"}


async def wait_committed(bootstrap: str, group: str, topic: str, timeout: float = 60) -> None:
    """Until the group's committed offsets of ``topic`` reach its end: every record applied."""
    ends = await end_offsets(bootstrap, topic, "read_uncommitted")
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                offsets = await admin.list_consumer_group_offsets(group)
            except KafkaError:  # the group coordinator is still loading on a fresh broker
                offsets = {}
            got = {tp.partition: m.offset for tp, m in offsets.items() if tp.topic == topic}
            if all(got.get(p, 0) >= end for p, end in ends.items() if end > 0):
                return
            assert time.monotonic() < deadline, f"committed {got}, ends {ends}"
            await asyncio.sleep(0.2)
    finally:
        await admin.close()


async def join_round(
    aut: AppUnderTest, topic: str, round_: str, worker: WorkerProcess, seen: int
) -> dict[str, str]:
    """One order per customer; the customer value each order was joined with."""
    orders = [(c.encode(), f"{round_}-{c}".encode()) for c in CUSTOMERS]
    await produce(aut.env["ONCEFLOW_BOOTSTRAP_SERVERS"], topic, orders)
    outputs = await collect(
        aut.env["ONCEFLOW_BOOTSTRAP_SERVERS"],
        aut.sink,
        seen + len(orders),
        timeout=90,
        workers=[worker],
        settle=0.5,
    )
    assert len(outputs) == seen + len(orders), worker.log_text()[-3000:]
    joined = {}
    for r in outputs:
        order, _, customer = r.value.decode().partition("|")
        if order.startswith(f"{round_}-"):
            joined[r.key.decode()] = customer
    return joined


def restored(worker: WorkerProcess) -> dict[int, tuple[int, int]]:
    """Per partition of the customers store: (records restored, from offset), from the log."""
    pattern = r"restored customers partition (\d+): (\d+) records from offset (\d+)"
    return {int(p): (int(n), int(start)) for p, n, start in re.findall(pattern, worker.log_text())}


def stop(worker: WorkerProcess) -> None:
    assert worker.stop() == 0, worker.log_text()[-3000:]


async def test_a_join_over_restarts_and_hosts(
    bootstrap_servers: str, new_topic, tmp_path: Path
) -> None:
    orders = await new_topic("orders", partitions=2)
    table = await new_topic("customers", partitions=2, config=COMPACT)
    sink = await new_topic("enriched", partitions=2)
    aut = app_under_test(
        bootstrap_servers, "tests.apps.enrich", orders, sink, tmp_path, state_dirs=2,
        ONCEFLOW_TEST_TABLE=table,
    )  # fmt: skip
    first = [(c.encode(), f"{c}-v1".encode()) for c in CUSTOMERS]
    # Host A (state-0): the table's first values, then orders joined with them.
    await produce(bootstrap_servers, table, first)
    spawned: list[WorkerProcess] = []
    try:
        await _run_hosts(bootstrap_servers, aut, orders, table, spawned)
    finally:
        for worker in spawned:
            worker.kill()


async def _run_hosts(
    bootstrap_servers: str, aut: AppUnderTest, orders: str, table: str, spawned: list[WorkerProcess]
) -> None:
    group = aut.env["ONCEFLOW_TEST_APP_ID"]
    by_partition = {c: partition_for_key(c.encode(), 2) for c in CUSTOMERS}
    a = aut.spawn(0)
    spawned.append(a)
    await wait_committed(bootstrap_servers, group, table)
    joined = await join_round(aut, orders, "r1", a, 0)
    assert joined == {c: f"{c}-v1" for c in CUSTOMERS}
    stop(a)
    # Host B (state-1) has no store: restored from the topic up to the committed offsets.
    b = aut.spawn(1)
    spawned.append(b)
    deleted, updated = CUSTOMERS[0], CUSTOMERS[1:6]
    await produce(
        bootstrap_servers,
        table,
        [(deleted.encode(), None)] + [(c.encode(), f"{c}-v2".encode()) for c in updated],
    )
    await wait_committed(bootstrap_servers, group, table)
    joined = await join_round(aut, orders, "r2", b, len(CUSTOMERS))
    want = {c: f"{c}-v2" if c in updated else f"{c}-v1" for c in CUSTOMERS} | {deleted: "<absent>"}
    assert joined == want
    counts = {p: sum(1 for c in CUSTOMERS if by_partition[c] == p) for p in (0, 1)}
    assert restored(b) == {p: (n, 0) for p, n in counts.items() if n}, b.log_text()[-3000:]
    stop(b)
    # While no worker runs, more updates: beyond the committed offsets, so processed, not restored.
    later = CUSTOMERS[4:8]
    await produce(bootstrap_servers, table, [(c.encode(), f"{c}-v3".encode()) for c in later])
    want |= {c: f"{c}-v3" for c in later}
    # Back on host A: its stores restore only what B applied after them.
    port = load_kafka_local().free_ports(1)[0]
    a = aut.spawn(2, ONCEFLOW_HTTP_HOST="127.0.0.1", ONCEFLOW_HTTP_PORT=port)
    spawned.append(a)
    try:
        await wait_committed(bootstrap_servers, group, table)  # the v3 updates are applied
        joined = await join_round(aut, orders, "r3", a, 2 * len(CUSTOMERS))
        assert joined == want
        tail = {p: sum(1 for c in [deleted, *updated] if by_partition[c] == p) for p in (0, 1)}
        assert restored(a) == {p: (tail[p], counts[p]) for p in (0, 1) if tail[p]}
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            found = await http.get(f"/tables/customers/keys/{updated[0]}")
            assert found.status_code == 200 and found.json()["value"] == f"{updated[0]}-v2"
            assert (await http.get(f"/tables/customers/keys/{deleted}")).status_code == 404
            info = (await http.get("/tables")).json()["tables"]
            assert [(t["name"], t["kind"], t["changelog_topic"]) for t in info] == [
                ("customers", "source", table)
            ]
    finally:
        stop(a)
    # The topic is the changelog: nothing else was created for the table.
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        assert not [t for t in await admin.list_topics() if t.startswith(f"{group}-customers")]
    finally:
        await admin.close()


async def test_a_table_topic_with_another_partition_count_is_refused(
    bootstrap_servers: str, new_topic, tmp_path: Path
) -> None:
    orders = await new_topic("orders", partitions=2)
    table = await new_topic("customers", partitions=3, config=COMPACT)
    sink = await new_topic("enriched", partitions=2)
    assert len(await partitions_of(bootstrap_servers, table)) == 3
    aut = app_under_test(
        bootstrap_servers, "tests.apps.enrich", orders, sink, tmp_path, ONCEFLOW_TEST_TABLE=table
    )
    worker = aut.spawn(0)
    code = worker.wait(60)
    worker.kill()
    log = worker.log_text()
    assert code == 1, log[-3000:]
    assert "CopartitioningError" in log or "different partition counts" in log, log[-3000:]
    assert f"'{orders}': 2, '{table}': 3" in log, log[-3000:]


async def test_a_store_ahead_of_reset_offsets_is_rebuilt_up_to_them(
    bootstrap_servers: str, new_topic, tmp_path: Path
) -> None:
    orders = await new_topic("orders")
    table = await new_topic("customers", config=COMPACT)
    sink = await new_topic("enriched")
    aut = app_under_test(
        bootstrap_servers, "tests.apps.enrich", orders, sink, tmp_path, ONCEFLOW_TEST_TABLE=table
    )
    group = aut.env["ONCEFLOW_TEST_APP_ID"]
    await produce(bootstrap_servers, table, [(c.encode(), f"{c}-v1".encode()) for c in CUSTOMERS])
    worker = aut.spawn(0)
    try:
        await wait_committed(bootstrap_servers, group, table)
    finally:
        stop(worker)
    # The operator moves the group's offset of the table back: the store (checkpoint 11) holds
    # records the group has not committed any more.
    resetter = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers, group_id=group, enable_auto_commit=False
    )
    await resetter.start()
    try:
        resetter.assign([TopicPartition(table, 0)])
        await resetter.commit({TopicPartition(table, 0): 5})
    finally:
        await resetter.stop()
    worker = aut.spawn(1)
    try:
        await wait_committed(bootstrap_servers, group, table)
        joined = await join_round(aut, orders, "r1", worker, 0)
        assert joined == {c: f"{c}-v1" for c in CUSTOMERS}
        log = worker.log_text()
        assert "its checkpoint 11 is at or beyond the task's committed offset 5" in log, log[-3000:]
        assert restored(worker) == {0: (5, 0)}
    finally:
        stop(worker)


async def test_topics_create_makes_the_table_topic_compacted(
    bootstrap_servers: str, tmp_path: Path
) -> None:
    orders, table, sink = (unique_name(p) for p in ("orders", "customers", "enriched"))
    env = {
        **os.environ,
        "ONCEFLOW_BOOTSTRAP_SERVERS": bootstrap_servers,
        "ONCEFLOW_TEST_INPUT": orders,
        "ONCEFLOW_TEST_OUTPUT": sink,
        "ONCEFLOW_TEST_TABLE": table,
    }
    command = [*onceflow_command(), "topics", "create", "tests.apps.enrich"]
    done = await asyncio.to_thread(
        subprocess.run, command, env=env, cwd=REPO, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert f"{orders}: created" in done.stdout and f"{table}: created" in done.stdout
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        resource = ConfigResource(ConfigResourceType.TOPIC, table, configs={"cleanup.policy": None})
        [response] = await admin.describe_configs([resource])
        entries = {e[0]: e[1] for e in response.resources[0][4]}
        assert entries["cleanup.policy"] == "compact"
        await admin.delete_topics([orders, table])
    finally:
        await admin.close()
