"""Session-window count per key (gap 5 minutes, no grace): after every record emits
``key -> "start,end,count"`` of the key's session. The backlog's records of a key are
milliseconds apart, so each record extends the key's one open session: a range read, a merge
check and a write per record, the session table's hot path."""

from __future__ import annotations

import operator
import os
from datetime import timedelta

from onceflow import App, Context, Session

app = App("bench-sessions")
source = app.topic(os.environ["BENCH_INPUT"], key_serde="str", value_serde="str")
sink = app.topic(os.environ["BENCH_OUTPUT"], key_serde="str", value_serde="str")
sessions = app.windowed_table(
    "sessions",
    window=Session(gap=timedelta(minutes=5)),
    merge=operator.add,
    default=0,
    value_serde="int64",
)


@app.handler(source)
async def count(ctx: Context, key: str, value: str) -> None:
    session = sessions.add(ctx, key, 1)
    if session is not None:  # None: late, dropped and counted
        await ctx.send(sink, key, f"{session.start},{session.end},{session.value}")
