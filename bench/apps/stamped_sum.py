"""Stateful and stamped: a per-key running count in the ``sum`` table (int64), and every input
record's send stamp passed on to the output, so end-to-end latency is measured through a table.

Input values start with the producer's ``time.time_ns()`` (``bench.latency``'s paced producer);
the output value is ``"<stamp> <count>"``. The table's changelog has the layout the restore and
HA benchmarks fill directly (``bench.restore.Changelog``): str key (UTF-8) -> int64."""

from __future__ import annotations

import os

from onceflow import App, Context

app = App("bench-stamped-sum")
source = app.topic(os.environ["BENCH_INPUT"], key_serde="str", value_serde="str")
sink = app.topic(os.environ["BENCH_OUTPUT"], key_serde="str", value_serde="str")
sums = app.table("sum", default=0, value_serde="int64")


@app.handler(source)
async def count(ctx: Context, key: str, value: str) -> None:
    total = sums.add(ctx, key, 1)
    await ctx.send(sink, key, f"{value.split(' ', 1)[0]} {total}")
