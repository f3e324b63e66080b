"""The reference app: the seed's Kafka Streams example, on onceflow.

Reads ``input-topic`` (String key, String value), counts records per key in 5-minute tumbling
windows without grace, and after every update emits ``key -> str(count)`` to ``output-topic``,
exactly once. Topic names can be changed with ``ONCEFLOW_INPUT_TOPIC`` / ``ONCEFLOW_OUTPUT_TOPIC``.
"""

from __future__ import annotations

import os

from onceflow import App, Context, Tumbling

app = App("eos-stream-app")
source = app.topic(
    os.environ.get("ONCEFLOW_INPUT_TOPIC", "input-topic"), key_serde="str", value_serde="str"
)
sink = app.topic(
    os.environ.get("ONCEFLOW_OUTPUT_TOPIC", "output-topic"), key_serde="str", value_serde="str"
)
counts = app.windowed_table(
    "counts", window=Tumbling(minutes=5), grace=0, default=0, key_serde="str", value_serde="int64"
)


@app.handler(source)
async def count(ctx: Context, key: str, value: str) -> None:
    n = counts.add(ctx, key, 1)
    if n is not None:  # None: the record is late for its window, dropped and counted
        await ctx.send(sink, key, str(n))
