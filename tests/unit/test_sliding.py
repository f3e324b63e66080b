"""Sliding windows (``SlidingWindowedTable``) in the in-memory driver, against the definition.

Values are the lists of the records' event times, so a window's value says exactly which records
it holds. The definition (Kafka Streams' ``SlidingWindows``): each record at ``t`` has the window
``[max(0, t - size), ...]`` of length ``size`` ending at ``t`` (or ``[0, size]``), and the window
starting at ``t + 1`` if any record lies in ``(t, t + 1 + size]``; a window holds every record
between its bounds, both inclusive.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onceflow import App, ConfigurationError, Context, Sliding, SlidingWindowedTable
from onceflow.testing import TestDriver

Windows = dict[int, list[int]]  # start -> sorted event times


def build(
    size: int, grace: int = 0, retention: int | None = None
) -> tuple[App, Any, Any, SlidingWindowedTable[Any, Any]]:
    app = App("sliding-test")
    source = app.topic("events", key_serde="str", value_serde="json")
    out = app.topic("windows", key_serde="str", value_serde="json")
    table = app.windowed_table(
        "w",
        window=Sliding(size=timedelta(milliseconds=size)),
        grace=grace,
        retention=retention,
        default=list,
        value_serde="json",
    )

    @app.handler(source)
    async def track(ctx: Context, key: str, times: list[int] | None) -> None:
        for t in [ctx.timestamp] if times is None else times:
            written = table.update_windows(ctx, key, lambda v, t=t: [*v, t], timestamp=t)
            await ctx.send(out, key, [[w.start, w.end, sorted(w.value)] for w in written])

    return app, source, out, table


def defined(times: list[int], size: int) -> Windows:
    starts = set()
    for t in times:
        starts.add(max(0, t - size))
        if any(t < r <= t + 1 + size for r in times):
            starts.add(t + 1)
    return {s: sorted(r for r in times if s <= r <= s + size) for s in starts}


def committed(driver: TestDriver, table: SlidingWindowedTable[Any, Any], key: str) -> Windows:
    windows = driver.table(table).windows(key)
    assert all(w.end == w.start + table.window.size_ms for w in windows)
    return {w.start: sorted(w.value) for w in windows}


def without_partly_late(times: list[int], size: int, grace: int) -> list[int]:
    """Drop the records some but not all of whose windows are closed when they come: which of
    their windows they still update depends on the order the windows were created in (as in
    Kafka Streams), which the definition does not say. Dropping them changes no stream time."""
    kept, stream_time = [], -1
    for t in times:
        stream_time = max(stream_time, t)
        if t + size + grace < stream_time or t + grace >= stream_time:
            kept.append(t)  # wholly late (dropped, counted) or wholly on time
    return kept


@settings(max_examples=200, deadline=None)
@given(
    raw=st.lists(st.integers(0, 80), max_size=40),
    size=st.integers(1, 20),
    grace=st.integers(0, 40),
    extra=st.none() | st.integers(0, 60),
)
def test_sliding_windows_match_the_definition(
    raw: list[int], size: int, grace: int, extra: int | None
) -> None:
    times = without_partly_late(raw, size, grace)
    retention = 2 * size + grace + (extra or 0)

    async def run() -> tuple[Windows, list[Any], int]:
        app, source, out, table = build(size, grace, None if extra is None else retention)
        async with TestDriver(app) as driver:
            for t in times:
                await driver.send(source, "k", None, timestamp=t)
            return (
                committed(driver, table, "k"),
                [o.value for o in driver.read(out)],
                (driver.late_dropped(table)),
            )

    final, results, late = asyncio.run(run())
    accepted, stream_time = [], -1
    for t, written in zip(times, results, strict=True):
        stream_time = max(stream_time, t)
        if t + size + grace < stream_time:
            assert written == []  # late for all its windows
            continue
        accepted.append(t)
        for start, end, values in written:  # what it wrote holds exactly the records so far
            assert values == sorted(r for r in accepted if start <= r <= end)
        assert any(start <= t <= end for start, end, _ in written)
    assert late == len(times) - len(accepted)
    expected = defined(accepted, size)
    assert final == {s: v for s, v in expected.items() if s >= stream_time - retention}


async def test_windows_of_three_records() -> None:
    app, source, out, table = build(size=10, retention=1000)
    async with TestDriver(app) as driver:
        for t in (10, 15, 30):
            await driver.send(source, "k", None, timestamp=t)
        assert [o.value for o in driver.read(out)] == [
            [[0, 10, [10]]],
            [[5, 15, [10, 15]], [11, 21, [15]]],  # 15's left window; 10's right one
            [[20, 30, [30]]],  # 15's right window [16, 26] would be empty: not created
        ]
        assert committed(driver, table, "k") == {0: [10], 5: [10, 15], 11: [15], 20: [30]}


async def test_window_bounds_are_inclusive() -> None:
    app, source, _, table = build(size=10, retention=1000)
    async with TestDriver(app) as driver:
        for t in (10, 21, 31):  # 21 is the last instant of 10's right window [11, 21]
            await driver.send(source, "k", None, timestamp=t)
        assert committed(driver, table, "k") == {0: [10], 11: [21], 21: [21, 31], 22: [31]}


async def test_an_out_of_order_record_creates_and_updates_windows() -> None:
    app, source, _, table = build(size=10, grace=20)
    async with TestDriver(app) as driver:
        for t in (10, 30, 25, 3):  # 3 is early: its left window is [0, 10]
            await driver.send(source, "k", None, timestamp=t)
        assert committed(driver, table, "k") == defined([10, 30, 25, 3], 10)


async def test_a_partly_late_record_updates_only_its_open_windows() -> None:
    app, source, out, table = build(size=10, retention=1000)
    async with TestDriver(app) as driver:
        for t in (10, 25, 14, 16):  # at stream time 25, 14 is wholly late; 16 partly
            await driver.send(source, "k", None, timestamp=t)
        assert driver.late_dropped(table) == 2
        # 16's windows ending at 16 and 21 are closed; [15, 25] takes it, [17, 27] is new
        assert driver.read(out)[-1].value == [[15, 25, [16, 25]], [17, 27, [25]]]
        assert committed(driver, table, "k") == {0: [10], 15: [16, 25], 17: [25]}


async def test_get_and_fetch_in_a_handler_see_its_own_writes() -> None:
    app = App("sliding-read")
    source = app.topic("events", key_serde="str", value_serde="json")
    out = app.topic("seen", key_serde="str", value_serde="json")
    table = app.windowed_table(
        "w", window=Sliding(size=timedelta(milliseconds=10)), grace=10, default=0
    )

    @app.handler(source)
    async def track(ctx: Context, key: str, times: list[int]) -> None:
        for t in times:
            table.add_windows(ctx, key, 1, timestamp=t)
        windows = table.fetch(ctx, key, 0, 100)
        await ctx.send(
            out, key, [[w.start, w.value, table.get(ctx, key, w.start)] for w in windows]
        )

    async with TestDriver(app) as driver:
        await driver.send(source, "k", [10, 15], timestamp=15)
        assert driver.read(out)[0].value == [[0, 1, 1], [5, 2, 2], [11, 1, 1]]
        assert table.kind == "sliding"


def test_declaration() -> None:
    app = App("decl")
    table = app.windowed_table("w", window=Sliding(size=timedelta(minutes=5)), grace=1000)
    assert isinstance(table, SlidingWindowedTable)
    assert table.retention_ms == 10 * 60_000 + 1000  # Kafka Streams' minimum: 2 * size + grace
    with pytest.raises(ConfigurationError, match="emit='close' is not supported"):
        app.windowed_table("x", window=Sliding(size=timedelta(minutes=5)), emit="close")
    with pytest.raises(ConfigurationError, match="size must be positive"):
        Sliding(size=timedelta(0))
