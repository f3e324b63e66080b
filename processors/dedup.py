"""Example: exactly-once deduplication by event id, with windowed state that expires.

Reads events keyed by their id from ``events`` and forwards each id's first occurrence to
``events-unique`` — key, value, headers and timestamp unchanged; an event whose id was already
seen less than ``DEDUP_WINDOW`` (10 minutes, event time) away from it is dropped and counted
(``ONCEFLOW_DEDUP_INPUT`` / ``ONCEFLOW_DEDUP_OUTPUT`` override the topic names). The input must
be keyed by the event id: all copies of an id then land in one partition, whose task alone
holds that id's state. An event without a key, or with a negative timestamp, goes to the
dead-letter topic ``event-dedup-dlq``.

Why not one tumbling window per id: copies at 9:59 and 10:01 fall in two windows, so "seen in
this window" would let the second through. Instead the table ``seen`` is a time index: tumbling
windows as long as the dedup window, and in each the earliest and latest event time at which
the id was seen, plus how many copies were dropped. An event at ``t`` (window ``w``) is a
duplicate when the id has a sighting in ``w`` (less than one window away by construction), or
the previous window's latest sighting is after ``t - DEDUP_WINDOW``, or — for out-of-order input
— the next window's earliest one is before ``t + DEDUP_WINDOW``. Three point reads, exact, and
state that expires by itself: ``retention`` drops whole segments, no per-id timers.

Why not a table with ``ttl=DEDUP_WINDOW``: a ttl counts stream time since an id's last write, so
it tells "seen within the last 10 minutes of stream time". With out-of-order input that is not
"a copy less than 10 minutes away in event time" — an event 11 minutes older than its id's last
sighting would be dropped as a copy — and an event too late to judge could not be told apart.
For in-order input it would do, with one point read instead of three.

Every sighting is recorded, dropped copies too, so an id that keeps recurring within the
window stays suppressed (as Kafka Streams' deduplication example refreshes the timestamp).

Late input: an event more than ``grace`` (one dedup window) behind its task's stream time can no
longer be recorded; its window is closed. Forwarding it could duplicate, so it is dropped too
and counted in ``onceflow_late_records_dropped_total``. Retention is ``2 * window + grace``:
every window a not-late event reads is still there. The sends, the state and the consumed
offsets commit in one transaction, so a crash never forwards an id twice nor loses one.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

from onceflow import App, Context, Tumbling, WindowValue

DEDUP_WINDOW = timedelta(minutes=10)
WINDOW_MS = int(DEDUP_WINDOW.total_seconds() * 1000)

app = App("event-dedup")
events = app.topic(
    os.environ.get("ONCEFLOW_DEDUP_INPUT", "events"), key_serde="str", value_serde="bytes"
)
unique = app.topic(
    os.environ.get("ONCEFLOW_DEDUP_OUTPUT", "events-unique"), key_serde="str", value_serde="bytes"
)
seen = app.windowed_table(
    "seen",
    window=Tumbling(size=DEDUP_WINDOW),
    grace=DEDUP_WINDOW,
    retention=3 * DEDUP_WINDOW,
    default=None,
    key_serde="str",
    value_serde="json",
)


class UndeduplicableEventError(ValueError):
    """The event has no id (key) or no event time; it goes to the dead-letter topic."""


def _sighting(current: dict[str, int] | None, timestamp: int, duplicate: bool) -> dict[str, int]:
    """One window's record of an id with the event at ``timestamp`` added."""
    if current is None:
        return {"earliest": timestamp, "latest": timestamp, "duplicates": int(duplicate)}
    return {
        "earliest": min(current["earliest"], timestamp),
        "latest": max(current["latest"], timestamp),
        "duplicates": current["duplicates"] + int(duplicate),
    }


def is_duplicate(ctx: Context, event_id: str, timestamp: int) -> bool:
    """Whether ``event_id`` was seen less than ``DEDUP_WINDOW`` from ``timestamp``."""
    start = timestamp - timestamp % WINDOW_MS
    if seen.get(ctx, event_id, start) is not None:
        return True
    before = seen.get(ctx, event_id, start - WINDOW_MS)
    if before is not None and before["latest"] > timestamp - WINDOW_MS:
        return True
    after = seen.get(ctx, event_id, start + WINDOW_MS)
    return after is not None and after["earliest"] < timestamp + WINDOW_MS


def duplicates_dropped(windows: list[WindowValue[Any]]) -> int:
    """How many copies were dropped, from an id's windows (a query or the test driver)."""
    return sum(w.value["duplicates"] for w in windows)


@app.handler(events, max_retries=0)
async def dedup(ctx: Context, event_id: str | None, value: bytes | None) -> None:
    if event_id is None or ctx.timestamp < 0:
        raise UndeduplicableEventError(
            f"event at {ctx.topic}[{ctx.partition}]@{ctx.offset} has no "
            f"{'id (record key)' if event_id is None else 'event time (timestamp)'}"
        )
    duplicate = is_duplicate(ctx, event_id, ctx.timestamp)
    recorded = seen.update_windows(
        ctx, event_id, lambda current: _sighting(current, ctx.timestamp, duplicate)
    )
    if recorded and not duplicate:  # not recorded: too late to tell, dropped and counted
        await ctx.send(unique, event_id, value, headers=ctx.headers, timestamp_ms=ctx.timestamp)
