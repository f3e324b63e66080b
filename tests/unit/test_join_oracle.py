"""The stream-table join oracle (tests/join_oracle.py) on synthetic histories: a join whose
table positions never go back passes; a value the table never held, a position that goes back
(state of an aborted attempt, or lost state), a duplicate and a loss are each found."""

from __future__ import annotations

from history import Event, History, Report
from join_oracle import JoinOracle

# Table partition 0: a=a#1 @0, b=b#1 @1, a=a#2 @2, a deleted @3, a=a#3 @4.
TABLE = [
    Event(0, 0, b"a", b"a#1"),
    Event(0, 1, b"b", b"b#1"),
    Event(0, 2, b"a", b"a#2"),
    Event(0, 3, b"a", None),
    Event(0, 4, b"a", b"a#3"),
]
ORDERS = [Event(0, i, b"a", f"o{i}".encode()) for i in range(4)]


def _check(joined: list[str], extra: list[tuple[str, str]] = ()) -> Report:
    outputs = [
        Event(0, 10 + i, b"a", f"{o.value.decode()}|{v}".encode())
        for i, (o, v) in enumerate(zip(ORDERS, joined, strict=False))
    ]
    outputs += [Event(0, 50 + i, b"a", f"{o}|{v}".encode()) for i, (o, v) in enumerate(extra)]
    history = History(JoinOracle(TABLE, outputs))
    history.add_inputs(ORDERS)
    history.add_outputs(outputs)
    return history.check()


def test_joins_at_positions_that_never_go_back_pass() -> None:
    _check(["<absent>", "a#1", "a#1", "a#2"]).assert_clean()
    _check(["a#1", "a#2", "<absent>", "a#3"]).assert_clean()
    _check(["a#3", "a#3", "a#3", "a#3"]).assert_clean()


def test_a_value_the_table_never_held_is_an_aborted_read() -> None:
    report = _check(["a#1", "a#9", "a#2", "a#2"])
    assert report.count("aborted_reads") == 1 and report.count("losses") == 0


def test_a_position_that_goes_back_is_an_aborted_read() -> None:
    # After a#2 (position 3), a#1 and "absent before a#1" are in the past.
    assert _check(["a#2", "a#1", "a#2", "a#2"]).count("aborted_reads") == 1
    assert _check(["a#3", "<absent>", "a#3", "a#3"]).count("aborted_reads") == 1
    # Absent after the tombstone is not the same as absent before the first value.
    _check(["a#2", "<absent>", "a#3", "a#3"]).assert_clean()


def test_duplicates_and_losses_are_found() -> None:
    report = _check(["a#1", "a#1", "a#2"], extra=[("o0", "a#1")])
    assert report.count("duplicates") == 1 and report.count("losses") == 1


def test_by_time_each_order_sees_the_table_as_of_its_timestamp() -> None:
    table = [Event(0, i, e.key, e.value, timestamp=100 * (i + 1)) for i, e in enumerate(TABLE)]
    orders = [
        Event(0, i, b"a", f"o{i}".encode(), timestamp=t) for i, t in enumerate([50, 300, 450])
    ]
    outputs = [
        Event(0, 10 + i, b"a", f"o{i}|{v}".encode())
        for i, v in enumerate(["<absent>", "a#2", "<absent>"])  # as of 50, 300 (a#2 @ 300), 450
    ]
    history = History(JoinOracle(table, outputs, by_time=True))
    history.add_inputs(orders)
    history.add_outputs(outputs)
    history.check().assert_clean()
    # Positions that never go back are not enough by time: o1 had to see a#2, not a#1.
    late = [*outputs[:1], Event(0, 11, b"a", b"o1|a#1"), outputs[2]]
    history = History(JoinOracle(table, late, by_time=True))
    history.add_inputs(orders)
    history.add_outputs(late)
    assert history.check().count("aborted_reads") == 1
    history = History(JoinOracle(table, late))
    history.add_inputs(orders)
    history.add_outputs(late)
    history.check().assert_clean()
