"""The task assignor: whole tasks, balanced, sticky."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from onceflow.runtime.assignor import balance

TASKS = [("0", p) for p in range(12)]


def test_balanced_from_scratch() -> None:
    plan = balance(TASKS, ["a", "b", "c"], {})
    assert sorted(len(ts) for ts in plan.values()) == [4, 4, 4]
    assert sorted(t for ts in plan.values() for t in ts) == TASKS


def test_sticky_when_membership_is_unchanged() -> None:
    first = balance(TASKS, ["a", "b", "c"], {})
    assert balance(TASKS, ["a", "b", "c"], first) == {m: sorted(ts) for m, ts in first.items()}


def test_a_joining_member_takes_only_what_it_must() -> None:
    first = balance(TASKS, ["a", "b"], {})
    second = balance(TASKS, ["a", "b", "c"], first)
    moved = sum(1 for m in ("a", "b") for t in second[m] if t not in first[m])
    assert moved == 0  # a and b keep 4 of their 6 each; c gets the 4 they gave up
    assert len(second["c"]) == 4


@given(
    st.integers(1, 40),
    st.lists(st.sampled_from("abcdefg"), min_size=1, max_size=7, unique=True),
    st.dictionaries(st.sampled_from("abcdefgh"), st.lists(st.integers(0, 45), max_size=20)),
)
def test_every_task_once_and_counts_within_one(n: int, members: list[str], prev: dict) -> None:
    tasks = [("0", p) for p in range(n)]
    previous = {m: [("0", p) for p in ps] for m, ps in prev.items()}
    plan = balance(tasks, members, previous)
    assigned = sorted(t for ts in plan.values() for t in ts)
    assert assigned == tasks
    sizes = [len(ts) for ts in plan.values()]
    assert max(sizes) - min(sizes) <= 1
