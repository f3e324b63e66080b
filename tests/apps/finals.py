"""The final-results oracle app: per key, counts in tumbling (1 s, grace 200 ms) and hopping
(2 s every 1 s, grace 200 ms) windows with ``emit="close"``; each window's final count goes to
the sink once, as ``"T:<start>:<count>"`` / ``"H:<start>:<count>"``. A stream-time timer every
3 s sends ``task id -> "<boundary>"`` to ``ONCEFLOW_TEST_TICKS``; a TTL-less table counts the
finals each key emitted, read back over HTTP."""

from __future__ import annotations

import os
from datetime import timedelta

from onceflow import App, Context, Hopping, Tumbling, WindowValue

app = App(os.environ.get("ONCEFLOW_TEST_APP_ID", "finals"))
source = app.topic(os.environ["ONCEFLOW_TEST_INPUT"], key_serde="str", value_serde="int64")
sink = app.topic(os.environ["ONCEFLOW_TEST_OUTPUT"], key_serde="str", value_serde="str")
ticks = app.topic(os.environ.get("ONCEFLOW_TEST_TICKS", "ticks"), key_serde="str")
GRACE = timedelta(milliseconds=200)
tumbling = app.windowed_table(
    "tumbling", window=Tumbling(seconds=1), grace=GRACE, default=0, value_serde="int64",
    emit="close",
)  # fmt: skip
hopping = app.windowed_table(
    "hopping", window=Hopping(size=timedelta(seconds=2), advance=timedelta(seconds=1)),
    grace=GRACE, default=0, value_serde="int64", emit="close",
)  # fmt: skip
emitted = app.table("emitted", default=0, value_serde="int64")


@app.handler(source)
async def count(ctx: Context, key: str, value: int) -> None:
    tumbling.add(ctx, key, 1)
    hopping.add_windows(ctx, key, 1)


@tumbling.on_close
async def tumbling_final(ctx: Context, key: str, window: WindowValue[int]) -> None:
    emitted.add(ctx, key, 1)
    await ctx.send(sink, key, f"T:{window.start}:{window.value}")


@hopping.on_close
async def hopping_final(ctx: Context, key: str, window: WindowValue[int]) -> None:
    emitted.add(ctx, key, 1)
    await ctx.send(sink, key, f"H:{window.start}:{window.value}")


@app.timer(every=timedelta(seconds=3), on="stream_time")
async def tick(ctx: Context) -> None:
    await ctx.send(ticks, ctx.task_id, str(ctx.timestamp).encode())
