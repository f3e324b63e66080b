"""Workers on secured listeners: SASL_PLAINTEXT (PLAIN), SSL and SASL_SSL. Every client
authenticates and verifies the broker; a bad password or an untrusted broker certificate fails
at start with one clear line; the password shows up in no log line and no HTTP answer.

A broker of its own (``kafka_local.py --sasl-plain ... --tls``): its PLAINTEXT listener is what
the test itself uses to create, produce and read topics; only the workers go through the secured
listeners, verifying the broker against the CA that ``kafka_local.py`` made.
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


class SecureCluster(NamedTuple):
    plain: str  # bootstrap of the PLAINTEXT listener, for the test's own clients
    listeners: dict[str, str]  # bootstrap by security protocol, for the workers
    cafile: Path  # the CA that signed the broker certificate
    data_dir: Path


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureCluster]:
    kafka_local = load_kafka_local()
    data_dir = tmp_path_factory.mktemp("kafka-secure")
    port, sasl_port, ssl_port, sasl_ssl_port, controller_port = kafka_local.free_ports(5)
    plain = kafka_local.start_cluster(
        data_dir, 1, port, controller_port, sasl_users={USER: PASSWORD}, tls=True
    )
    try:
        listeners = {
            "SASL_PLAINTEXT": kafka_local.sasl_bootstrap(data_dir),
            "SSL": kafka_local.tls_bootstrap(data_dir),
            "SASL_SSL": kafka_local.tls_bootstrap(data_dir, sasl=True),
        }
        assert listeners == {
            "SASL_PLAINTEXT": f"127.0.0.1:{sasl_port}",
            "SSL": f"127.0.0.1:{ssl_port}",
            "SASL_SSL": f"127.0.0.1:{sasl_ssl_port}",
        }
        yield SecureCluster(plain, listeners, kafka_local.tls_cafile(data_dir), data_dir)
    finally:
        kafka_local.stop_cluster(data_dir)


@pytest.fixture
async def topics(cluster: SecureCluster) -> AsyncIterator[list[str]]:
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


def secure_worker(
    module: str,
    cluster: SecureCluster,
    topics: list[str],
    tmp_path: Path,
    name: str,
    app_id: str = "sec-app",
    password: str = PASSWORD,
    protocol: str = "SASL_PLAINTEXT",
    **extra: str | int,
) -> WorkerProcess:
    """A worker on the ``protocol`` listener (trusting the cluster's CA), logging at DEBUG, its
    HTTP API on a free port; ``extra`` overrides any variable."""
    security: dict[str, str | int] = {"ONCEFLOW_SECURITY_PROTOCOL": protocol}
    if protocol.startswith("SASL"):
        security.update(
            ONCEFLOW_SASL_MECHANISM="PLAIN",
            ONCEFLOW_SASL_USERNAME=USER,
            ONCEFLOW_SASL_PASSWORD=password,
        )
    if protocol.endswith("SSL"):
        security["ONCEFLOW_SSL_CAFILE"] = str(cluster.cafile)
    env = worker_env(
        cluster.listeners[protocol],
        app_id,
        tmp_path / f"state-{name}",
        ONCEFLOW_TEST_INPUT=topics[0],
        ONCEFLOW_TEST_OUTPUT=topics[1],
        ONCEFLOW_LOG_LEVEL="DEBUG",
        ONCEFLOW_HTTP_HOST="127.0.0.1",
        ONCEFLOW_HTTP_PORT=load_kafka_local().free_ports(1)[0],
        **{**security, **extra},
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


def test_secured_listeners_are_recorded_for_restarts(cluster: SecureCluster) -> None:
    """``start`` again without users or ``tls`` keeps the recorded listeners (nodes running)."""
    kafka_local = load_kafka_local()
    spec = json.loads((cluster.data_dir / "cluster.json").read_text())
    assert spec["sasl_users"] == {USER: PASSWORD} and spec["tls"] is True
    again = kafka_local.start_cluster(cluster.data_dir, 1, spec["port"], spec["controller_port"])
    assert again == cluster.plain
    assert kafka_local.sasl_bootstrap(cluster.data_dir) == cluster.listeners["SASL_PLAINTEXT"]
    assert kafka_local.tls_bootstrap(cluster.data_dir) == cluster.listeners["SSL"]
    assert kafka_local.tls_cafile(cluster.data_dir) == cluster.cafile
    for other in ({"sasl_users": {"x": "y"}}, {"tls": False}):
        with pytest.raises(kafka_local.KafkaLocalError, match="holds another cluster"):
            kafka_local.start_cluster(
                cluster.data_dir, 1, spec["port"], spec["controller_port"], **other
            )


@pytest.mark.parametrize("protocol", ["SASL_PLAINTEXT", "SSL", "SASL_SSL"])
async def test_echo_is_exactly_once(
    cluster: SecureCluster, topics: list[str], tmp_path: Path, protocol: str
) -> None:
    source, sink = topics
    n = 3_000
    await produce(
        cluster.plain, source, ((f"k{i % 97}".encode(), str(i).encode()) for i in range(n))
    )
    worker = secure_worker(
        "tests.apps.echo",
        cluster,
        topics,
        tmp_path,
        "echo",
        unique_name("sec-echo"),
        protocol=protocol,
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


@pytest.mark.parametrize("protocol", ["SASL_PLAINTEXT", "SASL_SSL"])
async def test_tables_restore(
    cluster: SecureCluster, topics: list[str], tmp_path: Path, protocol: str
) -> None:
    """Aggregates in tables: a second worker with an empty state dir restores the changelogs over
    the secured listener and carries the sums on exactly."""
    source, sink = topics
    app_id = unique_name("sec-agg")
    keys = [f"k{i}" for i in range(12)]
    await produce(cluster.plain, source, ((k.encode(), int64(1)) for k in keys * 5))
    module = "tests.apps.aggregates"
    first = secure_worker(module, cluster, topics, tmp_path, "a1", app_id, protocol=protocol)
    first.start()
    try:
        await collect(cluster.plain, sink, len(keys) * 5, timeout=90, workers=[first], settle=0.5)
        tables = await get(first, "/tables")
        assert tables.status_code == 200 and "sum" in tables.text
        assert_no_secret(tables.text, "GET /tables")
    finally:
        assert first.stop() == 0, first.log_text()[-3000:]

    # A fresh state dir: everything the second worker knows comes from the changelogs.
    second = secure_worker(module, cluster, topics, tmp_path, "a2", app_id, protocol=protocol)
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


async def failed_start(worker: WorkerProcess, exit_code: int = 1) -> str:
    """Wait for ``worker`` to exit with ``exit_code`` quickly and quietly; return its one
    ``onceflow:`` error line."""
    worker.start()
    started = time.monotonic()
    code = await asyncio.to_thread(worker.wait, 30)
    log = worker.log_text()
    if code is None:
        worker.kill()
    assert code == exit_code, f"exit code {code} after {time.monotonic() - started:.0f} s:\n{log}"
    assert "Traceback" not in log, log
    errors = [line for line in log.splitlines() if line.startswith("onceflow: ")]
    assert len(errors) == 1, log
    assert len(log.splitlines()) <= 10, log  # no retry storm
    assert_no_secret(log, "the worker log")
    return errors[0]


async def test_wrong_password_fails_fast_with_one_clear_line(
    cluster: SecureCluster, topics: list[str], tmp_path: Path
) -> None:
    worker = secure_worker(
        "tests.apps.echo", cluster, topics, tmp_path, "bad", password=WRONG_PASSWORD
    )
    error = await failed_start(worker)
    assert "authentication failed" in error.lower(), error
    assert USER in error and "ONCEFLOW_SASL_PASSWORD" in error, error


@pytest.mark.parametrize("trust", ["system CAs", "another CA"])
async def test_untrusted_broker_fails_fast_with_one_clear_line(
    cluster: SecureCluster, topics: list[str], tmp_path: Path, trust: str
) -> None:
    """A worker that does not trust the CA of the brokers' certificates: one line naming the
    bootstrap servers, the verification failure and ONCEFLOW_SSL_CAFILE; exit code 1."""
    worker = secure_worker(
        "tests.apps.echo", cluster, topics, tmp_path, "untrusted", protocol="SSL"
    )
    if trust == "another CA":
        worker.env["ONCEFLOW_SSL_CAFILE"] = str(load_kafka_local().new_ca(tmp_path / "other"))
    else:
        del worker.env["ONCEFLOW_SSL_CAFILE"]
    error = await failed_start(worker)
    assert "TLS certificate verify failed" in error, error
    assert f"ONCEFLOW_BOOTSTRAP_SERVERS={cluster.listeners['SSL']}" in error, error
    assert "ONCEFLOW_SSL_CAFILE" in error, error


@pytest.mark.parametrize("problem", ["missing", "not a certificate"])
async def test_bad_cafile_fails_at_settings(
    cluster: SecureCluster, tmp_path: Path, problem: str
) -> None:
    """A CA file that cannot be read, or holds no certificate, fails before any connection:
    exit code 2 and a message naming ONCEFLOW_SSL_CAFILE."""
    cafile = tmp_path / "ca.pem"
    if problem == "not a certificate":
        cafile.write_text("-----BEGIN PRIVATE KEY-----\nnot a certificate\n")
    worker = secure_worker(
        "tests.apps.echo",
        cluster,
        ["unused-in", "unused-out"],  # never reached: the settings fail first
        tmp_path,
        "cafile",
        protocol="SSL",
        ONCEFLOW_SSL_CAFILE=str(cafile),
    )
    worker.start()
    assert await asyncio.to_thread(worker.wait, 30) == 2, worker.log_text()
    log = worker.log_text()
    assert log.startswith("onceflow: ") and "Traceback" not in log, log
    assert "ONCEFLOW_SSL_CAFILE" in log and str(cafile) in log, log
    assert ("No such file" if problem == "missing" else "no CA certificate") in log, log
