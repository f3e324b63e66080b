"""Echo: every input record to the output topic unchanged (topics ``BENCH_INPUT``/``BENCH_OUTPUT``).

The cheapest possible handler, so what it measures is the framework's per-record cost."""

from __future__ import annotations

import os

from onceflow import App, Context

app = App("bench-echo")
source = app.topic(os.environ["BENCH_INPUT"], key_serde="str", value_serde="str")
sink = app.topic(os.environ["BENCH_OUTPUT"], key_serde="str", value_serde="str")


@app.handler(source)
async def echo(ctx: Context, key: str, value: str) -> None:
    await ctx.send(sink, key, value)
