"""TTL counts: per key, how many records arrived since the key was last forgotten — the table
``counts`` forgets a key ``ONCEFLOW_TEST_TTL_MS`` (default 10 s; ``none``: never) of stream time
after its last write — and each new count sent to the output. The outputs and the final table
are a pure function of each partition's input, whatever the commit timing: what the TTL tests
compare."""

from __future__ import annotations

import os

from onceflow import App, Context

app = App(os.environ.get("ONCEFLOW_TEST_APP_ID", "ttl-counts"))
source = app.topic(os.environ["ONCEFLOW_TEST_INPUT"], key_serde="str", value_serde="str")
sink = app.topic(os.environ["ONCEFLOW_TEST_OUTPUT"], key_serde="str", value_serde="json")
ttl = os.environ.get("ONCEFLOW_TEST_TTL_MS", "10000")  # "none": the table before it had a ttl
counts = app.table("counts", default=0, value_serde="json", ttl=None if ttl == "none" else int(ttl))


@app.handler(source)
async def count(ctx: Context, key: str, value: str) -> None:
    await ctx.send(sink, key, counts.add(ctx, key, 1))
