"""The group's partition assignor: whole tasks, lag-aware and sticky, standbys, owners' URLs.

Kafka's stock assignors hand out topic partitions one by one, which can split a task (partition p
of every co-partitioned source topic) across members. This assignor assigns *tasks*:

* every member advertises, in its subscription user_data, its HTTP URL, the tasks it owned, its
  process id (members sharing a state directory share it) and, per task whose state it holds
  locally, the sum of its changelog positions (``RUNNING`` for a task it ran until now);
* the leader, with the changelogs' end offsets read just before (``ends``, set by the worker's
  pre-assignment hook), places the tasks (``placement.place``: active on a caught-up member,
  standbys, warm-ups; docs/architecture.md, *High availability*) and logs why each task that moved
  or stays away from its balanced place went where;
* every member's assignment carries its standby and warm-up tasks and the whole task -> URL map,
  so every instance knows which instance to ask for a key (interactive queries).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import orjson
from aiokafka.cluster import ClusterMetadata
from aiokafka.coordinator.assignors.abstract import AbstractPartitionAssignor
from aiokafka.coordinator.protocol import (
    ConsumerProtocolMemberAssignment,
    ConsumerProtocolMemberMetadata,
)

from onceflow.runtime.placement import Member, Placement, TaskKey, balance, place

__all__ = ["HaConfig", "TaskAssignor", "TaskKey", "balance"]

log = logging.getLogger("onceflow.assignor")


def _task_id(task: TaskKey) -> str:
    return f"{task[0]}_{task[1]}"


def _parse_task_id(text: str) -> TaskKey:
    group, _, partition = text.rpartition("_")
    return group, int(partition)


@dataclass(frozen=True)
class HaConfig:
    """The high-availability settings the leader places tasks with."""

    standbys: int = 0
    acceptable_lag: int = 10_000
    max_warmups: int = 2


class TaskAssignor(AbstractPartitionAssignor):  # type: ignore[misc]
    """Assigns tasks of ``groups`` (task group -> source topics); one instance per worker.

    ``process``: this member's process id; ``positions()``: what it holds of each task's state
    (called at every join); ``ends``: per task, its changelogs' end offsets summed, set before the
    leader assigns. After an assignment: ``owned``, ``standby``, ``warmup`` (this member's
    tasks), ``owners`` (every task's URL); on the leader, ``placed`` (the last placement).
    """

    name = "onceflow-tasks"
    version = 0

    def __init__(
        self,
        groups: Mapping[str, list[str]],
        advertised_url: str,
        *,
        process: str = "",
        ha: HaConfig | None = None,
        positions: Callable[[], Mapping[TaskKey, int]] | None = None,
    ) -> None:
        self._groups = {g: list(ts) for g, ts in groups.items()}
        self._group_of = {t: g for g, ts in groups.items() for t in ts}
        self.advertised_url = advertised_url
        self.process = process
        self.ha = ha or HaConfig()
        self.positions: Callable[[], Mapping[TaskKey, int]] = positions or dict
        self.ends: dict[TaskKey, int] = {}
        self.owned: list[TaskKey] = []
        self.standby: list[TaskKey] = []
        self.warmup: list[TaskKey] = []
        self.moving: list[TaskKey] = []  # held for this member, waiting for its copy
        self.owners: dict[TaskKey, str] = {}
        self.placed: Placement | None = None
        self.placed_at = 0.0  # time.monotonic() of the leader's last placement
        self.placed_generation = 0
        self.generation_assignments = 0

    def metadata(self, topics: Iterable[str]) -> ConsumerProtocolMemberMetadata:
        positions = {_task_id(t): p for t, p in sorted(self.positions().items())}
        user_data = orjson.dumps(
            {
                "url": self.advertised_url,
                "owned": [_task_id(t) for t in self.owned],
                "process": self.process,
                "positions": positions,
            }
        )
        return ConsumerProtocolMemberMetadata(self.version, sorted(topics), user_data)

    def assign(
        self, cluster: ClusterMetadata, members: Mapping[str, ConsumerProtocolMemberMetadata]
    ) -> dict[str, ConsumerProtocolMemberAssignment]:
        urls: dict[str, str] = {}
        decoded: list[Member] = []
        for member_id, meta in members.items():
            info = _decode(meta.user_data)
            urls[member_id] = str(info.get("url", ""))
            decoded.append(
                Member(
                    member_id,
                    str(info.get("process") or member_id),
                    frozenset(_task_ids(info.get("owned"))),
                    _positions(info.get("positions")),
                )
            )
        tasks = self._tasks(cluster)
        ha = self.ha
        placed = place(
            tasks,
            decoded,
            self.ends,
            standbys=ha.standbys,
            acceptable_lag=ha.acceptable_lag,
            max_warmups=ha.max_warmups,
        )
        self.placed, self.placed_at = placed, time.monotonic()
        self.placed_generation = self.generation_assignments + 1  # this member's next one
        owners = {_task_id(t): urls[m] for m, ts in placed.active.items() for t in ts}
        out = {}
        for member_id, member_tasks in placed.active.items():
            by_topic: dict[str, list[int]] = {}
            for group, partition in member_tasks:
                for topic in self._groups[group]:
                    by_topic.setdefault(topic, []).append(partition)
            out[member_id] = ConsumerProtocolMemberAssignment(
                self.version,
                sorted((t, sorted(ps)) for t, ps in by_topic.items()),
                orjson.dumps(
                    {
                        "owners": owners,
                        "standby": [_task_id(t) for t in placed.standby[member_id]],
                        "warmup": [_task_id(t) for t in placed.warmup[member_id]],
                        # held for this member: its copies report when they caught up
                        "moving": [_task_id(t) for t, m in placed.held.items() if m == member_id],
                    }
                ),
            )
        self._log(placed, decoded)
        return out

    @property
    def leading(self) -> Placement | None:
        """The placement in force if this member made it (it led the last rebalance)."""
        if self.placed is None or self.placed_generation != self.generation_assignments:
            return None
        return self.placed

    def _log(self, placed: Placement, members: list[Member]) -> None:
        previous = {t: m.id for m in members for t in m.previous}
        stayed = 0
        for member_id, tasks in placed.active.items():
            for task in tasks:
                if previous.get(task) == member_id and task not in placed.held:
                    stayed += 1
                else:
                    log.info("task %s: %s", _task_id(task), placed.reasons[task])
        standbys = sum(len(ts) for ts in placed.standby.values())
        warmups = sum(len(ts) for ts in placed.warmup.values())
        log.info(
            "assigned %d tasks to %d members (%d stayed where they ran), %d standby and %d "
            "warm-up copies; %s",
            sum(len(ts) for ts in placed.active.values()),
            len(members),
            stayed,
            standbys,
            warmups,
            "balanced"
            if placed.balanced
            else f"{len(placed.held)} tasks wait for their place to warm up (probing rebalances)",
        )
        if placed.short_of_standbys:
            log.warning(
                "%d standby copies not placed: ONCEFLOW_NUM_STANDBY_REPLICAS=%d needs more "
                "instances with a state directory of their own",
                placed.short_of_standbys,
                self.ha.standbys,
            )

    def on_assignment(self, assignment: ConsumerProtocolMemberAssignment) -> None:
        info = _decode(assignment.user_data)
        owners = info.get("owners", {})
        if isinstance(owners, dict):
            self.owners = {_parse_task_id(str(k)): str(v) for k, v in owners.items()}
        self.standby = _task_ids(info.get("standby"))
        self.warmup = _task_ids(info.get("warmup"))
        self.moving = _task_ids(info.get("moving"))
        owned: set[TaskKey] = set()
        for topic, partitions in assignment.assignment:
            group = self._group_of.get(topic)
            if group is not None:
                owned.update((group, p) for p in partitions)
        self.owned = sorted(owned)
        self.generation_assignments += 1

    def _tasks(self, cluster: ClusterMetadata) -> list[TaskKey]:
        tasks: list[TaskKey] = []
        for group, topics in self._groups.items():
            counts = [len(cluster.partitions_for_topic(t) or ()) for t in topics]
            tasks.extend((group, p) for p in range(min(counts, default=0)))
        return tasks


def _task_ids(value: object) -> list[TaskKey]:
    if not isinstance(value, list):
        return []
    return sorted(_parse_task_id(str(t)) for t in value)


def _positions(value: object) -> dict[TaskKey, int]:
    if not isinstance(value, dict):
        return {}
    return {_parse_task_id(str(k)): int(v) for k, v in value.items() if isinstance(v, int)}


def _decode(data: bytes | None) -> dict[str, object]:
    if not data:
        return {}
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}
