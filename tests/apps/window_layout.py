"""A windowed count whose window, grace and retention come from the environment
(``ONCEFLOW_TEST_WINDOW_MS``, ``ONCEFLOW_TEST_GRACE_MS``, ``ONCEFLOW_TEST_RETENTION_MS``), so a
test can restart it on the same state directory with another layout. After every update emits
``key -> "<window start>:<count>"``."""

from __future__ import annotations

import os

from onceflow import App, Context, Tumbling

app = App(os.environ.get("ONCEFLOW_TEST_APP_ID", "window-layout"))
source = app.topic(os.environ["ONCEFLOW_TEST_INPUT"], key_serde="str", value_serde="str")
sink = app.topic(os.environ["ONCEFLOW_TEST_OUTPUT"], key_serde="str", value_serde="str")
retention = os.environ.get("ONCEFLOW_TEST_RETENTION_MS")
counts = app.windowed_table(
    "counts",
    window=Tumbling(milliseconds=int(os.environ.get("ONCEFLOW_TEST_WINDOW_MS", "300000"))),
    grace=int(os.environ.get("ONCEFLOW_TEST_GRACE_MS", "0")),
    retention=None if retention is None else int(retention),
    default=0,
    value_serde="int64",
)


@app.handler(source)
async def count(ctx: Context, key: str, value: str) -> None:
    for window in counts.add_windows(ctx, key, 1):
        await ctx.send(sink, key, f"{window.start}:{window.value}")
