"""SQL sinks against a real PostgreSQL server and a real SQLite file: every payment changes the
database exactly once, a row that breaks a constraint goes to the dead-letter topic with its SQL
error, and a database that goes down and comes back loses and doubles nothing, with readiness
and metrics saying so meanwhile."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
from kafka_helpers import unique_name
from sql_helpers import (
    PostgresServer,
    check_dead_letters,
    check_exactly_once,
    create_schema,
    query,
    start_payments,
    wait_first_row,
    wait_rows,
)
from workers import WorkerProcess, worker_env


async def test_exactly_once_into_sqlite(bootstrap_servers: str, new_topic, tmp_path: Path) -> None:
    """An app with the sink alone (no handlers): it runs without a group of tasks."""
    dsn = f"sqlite+aiosqlite:///{tmp_path / 'payments.db'}"
    await create_schema(dsn)
    worker, good, app_id, port = await start_payments(
        bootstrap_servers, new_topic, tmp_path, dsn, 1500, ONCEFLOW_TEST_SINK_ONLY=1
    )
    try:
        await wait_rows(dsn, len(good), worker, timeout=90)
        await check_exactly_once(dsn, good)
        await check_dead_letters(bootstrap_servers, app_id, 1500, "check constraint")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
            assert (await http.get("/health/ready")).status_code == 200
    finally:
        code = worker.stop()
    assert code == 0, worker.log_text()[-3000:]


async def test_a_sink_of_a_missing_topic_fails_at_start(
    tmp_path: Path, bootstrap_servers: str
) -> None:
    missing = unique_name("no-such-topic")
    env = worker_env(
        bootstrap_servers, unique_name("sqlmiss"), tmp_path / "state",
        ONCEFLOW_TEST_INPUT=missing, ONCEFLOW_TEST_OUTPUT=f"{missing}-out",
        ONCEFLOW_TEST_SINK_ONLY=1,
        ONCEFLOW_SQL_SINK_DSN=f"sqlite+aiosqlite:///{tmp_path / 'x.db'}",
    )  # fmt: skip
    worker = WorkerProcess("tests.apps.sql_payments", env, tmp_path / "worker.log").start()
    code = worker.wait(60)
    assert code not in (None, 0), worker.log_text()[-3000:]
    assert f"reads topic {missing!r}, which does not exist" in worker.log_text()


async def test_a_sink_without_a_database_fails_at_start_naming_the_setting(
    tmp_path: Path, bootstrap_servers: str
) -> None:
    env = worker_env(
        bootstrap_servers, unique_name("sqlnodsn"), tmp_path / "state",
        ONCEFLOW_TEST_INPUT="any-in", ONCEFLOW_TEST_OUTPUT="any-out", ONCEFLOW_TEST_SINK_ONLY=1,
    )  # fmt: skip
    worker = WorkerProcess("tests.apps.sql_payments", env, tmp_path / "worker.log").start()
    code = worker.wait(60)
    assert code not in (None, 0), worker.log_text()[-3000:]
    assert "set ONCEFLOW_SQL_SINK_DSN" in worker.log_text()


async def test_postgres_down_and_up(
    bootstrap_servers: str, new_topic, postgres: PostgresServer, tmp_path: Path
) -> None:
    dsn = await postgres.new_database(unique_name("pay").replace("-", "_"))
    n = 6000
    worker, good, app_id, port = await start_payments(
        bootstrap_servers, new_topic, tmp_path, dsn, n,
        ONCEFLOW_TEST_SINK_BATCH=20, ONCEFLOW_SQL_SINK_STATEMENT_TIMEOUT_MS=3000,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=url, timeout=5) as http:
            await wait_first_row(dsn, worker)
            postgres.stop("immediate")  # a crash: open transactions are lost
            try:
                reason = ""
                for _ in range(100):
                    ready = await http.get("/health/ready")
                    reason = ready.json().get("reason", "")
                    if ready.status_code == 503 and "database unavailable" in reason:
                        break
                    await asyncio.sleep(0.2)
                assert "database unavailable" in reason, reason
                metrics = (await http.get("/metrics")).text
                assert (
                    f'onceflow_sink_failures_total{{app="{app_id}",reason="database",sink="payments"}}'
                    in metrics
                )
            finally:
                postgres.start()
            await wait_rows(dsn, len(good), worker, timeout=120)
            await check_exactly_once(dsn, good)
            for _ in range(50):
                if (await http.get("/health/ready")).status_code == 200:
                    break
                await asyncio.sleep(0.2)
            assert (await http.get("/health/ready")).status_code == 200
            metrics = (await http.get("/metrics")).text
            assert 'result="committed",sink="payments"' in metrics
            assert (
                f'onceflow_sink_lag{{app="{app_id}",partition="0",sink="payments"}} 0.0' in metrics
            )
        await check_dead_letters(bootstrap_servers, app_id, n, "check constraint")
        assert worker.log_text().count("database unavailable") == 1, "one log line per outage"
    finally:
        worker.stop()


async def test_error_policy_fail_stops_the_worker_at_the_poison_row(
    bootstrap_servers: str, new_topic, tmp_path: Path
) -> None:
    dsn = f"sqlite+aiosqlite:///{tmp_path / 'payments.db'}"
    await create_schema(dsn)
    worker, good, _, _ = await start_payments(
        bootstrap_servers, new_topic, tmp_path, dsn, 100,
        ONCEFLOW_TEST_SINK_ONLY=1, ONCEFLOW_ERROR_POLICY="fail",
    )  # fmt: skip
    code = worker.wait(60)
    assert code not in (None, 0), worker.log_text()[-3000:]
    assert "(error policy 'fail')" in worker.log_text()
    # What came before the poison row in its partition was committed, nothing after it.
    rows = await query(dsn, "SELECT id FROM payments")
    assert {str(r[0]) for r in rows} <= set(good) and "p5" not in {str(r[0]) for r in rows}
