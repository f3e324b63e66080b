"""The history checker on synthetic histories: each anomaly kind is found, a clean run passes."""

from __future__ import annotations

import pytest
from history import Event, History, Report
from oracle import AggregatesOracle, EchoOracle


def _inputs(*partitions: list[tuple[bytes, bytes]]) -> list[Event]:
    """Inputs on partitions 0, 1, ... at offsets 0, 1, ..."""
    return [
        Event(p, offset, key, value)
        for p, records in enumerate(partitions)
        for offset, (key, value) in enumerate(records)
    ]


def _outputs(*partitions: list[tuple[bytes, bytes]], start: int = 100) -> list[Event]:
    """Outputs as a read_committed reader sees them: offsets with gaps (commit markers)."""
    return [
        Event(p, start + 2 * i, key, value)
        for p, records in enumerate(partitions)
        for i, (key, value) in enumerate(records)
    ]


P0 = [(b"a", b"1"), (b"b", b"2"), (b"a", b"3"), (b"c", b"4")]
P1 = [(b"d", b"5"), (b"d", b"5"), (b"e", b"6")]  # equal inputs: two outputs expected


def _echo(outputs: list[Event], **kwargs) -> Report:
    history = History(EchoOracle(), **kwargs)
    history.add_inputs(_inputs(P0, P1))
    history.add_outputs(outputs)
    return history.check()


def test_a_clean_echo_history_passes() -> None:
    report = _echo(_outputs(P0, P1), faults=3)
    report.assert_clean()
    assert report.summary() == (
        "faults=3 records=7 duplicates=0 losses=0 aborted_reads=0 out_of_order=0 "
        "aborted_writes=? hanging=0"
    )


def test_a_duplicate_is_found() -> None:
    report = _echo(_outputs([*P0[:3], P0[1], P0[3]], P1))
    assert (report.count("duplicates"), report.by_partition("duplicates")) == (1, {0: 1})
    assert report.count("out_of_order") == 0  # a replayed output is counted once, as what it is
    with pytest.raises(AssertionError, match=r"duplicates: 1 \(p0: 1\)"):
        report.assert_clean()
    report.assert_clean(allow=["duplicates"])


def test_a_third_copy_of_a_doubled_input_is_a_duplicate() -> None:
    report = _echo(_outputs(P0, [*P1[:2], P1[1], P1[2]]))
    assert report.by_partition("duplicates") == {1: 1}
    assert report.count("losses") == 0


def test_a_loss_is_found() -> None:
    report = _echo(_outputs(P0, [P1[0], P1[2]]))  # one of the two equal inputs lost
    assert report.by_partition("losses") == {1: 1}
    with pytest.raises(AssertionError, match=r"losses: 1 \(p1: 1\)\n  input p1@1 .*no output"):
        report.assert_clean()


def test_a_swap_is_found() -> None:
    report = _echo(_outputs([P0[0], P0[2], P0[1], P0[3]], P1))
    assert report.by_partition("out_of_order") == {0: 1}
    assert report.count("losses") == report.count("duplicates") == 0
    with pytest.raises(AssertionError, match="out_of_order: 1"):
        report.assert_clean()


def test_an_output_on_another_partition_is_out_of_order() -> None:
    report = _echo(_outputs(P0[:3], [P0[3], *P1]))
    assert report.by_partition("out_of_order") == {1: 1}


def test_echo_bytes_that_match_no_input_are_an_aborted_read() -> None:
    report = _echo(_outputs([*P0[:2], (b"a", b"999"), P0[3]], P1))
    assert report.by_partition("aborted_reads") == {0: 1}
    with pytest.raises(AssertionError, match=r"aborted_reads: 1 .*\n.*match no input"):
        report.assert_clean()


def test_aborted_writes_are_counted_and_a_hanging_transaction_fails() -> None:
    history = History(EchoOracle())
    history.add_inputs(_inputs(P0))
    committed = _outputs(P0)
    history.add_outputs(committed)
    aborted = [Event(0, 90 + i, k, v) for i, (k, v) in enumerate(P0)]
    history.add_uncommitted([*aborted, *committed])
    history.set_end_offsets({0: 107}, {0: 107})
    report = history.check()
    assert report.aborted_writes == 4
    report.assert_clean()

    history.set_end_offsets({0: 107}, {0: 110})
    report = history.check()
    assert report.by_partition("hanging") == {0: 1}
    with pytest.raises(AssertionError, match="transaction left open"):
        report.assert_clean()


def test_inputs_lost_before_the_app_fail_the_run() -> None:
    with pytest.raises(AssertionError, match="acknowledged 8 inputs, the source holds 7"):
        _echo(_outputs(P0, P1), produced=8).assert_clean()


def test_the_failure_lists_the_first_few_of_each_kind() -> None:
    report = _echo([])
    assert report.count("losses") == 7
    with pytest.raises(AssertionError) as failure:
        report.assert_clean()
    message = str(failure.value)
    assert message.startswith("history check failed (echo): faults=0 records=7 ")
    assert "losses: 7 (p0: 4, p1: 3)" in message
    assert "... and 2 more" in message


# The aggregates app: "sum,count,min,max" per key after every input.
VALUES = [5, -2, 7, 0]


def _int(v: int) -> bytes:
    return v.to_bytes(8, "big", signed=True)


AGG_IN = _inputs([(b"k", _int(v)) for v in VALUES] + [(b"j", _int(4))])
AGG_OUT = [b"5,1,5,5", b"3,2,-2,5", b"10,3,-2,7", b"10,4,-2,7"]


def _aggregates(outputs: list[bytes], j: bytes = b"4,1,4,4") -> Report:
    history = History(AggregatesOracle())
    history.add_inputs(AGG_IN)
    history.add_outputs(_outputs([*((b"k", v) for v in outputs), (b"j", j)]))
    return history.check()


def test_a_clean_aggregates_history_passes() -> None:
    report = _aggregates(AGG_OUT)
    report.assert_clean()
    assert report.records == report.outputs == 5


def test_state_leaked_from_an_aborted_attempt_is_an_aborted_read() -> None:
    # the second input was applied twice: once by an aborted attempt whose state leaked
    leaked = [b"5,1,5,5", b"1,3,-2,5", b"8,4,-2,7", b"8,5,-2,7"]
    report = _aggregates(leaked)
    assert report.by_partition("aborted_reads") == {0: 3}
    assert report.count("losses") == 0  # each wrong output stands in for its input
    with pytest.raises(AssertionError, match=r"count 3 > 2: state of an aborted attempt leaked"):
        report.assert_clean()


def test_committed_state_that_went_missing_is_an_aborted_read() -> None:
    # the second input was applied to a store that had lost the first
    report = _aggregates([AGG_OUT[0], b"-2,1,-2,-2", *AGG_OUT[2:]])
    assert report.by_partition("aborted_reads") == {0: 1}
    with pytest.raises(AssertionError, match=r"count 1 < 2: committed state went missing"):
        report.assert_clean()


def test_a_right_count_with_a_wrong_sum_is_an_aborted_read() -> None:
    report = _aggregates([AGG_OUT[0], b"4,2,-2,5", *AGG_OUT[2:]])
    assert report.by_partition("aborted_reads") == {0: 1}
    assert report.count("losses") == 0


def test_an_aggregates_loss_and_duplicate_are_told_apart_from_aborted_reads() -> None:
    report = _aggregates([AGG_OUT[0], AGG_OUT[2], AGG_OUT[3]])  # the 2nd output is missing
    assert (report.count("losses"), report.count("aborted_reads")) == (1, 0)
    report = _aggregates([*AGG_OUT[:3], AGG_OUT[2], AGG_OUT[3]])
    assert (report.count("duplicates"), report.count("aborted_reads")) == (1, 0)


def test_an_unreadable_or_extra_aggregate_is_an_aborted_read() -> None:
    report = _aggregates([*AGG_OUT, b"garbage", b"20,5,-2,10"])
    assert report.count("aborted_reads") == 2
    with pytest.raises(AssertionError, match="more outputs than inputs for this key"):
        report.assert_clean()
