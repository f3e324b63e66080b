"""The in-memory TestDriver runs apps through the real Task: outputs, tables, dead letters,
retries, error policy, windows, late records, partition scoping and stream time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from onceflow import (
    App,
    ConfigurationError,
    Context,
    CopartitioningError,
    HandlerFailedError,
    Hopping,
    Settings,
    Tumbling,
)
from onceflow.partitioner import partition_for_key
from onceflow.testing import TestDriver

MINUTE = 60_000


def echo_app(calls: list[tuple[str, str]] | None = None) -> App:
    """in -> out unchanged; keys starting with "poison" raise; ``calls`` records every call."""
    app = App("echo")
    source = app.topic("in", key_serde="str", value_serde="str")
    out = app.topic("out", key_serde="str", value_serde="str")
    calls = [] if calls is None else calls

    @app.handler(source)
    async def echo(ctx: Context, key: str, value: str) -> None:
        calls.append((key, value))
        await ctx.send(out, key, value, headers=[("seen-at", str(ctx.stream_time).encode())])
        if key.startswith("poison"):
            raise ValueError(f"poison key {key!r}")

    return app


def totals_app(**app_options: Any) -> App:
    """Sums int values per key in a table and emits the running total."""
    app = App("totals", **app_options)
    source = app.topic("payments", key_serde="str", value_serde="int64")
    out = app.topic("totals-out", key_serde="str", value_serde="int64")
    totals = app.table("totals", default=0, value_serde="int64")

    @app.handler(source)
    async def total(ctx: Context, user: str, amount: int) -> None:
        await ctx.send(out, user, totals.add(ctx, user, amount))
        if amount < 0:
            raise ValueError("refunds are not supported")

    return app


def no_backoff(**overrides: Any) -> Settings:
    return Settings.model_construct(retry_backoff_ms=0, **overrides)


async def test_outputs_are_deserialized_with_partition_offset_headers_and_timestamps() -> None:
    async with TestDriver(echo_app(), partitions=4, clock=lambda: 42) as driver:
        await driver.send("in", "a", "1", timestamp=1_000, headers=[("trace", b"t1")])
        await driver.send("in", "a", "2", timestamp=datetime(1970, 1, 1, 0, 0, 2, tzinfo=UTC))
        await driver.send("in", "b", "3", timestamp=datetime(1970, 1, 1, 0, 0, 3))  # naive: UTC
        await driver.send("in", "c", "4", partition=3)
        out = driver.read("out")
    assert [(o.key, o.value) for o in out] == [("a", "1"), ("a", "2"), ("b", "3"), ("c", "4")]
    # output partitions: murmur2 of the output key, as the producer's default partitioner
    assert [o.partition for o in out] == [partition_for_key(k.encode(), 4) for k in "aabc"]
    assert [o.offset for o in out[:2]] == [0, 1]  # one output partition: offsets go on
    # sent without a timestamp: outputs carry their input's event time, as in Kafka Streams
    assert [o.timestamp for o in out] == [1_000, 2_000, 3_000, 42]
    assert out[0].headers == [("seen-at", b"1000")]
    assert out[1].headers == [("seen-at", b"2000")]
    assert driver.stream_time(partition_for_key(b"b", 4)) == 3_000
    assert driver.stream_time(3) == 42  # "c" had no timestamp: the clock's


async def test_source_offsets_count_per_partition_in_dead_letter_headers() -> None:
    async with TestDriver(echo_app(), partitions=2) as driver:
        for i in range(3):
            await driver.send("in", "poison", str(i), partition=1)
        await driver.send("in", "poison", "x", partition=0)
    offsets = [
        (d.headers["onceflow.source.partition"], d.headers["onceflow.source.offset"])
        for d in driver.dead_letters
    ]
    assert offsets == [("1", "0"), ("1", "1"), ("1", "2"), ("0", "0")]


async def test_table_state_is_committed_per_key_and_read_back() -> None:
    app = totals_app()
    async with TestDriver(app, partitions=3) as driver:
        for user, amount in [("ann", 5), ("bob", 7), ("ann", 10)]:
            await driver.send("payments", user, amount)
        assert driver.table("totals").get("ann") == 15
        assert driver.table(app.tables["totals"]).get("bob") == 7
        assert driver.table("totals").get("nobody") is None
        assert driver.table("totals").get("nobody", default=0) == 0
        assert [(o.key, o.value) for o in driver.read("totals-out")] == [
            ("ann", 5),
            ("bob", 7),
            ("ann", 15),
        ]
        # The changelog carries whole values (never deltas), on the task's partition.
        changelog = driver.read("totals-totals-changelog")
        assert [(o.key, o.value) for o in changelog][-1] == (b"ann", (15).to_bytes(8, "big"))
        assert "totals-totals-changelog" not in driver.read_all()
        with pytest.raises(ConfigurationError, match="not windowed"):
            driver.table("totals").windows("ann")
        with pytest.raises(ConfigurationError, match="unknown table"):
            driver.table("nope")


async def test_without_auto_commit_nothing_is_visible_before_commit() -> None:
    async with TestDriver(totals_app(), auto_commit=False) as driver:
        await driver.send("payments", "ann", 5)
        await driver.send("payments", "ann", 6)
        assert driver.read("totals-out") == []
        assert driver.table("totals").get("ann") is None
        await driver.commit()
        assert [o.value for o in driver.read("totals-out")] == [5, 11]
        assert driver.table("totals").get("ann") == 11
        driver.clear()
        assert driver.read_all() == {}


async def test_undecodable_input_goes_to_the_dead_letter_topic() -> None:
    calls: list[tuple[str, str]] = []
    app = echo_app(calls)
    async with TestDriver(app, partitions=3) as driver:
        await driver.send_raw("in", b"k", b"\xff\xfe", timestamp=7, headers=[("trace", b"t9")])
        await driver.send("in", "k", "fine")
    assert calls == [("k", "fine")]
    assert [o.value for o in driver.read("out")] == ["fine"]
    (dead,) = driver.dead_letters
    assert (dead.key, dead.value, dead.timestamp) == (b"k", b"\xff\xfe", 7)
    assert dead.headers["onceflow.source.topic"] == "in"
    assert dead.headers["onceflow.source.partition"] == str(partition_for_key(b"k", 3))
    assert dead.headers["onceflow.source.offset"] == "0"
    assert dead.headers["onceflow.source.timestamp"] == "7"
    assert dead.headers["onceflow.error.stage"] == "deserialize"
    assert dead.headers["onceflow.error.type"] == "SerdeError"
    assert dead.headers["onceflow.original.trace"] == "t9"
    assert [o.key for o in driver.read(app.dlq_topic)] == [b"k"]  # undeclared topic: bytes


async def test_a_failing_handler_is_retried_then_dead_lettered_without_its_effects() -> None:
    app = totals_app()
    async with TestDriver(app, settings=no_backoff(max_retries=2)) as driver:
        await driver.send("payments", "ann", 5)
        await driver.send("payments", "ann", -1)  # stages a send and a write, then raises
        await driver.send("payments", "ann", 1)
        assert driver.table("totals").get("ann") == 6  # the failed attempts left nothing
        assert [o.value for o in driver.read("totals-out")] == [5, 6]
        (dead,) = driver.dead_letters
        assert dead.headers["onceflow.error.stage"] == "handler"
        assert dead.headers["onceflow.error.type"] == "ValueError"
        assert "refunds" in dead.headers["onceflow.error.message"]


@pytest.mark.parametrize(
    ("settings_retries", "handler_retries", "calls"), [(2, None, 3), (0, None, 1), (5, 1, 2)]
)
async def test_retries_are_honored(
    settings_retries: int, handler_retries: int | None, calls: int
) -> None:
    app = App("retries")
    source = app.topic("in", key_serde="str", value_serde="str")
    attempts: list[int] = []

    @app.handler(source, max_retries=handler_retries)
    async def flaky(ctx: Context, key: str, value: str) -> None:
        attempts.append(ctx.offset)
        raise RuntimeError("always")

    async with TestDriver(app, settings=no_backoff(max_retries=settings_retries)) as driver:
        await driver.send("in", "k", "v")
    assert attempts == [0] * calls
    assert len(driver.dead_letters) == 1


async def test_a_handler_that_recovers_within_its_retries_is_not_dead_lettered() -> None:
    app = App("flaky")
    source = app.topic("in", key_serde="str", value_serde="str")
    out = app.topic("out", key_serde="str", value_serde="str")
    attempts: list[str] = []

    @app.handler(source, max_retries=3)
    async def flaky(ctx: Context, key: str, value: str) -> None:
        attempts.append(value)
        await ctx.send(out, key, f"attempt {len(attempts)}")
        if len(attempts) < 3:
            raise ConnectionError("transient")

    async with TestDriver(app) as driver:
        await driver.send("in", "k", "v")
    assert [o.value for o in driver.read("out")] == ["attempt 3"]  # one send, the last one
    assert driver.dead_letters == []


async def test_error_policy_fail_raises_and_aborts_the_open_transaction() -> None:
    app = totals_app(error_policy="fail")
    async with TestDriver(app, auto_commit=False, settings=no_backoff(max_retries=1)) as driver:
        await driver.send("payments", "ann", 5, timestamp=1_000)
        await driver.commit()
        await driver.send("payments", "ann", 7, timestamp=2_000)  # in the transaction that aborts
        with pytest.raises(HandlerFailedError, match=r"payments\[0\]@2.*Error policy is 'fail'"):
            await driver.send("payments", "ann", -1, timestamp=3_000)
        await driver.commit()
        assert [o.value for o in driver.read("totals-out")] == [5]
        assert driver.table("totals").get("ann") == 5
        assert driver.dead_letters == []
        assert driver.stream_time(0) == 1_000  # the rebuilt task starts from the committed one
        await driver.send("payments", "ann", 1, timestamp=4_000)  # the task was rebuilt: goes on
        await driver.commit()
        assert driver.table("totals").get("ann") == 6


async def test_error_policy_from_settings() -> None:
    settings = no_backoff(error_policy="fail", max_retries=0)
    async with TestDriver(echo_app(), settings=settings) as driver:
        with pytest.raises(HandlerFailedError, match="ValueError: poison key"):
            await driver.send("in", "poison", "x")
        assert driver.read("out") == []


async def test_hopping_windows_update_every_window_of_a_record() -> None:
    app = App("hops")
    source = app.topic("clicks", key_serde="str", value_serde="str")
    out = app.topic("out", key_serde="str", value_serde="json")
    window = Hopping(size=timedelta(minutes=10), advance=timedelta(minutes=5))
    clicks = app.windowed_table("clicks", window=window, default=0, value_serde="int64")

    @app.handler(source)
    async def count(ctx: Context, key: str, value: str) -> None:
        updated = clicks.add_windows(ctx, key, 1)
        await ctx.send(out, key, [[w.start, w.value] for w in updated])

    async with TestDriver(app, partitions=2) as driver:
        await driver.send("clicks", "u", "x", timestamp=12 * MINUTE)
        await driver.send("clicks", "u", "x", timestamp=14 * MINUTE)
        await driver.send("clicks", "u", "x", timestamp=16 * MINUTE)
        assert [o.value for o in driver.read(out)] == [
            [[5 * MINUTE, 1], [10 * MINUTE, 1]],
            [[5 * MINUTE, 2], [10 * MINUTE, 2]],
            [[10 * MINUTE, 3], [15 * MINUTE, 1]],
        ]
        windows = driver.table(clicks).windows("u")
        # [5, 15) is gone: retention is size + grace, so stream time 16 expires starts < 6
        assert [(w.start, w.end, w.value) for w in windows] == [
            (10 * MINUTE, 20 * MINUTE, 3),
            (15 * MINUTE, 25 * MINUTE, 1),
        ]
        assert driver.table(clicks).windows("u", from_ms=15 * MINUTE) == [windows[1]]
        assert driver.table(clicks).windows("nobody") == []


async def test_late_records_are_dropped_and_counted_and_grace_is_honored() -> None:
    app = App("late")
    source = app.topic("in", key_serde="str", value_serde="str")
    strict = app.windowed_table("strict", window=Tumbling(minutes=1), default=0)
    lenient = app.windowed_table("lenient", window=Tumbling(minutes=1), grace=30_000, default=0)

    @app.handler(source)
    async def count(ctx: Context, key: str, value: str) -> None:
        strict.add(ctx, key, 1)
        lenient.add(ctx, key, 1)

    async with TestDriver(app) as driver:
        await driver.send("in", "k", "a", timestamp=30_000)
        await driver.send("in", "k", "b", timestamp=80_000)  # stream time 80 s: [0, 60 s) closed
        await driver.send("in", "k", "c", timestamp=59_999)  # late for strict, not for lenient
        assert (driver.late_dropped(strict), driver.late_dropped(lenient)) == (1, 0)
        assert [(w.start, w.value) for w in driver.table(lenient).windows("k")] == [
            (0, 2),
            (60_000, 1),
        ]
        await driver.send("in", "k", "d", timestamp=95_000)  # stream time 95 s: lenient closes
        await driver.send("in", "k", "e", timestamp=1)  # late for both
        assert driver.late_dropped(strict) == 2
        assert driver.late_dropped("lenient") == 1
        assert driver.stream_time() == 95_000
        assert [w.value for w in driver.table(strict).windows("k")] == [2]  # [60 s, 120 s)
        assert [(w.start, w.value) for w in driver.table(lenient).windows("k")] == [(60_000, 2)]


async def test_writing_a_key_of_another_partition_goes_to_the_dead_letter_topic() -> None:
    app = App("scoped")
    source = app.topic("in", key_serde="str", value_serde="str")
    latest = app.table("latest", value_serde="str")

    @app.handler(source)
    async def remember(ctx: Context, key: str, value: str) -> None:
        latest.set(ctx, value, key)  # keyed by the value: the wrong partition, mostly

    partitions = 4
    same = next(f"v{i}" for i in range(100) if _p(f"v{i}", partitions) == _p("k", partitions))
    other = next(f"v{i}" for i in range(100) if _p(f"v{i}", partitions) != _p("k", partitions))
    async with TestDriver(app, partitions=partitions, settings=no_backoff(max_retries=1)) as d:
        await d.send("in", "k", same)
        await d.send("in", "k", other)
        assert d.table(latest).get(same) == "k"
        assert d.table(latest).get(other) is None
        (dead,) = d.dead_letters
        assert dead.headers["onceflow.error.type"] == "WrongPartitionError"
        assert (
            f"belongs to partition {_p(other, partitions)}"
            in dead.headers["onceflow.error.message"]
        )


def _p(key: str, partitions: int) -> int:
    return partition_for_key(key.encode(), partitions)


async def test_stream_time_is_per_task_and_never_goes_back() -> None:
    app = echo_app()
    async with TestDriver(app, partitions=2) as driver:
        assert driver.stream_time(0) == driver.stream_time(1) == -1
        await driver.send("in", "k", "1", timestamp=5_000, partition=0)
        await driver.send("in", "k", "2", timestamp=3_000, partition=0)
        await driver.send("in", "k", "3", timestamp=1_000, partition=1)
        assert (driver.stream_time(0), driver.stream_time(1)) == (5_000, 1_000)
        # ctx.stream_time includes the record being handled
        assert [o.headers for o in driver.read("out")] == [
            [("seen-at", b"5000")],
            [("seen-at", b"5000")],
            [("seen-at", b"1000")],
        ]
        with pytest.raises(ConfigurationError, match="no task 0_2"):
            driver.stream_time(2)


async def test_copartitioning_and_unknown_topics_are_configuration_errors() -> None:
    app = App("joined")
    left = app.topic("left", key_serde="str", value_serde="str")
    right = app.topic("right", key_serde="str", value_serde="str")

    @app.handler(left, right)
    async def join(ctx: Context, key: str, value: str) -> None: ...

    with pytest.raises(CopartitioningError, match="left"):
        TestDriver(app, partitions={"left": 2, "right": 3})
    driver = TestDriver(app, partitions={"left": 2, "right": 2})
    with pytest.raises(ConfigurationError, match="has no handler; the sources are left, right"):
        await driver.send("nowhere", "k", "v")
    await driver.close()
    await driver.close()  # safe twice


async def test_settings_app_id_renames_the_app() -> None:
    app = echo_app()
    async with TestDriver(app, settings=no_backoff(app_id="renamed")) as driver:
        await driver.send("in", "fine", "x")
        await driver.send("in", "poison", "x")
        assert driver.read_all().keys() == {"out", "renamed-dlq"}
        assert len(driver.dead_letters) == 1


async def test_a_late_record_is_counted_once_even_when_its_handler_is_retried() -> None:
    app = App("late-retried")
    source = app.topic("in", key_serde="str", value_serde="str")
    counts = app.windowed_table("counts", window=Tumbling(minutes=1), default=0)

    @app.handler(source)
    async def count(ctx: Context, key: str, value: str) -> None:
        counts.add(ctx, key, 1)
        if value == "boom":
            raise ValueError("boom")

    async with TestDriver(app, settings=no_backoff(max_retries=3)) as driver:
        await driver.send("in", "k", "ok", timestamp=5 * MINUTE)
        await driver.send("in", "k", "ok", timestamp=1)  # late: counted once
        await driver.send("in", "k", "boom", timestamp=2)  # late, then dead-lettered
        assert len(driver.dead_letters) == 1
        assert driver.late_dropped(counts) == 1
