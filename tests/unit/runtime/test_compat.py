"""``compat.watch_membership`` / ``membership_current``: when a member knows it is current.

A stand-in coordinator carries the attributes ``compat`` reads (``member_id``, ``_subscription``,
``_rejoin_needed_fut``, ``_send_req``) and borrows aiokafka's own ``_do_heartbeat``,
``need_rejoin``, ``request_rejoin``, ``reset_generation`` and ``coordinator_dead``, so every
heartbeat outcome goes through aiokafka's code; only the broker's answers are made up. A real
zombie is in tests/chaos/test_zombie_queries.py.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiokafka.consumer.group_coordinator import GroupCoordinator
from aiokafka.errors import KafkaConnectionError
from aiokafka.protocol.commit import OffsetCommitRequest
from aiokafka.protocol.group import HeartbeatRequest, SyncGroupRequest

from onceflow.runtime.compat import membership_current, watch_membership

SESSION_S = 6.0
NO_ERROR, REBALANCE_IN_PROGRESS, UNKNOWN_MEMBER_ID = 0, 27, 25


@dataclass
class Clock:
    now: float = 100.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Answer:
    error_code: int


@dataclass
class Subscription:
    assignment: object | None = "assigned"


@dataclass
class SubscriptionState:
    subscription: Subscription | None = field(default_factory=Subscription)


class Coordinator:
    """What compat and aiokafka's borrowed methods read of a ``GroupCoordinator``."""

    need_rejoin = GroupCoordinator.need_rejoin
    request_rejoin = GroupCoordinator.request_rejoin
    reset_generation = GroupCoordinator.reset_generation
    coordinator_dead = GroupCoordinator.coordinator_dead
    _do_heartbeat = GroupCoordinator._do_heartbeat

    def __init__(self, clock: Clock) -> None:
        self.group_id = "app"
        self.coordinator_id: int | None = 1
        self.generation = -1
        self.member_id = ""  # before the first join
        self._subscription = SubscriptionState()
        loop = asyncio.get_running_loop()
        self._rejoin_needed_fut = loop.create_future()
        self._coordinator_dead_fut = loop.create_future()
        self.clock = clock
        self.answers: list[Answer | Exception] = []
        self.sent: list[Any] = []
        self.round_trip_s = 0.002

    async def _send_req(self, request: Any) -> Answer:
        self.sent.append(request)
        self.clock.now += self.round_trip_s  # the answer comes back later than it was sent
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def joined(self, generation: int = 1, member_id: str = "m-1") -> None:
        """What ``perform_group_join`` sets after JoinGroup (``_rejoin_needed_fut`` is renewed
        before SyncGroup is sent)."""
        self.generation, self.member_id = generation, member_id
        self._rejoin_needed_fut = asyncio.get_running_loop().create_future()

    async def sync(self, error_code: int = NO_ERROR) -> None:
        self.answers.append(Answer(error_code))
        await self._send_req(
            SyncGroupRequest(self.group_id, self.generation, self.member_id, "", [])
        )

    async def heartbeat(self, answer: Answer | Exception) -> bool:
        self.answers.append(answer)
        result: bool = await self._do_heartbeat()
        return result


@dataclass
class Consumer:
    _coordinator: Coordinator | None


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def member(clock: Clock) -> tuple[Consumer, Coordinator]:
    """A watched consumer whose coordinator joined and synced at ``clock`` 100.0."""
    coordinator = Coordinator(clock)
    consumer = Consumer(coordinator)
    watch_membership(consumer, clock)
    coordinator.joined()
    await coordinator.sync()
    return consumer, coordinator


def current(consumer: Consumer, now: float | None = None) -> tuple[bool, str]:
    return membership_current(consumer, SESSION_S, now=now)


async def test_not_current_until_watched_and_joined(clock: Clock) -> None:
    assert current(Consumer(None)) == (False, "group membership is not watched")
    coordinator = Coordinator(clock)
    consumer = Consumer(coordinator)
    assert current(consumer) == (False, "group membership is not watched")
    watch_membership(consumer, clock)
    assert current(consumer) == (False, "not a member of the group")
    coordinator.joined()  # JoinGroup answered; SyncGroup not yet
    assert current(consumer) == (
        False,
        "the group coordinator has not confirmed the membership yet",
    )
    await coordinator.sync()
    assert current(consumer) == (True, "current")


async def test_a_failed_sync_confirms_nothing(clock: Clock) -> None:
    coordinator = Coordinator(clock)
    consumer = Consumer(coordinator)
    watch_membership(consumer, clock)
    coordinator.joined()
    await coordinator.sync(REBALANCE_IN_PROGRESS)
    assert current(consumer)[0] is False


async def test_watching_twice_wraps_once(member: tuple[Consumer, Coordinator]) -> None:
    consumer, coordinator = member
    wrapped = coordinator._send_req
    watch_membership(consumer)
    assert coordinator._send_req is wrapped


async def test_the_sync_counts_from_when_it_was_sent(clock: Clock) -> None:
    """The broker restarts the session timer when it handles the request: no earlier than the
    send, so the send time is the safe one (the answer may come back much later)."""
    coordinator = Coordinator(clock)
    consumer = Consumer(coordinator)
    watch_membership(consumer, clock)
    coordinator.joined()
    coordinator.round_trip_s = 2.0  # e.g. a follower's SyncGroup waits for the leader
    await coordinator.sync()
    assert clock.now == 102.0
    assert current(consumer, now=106.0) == (True, "current")
    ok, why = current(consumer, now=106.1)
    assert not ok
    assert why == (
        "no heartbeat confirmed for 6.1s, beyond the session timeout (6s): "
        "the group may have moved on"
    )


async def test_heartbeats_keep_it_current_until_they_stop(
    member: tuple[Consumer, Coordinator], clock: Clock
) -> None:
    consumer, coordinator = member
    for _ in range(10):  # one heartbeat a second, each answered
        clock.now += 1.0
        assert await coordinator.heartbeat(Answer(NO_ERROR))
        assert current(consumer) == (True, "current")
    last_sent = clock.now - coordinator.round_trip_s
    # Then the broker is unreachable: aiokafka retries, nothing is confirmed.
    for _ in range(5):
        clock.now += 1.0
        assert not await coordinator.heartbeat(KafkaConnectionError())
    assert current(consumer, now=last_sent + SESSION_S)[0] is True
    assert current(consumer, now=last_sent + SESSION_S + 0.01)[0] is False
    assert isinstance(coordinator.sent[-1], HeartbeatRequest)


async def test_a_zombie_wakes_up_not_current(
    member: tuple[Consumer, Coordinator], clock: Clock
) -> None:
    """SIGSTOP past the session timeout: on waking, before its next heartbeat is even sent."""
    consumer, coordinator = member
    clock.now += 1.0
    assert await coordinator.heartbeat(Answer(NO_ERROR))
    clock.now += 9.0  # stopped
    ok, why = current(consumer)
    assert not ok
    assert "no heartbeat confirmed for 9.0s" in why
    # The heartbeat then learns the group moved on: aiokafka resets the generation.
    assert not await coordinator.heartbeat(Answer(UNKNOWN_MEMBER_ID))
    assert (coordinator.member_id, coordinator.generation) == ("", -1)
    assert current(consumer) == (False, "not a member of the group")


async def test_rebalance_in_progress_is_not_a_confirmation(
    member: tuple[Consumer, Coordinator], clock: Clock
) -> None:
    """aiokafka's ``_do_heartbeat`` returns True for RebalanceInProgress (to keep heartbeating),
    and asks to rejoin: a pending rebalance, not a current membership."""
    consumer, coordinator = member
    clock.now += 1.0
    assert await coordinator.heartbeat(Answer(REBALANCE_IN_PROGRESS)) is True
    assert current(consumer) == (False, "a rebalance is pending")
    coordinator.joined(generation=2)  # rejoined; SyncGroup renews the membership
    clock.now += 7.0
    assert current(consumer)[0] is False  # only the old heartbeat counts so far
    await coordinator.sync()
    assert current(consumer) == (True, "current")


async def test_a_dropped_assignment_or_subscription_is_a_pending_rebalance(
    member: tuple[Consumer, Coordinator],
) -> None:
    consumer, coordinator = member
    subscription = coordinator._subscription.subscription
    assert subscription is not None
    subscription.assignment = None  # begin_reassignment() before a join
    assert current(consumer) == (False, "a rebalance is pending")
    coordinator._subscription.subscription = None  # unsubscribed
    assert current(consumer) == (False, "a rebalance is pending")


async def test_other_requests_confirm_nothing(
    member: tuple[Consumer, Coordinator], clock: Clock
) -> None:
    consumer, coordinator = member
    clock.now += 7.0
    coordinator.answers.append(Answer(NO_ERROR))
    await coordinator._send_req(OffsetCommitRequest("app", 1, "m-1", -1, []))
    assert current(consumer)[0] is False


async def test_errors_of_the_send_pass_through(member: tuple[Consumer, Coordinator]) -> None:
    _, coordinator = member
    coordinator.answers.append(KafkaConnectionError())
    with pytest.raises(KafkaConnectionError):
        await coordinator._send_req(HeartbeatRequest("app", 1, "m-1"))
