"""Poison input goes to ``<app_id>-dlq`` inside the task's transaction; the rest flows on."""

from __future__ import annotations

from pathlib import Path

from kafka_helpers import read_to_end, unique_name
from workers import WorkerProcess, collect, produce, worker_env


async def test_poison_records_go_to_the_dead_letter_topic(
    bootstrap_servers: str, new_topic, tmp_path: Path
) -> None:
    source = await new_topic("dlq-in", partitions=3)
    sink = await new_topic("dlq-out", partitions=3)
    app_id = unique_name("dlq")
    records = []
    for i in range(3000):
        if i % 500 == 7:
            records.append((b"bad-utf8", b"\xff\xfe" + str(i).encode()))  # fails to deserialize
        elif i % 500 == 9:
            records.append((b"poison", str(i).encode()))  # the handler raises for this key
        else:
            records.append((f"k{i % 31}".encode(), str(i).encode()))
    await produce(bootstrap_servers, source, records)
    env = worker_env(
        bootstrap_servers,
        app_id,
        tmp_path / "state",
        ONCEFLOW_TEST_INPUT=source,
        ONCEFLOW_TEST_OUTPUT=sink,
        ONCEFLOW_TEST_POISON_KEYS="poison",
        ONCEFLOW_MAX_RETRIES=2,
        ONCEFLOW_RETRY_BACKOFF_MS=10,
    )
    worker = WorkerProcess("tests.apps.echo", env, tmp_path / "worker.log").start()
    good = [r for r in records if r[0] not in (b"bad-utf8", b"poison")]
    try:
        output = await collect(bootstrap_servers, sink, len(good), timeout=90, workers=[worker])
        dead = await collect(bootstrap_servers, f"{app_id}-dlq", 12, timeout=30, settle=0.5)
    finally:
        assert worker.stop() == 0, worker.log_text()[-3000:]
    assert sorted(r.value for r in output) == sorted(v for _, v in good)
    assert len(dead) == 12
    sources = {(r.partition, r.offset): r for r in await read_to_end(bootstrap_servers, source)}
    for record in dead:
        headers = {k: v.decode() for k, v in record.headers}
        assert headers["onceflow.source.topic"] == source
        partition = int(headers["onceflow.source.partition"])
        offset = int(headers["onceflow.source.offset"])
        original = sources[(partition, offset)]
        assert (original.key, original.value) == (record.key, record.value)
        if record.key == b"poison":
            assert headers["onceflow.error.stage"] == "handler"
            assert headers["onceflow.error.type"] == "ValueError"
            assert "poison key" in headers["onceflow.error.message"]
        else:
            assert headers["onceflow.error.stage"] == "deserialize"
            assert headers["onceflow.error.type"] == "SerdeError"


async def test_error_policy_fail_stops_with_a_clear_error(
    bootstrap_servers: str, new_topic, tmp_path: Path
) -> None:
    source = await new_topic("fail-in", partitions=1)
    sink = await new_topic("fail-out", partitions=1)
    await produce(bootstrap_servers, source, [(b"a", b"1"), (b"poison", b"2"), (b"b", b"3")])
    env = worker_env(
        bootstrap_servers,
        unique_name("fail"),
        tmp_path / "state",
        ONCEFLOW_TEST_INPUT=source,
        ONCEFLOW_TEST_OUTPUT=sink,
        ONCEFLOW_TEST_POISON_KEYS="poison",
        ONCEFLOW_ERROR_POLICY="fail",
        ONCEFLOW_MAX_RETRIES=0,
    )
    worker = WorkerProcess("tests.apps.echo", env, tmp_path / "worker.log").start()
    code = worker.wait(60)
    log = worker.log_text()
    assert code == 1, log[-3000:]
    assert f"{source}[0]@1" in log and "Error policy is 'fail'" in log
    # Nothing of the failed transaction is visible: the record before the poison one was in it.
    assert await read_to_end(bootstrap_servers, sink) == []
