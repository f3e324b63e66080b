"""Two source topics in one task group (a join's shape): they must be co-partitioned."""

from __future__ import annotations

import os

from onceflow import App, Context

app = App(os.environ.get("ONCEFLOW_TEST_APP_ID", "copartitioned"))
left = app.topic(os.environ["ONCEFLOW_TEST_INPUT"], key_serde="str", value_serde="str")
right = app.topic(os.environ["ONCEFLOW_TEST_INPUT2"], key_serde="str", value_serde="str")
sink = app.topic(os.environ["ONCEFLOW_TEST_OUTPUT"], key_serde="str", value_serde="str")
last = app.table("last", default="")


@app.handler(left, right)
async def join(ctx: Context, key: str, value: str) -> None:
    other = last.get(ctx, key)
    last.set(ctx, key, value)
    await ctx.send(sink, key, f"{other}|{value}")
