"""The stateful EOS oracle app (Kafka's EOS system test style): per key, running sum, count, min
and max of int values, kept in four tables; after every record emits
``key -> "sum,count,min,max"``."""

from __future__ import annotations

import os

from onceflow import App, Context

app = App(os.environ.get("ONCEFLOW_TEST_APP_ID", "aggregates"))
source = app.topic(os.environ["ONCEFLOW_TEST_INPUT"], key_serde="str", value_serde="int64")
sink = app.topic(os.environ["ONCEFLOW_TEST_OUTPUT"], key_serde="str", value_serde="str")
sums = app.table("sum", default=0, value_serde="int64")
counts = app.table("count", default=0, value_serde="int64")
mins = app.table("min", default=None, value_serde="json")
maxs = app.table("max", default=None, value_serde="json")


@app.handler(source)
async def aggregate(ctx: Context, key: str, value: int) -> None:
    total = sums.add(ctx, key, value)
    n = counts.add(ctx, key, 1)
    low = mins.update(ctx, key, lambda m: value if m is None else min(m, value))
    high = maxs.update(ctx, key, lambda m: value if m is None else max(m, value))
    await ctx.send(sink, key, f"{total},{n},{low},{high}")
