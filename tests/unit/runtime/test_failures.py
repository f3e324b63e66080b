"""The worker's pure failure decisions: ``judge`` (disposition, log level, traceback),
``Backoff`` (per-task exponential delay with a fake clock) and ``should_revive``."""

from __future__ import annotations

import logging
from typing import get_args

import pytest
from aiokafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError, ProducerFenced

from onceflow import errors
from onceflow.errors import (
    AuthorizationError,
    ChangelogMissingError,
    ConfigurationError,
    CopartitioningError,
    Disposition,
    GlobalTopicChangedError,
    HandlerFailedError,
    OnceflowError,
    RecordRejectedError,
    RecordTooLargeError,
    RestoreCancelledError,
    RestoreChildGoneError,
    SerdeError,
    StateError,
    StoreCorruptError,
    StoreLockedError,
    TaskCorruptedError,
    TaskFencedError,
    TopicNotFoundError,
    UnknownPartitionError,
    WrongPartitionError,
    disposition_of,
)
from onceflow.runtime.failures import (
    FAILURE_MEMORY_S,
    MAX_BACKOFF_S,
    Backoff,
    judge,
    should_revive,
)

# Every onceflow error class and the disposition docs/architecture.md gives it.
DISPOSITIONS: dict[type[OnceflowError], Disposition] = {
    OnceflowError: "retriable",
    ConfigurationError: "fatal",
    TopicNotFoundError: "fatal",
    CopartitioningError: "fatal",
    AuthorizationError: "fatal",
    ChangelogMissingError: "fatal",
    GlobalTopicChangedError: "fatal",
    HandlerFailedError: "fatal",
    TaskFencedError: "fenced",
    RestoreCancelledError: "cancelled",
    TaskCorruptedError: "retriable",
    SerdeError: "retriable",
    StateError: "retriable",
    StoreLockedError: "retriable",
    StoreCorruptError: "retriable",
    WrongPartitionError: "retriable",
    RestoreChildGoneError: "retriable",
    # never reach the worker: the task dead-letters the input at once (errors.py)
    RecordRejectedError: "retriable",
    RecordTooLargeError: "retriable",
    UnknownPartitionError: "retriable",
}


def _exported_error_classes() -> list[type[BaseException]]:
    found = []
    for name in errors.__all__:
        obj = getattr(errors, name)
        if isinstance(obj, type) and issubclass(obj, BaseException):
            found.append(obj)
    return found


# -- judge -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "expected"), list(DISPOSITIONS.items()), ids=lambda v: getattr(v, "__name__", v)
)
def test_each_onceflow_error_has_its_disposition(
    cls: type[OnceflowError], expected: Disposition
) -> None:
    exc = cls("boom")
    assert cls.disposition == expected
    assert disposition_of(exc) == expected
    assert judge(exc).disposition == expected


def test_the_table_above_covers_every_exported_error_class() -> None:
    # A new error class must be classified here on purpose, not by inheritance by accident.
    assert set(_exported_error_classes()) == set(DISPOSITIONS)


def test_every_exported_error_class_has_one_of_the_four_dispositions() -> None:
    allowed = set(get_args(Disposition))
    assert allowed == {"fatal", "fenced", "retriable", "cancelled"}
    classes = _exported_error_classes()
    assert len(classes) >= 15  # the introspection found the classes, not nothing
    for cls in classes:
        assert issubclass(cls, OnceflowError), cls
        assert cls.disposition in allowed, cls
        assert judge(cls("x")).disposition in allowed, cls


@pytest.mark.parametrize(
    "exc",
    [
        KafkaError(),
        KafkaTimeoutError(),
        KafkaConnectionError(),
        ProducerFenced(),  # foreign, even though it means fencing: the sink maps it, not judge
        TimeoutError(),
        ValueError("bug"),
        RuntimeError("bug"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_foreign_exceptions_are_retriable(exc: BaseException) -> None:
    assert disposition_of(exc) == "retriable"
    assert judge(exc).disposition == "retriable"


@pytest.mark.parametrize(
    "exc",
    [StateError("disk full"), StoreLockedError("x"), StoreCorruptError("x"), WrongPartitionError()],
    ids=lambda e: type(e).__name__,
)
def test_state_errors_are_logged_at_error(exc: StateError) -> None:
    assert judge(exc).log_level == logging.ERROR


@pytest.mark.parametrize(
    "exc",
    [
        TaskCorruptedError(),
        SerdeError(),
        OnceflowError(),
        TaskFencedError(),
        RestoreCancelledError(),
        ConfigurationError(),
        ChangelogMissingError(),
        HandlerFailedError(),
        KafkaError(),
        TimeoutError(),
        ValueError(),
    ],
    ids=lambda e: type(e).__name__,
)
def test_everything_else_is_logged_at_warning(exc: BaseException) -> None:
    assert judge(exc).log_level == logging.WARNING


@pytest.mark.parametrize(
    "exc",
    [
        TaskCorruptedError(),
        StateError(),
        StoreCorruptError(),
        KafkaError(),
        KafkaTimeoutError(),
        TimeoutError(),
        TaskFencedError(),
        RestoreCancelledError(),
        ConfigurationError(),
        HandlerFailedError(),
    ],
    ids=lambda e: type(e).__name__,
)
def test_expected_failures_are_logged_without_traceback(exc: BaseException) -> None:
    assert judge(exc).traceback is False


@pytest.mark.parametrize(
    "exc",
    [ValueError("bug"), RuntimeError("bug"), KeyError("k"), SerdeError(), OnceflowError()],
    ids=lambda e: type(e).__name__,
)
def test_unexpected_failures_carry_their_traceback(exc: BaseException) -> None:
    verdict = judge(exc)
    assert verdict.traceback is True
    assert verdict.disposition == "retriable"
    assert verdict.log_level == logging.WARNING


# -- Backoff -----------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_delays_double_per_failure_from_base() -> None:
    clock = FakeClock()
    backoff = Backoff(0.5, clock)
    delays = []
    for _ in range(5):
        delays.append(backoff.failed("t0"))
        clock.advance(1.0)
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0]


def test_delays_are_capped() -> None:
    clock = FakeClock()
    backoff = Backoff(1.0, clock)
    delays = []
    for _ in range(12):
        delays.append(backoff.failed("t0"))
        clock.advance(MAX_BACKOFF_S)  # retried after its delay, still within memory
    assert delays[:5] == [1.0, 2.0, 4.0, 8.0, 16.0]
    assert delays[5:] == [MAX_BACKOFF_S] * 7
    assert max(delays) == MAX_BACKOFF_S


def test_a_zero_base_never_waits() -> None:
    clock = FakeClock()
    backoff = Backoff(0.0, clock)
    assert [backoff.failed("t0") for _ in range(5)] == [0.0] * 5


def test_streaks_are_independent_per_key() -> None:
    clock = FakeClock()
    backoff = Backoff(1.0, clock)
    assert backoff.failed(("g", 0)) == 1.0
    assert backoff.failed(("g", 0)) == 2.0
    assert backoff.failed(("g", 0)) == 4.0
    assert backoff.failed(("g", 1)) == 1.0  # another task starts at base
    assert backoff.failed(("h", 0)) == 1.0  # same partition, other group: another task
    assert backoff.failed(("g", 0)) == 8.0  # and did not reset the first
    assert backoff.failed(("g", 1)) == 2.0


def test_healthy_restarts_the_streak_of_that_key_only() -> None:
    clock = FakeClock()
    backoff = Backoff(1.0, clock)
    for _ in range(3):
        backoff.failed("a")
        backoff.failed("b")
    backoff.healthy("a")
    assert backoff.failed("a") == 1.0
    assert backoff.failed("b") == 8.0
    backoff.healthy("never-failed")  # no error for a key without a streak


def test_a_failure_older_than_the_memory_restarts_the_streak() -> None:
    clock = FakeClock()
    backoff = Backoff(1.0, clock)
    assert [backoff.failed("t") for _ in range(3)] == [1.0, 2.0, 4.0]
    clock.advance(FAILURE_MEMORY_S)  # exactly the memory: still the same streak
    assert backoff.failed("t") == 8.0
    clock.advance(FAILURE_MEMORY_S + 0.001)
    assert backoff.failed("t") == 1.0
    assert backoff.failed("t") == 2.0


def test_the_memory_counts_from_the_last_failure_not_the_first() -> None:
    clock = FakeClock()
    backoff = Backoff(1.0, clock)
    delays = []
    for _ in range(4):  # 4 failures spread over more than FAILURE_MEMORY_S in total
        delays.append(backoff.failed("t"))
        clock.advance(FAILURE_MEMORY_S * 0.6)
    assert delays == [1.0, 2.0, 4.0, 8.0]


def test_a_long_streak_stays_capped() -> None:
    clock = FakeClock()
    backoff = Backoff(0.1, clock)
    for _ in range(1_100):  # a broker outage of ~9 h, retried every MAX_BACKOFF_S
        assert backoff.failed("t") <= MAX_BACKOFF_S
        clock.advance(MAX_BACKOFF_S)


# -- should_revive -----------------------------------------------------------------------------

KEY = ("0", 3)


def test_revive_when_nothing_changed() -> None:
    assert should_revive(KEY, rebalances_then=2, rebalances_now=2, assigned={KEY}, running=set())


@pytest.mark.parametrize(
    ("rebalances_now", "assigned", "running"),
    [
        (3, {KEY}, set()),  # a rebalance happened since the failure: it decides anew
        (2, {("0", 1)}, set()),  # no longer assigned to this worker
        (2, set(), set()),
        (2, {KEY}, {KEY}),  # something rebuilt it already
    ],
    ids=["rebalanced", "reassigned", "unassigned", "running"],
)
def test_no_revive_when_one_condition_fails(
    rebalances_now: int, assigned: set[tuple[str, int]], running: set[tuple[str, int]]
) -> None:
    assert not should_revive(
        KEY, rebalances_then=2, rebalances_now=rebalances_now, assigned=assigned, running=running
    )


def test_other_tasks_running_do_not_prevent_revival() -> None:
    assert should_revive(
        KEY,
        rebalances_then=0,
        rebalances_now=0,
        assigned=[("0", 1), KEY],
        running=[("0", 1), ("1", 3)],
    )
