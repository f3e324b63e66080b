"""One key-value table, ``last``: each record's int64 value under its key. Nothing is sent, so
the state (and its changelog) is all there is: the HTTP restore test fills it with many keys."""

from __future__ import annotations

import os

from onceflow import App, Context

app = App(os.environ.get("ONCEFLOW_TEST_APP_ID", "http-state"))
source = app.topic(os.environ["ONCEFLOW_TEST_INPUT"], key_serde="str", value_serde="int64")
last = app.table("last", default=None, key_serde="str", value_serde="int64")


@app.handler(source)
async def remember(ctx: Context, key: str, value: int) -> None:
    last.set(ctx, key, value)
