"""Two hops through a repartition topic: each record is re-keyed (its key reversed) to
``<app_id>-rekey-repartition``, whose handler sends it on to the output: one output per input,
exactly once across the hop. The scenario watches the second hop's committed offsets."""

from __future__ import annotations

import os

from onceflow import App, Context

app = App("bench-rekey")
source = app.topic(os.environ["BENCH_INPUT"], key_serde="str", value_serde="bytes")
sink = app.topic(os.environ["BENCH_OUTPUT"], key_serde="str", value_serde="bytes")
rekeyed = app.repartition("rekey", key_serde="str", value_serde="bytes")


@app.handler(source)
async def rekey(ctx: Context, key: str, value: bytes) -> None:
    await ctx.send(rekeyed, key[::-1], value)


@app.handler(rekeyed, group="rekeyed")
async def forward(ctx: Context, key: str, value: bytes) -> None:
    await ctx.send(sink, key, value)
