"""Re-keying: page views per page from clicks keyed by user.

``clicks`` is keyed by user (value: the page). Counting per *page* needs the records keyed by
page, so the first handler sends each click on to the repartition topic ``by-page``
(``<app_id>-by-page-repartition``, created by the worker) with the page as key; the second
handler, whose tasks own the pages, counts views per page in 1-minute tumbling windows and
emits ``page -> count`` after every view. Both hops are exactly-once: the re-keyed record
commits with the click's offset, the count with the re-keyed record's. Topic names can be
changed with ``ONCEFLOW_INPUT_TOPIC`` / ``ONCEFLOW_OUTPUT_TOPIC``.
"""

from __future__ import annotations

import os

from onceflow import App, Context, Tumbling

app = App("page-views")
clicks = app.topic(
    os.environ.get("ONCEFLOW_INPUT_TOPIC", "clicks"), key_serde="str", value_serde="str"
)
views = app.topic(
    os.environ.get("ONCEFLOW_OUTPUT_TOPIC", "page-views"), key_serde="str", value_serde="int64"
)
by_page = app.repartition("by-page", key_serde="str", value_serde="str")
per_page = app.windowed_table(
    "views-per-page", window=Tumbling(minutes=1), default=0, value_serde="int64", group="pages"
)


@app.handler(clicks)
async def rekey(ctx: Context, user: str, page: str) -> None:
    await ctx.send(by_page, page, user)  # keeps the click's timestamp


@app.handler(by_page, group="pages")
async def count(ctx: Context, page: str, user: str) -> None:
    n = per_page.add(ctx, page, 1)
    if n is not None:  # None: late for its window
        await ctx.send(views, page, n)
