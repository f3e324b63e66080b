"""The example processors (processors/enrich.py, processors/dedup.py) as real ``onceflow worker``
subprocesses on the broker: exact outputs, dead letters, nothing twice."""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from pathlib import Path

import orjson
from kafka_helpers import read_to_end, recent_window_start, unique_name
from workers import WorkerProcess, collect, produce, worker_env

from onceflow.examples.dedup import WINDOW_MS
from onceflow.examples.enrich import InvalidOrderError, enrich_order
from onceflow.partitioner import partition_for_key

T0 = recent_window_start(WINDOW_MS)


def order_inputs(n: int) -> list[tuple[bytes | None, bytes | None, int]]:
    rng = random.Random(11)
    records: list[tuple[bytes | None, bytes | None, int]] = []
    for i in range(n):
        key, ts = f"c-{i % 17}".encode(), T0 + i * 10
        order = {"id": f"o-{i}", "customer": key.decode(), "amount": rng.randrange(-50, 2000)}
        order["currency"] = rng.choice(["EUR", "usd", "GBP", "JPY"])
        if i % 97 == 5:
            del order["customer"]  # invalid: dead letter
        if i % 101 == 7:
            records.append((key, b"{truncated", ts))  # not JSON: dead letter
            continue
        records.append((key, orjson.dumps(order), ts))
    return records


def by_order_id(pair: tuple[bytes, dict]) -> str:
    return str(pair[1]["id"])


def enrich_model(records: list[tuple[bytes | None, bytes | None, int]]) -> tuple[list, int]:
    out, dead = [], 0
    for key, value, ts in records:
        try:
            result = enrich_order(orjson.loads(value or b""), ts)
        except (InvalidOrderError, orjson.JSONDecodeError):
            dead += 1
            continue
        if result is not None:
            out.append((key, result))
    return out, dead


async def test_enrich_filters_enriches_and_dead_letters(
    bootstrap_servers: str, new_topic, tmp_path: Path
) -> None:
    source = await new_topic("orders", partitions=3)
    sink = await new_topic("orders-enriched", partitions=3)
    app_id = unique_name("order-enricher")
    records = order_inputs(1500)
    expected, dead_count = enrich_model(records)
    assert 0 < len(expected) < len(records) - dead_count and dead_count > 0  # all three paths
    await produce(bootstrap_servers, source, records)
    env = worker_env(
        bootstrap_servers,
        app_id,
        tmp_path / "state",
        ONCEFLOW_APP_ID=app_id,
        ONCEFLOW_ENRICH_INPUT=source,
        ONCEFLOW_ENRICH_OUTPUT=sink,
    )
    worker = WorkerProcess("onceflow.examples.enrich", env, tmp_path / "worker.log").start()
    try:
        output = await collect(bootstrap_servers, sink, len(expected), timeout=90, workers=[worker])
        dead = await collect(bootstrap_servers, f"{app_id}-dlq", dead_count, timeout=30, settle=1)
    finally:
        assert worker.stop() == 0, worker.log_text()[-3000:]
    got = [(r.key, orjson.loads(r.value)) for r in output]
    assert sorted(got, key=by_order_id) == sorted(expected, key=by_order_id)
    assert {r.timestamp for r in output} <= {ts for _, _, ts in records}  # event time kept
    sources = {(r.partition, r.offset): r for r in await read_to_end(bootstrap_servers, source)}
    assert len(dead) == dead_count
    for record in dead:
        headers = {k: v.decode() for k, v in record.headers}
        original = sources[
            (int(headers["onceflow.source.partition"]), int(headers["onceflow.source.offset"]))
        ]
        assert (original.key, original.value) == (record.key, record.value)
        if record.value == b"{truncated":
            assert headers["onceflow.error.stage"] == "deserialize"
        else:
            assert headers["onceflow.error.type"] == "InvalidOrderError"
            assert "has no 'customer'" in headers["onceflow.error.message"]


def event_inputs(n: int) -> list[tuple[bytes | None, bytes | None, int]]:
    rng = random.Random(5)
    records: list[tuple[bytes | None, bytes | None, int]] = []
    t = T0
    for i in range(n):
        t += rng.randrange(0, 20_000)
        stamp = t - rng.choice([0, 0, 0, rng.randrange(0, 25 * 60_000)])  # some out of order
        event_id = f"e{rng.randrange(60)}"
        if i % 211 == 3:  # no id: dead letter (at T0, not to move its task's stream time)
            records.append((None, f"{event_id}@{T0}#{i}".encode(), T0))
        else:
            records.append((event_id.encode(), f"{event_id}@{stamp}#{i}".encode(), stamp))
    return records


def dedup_model(records: list, partitions: int) -> tuple[list[bytes], int]:
    """Brute force, per partition in offset order: a copy less than a window away from a recorded
    sighting is dropped; an event behind its window's end + grace (one window) is late."""
    sightings: dict[bytes, list[int]] = defaultdict(list)
    stream_time: dict[int, int] = defaultdict(lambda: -1)
    out = []
    for key, value, t in records:
        if key is None:
            continue
        p = partition_for_key(key, partitions)
        stream_time[p] = max(stream_time[p], t)
        if stream_time[p] >= t - t % WINDOW_MS + 2 * WINDOW_MS:
            continue
        if not any(abs(t - s) < WINDOW_MS for s in sightings[key]):
            out.append(value)
        sightings[key].append(t)
    return out, sum(1 for key, _, _ in records if key is None)


async def test_dedup_forwards_each_id_once_per_window(
    bootstrap_servers: str, new_topic, tmp_path: Path
) -> None:
    source = await new_topic("events", partitions=3)
    sink = await new_topic("events-unique", partitions=3)
    app_id = unique_name("event-dedup")
    records = event_inputs(3000)
    expected, dead_count = dedup_model(records, partitions=3)
    assert len(expected) < len(records) - dead_count
    await produce(bootstrap_servers, source, records)
    env = worker_env(
        bootstrap_servers,
        app_id,
        tmp_path / "state",
        ONCEFLOW_APP_ID=app_id,
        ONCEFLOW_DEDUP_INPUT=source,
        ONCEFLOW_DEDUP_OUTPUT=sink,
        ONCEFLOW_COMMIT_EVERY=200,
    )
    worker = WorkerProcess("onceflow.examples.dedup", env, tmp_path / "worker.log").start()
    try:
        output = await collect(bootstrap_servers, sink, len(expected), timeout=90, workers=[worker])
        dead = await collect(bootstrap_servers, f"{app_id}-dlq", dead_count, timeout=30, settle=1)
    finally:
        assert worker.stop() == 0, worker.log_text()[-3000:]
    assert Counter(r.value for r in output) == Counter(expected)
    assert all(r.key == r.value.split(b"@")[0] for r in output)
    assert sorted(r.value for r in dead) == sorted(v for k, v, _ in records if k is None)
