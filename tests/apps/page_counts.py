"""The re-keying oracle app: input keyed by user with the page as value; the first handler
re-keys each record by page through a repartition topic, the second keeps a running count per
page and emits ``page -> "<count>"`` after each record. Exactly-once across the hop means each
page's outputs are exactly 1, 2, ..., n, in that order, for its n inputs."""

from __future__ import annotations

import os

from onceflow import App, Context

app = App(os.environ.get("ONCEFLOW_TEST_APP_ID", "page-counts"))
source = app.topic(os.environ["ONCEFLOW_TEST_INPUT"], key_serde="str", value_serde="str")
sink = app.topic(os.environ["ONCEFLOW_TEST_OUTPUT"], key_serde="str", value_serde="str")
by_page = app.repartition("by-page", key_serde="str", value_serde="str")
counts = app.table("per-page", default=0, value_serde="int64", group="pages")


@app.handler(source)
async def rekey(ctx: Context, user: str, page: str) -> None:
    await ctx.send(by_page, page, user)


@app.handler(by_page, group="pages")
async def count(ctx: Context, page: str, user: str) -> None:
    await ctx.send(sink, page, str(counts.add(ctx, page, 1)))
