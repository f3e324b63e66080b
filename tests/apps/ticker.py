"""A wall-clock timer on tasks that may never see a record: every 300 ms each task sends
``task id -> "<wall ms>"`` to the sink; records of the source are echoed."""

from __future__ import annotations

import os
from datetime import timedelta

from onceflow import App, Context

app = App(os.environ.get("ONCEFLOW_TEST_APP_ID", "ticker"))
source = app.topic(os.environ["ONCEFLOW_TEST_INPUT"], key_serde="str", value_serde="str")
sink = app.topic(os.environ["ONCEFLOW_TEST_OUTPUT"], key_serde="str", value_serde="str")


@app.handler(source)
async def echo(ctx: Context, key: str, value: str) -> None:
    await ctx.send(sink, key, value)


@app.timer(every=timedelta(milliseconds=300), on="wall_clock")
async def tick(ctx: Context) -> None:
    await ctx.send(sink, ctx.task_id, str(ctx.timestamp))
