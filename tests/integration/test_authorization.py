"""A principal the broker's ACLs refuse is a clear, fatal error — not "fenced", not retried for
ever (issue 13, item 8). A broker of its own, with KRaft's StandardAuthorizer: the app's SASL
user may read and write its topics and group but was not granted its transactional ids."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from kafka_helpers import create_topics, load_kafka_local, unique_name
from workers import WorkerProcess, worker_env

USER, PASSWORD = "app", "app-secret"


@pytest.fixture(scope="module")
async def acl_cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[str, str]]:
    """(PLAINTEXT bootstrap for the harness, a super user; SASL bootstrap for the app)."""
    kafka_local = load_kafka_local()
    data_dir = tmp_path_factory.mktemp("kafka-acl")
    port, controller_port = kafka_local.free_ports(3)[::2]
    plain = kafka_local.start_cluster(
        data_dir, 1, port, controller_port, sasl_users={USER: PASSWORD}, acls=True
    )
    try:
        for resource in (["--topic", "*"], ["--group", "*"]):
            kafka_local.add_acls(data_dir, USER, "--operation", "All", *resource)
        yield plain, kafka_local.sasl_bootstrap(data_dir)
    finally:
        kafka_local.stop_cluster(data_dir)


async def test_a_transactional_id_the_acls_refuse_stops_the_worker_naming_the_grant(
    acl_cluster: tuple[str, str], tmp_path: Path
) -> None:
    plain, sasl = acl_cluster
    source, sink = unique_name("acl-in"), unique_name("acl-out")
    admin = AIOKafkaAdminClient(bootstrap_servers=plain)
    await admin.start()
    try:
        await create_topics(admin, [source, sink], 2)
    finally:
        await admin.close()
    env = worker_env(
        sasl,
        unique_name("acl"),
        tmp_path / "state",
        ONCEFLOW_TEST_INPUT=source,
        ONCEFLOW_TEST_OUTPUT=sink,
        ONCEFLOW_SECURITY_PROTOCOL="SASL_PLAINTEXT",
        ONCEFLOW_SASL_MECHANISM="PLAIN",
        ONCEFLOW_SASL_USERNAME=USER,
        ONCEFLOW_SASL_PASSWORD=PASSWORD,
    )
    worker = WorkerProcess("tests.apps.echo", env, tmp_path / "worker.log").start()
    code = worker.wait(90)
    log = worker.log_text()
    if code is None:
        worker.kill()
    assert code == 1, f"the worker did not stop (exit {code}):\n{log[-3000:]}"
    assert "not authorized (TransactionalIdAuthorizationFailed)" in log, log[-3000:]
    assert "TransactionalId prefix" in log
    assert " fenced" not in log
