"""The HA benchmarks' arithmetic: output gaps, latency windows, and what they read from logs."""

from __future__ import annotations

from datetime import datetime

import pytest

from bench.fleet import (
    Restored,
    Started,
    assignments,
    first_assignment_at,
    restored_lines,
    started_lines,
)
from bench.observe import Gap, latency_in, latency_timeline, longest_gap

LOG = """\
2026-11-30 18:40:47,336 INFO    onceflow.worker: assigned tasks 0_0, 0_1, 0_2
2026-11-30 18:40:48,629 INFO    onceflow.task: restored sum partition 1: 33124 records from offset 0 in 1.04s
2026-11-30 18:40:48,629 INFO    onceflow.task: task 0_1 running (stream time -1)
2026-11-30 18:40:50,409 INFO    onceflow.worker: revoked 3 tasks
2026-11-30 18:40:50,458 INFO    onceflow.worker: assigned tasks (none)
2026-11-30 18:41:23,554 INFO    onceflow.worker: assigned tasks 0_5, 0_0
2026-11-30 18:41:24,108 INFO    onceflow.task: restored sum partition 5: 7134 records from offset 33458 in 0.26s
2026-11-30 18:41:24,250 INFO    onceflow.task: task 0_5 running (stream time 17; fenced in 0.05s, offsets in 0.01s, stores in 0.30s)
"""  # noqa: E501


def test_longest_gap_is_between_two_arrivals() -> None:
    assert longest_gap([1.0, 1.1, 1.2, 4.2, 4.3], since=1.0, until=4.3) == Gap(1.2, 4.2)


def test_the_window_edges_count_as_arrivals() -> None:
    # Silent from the start of the window, or up to its end: the gap is measured from / to it.
    assert longest_gap([5.0, 5.1], since=0.0, until=5.1) == Gap(0.0, 5.0)
    assert longest_gap([0.0, 0.1], since=0.0, until=9.0) == Gap(0.1, 9.0)
    assert longest_gap([], since=2.0, until=3.0).seconds == pytest.approx(1.0)


def test_arrivals_outside_the_window_are_ignored() -> None:
    gap = longest_gap([0.0, 10.0, 10.5, 30.0], since=9.0, until=11.0)
    assert gap == Gap(9.0, 10.0)


def test_latency_counts_the_records_sent_in_the_window() -> None:
    # (received, sent): the latency is received - sent, in ms; sent 0.9 and 2.0 are outside.
    arrivals = [(1.0, 0.9), (1.1, 1.0), (1.3, 1.1), (3.0, 1.5), (2.5, 2.0)]
    stats = latency_in(arrivals, sent_from=1.0, sent_to=2.0)
    assert stats["count"] == 3
    assert stats["max"] == pytest.approx(1500.0)
    assert stats["p50"] == pytest.approx(200.0)
    assert latency_in(arrivals, 5.0, 6.0) == {"count": 0}


def test_restore_lines_and_assignments_are_read_from_the_log() -> None:
    assert restored_lines(LOG) == [
        Restored("sum", 1, 33124, 0, 1.04),
        Restored("sum", 5, 7134, 33458, 0.26),
    ]
    assert assignments(LOG) == [["0_0", "0_1", "0_2"], [], ["0_0", "0_5"]]


def test_task_starts_and_the_first_assignment_are_timed_from_the_log() -> None:
    at = datetime(2026, 11, 30, 18, 41, 24, 250_000).timestamp()
    assert started_lines(LOG) == [Started(at, "0_5", 0.05, 0.01, 0.30)]
    assert first_assignment_at(LOG) == datetime(2026, 11, 30, 18, 40, 47, 336_000).timestamp()
    assert first_assignment_at("nothing assigned") is None


def test_latency_timeline_windows_are_relative_to_the_event() -> None:
    arrivals = [(100.5, 100.0), (103.0, 101.0), (108.0, 106.0)]
    timeline = latency_timeline(arrivals, origin=100.0, start=0.0, stop=10.0, step=5.0)
    assert [w["at_s"] for w in timeline] == [0.0, 5.0]
    assert [w["count"] for w in timeline] == [2, 1]
    assert timeline[0]["max"] == pytest.approx(2000.0)
