"""Exactly-once into PostgreSQL: enriched orders upserted into an ``orders`` table, and each
customer's running total kept in ``customer_totals``, both in the transaction that also records
the consumed offset (README, *Exactly-once into a database*).

* ``orders`` (key: customer id, value: ``{"id", "amount"}``) is enriched by a handler (the VAT
  due, the size band) into ``orders-enriched``, inside Kafka transactions;
* the SQL sink ``orders`` reads ``orders-enriched`` (read_committed) and, per batch of one
  partition, upserts the orders and adds each order's change to its customer's total: an order
  sent again with a new amount moves the total by the difference, never twice.

An order with a negative amount breaks the table's CHECK constraint: it goes to the dead-letter
topic with the SQL error, and the rest of its batch commits. The database is
``ONCEFLOW_SQL_SINK_DSN`` (e.g. ``postgresql+asyncpg://user:password@host/db``; a
``sqlite+aiosqlite:///orders.db`` works too). Create the tables first, once:
``python -m onceflow.examples.orders_to_postgres`` (schema changes are a migration's job, not the
sink's). Topic names can be changed with ``ONCEFLOW_INPUT_TOPIC`` / ``ONCEFLOW_OUTPUT_TOPIC``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from typing import Any

from sqlalchemy import bindparam, text
from sqlalchemy.ext.asyncio import create_async_engine

from onceflow import App, Context, SinkRecord, SinkTransaction

VAT = 0.2

app = App("orders-to-postgres")
orders = app.topic(
    os.environ.get("ONCEFLOW_INPUT_TOPIC", "orders"), key_serde="str", value_serde="json"
)
enriched = app.topic(
    os.environ.get("ONCEFLOW_OUTPUT_TOPIC", "orders-enriched"), key_serde="str", value_serde="json"
)

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS orders (
        id VARCHAR(64) PRIMARY KEY,
        customer VARCHAR(64) NOT NULL,
        amount NUMERIC(12, 2) NOT NULL CHECK (amount >= 0),
        vat NUMERIC(12, 2) NOT NULL,
        band VARCHAR(8) NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS customer_totals (
        customer VARCHAR(64) PRIMARY KEY,
        total NUMERIC(14, 2) NOT NULL,
        orders INTEGER NOT NULL)""",
)


@app.handler(orders)
async def enrich(ctx: Context, customer: str, order: dict[str, Any]) -> None:
    amount = float(order["amount"])
    band = "large" if amount >= 1000 else "medium" if amount >= 100 else "small"
    await ctx.send(enriched, customer, {**order, "vat": round(amount * VAT, 2), "band": band})


@app.sql_sink(enriched, name="orders")
async def store(tx: SinkTransaction, records: Sequence[SinkRecord[str, dict[str, Any]]]) -> None:
    """Upsert the batch's orders and move each customer's total by what changed."""
    ids = sorted({str(r.value["id"]) for r in records})
    before = await tx.execute(
        text("SELECT id, amount FROM orders WHERE id IN :ids").bindparams(
            bindparam("ids", expanding=True)
        ),
        {"ids": ids},
    )
    known = {str(m["id"]): float(m["amount"]) for m in before.mappings()}
    rows: list[dict[str, Any]] = []
    totals: dict[str, tuple[float, int]] = {}  # customer -> (change of total, new orders)
    for r in records:  # in offset order: an order twice in a batch counts its last amount
        order = r.value
        oid, amount = str(order["id"]), float(order["amount"])
        total, count = totals.get(r.key, (0.0, 0))
        old = known.get(oid)
        totals[r.key] = (total + amount - (old or 0.0), count + (old is None))
        known[oid] = amount
        rows.append({"id": oid, "c": r.key, "a": amount, "v": order["vat"], "b": order["band"]})
    await tx.execute(
        text(
            "INSERT INTO orders (id, customer, amount, vat, band) VALUES (:id, :c, :a, :v, :b) "
            "ON CONFLICT (id) DO UPDATE SET amount = excluded.amount, vat = excluded.vat, "
            "band = excluded.band"
        ),
        rows,
    )
    await tx.execute(
        text(
            "INSERT INTO customer_totals (customer, total, orders) VALUES (:c, :t, :n) "
            "ON CONFLICT (customer) DO UPDATE SET total = customer_totals.total + excluded.total, "
            "orders = customer_totals.orders + excluded.orders"
        ),
        [{"c": c, "t": round(t, 2), "n": n} for c, (t, n) in sorted(totals.items())],
    )


async def create_schema(dsn: str) -> None:
    """Create the example's tables in the database at ``dsn`` if they are not there."""
    engine = create_async_engine(dsn)
    try:
        async with engine.begin() as conn:
            for ddl in SCHEMA:
                await conn.execute(text(ddl))
    finally:
        await engine.dispose()


if __name__ == "__main__":
    asyncio.run(create_schema(os.environ["ONCEFLOW_SQL_SINK_DSN"]))
