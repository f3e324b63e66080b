"""Lag-aware placement (KIP-441): active on a caught-up member, standbys apart from it, warm-ups
and probing until balanced."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from onceflow.runtime.placement import RUNNING, Member, Placement, place

TASKS = [("0", p) for p in range(6)]
ENDS = dict.fromkeys(TASKS, 1_000_000)  # every task has a big changelog


def _owner(placed: Placement) -> dict[tuple[str, int], str]:
    return {t: m for m, ts in placed.active.items() for t in ts}


def test_without_state_it_is_the_sticky_balance() -> None:
    members = [Member("a", "pa"), Member("b", "pb"), Member("c", "pc")]
    placed = place(TASKS, members, {})
    assert sorted(len(ts) for ts in placed.active.values()) == [2, 2, 2]
    assert placed.balanced
    assert not any(placed.standby.values()) and not any(placed.warmup.values())


def test_a_new_member_without_state_gets_warm_ups_not_tasks() -> None:
    ran = {t: RUNNING for t in TASKS}
    members = [Member("a", "pa", frozenset(TASKS), ran), Member("b", "pb"), Member("c", "pc")]
    placed = place(TASKS, members, ENDS, max_warmups=2)
    assert placed.active["a"] == TASKS  # nothing stops for a full restore
    assert not placed.balanced and len(placed.held) == 4
    assert sum(len(ts) for ts in placed.warmup.values()) == 2  # ONCEFLOW_MAX_WARMUP_REPLICAS
    assert all(placed.held[t] == m for m, ts in placed.warmup.items() for t in ts)


def test_a_caught_up_warm_up_takes_its_task_over() -> None:
    ran = {t: RUNNING for t in TASKS}
    members = [Member("a", "pa", frozenset(TASKS), ran), Member("b", "pb"), Member("c", "pc")]
    first = place(TASKS, members, ENDS, max_warmups=2)
    warm = {t: ENDS[t] - 10 for ts in first.warmup.values() for t in ts}
    b = Member("b", "pb", frozenset(), {t: p for t, p in warm.items() if t in first.warmup["b"]})
    c = Member("c", "pc", frozenset(), {t: p for t, p in warm.items() if t in first.warmup["c"]})
    second = place(TASKS, [members[0], b, c], ENDS, max_warmups=2)
    owner = _owner(second)
    assert all(owner[t] != "a" for t in warm)  # they moved
    assert len(second.held) == 2  # the other two now warm up


def test_probing_rounds_end_balanced_and_no_task_ever_restores_in_full() -> None:
    """Scale-out 1 -> 3 with one standby: every round, each copy catches up (positions reach
    the ends) before the next rebalance; the placement ends balanced, and an active never
    goes to a member that is not caught up while one that is exists."""
    previous = {"a": set(TASKS)}
    held: dict[str, dict[tuple[str, int], int]] = {"a": {t: RUNNING for t in TASKS}}
    for rounds in range(1, 10):
        members = [
            Member(m, f"p{m}", frozenset(previous.get(m, ())), held.get(m, {})) for m in "abc"
        ]
        placed = place(TASKS, members, ENDS, standbys=1, max_warmups=2)
        for m, ts in placed.active.items():
            for t in ts:
                assert placed.reasons[t]
                known = held.get(m, {}).get(t)
                assert known == RUNNING or known == ENDS[t], (rounds, m, t, placed.reasons[t])
        if placed.balanced:
            break
        previous = {m: set(ts) for m, ts in placed.active.items()}
        held = {
            m: {
                **{t: RUNNING for t in placed.active[m]},
                **{t: ENDS[t] for t in [*placed.standby[m], *placed.warmup[m]]},
            }
            for m in "abc"
        }
    assert placed.balanced, placed.reasons
    assert sorted(len(ts) for ts in placed.active.values()) == [2, 2, 2]
    assert rounds <= 4


def test_a_lost_members_tasks_go_to_their_caught_up_standbys() -> None:
    a_tasks, b_tasks = TASKS[:3], TASKS[3:]
    b = Member(
        "b",
        "pb",
        frozenset(b_tasks),
        {**dict.fromkeys(b_tasks, RUNNING), **{t: ENDS[t] - 5 for t in a_tasks}},
    )
    c = Member("c", "pc", frozenset(), {t: 10 for t in a_tasks})  # far behind
    placed = place(TASKS, [b, c], ENDS, standbys=1)
    owner = _owner(placed)
    assert all(owner[t] == "b" for t in a_tasks)
    assert all(owner[t] == "b" for t in b_tasks)
    assert not placed.balanced  # c warms up; a probing rebalance evens the load later


def test_standbys_never_share_a_process_with_their_active_or_each_other() -> None:
    # a and b share a state directory (one host): a copy on b of a's task would fight a's lock
    members = [Member("a", "host1"), Member("b", "host1"), Member("c", "host2")]
    placed = place(TASKS, members, {}, standbys=2)
    process = {"a": "host1", "b": "host1", "c": "host2"}
    owner = _owner(placed)
    for t in TASKS:
        copies = [m for m, ts in placed.standby.items() if t in ts]
        assert len(copies) == 1  # only one other process exists
        assert process[copies[0]] != process[owner[t]]
    assert placed.short_of_standbys == len(TASKS)


def test_stateless_tasks_are_never_held() -> None:
    ran = {t: RUNNING for t in TASKS}
    members = [Member("a", "pa", frozenset(TASKS), ran), Member("b", "pb")]
    placed = place(TASKS, members, {})  # no changelogs: every member is caught up
    assert placed.balanced and sorted(len(ts) for ts in placed.active.values()) == [3, 3]


@given(
    st.integers(1, 12),
    st.lists(st.sampled_from("abcde"), min_size=1, max_size=5, unique=True),
    st.integers(0, 2),
    st.dictionaries(
        st.sampled_from("abcde"), st.dictionaries(st.integers(0, 11), st.integers(-1, 100))
    ),
)
def test_every_task_has_one_active_and_copies_apart(
    n: int, ids: list[str], standbys: int, positions: dict[str, dict[int, int]]
) -> None:
    tasks = [("0", p) for p in range(n)]
    ends = dict.fromkeys(tasks, 100)
    members = [
        Member(m, f"p{m}", frozenset(), {("0", p): v for p, v in positions.get(m, {}).items()})
        for m in ids
    ]
    placed = place(tasks, members, ends, standbys=standbys, acceptable_lag=10)
    owner = _owner(placed)
    assert sorted(owner) == tasks
    for t in tasks:
        copies = [m for m, ts in placed.standby.items() if t in ts]
        warm = [m for m, ts in placed.warmup.items() if t in ts]
        assert owner[t] not in copies + warm
        assert len(set(copies + warm)) == len(copies + warm)
        assert len(copies) == min(standbys, len(ids) - 1)
    assert sum(len(ts) for ts in placed.warmup.values()) <= 2


def test_nobody_caught_up_and_nobody_much_warmer_restores_at_its_place() -> None:
    """A lost member's task that nobody holds: both survivors would restore it all, so it goes
    where balance wants it, not to one of them 'to warm up' the other."""
    a = Member("a", "pa", frozenset(TASKS[:3]), dict.fromkeys(TASKS[:3], RUNNING))
    b = Member("b", "pb", frozenset(TASKS[3:5]), dict.fromkeys(TASKS[3:5], RUNNING))
    placed = place(TASKS, [a, b], ENDS)
    assert placed.balanced and not any(placed.warmup.values())
    assert "nobody caught up" in placed.reasons[TASKS[5]]


def test_copies_crossing_their_targets_are_accepted_when_the_counts_are_even() -> None:
    """After a kill, c's two tasks went to their caught-up standbys, one on each survivor,
    crosswise to what balance would pick: the counts are even, so nothing waits to move."""
    lost = TASKS[4:]
    a = Member(
        "a",
        "pa",
        frozenset(TASKS[:2]),
        {**dict.fromkeys(TASKS[:2], RUNNING), lost[1]: ENDS[lost[1]]},
    )
    b = Member(
        "b",
        "pb",
        frozenset(TASKS[2:4]),
        {**dict.fromkeys(TASKS[2:4], RUNNING), lost[0]: ENDS[lost[0]]},
    )
    placed = place(TASKS, [a, b], ENDS, standbys=1)
    owner = _owner(placed)
    assert (owner[lost[0]], owner[lost[1]]) == ("b", "a")
    assert placed.balanced and not any(placed.warmup.values())


def test_standby_copies_spread_evenly_even_when_one_member_holds_all_the_state() -> None:
    """a keeps caught-up copies of every task b and c run: load comes first, so it ends with
    two copies like the others (4/1/1 would put a lost member's tasks all on a)."""
    own = {"a": TASKS[:2], "b": TASKS[2:4], "c": TASKS[4:]}
    members = [
        Member(
            m,
            f"p{m}",
            frozenset(ts),
            {**dict.fromkeys(ts, RUNNING), **({t: ENDS[t] for t in TASKS[2:]} if m == "a" else {})},
        )
        for m, ts in own.items()
    ]
    placed = place(TASKS, members, ENDS, standbys=1)
    assert placed.balanced
    assert sorted(len(placed.standby[m]) for m in "abc") == [2, 2, 2]
