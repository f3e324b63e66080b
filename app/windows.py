"""Time windows on event time, with Kafka Streams' ``TimeWindows`` semantics.

Times are milliseconds since the epoch. Windows are aligned to the epoch: a hopping window of
``size`` and ``advance`` covers ``[k * advance, k * advance + size)`` for every ``k >= 0`` (start
inclusive, end exclusive), and a tumbling window is a hopping window whose advance is its size::

    >>> Tumbling(minutes=5).windows_for(1_000_000)
    [(900000, 1200000)]
    >>> Hopping(size=timedelta(minutes=10), advance=timedelta(minutes=5)).windows_for(600_000)
    [(300000, 900000), (600000, 1200000)]

Like Kafka Streams, no window starts before 0, so a negative timestamp belongs to no window, and
a small one only to the windows that start at 0 or later.

A window *closes* ``grace`` after its end: a record for a closed window is late and dropped (see
:meth:`Tumbling.is_window_closed`). Window definitions do not hold the grace period; the table does.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import TypeAlias

from onceflow.errors import ConfigurationError

__all__ = ["Hopping", "Session", "Sliding", "Tumbling", "WindowDef", "to_millis"]

_ONE_MS = timedelta(milliseconds=1)


def to_millis(duration: timedelta, *, what: str = "duration") -> int:
    """Return ``duration`` in whole milliseconds; ``what`` names it in the error.

    Raises :class:`ConfigurationError` if it is negative or not a whole number of milliseconds
    (windows and grace periods are kept in milliseconds, as Kafka timestamps are).
    """
    if not isinstance(duration, timedelta):
        raise ConfigurationError(
            f"{what} must be a datetime.timedelta, got {type(duration).__name__} {duration!r:.40}"
        )
    if duration < timedelta(0):
        # str() of a negative timedelta reads "-1 day, 23:59:00"; "-0:01:00" is what was meant.
        raise ConfigurationError(f"{what} must not be negative, got -{-duration}")
    millis, rest = divmod(duration, _ONE_MS)
    if rest:
        raise ConfigurationError(f"{what} must be a whole number of milliseconds, got {duration}")
    return millis


class _TimeWindows:
    """The arithmetic shared by :class:`Tumbling` and :class:`Hopping`."""

    __slots__ = ()
    size_ms: int
    advance_ms: int

    def windows_for(self, timestamp_ms: int) -> list[tuple[int, int]]:
        """Return every window ``(start, end)`` that contains ``timestamp_ms``, by ascending start.

        A window contains ``t`` when ``start <= t < end``. Windows that would start before 0 are
        not created (Kafka Streams' rule), so a negative timestamp gets an empty list.
        """
        size, advance = self.size_ms, self.advance_ms
        if timestamp_ms < 0:
            return []
        # The first start s = k * advance with s + size > timestamp; max(0, ..) drops negative ones.
        start = max(0, timestamp_ms - size + advance) // advance * advance
        return [(s, s + size) for s in range(start, timestamp_ms + 1, advance)]

    def window_end_ms(self, start_ms: int) -> int:
        """Return the end (exclusive) of the window that starts at ``start_ms``."""
        return start_ms + self.size_ms

    def window_close_ms(self, start_ms: int, grace_ms: int = 0) -> int:
        """Return the stream time at which the window starting at ``start_ms`` closes.

        That is its end plus ``grace_ms``; with no grace, its end.
        """
        return start_ms + self.size_ms + grace_ms

    def is_window_closed(self, start_ms: int, stream_time_ms: int, grace_ms: int) -> bool:
        """Return whether the window starting at ``start_ms`` takes no more records.

        Kafka Streams' rule: closed once ``end + grace <= stream time``, where stream time is the
        largest timestamp the task has seen, *including* the record being processed. A record that
        finds a window closed is late for that window, which is not updated.
        """
        return start_ms + self.size_ms + grace_ms <= stream_time_ms

    def open_windows_for(
        self, timestamp_ms: int, stream_time_ms: int, grace_ms: int
    ) -> list[tuple[int, int]]:
        """Return the windows of ``timestamp_ms`` that are not closed at ``stream_time_ms``.

        An empty list for a non-negative timestamp means the record is late for all its windows.
        """
        close_before = stream_time_ms - grace_ms
        return [w for w in self.windows_for(timestamp_ms) if w[1] > close_before]

    def default_retention_ms(self, grace_ms: int) -> int:
        """Return how long to keep a window after its start: ``size + grace``.

        That keeps every window until it closes, Kafka Streams' default when no retention is set.
        Raises :class:`ConfigurationError` for a negative ``grace_ms``.
        """
        if grace_ms < 0:
            raise ConfigurationError(f"grace must not be negative, got {grace_ms} ms")
        return self.size_ms + grace_ms


@dataclass(frozen=True, init=False, slots=True)
class Tumbling(_TimeWindows):
    """Fixed-size, non-overlapping windows: each timestamp falls in exactly one.

    Give the size either as ``size=timedelta(...)`` or in units, which add up::

        Tumbling(minutes=5)
        Tumbling(hours=1, minutes=30)
        Tumbling(size=timedelta(seconds=10))
    """

    size_ms: int
    advance_ms: int

    def __init__(
        self,
        *,
        size: timedelta | None = None,
        days: float = 0,
        hours: float = 0,
        minutes: float = 0,
        seconds: float = 0,
        milliseconds: float = 0,
    ) -> None:
        units = timedelta(
            days=days, hours=hours, minutes=minutes, seconds=seconds, milliseconds=milliseconds
        )
        if size is None and not units:
            raise ConfigurationError("Tumbling window needs a size, e.g. Tumbling(minutes=5)")
        if size is not None and units:
            raise ConfigurationError(
                "Tumbling window: give the size either as size=timedelta(...) or in units "
                "(minutes=5), not both"
            )
        size_ms = _positive_ms(units if size is None else size, "Tumbling window size")
        object.__setattr__(self, "size_ms", size_ms)
        object.__setattr__(self, "advance_ms", size_ms)

    def windows_for(self, timestamp_ms: int) -> list[tuple[int, int]]:
        """Return the one window ``(start, end)`` containing ``timestamp_ms`` (none if negative)."""
        if timestamp_ms < 0:
            return []
        start = timestamp_ms - timestamp_ms % self.size_ms
        return [(start, start + self.size_ms)]


@dataclass(frozen=True, init=False, slots=True)
class Hopping(_TimeWindows):
    """Fixed-size windows that start every ``advance``; they overlap when ``advance < size``.

    ``Hopping(size=timedelta(minutes=10), advance=timedelta(minutes=5))`` puts each timestamp in two
    windows. ``size`` need not be a multiple of ``advance``; then a timestamp falls in
    ``size // advance`` or ``size // advance + 1`` windows, depending on where it lies.
    """

    size_ms: int
    advance_ms: int

    def __init__(self, *, size: timedelta, advance: timedelta) -> None:
        size_ms = _positive_ms(size, "Hopping window size")
        advance_ms = _positive_ms(advance, "Hopping window advance")
        if advance_ms > size_ms:
            raise ConfigurationError(
                f"Hopping window advance ({advance}) must not exceed its size ({size}): "
                "records between windows would belong to none"
            )
        object.__setattr__(self, "size_ms", size_ms)
        object.__setattr__(self, "advance_ms", advance_ms)


WindowDef: TypeAlias = Tumbling | Hopping
"""Any window definition a windowed table accepts."""


@dataclass(frozen=True, init=False, slots=True)
class Session:
    """Session windows: per key, records at most ``gap`` apart form one session.

    A session covers ``[start, end]``, both inclusive: the first and last event time of its
    records (Kafka Streams' ``SessionWindows``). A record within ``gap`` of a session extends it;
    a record that bridges two sessions merges them, and the table's ``merge`` function combines
    their values. A session *closes* once stream time passes ``end + gap + grace``; a closed
    session never changes again, and a record that could only belong to closed sessions is late::

        Session(gap=timedelta(minutes=30))
    """

    gap_ms: int

    def __init__(self, *, gap: timedelta) -> None:
        object.__setattr__(self, "gap_ms", _positive_ms(gap, "Session window gap"))

    def is_closed(self, end_ms: int, stream_time_ms: int, grace_ms: int) -> bool:
        """Whether the session that ends at ``end_ms`` takes no more records."""
        return end_ms + self.gap_ms + grace_ms < stream_time_ms


@dataclass(frozen=True, init=False, slots=True)
class Sliding:
    """Sliding windows of ``size``, defined by the records (Kafka Streams' ``SlidingWindows``).

    A window covers ``[start, start + size]``, both inclusive. Each record at ``t`` has a window
    ending at ``t`` (``[t - size, t]``; ``[0, size]`` while ``t < size``) and, when a later
    record falls within ``size`` after it, a window starting at ``t + 1``: every distinct set of
    records that fit within ``size`` of each other has exactly one window. A window closes once
    stream time passes its end plus grace; negative timestamps belong to no window::

        Sliding(size=timedelta(minutes=5))
    """

    size_ms: int

    def __init__(self, *, size: timedelta) -> None:
        object.__setattr__(self, "size_ms", _positive_ms(size, "Sliding window size"))

    def is_closed(self, start_ms: int, stream_time_ms: int, grace_ms: int) -> bool:
        """Whether the window starting at ``start_ms`` takes no more records."""
        return start_ms + self.size_ms + grace_ms < stream_time_ms


def _positive_ms(duration: timedelta, what: str) -> int:
    millis = to_millis(duration, what=what)
    if millis == 0:
        raise ConfigurationError(f"{what} must be positive, got {duration}")
    return millis
