"""Tumbling and hopping windows: Kafka Streams' TimeWindows semantics, boundaries and lateness."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from onceflow.errors import ConfigurationError
from onceflow.windows import Hopping, Tumbling, to_millis

MINUTE = 60_000
TIMESTAMPS = st.integers(min_value=0, max_value=2**53)


@st.composite
def hopping(draw: st.DrawFn, max_size: int = 10**9) -> Hopping:
    size = draw(st.integers(min_value=1, max_value=max_size))
    # At most ~100 windows per record keeps each example fast; the arithmetic does not care.
    advance = draw(st.integers(min_value=max(1, size // 100), max_value=size))
    return Hopping(size=timedelta(milliseconds=size), advance=timedelta(milliseconds=advance))


def brute_force_windows(size: int, advance: int, ts: int) -> list[tuple[int, int]]:
    """Every aligned window with a non-negative start that contains ``ts``, found by walking."""
    return [(s, s + size) for s in range(0, ts + 1, advance) if s <= ts < s + size]


# --- the reference app's window -----------------------------------------------------------------


def test_five_minute_tumbling_window() -> None:
    window = Tumbling(minutes=5)
    assert (window.size_ms, window.advance_ms) == (5 * MINUTE, 5 * MINUTE)
    at = int(datetime(2024, 1, 1, 10, 7, 30, tzinfo=UTC).timestamp() * 1000)
    start = int(datetime(2024, 1, 1, 10, 5, tzinfo=UTC).timestamp() * 1000)
    assert window.windows_for(at) == [(start, start + 5 * MINUTE)]


@pytest.mark.parametrize(
    ("timestamp", "window"),
    [
        (0, (0, 300_000)),
        (299_999, (0, 300_000)),
        (300_000, (300_000, 600_000)),  # the start is in its window...
        (1_000_000, (900_000, 1_200_000)),
        (1_199_999, (900_000, 1_200_000)),
        (1_200_000, (1_200_000, 1_500_000)),  # ...and the end is in the next one, not this
    ],
)
def test_tumbling_boundaries(timestamp: int, window: tuple[int, int]) -> None:
    assert Tumbling(minutes=5).windows_for(timestamp) == [window]


def test_hopping_ten_minutes_every_five() -> None:
    window = Hopping(size=timedelta(minutes=10), advance=timedelta(minutes=5))
    assert window.windows_for(600_000) == [(300_000, 900_000), (600_000, 1_200_000)]
    assert window.windows_for(899_999) == [(300_000, 900_000), (600_000, 1_200_000)]
    assert window.windows_for(900_000) == [(600_000, 1_200_000), (900_000, 1_500_000)]


def test_hopping_size_not_a_multiple_of_advance() -> None:
    window = Hopping(size=timedelta(milliseconds=10), advance=timedelta(milliseconds=3))
    assert window.windows_for(99) == [(90, 100), (93, 103), (96, 106), (99, 109)]
    assert window.windows_for(100) == [(93, 103), (96, 106), (99, 109)]


def test_no_window_starts_before_zero() -> None:
    window = Hopping(size=timedelta(minutes=10), advance=timedelta(minutes=5))
    assert window.windows_for(MINUTE) == [(0, 10 * MINUTE)]
    assert window.windows_for(-1) == []
    assert Tumbling(minutes=5).windows_for(-1) == []
    assert Tumbling(minutes=5).windows_for(-5 * MINUTE) == []


# --- properties ---------------------------------------------------------------------------------


@given(hopping(), TIMESTAMPS)
def test_every_window_contains_the_timestamp_and_is_aligned(window: Hopping, ts: int) -> None:
    found = window.windows_for(ts)
    assert found
    for start, end in found:
        assert start <= ts < end
        assert start >= 0
        assert start % window.advance_ms == 0
        assert end - start == window.size_ms
    assert [start for start, _ in found] == sorted({start for start, _ in found})


@given(hopping(max_size=60), st.integers(min_value=-100, max_value=1_000))
def test_windows_are_exactly_those_found_by_walking(window: Hopping, ts: int) -> None:
    assert window.windows_for(ts) == brute_force_windows(window.size_ms, window.advance_ms, ts)


@given(hopping(), TIMESTAMPS)
def test_window_count_once_no_window_is_cut_off_at_zero(window: Hopping, ts: int) -> None:
    size, advance = window.size_ms, window.advance_ms
    assume(ts >= size - advance)
    count = len(window.windows_for(ts))
    # ceil(size / advance) only when advance divides size; otherwise it depends on where ts lies.
    assert count in {size // advance, math.ceil(size / advance)}
    if size % advance == 0:
        assert count == size // advance


@given(st.integers(min_value=1, max_value=10**9), st.integers(min_value=-(10**12), max_value=2**53))
def test_tumbling_is_hopping_by_its_size(size: int, ts: int) -> None:
    tumbling = Tumbling(milliseconds=size)
    found = tumbling.windows_for(ts)
    assert len(found) == (1 if ts >= 0 else 0)
    as_hopping = Hopping(size=timedelta(milliseconds=size), advance=timedelta(milliseconds=size))
    assert found == as_hopping.windows_for(ts)


@given(hopping(), TIMESTAMPS)
def test_start_is_inside_and_end_is_outside(window: Hopping, ts: int) -> None:
    found = window.windows_for(ts)
    for start, end in {found[0], found[-1]}:  # the windows ts is nearest to leaving or entering
        assert (start, end) in window.windows_for(start)
        assert (start, end) in window.windows_for(end - 1)
        assert (start, end) not in window.windows_for(end)


# --- closing, grace and retention -------------------------------------------------------------


def test_window_closes_at_end_plus_grace() -> None:
    window = Tumbling(minutes=5)
    assert window.window_end_ms(0) == 300_000
    assert window.window_close_ms(0) == 300_000
    assert window.window_close_ms(0, grace_ms=1_000) == 301_000
    assert not window.is_window_closed(0, stream_time_ms=299_999, grace_ms=0)
    assert window.is_window_closed(0, stream_time_ms=300_000, grace_ms=0)
    assert not window.is_window_closed(0, stream_time_ms=300_999, grace_ms=1_000)
    assert window.is_window_closed(0, stream_time_ms=301_000, grace_ms=1_000)


def test_a_record_is_never_late_for_its_own_stream_time() -> None:
    # Stream time includes the record being processed, and its window ends after it.
    window = Tumbling(minutes=5)
    assert window.open_windows_for(299_999, stream_time_ms=299_999, grace_ms=0) == [(0, 300_000)]


def test_late_record_for_some_hopping_windows_only() -> None:
    window = Hopping(size=timedelta(minutes=10), advance=timedelta(minutes=5))
    # ts 7 min is in [0, 10) and [5, 15); at stream time 12 min, [0, 10) has closed.
    assert window.open_windows_for(7 * MINUTE, 12 * MINUTE, grace_ms=0) == [
        (5 * MINUTE, 15 * MINUTE)
    ]
    assert window.open_windows_for(7 * MINUTE, 12 * MINUTE, grace_ms=2 * MINUTE + 1) == [
        (0, 10 * MINUTE),
        (5 * MINUTE, 15 * MINUTE),
    ]
    assert window.open_windows_for(7 * MINUTE, 15 * MINUTE, grace_ms=0) == []


@given(hopping(), TIMESTAMPS, TIMESTAMPS, st.integers(min_value=0, max_value=10**9))
def test_open_windows_are_those_not_closed(
    window: Hopping, ts: int, stream_time: int, grace: int
) -> None:
    expected = [
        (start, end)
        for start, end in window.windows_for(ts)
        if not window.is_window_closed(start, stream_time, grace)
    ]
    assert window.open_windows_for(ts, stream_time, grace) == expected
    for start, _ in window.windows_for(ts):
        closed = window.is_window_closed(start, stream_time, grace)
        assert closed == (stream_time >= window.window_close_ms(start, grace))


def test_default_retention_keeps_a_window_until_it_closes() -> None:
    window = Hopping(size=timedelta(minutes=10), advance=timedelta(minutes=1))
    assert window.default_retention_ms(grace_ms=0) == 10 * MINUTE
    assert window.default_retention_ms(grace_ms=30_000) == 10 * MINUTE + 30_000
    with pytest.raises(ConfigurationError, match="grace must not be negative, got -1 ms"):
        window.default_retention_ms(grace_ms=-1)


# --- definitions and validation -----------------------------------------------------------------


def test_sizes_in_units_add_up_and_equal_the_timedelta_form() -> None:
    assert Tumbling(hours=1, minutes=30).size_ms == 90 * MINUTE
    assert Tumbling(seconds=1.5).size_ms == 1_500
    assert Tumbling(minutes=5) == Tumbling(size=timedelta(minutes=5)) == Tumbling(seconds=300)
    assert hash(Tumbling(minutes=5)) == hash(Tumbling(seconds=300))
    as_hopping = Hopping(size=timedelta(minutes=5), advance=timedelta(minutes=5))
    assert as_hopping.windows_for(0) == Tumbling(minutes=5).windows_for(0)
    assert as_hopping != Tumbling(minutes=5)  # type: ignore[comparison-overlap]


def test_windows_are_frozen() -> None:
    window = Tumbling(minutes=5)
    with pytest.raises(AttributeError):
        window.size_ms = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Tumbling(), r"Tumbling window needs a size, e\.g\. Tumbling\(minutes=5\)"),
        (lambda: Tumbling(minutes=0), "Tumbling window needs a size"),
        (lambda: Tumbling(size=timedelta(0)), "Tumbling window size must be positive, got 0:00:00"),
        (lambda: Tumbling(minutes=-1), "Tumbling window size must not be negative, got -0:01:00"),
        (lambda: Tumbling(milliseconds=0.5), "must be a whole number of milliseconds"),
        (lambda: Tumbling(size=timedelta(minutes=5), minutes=5), "not both"),
        (lambda: Tumbling(size=300_000), "must be a datetime.timedelta, got int 300000"),  # type: ignore[arg-type]
        (
            lambda: Hopping(size=timedelta(minutes=5), advance=timedelta(0)),
            "Hopping window advance must be positive",
        ),
        (
            lambda: Hopping(size=timedelta(seconds=-5), advance=timedelta(seconds=1)),
            "Hopping window size must not be negative, got -0:00:05",
        ),
        (
            lambda: Hopping(size=timedelta(minutes=1), advance=timedelta(minutes=2)),
            r"advance \(0:02:00\) must not exceed its size \(0:01:00\)",
        ),
    ],
)
def test_invalid_windows_are_configuration_errors(make: object, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        make()  # type: ignore[operator]


def test_to_millis() -> None:
    assert to_millis(timedelta(minutes=5)) == 300_000
    assert to_millis(timedelta(0), what="grace") == 0
    with pytest.raises(ConfigurationError, match="grace must not be negative"):
        to_millis(timedelta(seconds=-1), what="grace")
    with pytest.raises(ConfigurationError, match="grace must be a whole number of milliseconds"):
        to_millis(timedelta(microseconds=1500), what="grace")
