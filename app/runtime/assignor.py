"""The group's partition assignor: whole tasks, sticky, balanced, and owners' URLs for queries.

Kafka's stock assignors hand out topic partitions one by one, which can split a task (partition p
of every co-partitioned source topic) across members. This assignor assigns *tasks*:

* every member advertises its HTTP URL and the tasks it owned in its subscription user_data;
* the leader keeps each task where it was while that keeps the load within one task of even
  (sticky), places the rest on the least-loaded members, then evens out the counts;
* every member's assignment carries the whole task -> URL map, so every instance knows which
  instance to ask for a key (interactive queries).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

import orjson
from aiokafka.cluster import ClusterMetadata
from aiokafka.coordinator.assignors.abstract import AbstractPartitionAssignor
from aiokafka.coordinator.protocol import (
    ConsumerProtocolMemberAssignment,
    ConsumerProtocolMemberMetadata,
)

__all__ = ["TaskAssignor", "TaskKey", "balance"]

log = logging.getLogger("onceflow.assignor")
TaskKey = tuple[str, int]  # (task group, partition)


def _task_id(task: TaskKey) -> str:
    return f"{task[0]}_{task[1]}"


def _parse_task_id(text: str) -> TaskKey:
    group, _, partition = text.rpartition("_")
    return group, int(partition)


def balance(
    tasks: Iterable[TaskKey], members: list[str], previous: Mapping[str, Iterable[TaskKey]]
) -> dict[str, list[TaskKey]]:
    """Assign ``tasks`` to ``members``: sticky to ``previous``, counts within one of each other."""
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
        target = min(members, key=lambda m: (len(result[m]), m))
        result[target].append(task)
    # Stickiness can leave one member at the ceiling while another sits two below: even out.
    while True:
        most = max(members, key=lambda m: (len(result[m]), m))
        least = min(members, key=lambda m: (len(result[m]), m))
        if len(result[most]) - len(result[least]) <= 1:
            break
        result[least].append(result[most].pop())
    return result


class TaskAssignor(AbstractPartitionAssignor):  # type: ignore[misc]
    """Assigns tasks of ``groups`` (task group -> source topics); one instance per worker."""

    name = "onceflow-tasks"
    version = 0

    def __init__(self, groups: Mapping[str, list[str]], advertised_url: str) -> None:
        self._groups = {g: list(ts) for g, ts in groups.items()}
        self._group_of = {t: g for g, ts in groups.items() for t in ts}
        self.advertised_url = advertised_url
        self.owned: list[TaskKey] = []
        self.owners: dict[TaskKey, str] = {}
        self.generation_assignments = 0

    def metadata(self, topics: Iterable[str]) -> ConsumerProtocolMemberMetadata:
        user_data = orjson.dumps(
            {"url": self.advertised_url, "owned": [_task_id(t) for t in self.owned]}
        )
        return ConsumerProtocolMemberMetadata(self.version, sorted(topics), user_data)

    def assign(
        self, cluster: ClusterMetadata, members: Mapping[str, ConsumerProtocolMemberMetadata]
    ) -> dict[str, ConsumerProtocolMemberAssignment]:
        urls: dict[str, str] = {}
        previous: dict[str, list[TaskKey]] = {}
        for member_id, meta in members.items():
            info = _decode(meta.user_data)
            urls[member_id] = str(info.get("url", ""))
            owned = info.get("owned", [])
            previous[member_id] = (
                [_parse_task_id(str(t)) for t in owned] if isinstance(owned, list) else []
            )
        tasks = self._tasks(cluster)
        plan = balance(tasks, list(members), previous)
        owners = {_task_id(t): urls[m] for m, ts in plan.items() for t in ts}
        out = {}
        for member_id, member_tasks in plan.items():
            by_topic: dict[str, list[int]] = {}
            for group, partition in member_tasks:
                for topic in self._groups[group]:
                    by_topic.setdefault(topic, []).append(partition)
            out[member_id] = ConsumerProtocolMemberAssignment(
                self.version,
                sorted((t, sorted(ps)) for t, ps in by_topic.items()),
                orjson.dumps({"owners": owners}),
            )
        log.info("assigned %d tasks to %d members", len(tasks), len(members))
        return out

    def on_assignment(self, assignment: ConsumerProtocolMemberAssignment) -> None:
        info = _decode(assignment.user_data)
        owners = info.get("owners", {})
        if isinstance(owners, dict):
            self.owners = {_parse_task_id(str(k)): str(v) for k, v in owners.items()}
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


def _decode(data: bytes | None) -> dict[str, object]:
    if not data:
        return {}
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}
