"""Session windows (``SessionTable``) in the in-memory driver, against brute-force models.

Values are the lists of the records' event times and ``merge`` concatenates them, so a session's
value says exactly which records it holds, whatever order they merged in.
"""

from __future__ import annotations

import asyncio
import operator
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onceflow import App, ConfigurationError, Context, Session, SessionTable, Sliding, Tumbling
from onceflow.testing import TestDriver

Sessions = list[tuple[int, int, list[int]]]  # (start, end, sorted event times), by start


def build(
    gap: int, grace: int = 0, retention: int | None = None
) -> tuple[App, Any, Any, SessionTable[Any, Any]]:
    app = App("sessions-test")
    source = app.topic("events", key_serde="str", value_serde="json")
    out = app.topic("sessions", key_serde="str", value_serde="json")
    table = app.windowed_table(
        "s",
        window=Session(gap=timedelta(milliseconds=gap)),
        merge=operator.add,
        grace=grace,
        retention=retention,
        default=list,
        value_serde="json",
    )

    @app.handler(source)
    async def track(ctx: Context, key: str, times: list[int] | None) -> None:
        # A record carries the event times to add (default: its own timestamp), so one handler
        # call can update several sessions of a key before anything is committed.
        for t in [ctx.timestamp] if times is None else times:
            s = table.update(ctx, key, lambda v, t=t: [*v, t], timestamp=t)
            await ctx.send(out, key, None if s is None else [s.start, s.end, sorted(s.value)])

    return app, source, out, table


def committed(driver: TestDriver, table: SessionTable[Any, Any], key: str) -> Sessions:
    return [(w.start, w.end, sorted(w.value)) for w in driver.table(table).windows(key)]


# -- the brute-force models -------------------------------------------------------------------


def model(
    records: list[tuple[str, int]], gap: int, grace: int, retention: int
) -> tuple[dict[str, Sessions], list[list[Any] | None], int]:
    """Sessions per key at the end, the per-record results and the late count, computed on plain
    lists: join the open sessions within ``gap``; late when the merged one is closed; sessions
    past retention are gone."""
    sessions: dict[str, Sessions] = {}
    results: list[list[Any] | None] = []
    late, stream_time = 0, -1
    for key, t in records:
        stream_time = max(stream_time, t)
        for k in sessions:
            sessions[k] = [s for s in sessions[k] if s[1] >= stream_time - retention]
        mine = sessions.setdefault(key, [])
        joined = [
            s
            for s in mine
            if s[1] + gap + grace >= stream_time and s[1] >= t - gap and s[0] <= t + gap
        ]
        start = min([t] + [s[0] for s in joined])
        end = max([t] + [s[1] for s in joined])
        if end + gap + grace < stream_time:
            late += 1
            results.append(None)
            continue
        merged = (start, end, sorted([t, *(x for s in joined for x in s[2])]))
        sessions[key] = sorted([s for s in mine if s not in joined] + [merged])
        results.append(list(merged))
    for k in sessions:
        sessions[k] = [s for s in sessions[k] if s[1] >= stream_time - retention]
    return sessions, results, late


def clusters(times: list[int], gap: int) -> Sessions:
    """The definition: sorted event times, cut wherever two neighbours are more than gap apart."""
    out: Sessions = []
    for t in sorted(times):
        if out and t - out[-1][1] <= gap:
            out[-1] = (out[-1][0], t, [*out[-1][2], t])
        else:
            out.append((t, t, [t]))
    return out


async def run(
    records: list[tuple[str, int]], gap: int, grace: int, retention: int | None
) -> tuple[dict[str, Sessions], list[list[Any] | None], int]:
    app, source, out, table = build(gap, grace, retention)
    async with TestDriver(app) as driver:
        for key, t in records:
            await driver.send(source, key, None, timestamp=t)
        final = {key: committed(driver, table, key) for key, _ in records}
        return final, [o.value for o in driver.read(out)], driver.late_dropped(table)


records_st = st.lists(st.tuples(st.sampled_from("ab"), st.integers(0, 200)), max_size=40)


@settings(max_examples=150, deadline=None)
@given(
    records=records_st,
    gap=st.integers(1, 40),
    grace=st.integers(0, 40),
    extra=st.none() | st.integers(0, 100),
)
def test_sessions_match_the_model(
    records: list[tuple[str, int]], gap: int, grace: int, extra: int | None
) -> None:
    retention = None if extra is None else gap + grace + extra
    final, results, late = asyncio.run(run(records, gap, grace, retention))
    expected, expected_results, expected_late = model(
        records, gap, grace, gap + grace if retention is None else retention
    )
    assert results == expected_results
    assert late == expected_late
    assert final == {k: expected.get(k, []) for k in final}


@settings(max_examples=100, deadline=None)
@given(
    times=st.lists(st.integers(0, 500), max_size=40),
    gap=st.integers(1, 40),
    disorder=st.integers(0, 60),
    data=st.data(),
)
def test_records_out_of_order_within_grace_make_the_defined_sessions(
    times: list[int], gap: int, disorder: int, data: st.DataObject
) -> None:
    # Shuffle, then keep each record no further than `disorder` behind the latest one seen:
    # with grace >= disorder nothing is late, and the sessions are the definition's.
    shuffled = data.draw(st.permutations(times))
    bounded, latest = [], -1
    for t in shuffled:
        t = max(t, latest - disorder)
        latest = max(latest, t)
        bounded.append(t)
    records = [("k", t) for t in bounded]
    final, _, late = asyncio.run(run(records, gap, disorder, 10_000))
    assert late == 0
    assert final.get("k", []) == clusters(bounded, gap)


# -- examples ---------------------------------------------------------------------------------


async def test_a_record_bridging_two_sessions_merges_them() -> None:
    app, source, out, table = build(gap=10, grace=10)
    async with TestDriver(app) as driver:
        for t in (100, 105, 120):
            await driver.send(source, "k", None, timestamp=t)
        assert committed(driver, table, "k") == [(100, 105, [100, 105]), (120, 120, [120])]
        await driver.send(source, "k", None, timestamp=115)  # 10 from both: inclusive gap
        assert committed(driver, table, "k") == [(100, 120, [100, 105, 115, 120])]
        assert driver.read(out)[-1].value == [100, 120, [100, 105, 115, 120]]


async def test_a_record_only_for_a_closed_session_is_late() -> None:
    app, source, out, table = build(gap=10, grace=5)
    async with TestDriver(app) as driver:
        await driver.send(source, "k", None, timestamp=100)
        await driver.send(source, "k", None, timestamp=200)  # [100,100] closed: 100+10+5 < 200
        await driver.send(source, "k", None, timestamp=185)  # joins nothing open: 185+15 >= 200
        await driver.send(source, "k", None, timestamp=184)  # joins [185,185]: merged end 185
        await driver.send(source, "k", None, timestamp=170)  # alone and closed: late
        assert driver.late_dropped(table) == 1
        assert [o.value for o in driver.read(out)][-1] is None
        # 100 is past retention (gap + grace = 15 behind stream time 200): gone
        assert committed(driver, table, "k") == [(184, 185, [184, 185]), (200, 200, [200])]


async def test_a_closed_session_is_final_even_within_retention() -> None:
    app, source, _, table = build(gap=10, retention=1000)
    async with TestDriver(app) as driver:
        for t in (0, 20, 10):  # at 20, [0,0] is closed (0 + gap < 20); 10 is within gap of both
            await driver.send(source, "k", None, timestamp=t)
        assert committed(driver, table, "k") == [(0, 0, [0]), (10, 20, [10, 20])]


async def test_one_handler_call_sees_its_own_session_writes() -> None:
    app, source, out, table = build(gap=10, grace=100)
    async with TestDriver(app) as driver:
        await driver.send(source, "k", [0, 5, 20, 12, 40], timestamp=50)
        assert [o.value for o in driver.read(out)] == [
            [0, 0, [0]],
            [0, 5, [0, 5]],
            [20, 20, [20]],
            [0, 20, [0, 5, 12, 20]],
            [40, 40, [40]],
        ]
        assert committed(driver, table, "k") == [(0, 20, [0, 5, 12, 20]), (40, 40, [40])]


async def test_sessions_reads_hide_what_stream_time_expired_before_any_commit() -> None:
    app = App("sessions-read")
    source = app.topic("events", key_serde="str", value_serde="str")
    out = app.topic("seen", key_serde="str", value_serde="json")
    table = app.windowed_table(
        "s",
        window=Session(gap=timedelta(milliseconds=10)),
        merge=operator.add,
        retention=28,
        default=0,
    )

    @app.handler(source)
    async def track(ctx: Context, key: str, value: str) -> None:
        table.add(ctx, key, 1)
        await ctx.send(out, key, [[w.start, w.end, w.value] for w in table.sessions(ctx, key)])

    async with TestDriver(app, auto_commit=False) as driver:
        for t in (0, 3, 30, 34):
            await driver.send(source, "k", "x", timestamp=t)
        await driver.commit()
        assert [o.value for o in driver.read(out)] == [
            [[0, 0, 1]],
            [[0, 3, 2]],
            [[0, 3, 2], [30, 30, 1]],  # retention 28: [0,3] still kept at stream time 30
            [[30, 34, 2]],  # stream time 34 hides sessions ending before 6, with no commit
        ]
        assert [(w.start, w.end, w.value) for w in driver.table(table).windows("k")] == [
            (30, 34, 2)
        ]


async def test_the_driver_view_filters_sessions_by_start() -> None:
    app, source, _, table = build(gap=10, retention=1000)
    async with TestDriver(app) as driver:
        for t in (0, 5, 100, 300):
            await driver.send(source, "k", None, timestamp=t)
        view = driver.table(table)
        assert [w.start for w in view.windows("k", 1, 300)] == [100, 300]
        assert [w.start for w in view.windows("k", 0, 99)] == [0]


# -- declaration ------------------------------------------------------------------------------


def test_merge_is_required_for_sessions_and_rejected_for_other_windows() -> None:
    app = App("decl")
    with pytest.raises(ConfigurationError, match="merge= is required"):
        app.windowed_table("a", window=Session(gap=timedelta(seconds=1)))  # type: ignore[call-overload]
    with pytest.raises(ConfigurationError, match="merge="):
        app.windowed_table("b", window=Tumbling(seconds=1), merge=operator.add)  # type: ignore[call-overload]
    with pytest.raises(ConfigurationError, match="merge="):
        app.windowed_table("c", window=Sliding(size=timedelta(seconds=1)), merge=operator.add)  # type: ignore[call-overload]
    assert app.tables == {}


def test_emit_close_and_bad_settings_are_rejected() -> None:
    app = App("decl")
    gap = Session(gap=timedelta(seconds=1))
    with pytest.raises(ConfigurationError, match="emit='close' is not supported"):
        app.windowed_table("a", window=gap, merge=operator.add, emit="close")
    with pytest.raises(ConfigurationError, match="grace must be >= 0"):
        app.windowed_table("b", window=gap, merge=operator.add, grace=-1)
    with pytest.raises(ConfigurationError, match="merge must be a function"):
        app.windowed_table("c", window=gap, merge=3)  # type: ignore[call-overload]
    with pytest.raises(ConfigurationError, match="gap must be positive"):
        Session(gap=timedelta(0))


def test_retention_and_segments() -> None:
    app = App("decl")
    table = app.windowed_table(
        "s", window=Session(gap=timedelta(minutes=5)), merge=operator.add, grace=60_000
    )
    assert isinstance(table, SessionTable)
    assert table.kind == "session"
    assert table.retention_ms == 6 * 60_000
    assert table.segment_interval_ms == 5 * 60_000
    longer = app.windowed_table(
        "t",
        window=Session(gap=timedelta(minutes=5)),
        merge=operator.add,
        retention=timedelta(hours=1),
    )
    assert longer.retention_ms == 3_600_000
