"""Echo: every input record to the output topic, unchanged. Keys in ``POISON_KEYS`` make the
handler raise (for dead-letter tests); keys in ``MISDIRECT_KEYS`` are sent to partition 99, which
the output topic does not have; values that are not UTF-8 fail to deserialize."""

from __future__ import annotations

import os

from onceflow import App, Context

app = App(os.environ.get("ONCEFLOW_TEST_APP_ID", "echo"))
source = app.topic(os.environ["ONCEFLOW_TEST_INPUT"], key_serde="str", value_serde="str")
sink = app.topic(os.environ["ONCEFLOW_TEST_OUTPUT"], key_serde="str", value_serde="str")
poison = set(filter(None, os.environ.get("ONCEFLOW_TEST_POISON_KEYS", "").split(",")))
misdirect = set(filter(None, os.environ.get("ONCEFLOW_TEST_MISDIRECT_KEYS", "").split(",")))


@app.handler(source)
async def echo(ctx: Context, key: str, value: str) -> None:
    if key in poison:
        raise ValueError(f"poison key {key!r}")
    await ctx.send(sink, key, value, partition=99 if key in misdirect else None)
