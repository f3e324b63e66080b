"""An output that cannot be produced sends its input record to the dead-letter topic; the
partition keeps moving (before, the flush failed, the task was rebuilt, hit the same record and
the partition stopped for good)."""

from __future__ import annotations

from pathlib import Path

import orjson
from kafka_helpers import read_to_end, unique_name
from workers import WorkerProcess, collect, produce, worker_env

BIG = 2 * 2**20  # a 2 MB order: its enriched output is over the producer's 1 MiB request limit


def _order(i: int, note: str = "") -> bytes:
    order = {"id": f"o{i}", "customer": f"c{i % 7}", "amount": 10 + i, "currency": "EUR"}
    if note:
        order["note"] = note
    return orjson.dumps(order)


async def test_a_2mb_order_goes_to_the_dead_letter_topic_and_the_partition_moves_on(
    bootstrap_servers: str, new_topic, tmp_path: Path
) -> None:
    # One partition, so every order after the big one waits behind it.
    source = await new_topic("big-orders", partitions=1, config={"max.message.bytes": "4194304"})
    sink = await new_topic("big-orders-enriched", partitions=1)
    app_id = unique_name("order-enricher")
    big = _order(100, note="x" * BIG)
    records = [
        *[(f"o{i}".encode(), _order(i)) for i in range(100)],
        (b"o100", big),
        *[(f"o{i}".encode(), _order(i)) for i in range(101, 201)],
    ]
    await produce(bootstrap_servers, source, records, max_request_size=4 * 2**20)
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
        output = await collect(bootstrap_servers, sink, 200, timeout=90, workers=[worker])
        dead = await collect(bootstrap_servers, f"{app_id}-dlq", 1, timeout=30, settle=1)
    finally:
        assert worker.stop() == 0, worker.log_text()[-3000:]
    assert sorted(r.key for r in output) == sorted(k for k, v in records if v is not big)
    (letter,) = dead
    headers = {k: v.decode() for k, v in letter.headers}
    assert headers["onceflow.error.stage"] == "output"
    assert headers["onceflow.error.type"] == "RecordTooLargeError"
    assert "ONCEFLOW_MAX_REQUEST_SIZE" in headers["onceflow.error.message"]
    assert headers["onceflow.source.offset"] == "100"
    # The dead letter itself would not fit a produce request: it is cut, and says so.
    assert headers["onceflow.truncated"] == f"key=4,value={len(big)}"
    assert letter.key == b"o100"
    assert letter.value is not None and 1_000_000 < len(letter.value) < 2**20
    assert big.startswith(letter.value)


async def test_a_send_to_a_missing_partition_goes_to_the_dead_letter_topic(
    bootstrap_servers: str, new_topic, tmp_path: Path
) -> None:
    source = await new_topic("stray-in", partitions=2)
    sink = await new_topic("stray-out", partitions=2)
    app_id = unique_name("stray")
    records = [(f"k{i % 13}".encode(), str(i).encode()) for i in range(400)]
    records[150] = (b"stray", b"150")  # the handler sends it to partition 99 of a 2-partition topic
    await produce(bootstrap_servers, source, records)
    env = worker_env(
        bootstrap_servers,
        app_id,
        tmp_path / "state",
        ONCEFLOW_TEST_INPUT=source,
        ONCEFLOW_TEST_OUTPUT=sink,
        ONCEFLOW_TEST_MISDIRECT_KEYS="stray",
    )
    worker = WorkerProcess("tests.apps.echo", env, tmp_path / "worker.log").start()
    try:
        output = await collect(bootstrap_servers, sink, 399, timeout=90, workers=[worker])
        dead = await collect(bootstrap_servers, f"{app_id}-dlq", 1, timeout=30, settle=1)
    finally:
        assert worker.stop() == 0, worker.log_text()[-3000:]
    assert sorted(r.value for r in output) == sorted(v for k, v in records if k != b"stray")
    (letter,) = dead
    headers = {k: v.decode() for k, v in letter.headers}
    assert (letter.key, letter.value) == (b"stray", b"150")
    assert headers["onceflow.error.stage"] == "output"
    assert headers["onceflow.error.type"] == "UnknownPartitionError"
    assert "partition 99" in headers["onceflow.error.message"]
    sources = await read_to_end(bootstrap_servers, source)
    assert any(
        r.key == b"stray" and r.offset == int(headers["onceflow.source.offset"]) for r in sources
    )
