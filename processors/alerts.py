"""Threshold alerts on final window counts (``emit="close"``).

Reads ``logins`` (user -> source IP as text) and counts failed logins per user in 10-minute
tumbling windows with a 1-minute grace period for late events. When stream time closes a
window, its *final* count — not a running one — is compared with the threshold: users above
it get one alert on ``alerts`` (``user -> {"window_start", "window_end", "count"}``), exactly
once, whatever crashes and rebalances happen. The table ``alerts-raised`` counts each user's
alerts (``GET /tables/alerts-raised/keys/<user>``).

Topic names can be changed with ``ONCEFLOW_INPUT_TOPIC`` / ``ONCEFLOW_OUTPUT_TOPIC``; the
threshold with ``ALERT_THRESHOLD`` (default 5).
"""

from __future__ import annotations

import os
from datetime import timedelta

from onceflow import App, Context, Tumbling, WindowValue

THRESHOLD = int(os.environ.get("ALERT_THRESHOLD", "5"))

app = App("login-alerts")
logins = app.topic(
    os.environ.get("ONCEFLOW_INPUT_TOPIC", "logins"), key_serde="str", value_serde="str"
)
alerts = app.topic(
    os.environ.get("ONCEFLOW_OUTPUT_TOPIC", "alerts"), key_serde="str", value_serde="json"
)
failures = app.windowed_table(
    "failed-logins",
    window=Tumbling(minutes=10),
    grace=timedelta(minutes=1),
    default=0,
    value_serde="int64",
    emit="close",
)
raised = app.table("alerts-raised", default=0, key_serde="str", value_serde="int64")


@app.handler(logins)
async def count(ctx: Context, user: str, ip: str) -> None:
    failures.add(ctx, user, 1)  # returns None with emit="close": the final count comes below


@failures.on_close
async def alert(ctx: Context, user: str, window: WindowValue[int]) -> None:
    if window.value > THRESHOLD:
        await ctx.send(
            alerts,
            user,
            {"window_start": window.start, "window_end": window.end, "count": window.value},
        )
        raised.add(ctx, user, 1)
