"""Payments into a SQL database, exactly once: a handler forwards each input (key: customer,
value: ``id:amount``) to an intermediate topic inside Kafka transactions, and a SQL sink writes
one ``payments`` row per record (with the epoch that wrote it) and adds it to the customer's
running total in the same database transaction. A negative amount breaks a CHECK constraint (a
poison row for the dead-letter tests). With ``ONCEFLOW_TEST_SINK_ONLY=1`` the app is the sink
alone, reading the input topic; the tables are ``tests/sql_helpers.py``'s SCHEMA.
The DSN comes from ``ONCEFLOW_SQL_SINK_DSN``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from sqlalchemy import text

from onceflow import App, Context
from onceflow.sql_sink import SinkRecord, SinkTransaction

app = App(os.environ.get("ONCEFLOW_TEST_APP_ID", "sql-payments"))
source = app.topic(os.environ["ONCEFLOW_TEST_INPUT"], key_serde="str", value_serde="str")
forwarded = app.topic(os.environ["ONCEFLOW_TEST_OUTPUT"], key_serde="str", value_serde="str")
batch = int(os.environ.get("ONCEFLOW_TEST_SINK_BATCH", "50"))
sink_only = os.environ.get("ONCEFLOW_TEST_SINK_ONLY") == "1"  # no handler: the sink reads source


if not sink_only:

    @app.handler(source)
    async def forward(ctx: Context, key: str, value: str) -> None:
        await ctx.send(forwarded, key, value)


@app.sql_sink(source if sink_only else forwarded, batch=batch, name="payments")
async def store(tx: SinkTransaction, records: Sequence[SinkRecord[Any, Any]]) -> None:
    rows = []
    for r in records:
        pid, amount = r.value.split(":")
        rows.append(
            {
                "id": pid,
                "c": r.key,
                "a": int(amount),
                "p": r.partition,
                "o": r.offset,
                "e": tx.epoch,
            }
        )
    await tx.execute(
        text(
            "INSERT INTO payments (id, customer, amount, src_partition, src_offset, epoch) "
            "VALUES (:id, :c, :a, :p, :o, :e)"
        ),
        rows,
    )
    await tx.execute(
        text(
            "INSERT INTO totals (customer, total) VALUES (:c, :a) "
            "ON CONFLICT (customer) DO UPDATE SET total = totals.total + excluded.total"
        ),
        [{"c": row["c"], "a": row["a"]} for row in rows],
    )
