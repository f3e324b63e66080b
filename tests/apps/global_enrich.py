"""Enrichment with a global table: each order (key: order id, value: a country code) goes to the
output as ``"<country code>=<the country's current value, or '-'>"``. The global table reads
``ONCEFLOW_TEST_GLOBAL``; orders and output are ``ONCEFLOW_TEST_INPUT`` / ``_OUTPUT``."""

from __future__ import annotations

import os

from onceflow import App, Context

app = App(os.environ.get("ONCEFLOW_TEST_APP_ID", "global-enrich"))
orders = app.topic(os.environ["ONCEFLOW_TEST_INPUT"], key_serde="str", value_serde="str")
out = app.topic(os.environ["ONCEFLOW_TEST_OUTPUT"], key_serde="str", value_serde="str")
countries = app.global_table(
    os.environ["ONCEFLOW_TEST_GLOBAL"], name="countries", key_serde="str", value_serde="str"
)


@app.handler(orders)
async def enrich(ctx: Context, order_id: str, country: str) -> None:
    await ctx.send(out, order_id, f"{country}={countries.get(ctx, country) or '-'}")
