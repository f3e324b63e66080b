"""Time in the in-memory driver: final window results (emit="close"), timers, expiry by stream
time — through the real Task, with a brute-force model of what each should emit."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from onceflow import App, ConfigurationError, Context, HandlerFailedError, Hopping, Tumbling
from onceflow.tables import WindowedTable, WindowValue
from onceflow.testing import TestDriver

MINUTE = 60_000


def closing_app(
    window: Tumbling | Hopping, grace: int = 0, fail_on: str | None = None
) -> tuple[App, WindowedTable[Any, Any]]:
    """Counts per key and window; each window's final count goes to "finals" as
    "start:count". A window of key ``fail_on`` fails its on_close."""
    app = App("finals")
    source = app.topic("in", key_serde="str", value_serde="str")
    out = app.topic("finals", key_serde="str", value_serde="str")
    counts = app.windowed_table(
        "counts", window=window, grace=grace, default=0, value_serde="int64", emit="close"
    )
    seen = app.table("closed", default=0, value_serde="int64")

    @app.handler(source)
    async def count(ctx: Context, key: str, value: str) -> None:
        assert counts.add_windows(ctx, key, 1) == []  # emit="close": nothing to send per update

    @counts.on_close
    async def final(ctx: Context, key: str, window: WindowValue[int]) -> None:
        if key == fail_on:
            raise RuntimeError("cannot emit")
        seen.add(ctx, key, 1)  # a callback writes tables too
        await ctx.send(out, key, f"{window.start}:{window.value}")

    return app, counts


def finals(driver: TestDriver) -> list[tuple[str, str, int]]:
    return [(o.key, o.value, o.timestamp) for o in driver.read("finals")]


async def test_each_tumbling_window_emits_its_final_count_once_when_it_closes() -> None:
    app, counts = closing_app(Tumbling(minutes=1), grace=10_000)
    async with TestDriver(app) as driver:
        for ts in (1_000, 2_000, 59_999):
            await driver.send("in", "a", "x", timestamp=ts)
        await driver.send("in", "b", "x", timestamp=61_000)  # window [0, 60000) still in grace
        assert finals(driver) == []
        await driver.send("in", "a", "x", timestamp=5_000)  # within grace: counted
        await driver.send("in", "b", "x", timestamp=70_000)  # stream time 70000: [0, 60000) closes
        assert finals(driver) == [("a", "0:4", 59_999)]  # timestamp: the window's last ms
        await driver.send("in", "a", "x", timestamp=6_000)  # late now: dropped, counted
        assert driver.late_dropped(counts) == 1
        await driver.send("in", "c", "x", timestamp=10 * MINUTE)
        assert finals(driver) == [("a", "0:4", 59_999), ("b", "60000:2", 119_999)]
        assert driver.table("closed").get("a") == 1
        await driver.send("in", "c", "x", timestamp=10 * MINUTE + 5)
        assert len(finals(driver)) == 2  # nothing closes twice
        closed = driver.metrics.registry.get_sample_value(
            "onceflow_windows_closed_total", {"app": "finals", "store": "counts"}
        )
        assert closed == 2


async def test_hopping_windows_close_one_start_at_a_time() -> None:
    app, _ = closing_app(Hopping(size=timedelta(minutes=2), advance=timedelta(minutes=1)))
    async with TestDriver(app) as driver:
        await driver.send("in", "k", "x", timestamp=30_000)  # windows [-1m..] none, [0, 2m)
        await driver.send("in", "k", "x", timestamp=90_000)  # [0, 2m) and [1m, 3m)
        await driver.send("in", "k", "x", timestamp=2 * MINUTE)  # closes [0, 2m)
        assert [v for _, v, _ in finals(driver)] == ["0:2"]
        await driver.send("in", "k", "x", timestamp=4 * MINUTE)  # closes [1m, 3m), [2m, 4m)
        assert [v for _, v, _ in finals(driver)] == ["0:2", "60000:2", "120000:1"]


async def test_advance_time_closes_windows_without_records() -> None:
    app, _ = closing_app(Tumbling(minutes=1))
    async with TestDriver(app, partitions=2) as driver:
        await driver.send("in", "a", "x", timestamp=1_000)
        await driver.send("in", "b", "x", timestamp=1_000)
        await driver.advance_time(stream_time=timedelta(minutes=1))
        assert sorted(finals(driver)) == [("a", "0:1", 59_999), ("b", "0:1", 59_999)]
        await driver.advance_time(stream_time=timedelta(minutes=5))
        assert len(finals(driver)) == 2


async def test_a_failing_on_close_is_dead_lettered_and_the_others_still_emit() -> None:
    app, _ = closing_app(Tumbling(minutes=1), fail_on="bad")
    async with TestDriver(app) as driver:
        for key in ("bad", "good"):
            await driver.send("in", key, "x", timestamp=1_000)
        await driver.send("in", "z", "x", timestamp=MINUTE)
        assert finals(driver) == [("good", "0:1", 59_999)]
        (letter,) = driver.dead_letters
        assert letter.key == b"bad" and letter.value == (1).to_bytes(8, "big")
        assert letter.headers["onceflow.error.stage"] == "on_close"
        assert letter.headers["onceflow.source.table"] == "counts"
        assert letter.headers["onceflow.source.window_start"] == "0"
        assert driver.table("closed").get("bad") is None  # its effects are dropped


async def test_a_failing_on_close_under_error_policy_fail_fails_the_task() -> None:
    app, _ = closing_app(Tumbling(minutes=1), fail_on="bad")
    app.error_policy = "fail"
    async with TestDriver(app) as driver:
        await driver.send("in", "bad", "x", timestamp=1_000)
        with pytest.raises(HandlerFailedError, match="on_close"):
            await driver.send("in", "z", "x", timestamp=MINUTE)
        assert finals(driver) == []


def test_emit_close_needs_an_on_close_and_on_close_needs_emit_close() -> None:
    app = App("x")
    app.handler(app.topic("in"))(_noop)
    app.windowed_table("c", window=Tumbling(minutes=1), emit="close")
    with pytest.raises(ConfigurationError, match="no on_close"):
        TestDriver(app)
    updates = app.windowed_table("u", window=Tumbling(minutes=1))
    with pytest.raises(ConfigurationError, match="needs emit='close'"):
        updates.on_close(_closer)
    with pytest.raises(ConfigurationError, match="emit must be"):
        app.windowed_table("w", window=Tumbling(minutes=1), emit="final")  # type: ignore[arg-type]


async def _noop(ctx: Context, key: Any, value: Any) -> None:
    pass


async def _closer(ctx: Context, key: Any, window: WindowValue[Any]) -> None:
    pass


# -- a brute-force model of final results -----------------------------------------------------


# Anywhere, and often right on or just before a window boundary (where off-by-ones live).
TIMESTAMPS = st.one_of(
    st.integers(0, 20_000),
    st.integers(0, 40).map(lambda i: i * 500),
    st.integers(1, 40).map(lambda i: i * 500 - 1),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    records=st.lists(st.tuples(st.sampled_from("abc"), TIMESTAMPS), min_size=1, max_size=40),
    size=st.sampled_from([1_000, 3_000]),
    advance_div=st.sampled_from([1, 3]),
    grace=st.sampled_from([0, 1_500]),
)
async def test_final_results_match_a_brute_force_model(
    records: list[tuple[str, int]], size: int, advance_div: int, grace: int
) -> None:
    window: Tumbling | Hopping = (
        Tumbling(milliseconds=size)
        if advance_div == 1
        else Hopping(
            size=timedelta(milliseconds=size), advance=timedelta(milliseconds=size // advance_div)
        )
    )
    app, _ = closing_app(window, grace=grace)
    # The model: per (key, window start), the records on time for it; closed by the end.
    stream_time, on_time = -1, Counter[tuple[str, int]]()
    for key, ts in records:
        stream_time = max(stream_time, ts)
        for start, end in window.windows_for(ts):
            if stream_time < end + grace:
                on_time[(key, start)] += 1
    final_time = stream_time
    expected = sorted(
        (k, f"{s}:{n}") for (k, s), n in on_time.items() if s + size + grace <= final_time
    )
    async with TestDriver(app) as driver:
        for key, ts in records:
            await driver.send("in", key, "x", timestamp=ts)
        got = [(k, v) for k, v, _ in finals(driver)]
        assert sorted(got) == expected
        assert len(got) == len(set(got))  # no window twice
        # Emitted in closing order: by close time (= start), then key
        starts = [int(v.split(":")[0]) for _, v in got]
        assert starts == sorted(starts)


# -- timers ---------------------------------------------------------------------------------------


def timer_app(on: str = "stream_time") -> App:
    app = App("ticks")
    source = app.topic("in", key_serde="str", value_serde="str")
    out = app.topic("ticks", key_serde="str", value_serde="str")
    seen = app.table("seen", default=0, value_serde="int64")

    @app.handler(source)
    async def count(ctx: Context, key: str, value: str) -> None:
        seen.add(ctx, key, 1)

    @app.timer(every=timedelta(minutes=1), on=on)  # type: ignore[arg-type]
    async def tick(ctx: Context) -> None:
        await ctx.send(out, ctx.task_id, str(ctx.timestamp))

    return app


async def test_a_stream_time_timer_fires_once_per_boundary_crossed_with_the_input() -> None:
    async with TestDriver(timer_app()) as driver:
        await driver.send("in", "a", "x", timestamp=10_000)  # enters [0, 1m): fires at 0
        await driver.send("in", "a", "x", timestamp=50_000)
        await driver.send("in", "a", "x", timestamp=61_000)  # crosses 1m
        await driver.send("in", "a", "x", timestamp=30_000)  # out of order: no firing
        await driver.send("in", "a", "x", timestamp=5 * MINUTE + 1)  # crosses 2m..5m: once
        ticks = [(o.value, o.timestamp) for o in driver.read("ticks")]
        assert ticks == [("0", 0), ("60000", 60_000), ("300000", 300_000)]
        await driver.advance_time(stream_time=timedelta(minutes=1))
        assert [o.value for o in driver.read("ticks")][-1] == "360000"


async def test_a_wall_clock_timer_fires_on_an_idle_task_and_commits() -> None:
    now = [1_000_000]
    async with TestDriver(timer_app("wall_clock"), clock=lambda: now[0]) as driver:
        await driver.advance_time(wall_clock=timedelta(seconds=30))
        assert driver.read("ticks") == []
        await driver.advance_time(wall_clock=timedelta(seconds=30))
        assert [(o.key, o.value) for o in driver.read("ticks")] == [("0_0", "1060000")]
        await driver.advance_time(wall_clock=timedelta(minutes=10))  # late: fires once
        assert len(driver.read("ticks")) == 2


async def test_a_failing_timer_is_dead_lettered() -> None:
    app = timer_app()

    @app.timer(every=timedelta(minutes=1))
    async def broken(ctx: Context) -> None:
        raise RuntimeError("no")

    async with TestDriver(app) as driver:
        await driver.send("in", "a", "x", timestamp=1_000)
        (letter,) = driver.dead_letters
        assert letter.headers["onceflow.error.stage"] == "timer"
        assert letter.headers["onceflow.source.timer"].endswith("broken")
        assert len(driver.read("ticks")) == 1  # the other timer is unaffected


def test_timer_declarations_are_checked() -> None:
    app = App("x")
    with pytest.raises(ConfigurationError, match="positive"):
        app.timer(every=timedelta(0))(_tick)
    with pytest.raises(ConfigurationError, match="on= must be"):
        app.timer(every=timedelta(seconds=1), on="cpu")(_tick)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="async def"):
        app.timer(every=timedelta(seconds=1))(lambda ctx: None)  # type: ignore[arg-type, return-value]
    app.timer(every=timedelta(seconds=1), group="other")(_tick)
    app.handler(app.topic("in"))(_noop)
    with pytest.raises(ConfigurationError, match="no handlers"):
        TestDriver(app)


async def _tick(ctx: Context) -> None:
    pass


# -- expiry by stream time ----------------------------------------------------------------------


async def test_an_expired_window_reads_as_the_default_before_any_commit() -> None:
    app = App("expiry")
    source = app.topic("in", key_serde="str", value_serde="int64")
    out = app.topic("out", key_serde="str", value_serde="int64")
    counts = app.windowed_table(
        "counts", window=Tumbling(minutes=1), retention=timedelta(minutes=2), default=0
    )

    @app.handler(source)
    async def count(ctx: Context, key: str, start: int) -> None:
        if key == "read":
            await ctx.send(out, key, counts.get(ctx, "k", start))
        else:
            counts.add(ctx, key, 1)

    async with TestDriver(app, auto_commit=False) as driver:
        await driver.send("in", "k", 0, timestamp=1_000)
        await driver.send("in", "read", 0, timestamp=2 * MINUTE)  # retention 2m: still there
        await driver.send("in", "read", 0, timestamp=2 * MINUTE + 1_001)  # start < st - 2m
        await driver.commit()
        assert [o.value for o in driver.read("out")] == [1, 0]
        assert driver.table(counts).windows("k") == []
