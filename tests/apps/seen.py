"""Seen: per key, the set of input sequence numbers the table has absorbed (a JSON list), and
each input echoed to the output. Under at-least-once a record may be absorbed twice (the set
does not change), but the final table must hold every input: a lost update shows as a missing
number."""

from __future__ import annotations

import os

from onceflow import App, Context

app = App(os.environ.get("ONCEFLOW_TEST_APP_ID", "seen"))
source = app.topic(os.environ["ONCEFLOW_TEST_INPUT"], key_serde="str", value_serde="str")
sink = app.topic(os.environ["ONCEFLOW_TEST_OUTPUT"], key_serde="str", value_serde="str")
seen = app.table("seen", default=list, value_serde="json")
if os.environ.get("ONCEFLOW_TEST_EXTRA_TABLE"):  # a table added in a later version of the app
    app.table(os.environ["ONCEFLOW_TEST_EXTRA_TABLE"], default=0, value_serde="int64")


@app.handler(source)
async def absorb(ctx: Context, key: str, value: str) -> None:
    numbers = seen.get(ctx, key)
    if int(value) not in numbers:
        seen.set(ctx, key, [*numbers, int(value)])
    await ctx.send(sink, key, value)
