"""A stream-table join: each input record (an order, keyed by customer) is joined with the
customer's value in a source table fed by ``<BENCH_INPUT>-table`` (filled before the timed run,
one 100-byte value per key) and sent on: ``<customer value>|<order>``."""

from __future__ import annotations

import os

from onceflow import App, Context

app = App("bench-join")
source = app.topic(os.environ["BENCH_INPUT"], key_serde="str", value_serde="str")
sink = app.topic(os.environ["BENCH_OUTPUT"], key_serde="str", value_serde="str")
customers = app.source_table(
    f"{os.environ['BENCH_INPUT']}-table", name="customers", key_serde="str", value_serde="str"
)


@app.handler(source)
async def enrich(ctx: Context, key: str, value: str) -> None:
    await ctx.send(sink, key, f"{customers.get(ctx, key)}|{value}")
