"""``onceflow reset``: make an app start over, as if it had never run (``reset_plan`` says what
and why; docs/architecture.md, *Reprocessing*).

``plan_reset`` reads the cluster and the local state directory and changes nothing;
``run_reset`` carries a plan out, step by step, each step printing what it did:

1. refuse if the group has live members, or a live worker on this host holds a store lock;
2. delete the internal topics, and wait until the broker no longer lists them (a worker started
   right after the reset must find them gone, not half-deleted);
3. check that the group's committed offsets of the deleted topics are gone (the broker drops
   them with the topic);
4. commit the group's new offsets of the source topics, without metadata;
5. wipe ``ONCEFLOW_STATE_DIR/<app_id>``, holding every store's lock while doing so.

Kafka Streams' reset tool leaves step 5 to ``KafkaStreams#cleanUp()`` on each host; here it is
part of the reset (``--local-state-only`` runs it alone, on each host that ran the app).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import (
    CoordinatorLoadInProgressError,
    CoordinatorNotAvailableError,
    NotCoordinatorError,
    for_code,
)
from aiokafka.structs import OffsetAndMetadata, TopicPartition

from onceflow.errors import OnceflowError, StoreLockedError
from onceflow.naming import sink_group
from onceflow.runtime.admin import TopicAdmin, internal_topics
from onceflow.runtime.clients import Clients
from onceflow.runtime.reset_plan import (
    Member,
    OffsetMove,
    ResetPlan,
    Target,
    internal_to_delete,
    source_topics,
)
from onceflow.settings import Settings
from onceflow.state.sqlite.lock import LOCK_FILE_NAME, TaskLock
from onceflow.topology import App

__all__ = ["ResetRefusedError", "plan_reset", "reset_app", "run_reset"]

T = TypeVar("T")
_UNKNOWN_TOPIC = 3
_COORDINATOR_LOADING = (
    CoordinatorLoadInProgressError,
    CoordinatorNotAvailableError,
    NotCoordinatorError,
)
Say = Callable[[str], None]


class ResetRefusedError(OnceflowError):
    """The reset cannot run now: live members in the group, or a store locked on this host."""


async def reset_app(
    app: App,
    settings: Settings,
    target: Target,
    *,
    include_dlq: bool,
    local_state_only: bool,
    dry_run: bool,
    say: Say,
) -> None:
    """``onceflow reset``: print the plan, then (unless ``dry_run``) carry it out."""
    clients = Clients(settings, client_id="onceflow-reset")
    plan = await plan_reset(
        app, settings, clients, target, include_dlq=include_dlq, local_state_only=local_state_only
    )
    for line in plan.lines():
        say(line)
    if plan.refused:
        raise ResetRefusedError("reset refused: " + " | ".join(plan.refused))
    if dry_run:
        say("dry run: nothing changed")
        return
    await run_reset(plan, clients, say)
    say(f"reset of app {app.app_id!r} done: start its workers to reprocess")


async def plan_reset(
    app: App,
    settings: Settings,
    clients: Clients,
    target: Target,
    *,
    include_dlq: bool = False,
    local_state_only: bool = False,
) -> ResetPlan:
    """What a reset of ``app`` would do now; changes nothing."""
    root = Path(settings.state_dir) / app.app_id
    plan = ResetPlan(app.app_id, target, local_state_only, root, state_exists=root.exists())
    with _locks(root) as locked:
        plan.locked = locked
    if local_state_only:
        return plan
    client = clients.admin()
    await clients.start(client)
    try:
        # A worker runs the app's tasks and its SQL sinks (each in a group of its own; an app of
        # sinks alone has no task group members): any live member refuses the reset.
        groups_of_app = [app.app_id, *(sink_group(app.app_id, n) for n in app.sql_sinks)]
        plan.members = [m for g in groups_of_app for m in await _members(client, g)]
        existing = set(await client.list_topics())
        groups = [g[0] for g in await _retry(client.list_consumer_groups)]
        declared = [t.name for t in internal_topics(app, dict.fromkeys(app.groups(), 1))]
        plan.delete, plan.keep = internal_to_delete(app, declared, existing, groups, include_dlq)
        committed = await _retry(lambda: client.list_consumer_group_offsets(app.app_id))
        sources = source_topics(app)
        counts = await TopicAdmin(client, replication_factor=-1).partition_counts(sources)
    finally:
        await client.close()
    plan.missing_sources = [t for t in sources if t not in counts]
    partitions = [TopicPartition(t, p) for t in sources if t in counts for p in range(counts[t])]
    consumer = clients.consumer(group_id=app.app_id)
    await clients.start(consumer)
    try:
        targets = await _targets(consumer, partitions, target)
    finally:
        await consumer.stop()
    plan.moves = [
        OffsetMove(tp.topic, tp.partition, _offset(committed.get(tp)), targets[tp])
        for tp in partitions
    ]
    return plan


async def run_reset(plan: ResetPlan, clients: Clients, say: Say) -> None:
    """Carry ``plan`` out (after ``plan.refused`` came back empty), saying what each step did."""
    if plan.refused:
        raise ResetRefusedError("reset refused: " + " | ".join(plan.refused))
    if not plan.local_state_only:
        await _delete_topics(plan, clients, say)
        await _commit_offsets(plan, clients, say)
    _wipe(plan, say)


async def _delete_topics(plan: ResetPlan, clients: Clients, say: Say) -> None:
    if not plan.delete:
        say("internal topics: none to delete")
        return
    client = clients.admin()
    await clients.start(client)
    try:
        names = list(plan.delete)
        response = await client.delete_topics(names)
        for name, code, *_ in response.topic_error_codes:
            if code not in (0, _UNKNOWN_TOPIC):
                raise for_code(code)(f"deleting topic {name!r}")
            say(f"deleted topic {name}" if code == 0 else f"topic {name}: already gone")
        admin = TopicAdmin(client, replication_factor=-1)
        await _until(lambda: _gone(admin, names), f"topics {names} still listed by the broker")
        await _until(
            lambda: _offsets_gone(client, plan.app_id, names),
            f"committed offsets of group {plan.app_id!r} for deleted topics {names} are still "
            "there; delete them with kafka-consumer-groups --delete-offsets",
        )
        say(f"group {plan.app_id!r}: no committed offsets left for the deleted topics")
    finally:
        await client.close()


async def _commit_offsets(plan: ResetPlan, clients: Clients, say: Say) -> None:
    moving = {
        TopicPartition(m.topic, m.partition): OffsetAndMetadata(m.target, "")
        for m in plan.moves
        if m.committed != m.target
    }
    unchanged = len(plan.moves) - len(moving)
    if moving:
        consumer = clients.consumer(group_id=plan.app_id)
        await clients.start(consumer)
        try:
            consumer.assign(list(moving))
            await consumer.commit(moving)
        finally:
            await consumer.stop()
    say(
        f"group {plan.app_id!r}: committed {len(moving)} partition offset(s) "
        f"({plan.target.describe()}), {unchanged} already there"
    )


def _wipe(plan: ResetPlan, say: Say) -> None:
    root = plan.state_dir
    if not root.exists():
        say(f"local state {root}: nothing to wipe")
        return
    with _locks(root) as locked:
        if locked:  # a worker started on this host since the plan was made
            raise ResetRefusedError("local state not wiped: " + " | ".join(locked))
        shutil.rmtree(root)
    say(f"wiped local state {root}")


@contextlib.contextmanager
def _locks(root: Path) -> Iterator[list[str]]:
    """Take every store lock under ``root``; yields why each one that is held elsewhere is
    (empty: all are ours until the block ends)."""
    held: list[TaskLock] = []
    refused: list[str] = []
    try:
        for lock_file in sorted(root.rglob(LOCK_FILE_NAME)) if root.exists() else []:
            lock = TaskLock(lock_file.parent)
            try:
                lock.acquire(0.0)
            except StoreLockedError as exc:
                refused.append(f"{exc}; stop the worker on this host, then reset")
                continue
            held.append(lock)
        yield refused
    finally:
        for lock in held:
            lock.close()


async def _members(client: AIOKafkaAdminClient, group: str) -> list[Member]:
    responses = await _retry(lambda: client.describe_consumer_groups([group]))
    members = []
    for response in responses:
        for described in response.to_object()["groups"]:
            for m in described["members"]:
                members.append(Member(m["member_id"], m["client_id"], m["client_host"], group))
    return members


async def _targets(
    consumer: AIOKafkaConsumer, partitions: list[TopicPartition], target: Target
) -> dict[TopicPartition, int]:
    if not partitions:
        return {}
    if target.kind == "earliest":
        return dict(await consumer.beginning_offsets(partitions))
    ends: dict[TopicPartition, int] = await consumer.end_offsets(partitions)
    if target.timestamp_ms is None:
        return ends
    found = await consumer.offsets_for_times(dict.fromkeys(partitions, target.timestamp_ms))
    # No record at or after the time: the log end, as Kafka's reset tool does.
    return {tp: found[tp].offset if found.get(tp) is not None else ends[tp] for tp in partitions}


def _offset(meta: OffsetAndMetadata | None) -> int | None:
    return None if meta is None or meta.offset < 0 else meta.offset


async def _gone(admin: TopicAdmin, names: list[str]) -> bool:
    return not await admin.partition_counts(names)


async def _offsets_gone(client: AIOKafkaAdminClient, group: str, names: list[str]) -> bool:
    offsets = await _retry(lambda: client.list_consumer_group_offsets(group))
    return not any(tp.topic in names for tp in offsets)


async def _until(check: Callable[[], Awaitable[bool]], failure: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() >= deadline:
            raise OnceflowError(f"after {timeout_s:.0f}s: {failure}")
        await asyncio.sleep(0.2)


async def _retry(call: Callable[[], Awaitable[T]], timeout_s: float = 30) -> T:
    """``call`` again while the group coordinator is loading or moving."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return await call()
        except _COORDINATOR_LOADING:
            if time.monotonic() >= deadline:
                raise
            await asyncio.sleep(0.5)
