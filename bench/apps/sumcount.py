"""Stateful sum/count per key: two tables, ``key -> "sum,count"`` emitted after every record.

Input values are decimal integers padded with spaces to 100 bytes (the bench's record size)."""

from __future__ import annotations

import os

from onceflow import App, Context

app = App("bench-sumcount")
source = app.topic(os.environ["BENCH_INPUT"], key_serde="str", value_serde="str")
sink = app.topic(os.environ["BENCH_OUTPUT"], key_serde="str", value_serde="str")
sums = app.table("sum", default=0, value_serde="int64")
counts = app.table("count", default=0, value_serde="int64")


@app.handler(source)
async def aggregate(ctx: Context, key: str, value: str) -> None:
    total = sums.add(ctx, key, int(value))
    n = counts.add(ctx, key, 1)
    await ctx.send(sink, key, f"{total},{n}")
