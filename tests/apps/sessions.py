"""Session and sliding-window counts per key, for the integration test: after every record emits
``key -> "start,end,count;left"`` — the key's session after the record (``late`` if the record
was late for it) and the count of the sliding window ending at the record (``-`` if closed)."""

from __future__ import annotations

import operator
import os
from datetime import timedelta

from onceflow import App, Context, Session, Sliding

GAP_MS = 10_000
SIZE_MS = 10_000
GRACE_MS = 5_000
RETENTION = timedelta(days=1)  # keeps every session of the test: the final state is all of them

app = App(os.environ.get("ONCEFLOW_TEST_APP_ID", "sessions"))
source = app.topic(os.environ["ONCEFLOW_TEST_INPUT"], key_serde="str", value_serde="str")
sink = app.topic(os.environ["ONCEFLOW_TEST_OUTPUT"], key_serde="str", value_serde="str")
sessions = app.windowed_table(
    "sessions",
    window=Session(gap=timedelta(milliseconds=GAP_MS)),
    merge=operator.add,
    grace=GRACE_MS,
    retention=RETENTION,
    default=0,
    value_serde="int64",
)
recent = app.windowed_table(
    "recent",
    window=Sliding(size=timedelta(milliseconds=SIZE_MS)),
    grace=GRACE_MS,
    retention=RETENTION,
    default=0,
    value_serde="int64",
)


@app.handler(source)
async def count(ctx: Context, key: str, value: str) -> None:
    session = sessions.add(ctx, key, 1)
    left = max(0, ctx.timestamp - SIZE_MS)
    windows = {w.start: w.value for w in recent.add_windows(ctx, key, 1)}
    shown = "late" if session is None else f"{session.start},{session.end},{session.value}"
    await ctx.send(sink, key, f"{shown};{windows.get(left, '-')}")
