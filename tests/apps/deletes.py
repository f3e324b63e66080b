"""One key-value table, ``kv``, that can forget keys: the value ``DEL`` deletes the record's key
(a tombstone in the changelog), ``GET`` leaves it as it is, anything else becomes its value.
After every record the key's value is sent (``<absent>`` when the table has none)."""

from __future__ import annotations

import os

from onceflow import App, Context

ABSENT = "<absent>"

app = App(os.environ.get("ONCEFLOW_TEST_APP_ID", "deletes"))
source = app.topic(os.environ["ONCEFLOW_TEST_INPUT"], key_serde="str", value_serde="str")
sink = app.topic(os.environ["ONCEFLOW_TEST_OUTPUT"], key_serde="str", value_serde="str")
kv = app.table("kv", default=None, key_serde="str", value_serde="str")


@app.handler(source)
async def keep(ctx: Context, key: str, value: str) -> None:
    if value == "DEL":
        kv.delete(ctx, key)
    elif value != "GET":
        kv.set(ctx, key, value)
    await ctx.send(sink, key, kv.get(ctx, key) or ABSENT)
