"""Where each task runs: active on a caught-up member, standby copies elsewhere, warm-ups where
balance wants a task that its member cannot take over yet (Kafka Streams' high-availability
assignor, KIP-441; docs/architecture.md, *High availability*).

Pure: ``place`` sees members, the state they hold and the changelog ends, and returns a
``Placement`` with the reason for every task's place. The assignor (``assignor.py``) decodes the
members' subscriptions into ``Member`` and encodes the result.

1. **Target.** ``balance``: whole tasks, sticky to the previous actives, counts within one; a
   task without a live previous owner goes to the least loaded member, a caught-up one on a tie.
2. **Active.** A task goes to its target when the target is caught up (its lag is at most
   ``acceptable_lag`` records; the member that ran it until this rebalance has lag 0). Otherwise
   it stays on a caught-up member (its previous owner first), or, when nobody is caught up, goes
   to the member with the least lag if that is less by more than ``acceptable_lag``, else to its
   target; a task kept away from its target is *held*. When the counts are even all the same (a
   lost member's tasks went to their copies), nothing is held: there is nothing to move.
3. **Standbys.** ``standbys`` copies of each task on members of other processes than its active
   and than each other (members of one process share a state directory, and a store opens in one
   place at a time): the target of a held task first, then the least loaded (so that a lost
   member's tasks spread over the survivors), a member holding the state on a tie.
4. **Warm-ups.** A task held away whose target got no standby gets a warm-up there, at most
   ``max_warmups`` in the group. While any task is held away the placement is not ``balanced``:
   the group rebalances again (a probing rebalance) and moves those whose warm-up caught up.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

__all__ = ["Member", "Placement", "TaskKey", "balance", "place"]

TaskKey = tuple[str, int]  # (task group, partition)
RUNNING = -1
"""A position a member reports for a task it ran until this rebalance: caught up by definition
(its stores hold every record it committed)."""


def balance(
    tasks: Iterable[TaskKey],
    members: list[str],
    previous: Mapping[str, Iterable[TaskKey]],
    warm: Callable[[str, TaskKey], bool] | None = None,
) -> dict[str, list[TaskKey]]:
    """Assign ``tasks`` to ``members``: sticky to ``previous``, counts within one of each other.
    A task with no previous owner goes to the least loaded member, and among those to one that
    is ``warm`` for it (holds its state)."""
    tasks = sorted(tasks)
    members = sorted(members)
    result: dict[str, list[TaskKey]] = {m: [] for m in members}
    if not members:
        return result
    ceiling = -(-len(tasks) // len(members))
    free = set(tasks)
    for member in members:
        for task in sorted(previous.get(member, ())):
            if task in free and len(result[member]) < ceiling:
                result[member].append(task)
                free.discard(task)
    for task in sorted(free):
        target = min(
            members, key=lambda m: (len(result[m]), warm is not None and not warm(m, task), m)
        )
        result[target].append(task)
    # Stickiness can leave one member at the ceiling while another sits two below: even out.
    while True:
        most = max(members, key=lambda m: (len(result[m]), m))
        least = min(members, key=lambda m: (len(result[m]), m))
        if len(result[most]) - len(result[least]) <= 1:
            break
        result[least].append(result[most].pop())
    return result


@dataclass(frozen=True)
class Member:
    """One group member as its subscription describes it."""

    id: str
    process: str
    """Members with the same process id share a state directory (one host, one volume)."""
    previous: frozenset[TaskKey] = frozenset()
    """The tasks it was assigned as active before this rebalance."""
    positions: Mapping[TaskKey, int] = field(default_factory=dict)
    """Per task whose state it holds: the sum of its changelog positions (``RUNNING``: it ran the
    task until this rebalance)."""


@dataclass
class Placement:
    """The result of ``place``, by member id."""

    active: dict[str, list[TaskKey]]
    standby: dict[str, list[TaskKey]]
    warmup: dict[str, list[TaskKey]]
    reasons: dict[TaskKey, str]
    held: dict[TaskKey, str]
    """Tasks kept away from their balanced target (-> that target's member id)."""
    short_of_standbys: int = 0
    """Standby copies that could not be placed (too few processes)."""

    @property
    def balanced(self) -> bool:
        return not self.held


def place(
    tasks: Iterable[TaskKey],
    members: Iterable[Member],
    ends: Mapping[TaskKey, int],
    *,
    standbys: int = 0,
    acceptable_lag: int = 10_000,
    max_warmups: int = 2,
) -> Placement:
    """Place every task (see the module docstring). ``ends``: per task, the sum of its changelog
    partitions' end offsets (absent: no changelog, every member is caught up)."""
    tasks = sorted(tasks)
    by_id = {m.id: m for m in sorted(members, key=lambda m: m.id)}
    ids = list(by_id)
    placement = Placement({m: [] for m in ids}, {m: [] for m in ids}, {m: [] for m in ids}, {}, {})
    if not ids:
        return placement
    lags = _Lags(by_id.values(), ends)
    target = balance(
        tasks,
        ids,
        {m.id: m.previous for m in by_id.values()},
        lambda m, t: lags.of(m, t) <= acceptable_lag,
    )
    target_of = {t: m for m, ts in target.items() for t in ts}
    load = dict.fromkeys(ids, 0)
    for task in tasks:
        want = target_of[task]
        lag = lags.of(want, task)
        if lag <= acceptable_lag:
            owner = want
            how = "ran it" if lags.ran(want, task) else f"caught up, lag {lag}"
            placement.reasons[task] = f"active on {want} ({how})"
        elif (
            (owner := _warmest(task, ids, lags, load, acceptable_lag)) == want
            or by_id[owner].process == by_id[want].process
            or lags.of(owner, task) + acceptable_lag >= lag
        ):
            # Nobody is caught up, and no member has much less to restore than its balanced
            # place (or the one that has shares its state directory): it restores there.
            owner = want
            placement.reasons[task] = (
                f"active on {want} (nobody caught up; it restores {lag} records)"
            )
        else:
            placement.held[task] = want
            placement.reasons[task] = (
                f"active on {owner} (lag {lags.of(owner, task)}), not its balanced place {want} "
                f"(lag {lag}): stays where it is warm until {want} catches up"
            )
        placement.active[owner].append(task)
        load[owner] += 1
    counts = [len(ts) for ts in placement.active.values()]
    if placement.held and max(counts) - min(counts) <= 1:
        # Even as it is (a lost member's tasks went to their caught-up copies): nothing to move.
        for task in placement.held:
            placement.reasons[task] += "; the counts are even: it stays"
        placement.held.clear()
    _place_copies(placement, tasks, by_id, lags, load, standbys)
    warmups = 0
    for task, want in sorted(placement.held.items()):
        if task in placement.standby[want]:
            placement.reasons[task] += "; its standby there warms up"
        elif warmups < max_warmups:
            placement.warmup[want].append(task)
            warmups += 1
            placement.reasons[task] += "; warm-up there"
        else:
            placement.reasons[task] += "; no warm-up yet (ONCEFLOW_MAX_WARMUP_REPLICAS reached)"
    return placement


def _place_copies(
    placement: Placement,
    tasks: list[TaskKey],
    by_id: Mapping[str, Member],
    lags: _Lags,
    load: dict[str, int],
    standbys: int,
) -> None:
    if standbys <= 0:
        return
    owner_of = {t: m for m, ts in placement.active.items() for t in ts}
    for task in tasks:
        taken = {by_id[owner_of[task]].process}
        want = placement.held.get(task)
        for _ in range(standbys):
            free = [m for m in by_id if by_id[m].process not in taken]
            if not free:
                placement.short_of_standbys += 1
                continue
            # Spread evenly (a lost member's tasks then spread too); among the least loaded,
            # one that holds the state already.
            chosen = min(
                free,
                key=lambda m: (m != want, load[m], lags.of(m, task) > 0, lags.of(m, task), m),
            )
            placement.standby[chosen].append(task)
            taken.add(by_id[chosen].process)
            load[chosen] += 1
    _even_out_copies(placement, by_id, owner_of, lags, load)


def _even_out_copies(
    placement: Placement,
    by_id: Mapping[str, Member],
    owner_of: Mapping[TaskKey, str],
    lags: _Lags,
    load: dict[str, int],
) -> None:
    """Move copies from the most to the least loaded member until the loads (actives and
    copies) are within one: placing task by task can leave the last tasks no even choice.
    A copy that warms a held task stays; among the others, one the receiver holds the state of
    moves first."""
    while True:
        most = max(load, key=lambda m: (load[m], m))
        least = min(load, key=lambda m: (load[m], m))
        if load[most] - load[least] <= 1:
            return
        movable = [
            t
            for t in placement.standby[most]
            if placement.held.get(t) != most
            and _may_move(placement, by_id, owner_of, t, most, least)
        ]
        if not movable:
            return
        task = min(movable, key=lambda t: (lags.of(least, t) > 0, t))
        placement.standby[most].remove(task)
        placement.standby[least].append(task)
        load[most] -= 1
        load[least] += 1


def _may_move(
    placement: Placement,
    by_id: Mapping[str, Member],
    owner_of: Mapping[TaskKey, str],
    task: TaskKey,
    source: str,
    dest: str,
) -> bool:
    """Whether ``task``'s copy on ``source`` may go to ``dest``: not to the process of its
    active or of another copy."""
    others = {owner_of[task], *(m for m, ts in placement.standby.items() if task in ts)} - {source}
    return by_id[dest].process not in {by_id[m].process for m in others}


def _warmest(
    task: TaskKey, ids: list[str], lags: _Lags, load: Mapping[str, int], acceptable_lag: int
) -> str:
    """The member to hold ``task`` while its target warms up: the one that ran it, else a
    caught-up one (least loaded), else the one with least to restore."""
    return min(
        ids,
        key=lambda m: (
            not lags.ran(m, task),
            lags.of(m, task) > acceptable_lag,
            load[m] if lags.of(m, task) <= acceptable_lag else lags.of(m, task),
            m,
        ),
    )


class _Lags:
    """Per member and task, the records to restore before the member could run the task.
    Members of one process share their state: each has the best any of them reports."""

    def __init__(self, members: Iterable[Member], ends: Mapping[TaskKey, int]) -> None:
        self._ends = ends
        best: dict[str, dict[TaskKey, int]] = {}
        self._process: dict[str, str] = {}
        for m in members:
            self._process[m.id] = m.process
            held = best.setdefault(m.process, {})
            for task, position in m.positions.items():
                known = held.get(task)
                if known == RUNNING:
                    continue
                if position == RUNNING or known is None or position > known:
                    held[task] = position
        self._held = best

    def ran(self, member: str, task: TaskKey) -> bool:
        return self._held[self._process[member]].get(task) == RUNNING

    def of(self, member: str, task: TaskKey) -> int:
        end = self._ends.get(task, 0)
        position = self._held[self._process[member]].get(task)
        if position == RUNNING:
            return 0
        return max(0, end - (position or 0))
