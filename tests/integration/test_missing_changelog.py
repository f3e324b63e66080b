"""A changelog deleted while the app was stopped is refused at start-up, not recreated empty
(issue 13, item 11): a host without local state would restore an empty table without a word.
A table the app never had state for is new, and its changelog is created."""

from __future__ import annotations

from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient
from kafka_helpers import partitions_of
from workers import AppUnderTest, app_under_test, collect, produce


async def _seen_app(
    bootstrap: str, new_topic, tmp_path: Path, state_dirs: int | None = None
) -> AppUnderTest:
    source = await new_topic("seen-in", partitions=2)
    sink = await new_topic("seen-out", partitions=2)
    return app_under_test(
        bootstrap, "tests.apps.seen", source, sink, tmp_path, state_dirs=state_dirs
    )


async def _run_once(bootstrap: str, app: AppUnderTest, i: int) -> None:
    """One worker absorbs 60 records and commits them; then it stops."""
    worker = app.spawn(i)
    try:
        records = [(f"k{n % 5}".encode(), str(n).encode()) for n in range(60)]
        await produce(bootstrap, app.source, records)
        await collect(bootstrap, app.sink, 60, timeout=60, workers=[worker])
    finally:
        assert worker.stop() == 0, worker.log_text()[-3000:]


async def test_a_changelog_deleted_while_stopped_is_refused(
    bootstrap_servers: str, new_topic, tmp_path: Path
) -> None:
    # state_dirs=2: the second start is on a host without local state
    app = await _seen_app(bootstrap_servers, new_topic, tmp_path, state_dirs=2)
    changelog = f"{app.env['ONCEFLOW_TEST_APP_ID']}-seen-changelog"
    await _run_once(bootstrap_servers, app, 0)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        await admin.delete_topics([changelog])
    finally:
        await admin.close()
    worker = app.spawn(1)
    code = worker.wait(90)
    log = worker.log_text()
    assert code == 1, log[-3000:]
    assert f"changelog topic '{changelog}' of table 'seen' does not exist" in log
    assert "Traceback" not in log
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        assert changelog not in await admin.list_topics()  # not recreated
    finally:
        await admin.close()


async def test_a_new_table_gets_its_changelog(
    bootstrap_servers: str, new_topic, tmp_path: Path
) -> None:
    app = await _seen_app(bootstrap_servers, new_topic, tmp_path)
    await _run_once(bootstrap_servers, app, 0)
    app.env["ONCEFLOW_TEST_EXTRA_TABLE"] = "extra"  # the next version of the app adds a table
    worker = app.spawn(1)
    try:
        await produce(bootstrap_servers, app.source, [(b"k1", b"100")])
        await collect(bootstrap_servers, app.sink, 61, timeout=60, workers=[worker])
        assert "table 'extra' is new" in worker.log_text()
    finally:
        assert worker.stop() == 0, worker.log_text()[-3000:]
    extra = f"{app.env['ONCEFLOW_TEST_APP_ID']}-extra-changelog"
    assert len(await partitions_of(bootstrap_servers, extra)) == 2
