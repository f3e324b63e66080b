"""The example processors/orders_to_postgres.py against a real PostgreSQL: orders enriched and
upserted, an order sent again with a new amount moves its customer's total by the difference,
and an order that breaks the table's constraint is dead-lettered while the rest commits."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

from kafka_helpers import read_to_end, unique_name
from sql_helpers import PostgresServer, query, wait_rows_in
from workers import WorkerProcess, produce, worker_env

from onceflow.examples.orders_to_postgres import create_schema


async def test_orders_to_postgres(
    bootstrap_servers: str, new_topic, postgres: PostgresServer, tmp_path: Path
) -> None:
    source = await new_topic("orders", partitions=2)
    enriched = await new_topic("orders-enriched", partitions=2)
    dsn = await postgres.new_database(unique_name("orders").replace("-", "_"))
    await create_schema(dsn)
    orders = [(f"c{i % 5}", {"id": f"o{i}", "amount": 10 * (i % 7) + 5}) for i in range(300)]
    orders += [("c1", {"id": "o1", "amount": 1000}), ("c3", {"id": "bad", "amount": -5})]
    await produce(
        bootstrap_servers, source, [(c.encode(), json.dumps(o).encode()) for c, o in orders]
    )
    app_id = unique_name("orders-pg")
    env = worker_env(
        bootstrap_servers, app_id, tmp_path / "state",
        ONCEFLOW_APP_ID=app_id, ONCEFLOW_INPUT_TOPIC=source, ONCEFLOW_OUTPUT_TOPIC=enriched,
        ONCEFLOW_SQL_SINK_DSN=dsn,
    )  # fmt: skip
    worker = WorkerProcess("onceflow.examples.orders_to_postgres", env, tmp_path / "w.log").start()
    try:
        await wait_rows_in(dsn, "SELECT count(*) FROM orders", 300, worker, timeout=90)
    finally:
        worker.stop()
    latest = {o["id"]: (c, o["amount"]) for c, o in orders if o["amount"] >= 0}
    expected: dict[str, Decimal] = {}
    for customer, amount in latest.values():
        expected[customer] = expected.get(customer, Decimal(0)) + amount
    totals = {str(c): t for c, t, _ in await query(dsn, "SELECT * FROM customer_totals")}
    assert totals == expected
    counts = {str(c): n for c, _, n in await query(dsn, "SELECT * FROM customer_totals")}
    assert sum(counts.values()) == 300  # o1 counted once
    assert await query(dsn, "SELECT amount, vat, band FROM orders WHERE id = 'o1'") == [
        (Decimal(1000), Decimal(200), "large")
    ]
    dead = await read_to_end(bootstrap_servers, f"{app_id}-dlq")
    assert [json.loads(r.value)["id"] for r in dead if r.value] == ["bad"]
