"""A stream-table join: orders (keyed by customer id) joined with a customers source table.

Each order's output is ``<order>|<customer value>`` (``<absent>`` when the table has none for
the customer: never had one, or deleted by a tombstone), on the order's key and partition."""

from __future__ import annotations

import os

from onceflow import App, Context

ABSENT = "<absent>"

app = App(os.environ.get("ONCEFLOW_TEST_APP_ID", "enrich"))
orders = app.topic(os.environ["ONCEFLOW_TEST_INPUT"], key_serde="str", value_serde="str")
sink = app.topic(os.environ["ONCEFLOW_TEST_OUTPUT"], key_serde="str", value_serde="str")
customers = app.source_table(
    os.environ["ONCEFLOW_TEST_TABLE"], name="customers", key_serde="str", value_serde="str"
)


@app.handler(orders)
async def enrich(ctx: Context, customer: str, order: str) -> None:
    await ctx.send(sink, customer, f"{order}|{customers.get(ctx, customer) or ABSENT}")
