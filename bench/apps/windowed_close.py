"""windowed_count with final results: counts per key in 1-second tumbling windows with
``emit="close"``; each window's final count goes out once when stream time closes it.

The scenario gives the backlog 1 ms of event time per record (``event_step_ms``), so a window
closes every 1,000 records, all through the run, each with up to 1,000 keys: it measures the
per-record update with the closing scans and sends (about one final result per input with
10,000 round-robin keys: the worst case for final results).
"""

from __future__ import annotations

import os

from onceflow import App, Context, Tumbling, WindowValue

app = App("bench-windowed-close")
source = app.topic(os.environ["BENCH_INPUT"], key_serde="str", value_serde="str")
sink = app.topic(os.environ["BENCH_OUTPUT"], key_serde="str", value_serde="str")
counts = app.windowed_table(
    "counts", window=Tumbling(seconds=1), default=0, value_serde="int64", emit="close"
)


@app.handler(source)
async def count(ctx: Context, key: str, value: str) -> None:
    counts.add(ctx, key, 1)


@counts.on_close
async def final(ctx: Context, key: str, window: WindowValue[int]) -> None:
    await ctx.send(sink, key, str(window.value))
