"""Workers on a SASL_PLAINTEXT (PLAIN) listener: every client authenticates, a bad password fails
at start with one clear line, and the password shows up in no log line and no HTTP answer.

A broker of its own (``kafka_local.py --sasl-plain``): its PLAINTEXT listener is what the test
itself uses to create, produce and read topics; only the workers go through SASL.
"""

from __future__ import annotations

import asyncio
import json
import struct
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import NamedTuple

import httpx
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from kafka_helpers import create_topics, load_kafka_local, read_to_end, unique_name
from workers import (
    WorkerProcess,
    assert_no_hanging_transactions,
    by_partition,
    collect,
    produce,
    worker_env,
)

USER = "onceflow-app"
PASSWORD = "pw-5f1c9e-never-logged"
WRONG_PASSWORD = "pw-0a77d3-also-never-logged"


class SaslCluster(NamedTuple):
    plain: str  # bootstrap of the PLAINTEXT listener, for the test's own clients
    sasl: str  # bootstrap of the SASL_PLAINTEXT listener, for the workers
    data_dir: Path


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SaslCluster]:
    kafka_local = load_kafka_local()
    data_dir = tmp_path_factory.mktemp("kafka-sasl")
    port, sasl_port, controller_port = kafka_local.free_ports(3)
    plain = kafka_local.start_cluster(
        data_dir, 1, port, controller_port, sasl_users={USER: PASSWORD}
    )
    try:
        sasl = kafka_local.sasl_bootstrap(data_dir)
        assert sasl == f"127.0.0.1:{sasl_port}"
        yield SaslCluster(plain, sasl, data_dir)
    finally:
        kafka_local.stop_cluster(data_dir)


@pytest.fixture
async def topics(cluster: SaslCluster) -> AsyncIterator[list[str]]:
    """A fresh input and output topic (3 partitions each), deleted after the test."""
    names = [unique_name("sec-in"), unique_name("sec-out")]
    admin = AIOKafkaAdminClient(bootstrap_servers=cluster.plain)
    await admin.start()
    try:
        await create_topics(admin, names, partitions=3)
        yield names
        await admin.delete_topics(names)
    finally:
        await admin.close()


def sasl_worker(
    module: str,
    cluster: SaslCluster,
    topics: list[str],
    tmp_path: Path,
    name: str,
    app_id: str = "sec-app",
    password: str = PASSWORD,
) -> WorkerProcess:
    """A worker on the SASL listener, logging at DEBUG, its HTTP API on a free port."""
    env = worker_env(
        cluster.sasl,
        app_id,
        tmp_path / f"state-{name}",
        ONCEFLOW_TEST_INPUT=topics[0],
        ONCEFLOW_TEST_OUTPUT=topics[1],
        ONCEFLOW_SECURITY_PROTOCOL="SASL_PLAINTEXT",
        ONCEFLOW_SASL_MECHANISM="PLAIN",
        ONCEFLOW_SASL_USERNAME=USER,
        ONCEFLOW_SASL_PASSWORD=password,
        ONCEFLOW_LOG_LEVEL="DEBUG",
        ONCEFLOW_HTTP_HOST="127.0.0.1",
        ONCEFLOW_HTTP_PORT=load_kafka_local().free_ports(1)[0],
    )
    return WorkerProcess(module, env, tmp_path / f"{name}.log")


def assert_no_secret(text: str, where: str) -> None:
    for secret in (PASSWORD, WRONG_PASSWORD):
        assert secret not in text, f"a SASL password appears in {where}"


async def get(worker: WorkerProcess, path: str, timeout: float = 60) -> httpx.Response:
    """GET ``path`` from the worker's HTTP API once it answers 200 (polling until ``timeout``)."""
    url = f"http://127.0.0.1:{worker.env['ONCEFLOW_HTTP_PORT']}{path}"
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=5) as http:
        while True:
            assert worker.alive, f"worker died:\n{worker.log_text()[-3000:]}"
            try:
                response = await http.get(url)
                if response.status_code == 200 or time.monotonic() > deadline:
                    return response
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
            await asyncio.sleep(0.1)


def test_sasl_listener_is_recorded_for_restarts(cluster: SaslCluster) -> None:
    """``start`` again without users keeps the recorded SASL listener (nodes already running)."""
    kafka_local = load_kafka_local()
    spec = json.loads((cluster.data_dir / "cluster.json").read_text())
    assert spec["sasl_users"] == {USER: PASSWORD}
    again = kafka_local.start_cluster(cluster.data_dir, 1, spec["port"], spec["controller_port"])
    assert again == cluster.plain
    assert kafka_local.sasl_bootstrap(cluster.data_dir) == cluster.sasl
    with pytest.raises(kafka_local.KafkaLocalError, match="holds another cluster"):
        kafka_local.start_cluster(
            cluster.data_dir, 1, spec["port"], spec["controller_port"], sasl_users={"x": "y"}
        )


async def test_echo_over_sasl_is_exactly_once(
    cluster: SaslCluster, topics: list[str], tmp_path: Path
) -> None:
    source, sink = topics
    n = 3_000
    await produce(
        cluster.plain, source, ((f"k{i % 97}".encode(), str(i).encode()) for i in range(n))
    )
    worker = sasl_worker(
        "tests.apps.echo", cluster, topics, tmp_path, "echo", unique_name("sec-echo")
    ).start()
    try:
        output = await collect(cluster.plain, sink, n, timeout=90, workers=[worker])
        tables = await get(worker, "/tables")
        assert tables.status_code == 200
        assert_no_secret(tables.text, "GET /tables")
    finally:
        assert worker.stop() == 0, worker.log_text()[-3000:]
    assert by_partition(output) == by_partition(await read_to_end(cluster.plain, source))
    await assert_no_hanging_transactions(cluster.plain, sink)
    assert_no_secret(worker.log_text(), "the worker log")


def int64(value: int) -> bytes:
    return struct.pack(">q", value)


async def test_tables_restore_over_sasl(
    cluster: SaslCluster, topics: list[str], tmp_path: Path
) -> None:
    """Aggregates in tables: a second worker with an empty state dir restores the changelogs over
    SASL and carries the sums on exactly."""
    source, sink = topics
    app_id = unique_name("sec-agg")
    keys = [f"k{i}" for i in range(12)]
    await produce(cluster.plain, source, ((k.encode(), int64(1)) for k in keys * 5))
    first = sasl_worker("tests.apps.aggregates", cluster, topics, tmp_path, "a1", app_id=app_id)
    first.start()
    try:
        await collect(cluster.plain, sink, len(keys) * 5, timeout=90, workers=[first], settle=0.5)
        tables = await get(first, "/tables")
        assert tables.status_code == 200 and "sum" in tables.text
        assert_no_secret(tables.text, "GET /tables")
    finally:
        assert first.stop() == 0, first.log_text()[-3000:]

    # A fresh state dir: everything the second worker knows comes from the changelogs.
    second = sasl_worker("tests.apps.aggregates", cluster, topics, tmp_path, "a2", app_id=app_id)
    second.start()
    try:
        await produce(cluster.plain, source, ((k.encode(), int64(10)) for k in keys))
        output = await collect(cluster.plain, sink, len(keys) * 6, timeout=90, workers=[second])
        answer = await get(second, "/tables/sum/keys/k3")
        assert answer.json()["value"] == 15, answer.text
        assert_no_secret((await get(second, "/tables")).text, "GET /tables")
    finally:
        assert second.stop() == 0, second.log_text()[-3000:]
    last = {r.key: r.value for r in output}
    assert last == {k.encode(): b"15,6,1,10" for k in keys}
    assert len(output) == len(keys) * 6  # nothing processed twice
    assert_no_secret(first.log_text() + second.log_text(), "the worker logs")


async def test_wrong_password_fails_fast_with_one_clear_line(
    cluster: SaslCluster, topics: list[str], tmp_path: Path
) -> None:
    worker = sasl_worker(
        "tests.apps.echo", cluster, topics, tmp_path, "bad", password=WRONG_PASSWORD
    ).start()
    started = time.monotonic()
    code = await asyncio.to_thread(worker.wait, 30)
    log = worker.log_text()
    if code is None:
        worker.kill()
    assert code not in (None, 0), (
        f"exit code {code} after {time.monotonic() - started:.0f} s:\n{log}"
    )
    assert "Traceback" not in log, log
    errors = [line for line in log.splitlines() if line.startswith("onceflow: ")]
    assert len(errors) == 1, log
    assert "authentication failed" in errors[0].lower(), errors[0]
    assert USER in errors[0] and "ONCEFLOW_SASL_PASSWORD" in errors[0], errors[0]
    assert len(log.splitlines()) <= 10, log  # no retry storm
    assert_no_secret(log, "the worker log")
