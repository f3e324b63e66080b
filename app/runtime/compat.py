"""Every use of a dependency's private API, in one place.

Checked against aiokafka 0.14.0 and prometheus-client 0.26.0 (constraints.txt pins them).
When either is upgraded, read each function below against the new source first: each says what
it reaches into and why the public API does not do.

Protocol messages aiokafka 0.14 does not define (Metadata v12, which carries topic ids) are built
from its protocol types in ``onceflow.runtime.protocol`` and sent with ``send_admin_request``.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiokafka.producer.transaction_manager import TransactionState
from aiokafka.protocol.group import HeartbeatRequest, JoinGroupRequest, SyncGroupRequest
from aiokafka.structs import OffsetAndMetadata, TopicPartition

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.cluster import ClusterMetadata
    from prometheus_client import Histogram

__all__ = [
    "abortable",
    "before_assignment",
    "cluster_metadata",
    "committed_offsets",
    "fatal_transaction_error",
    "histogram_add",
    "histogram_bounds",
    "membership_confirmed",
    "membership_current",
    "request_rejoin",
    "send_admin_request",
    "watch_membership",
]

# aiokafka allows abort_transaction() only from these states (it asserts otherwise).
_ABORTABLE = (TransactionState.IN_TRANSACTION, TransactionState.ABORTABLE_ERROR)


# -- aiokafka 0.14.0 ---------------------------------------------------------------------------


async def committed_offsets(
    consumer: AIOKafkaConsumer, tps: Iterable[TopicPartition]
) -> dict[TopicPartition, OffsetAndMetadata]:
    """The group's committed offsets of ``tps`` with their metadata, in one request.

    ``consumer._coordinator.fetch_committed_offsets``: the public ``committed()`` asks one
    partition at a time and drops the metadata, where a task keeps its stream time.
    """
    result: dict[
        TopicPartition, OffsetAndMetadata
    ] = await consumer._coordinator.fetch_committed_offsets(list(tps))
    return result


async def cluster_metadata(consumer: AIOKafkaConsumer) -> ClusterMetadata:
    """Fresh metadata of every topic (``consumer._client.fetch_all_metadata``): the public
    ``partitions_for_topic`` answers from a cache that may predate a topic's deletion."""
    return await consumer._client.fetch_all_metadata()


async def send_admin_request(client: AIOKafkaAdminClient, request: Any) -> Any:
    """Send a raw request through the admin client (``_send_request``): a Metadata request with
    ``allow_auto_topic_creation=False``, which ``describe_topics`` does not let us set."""
    return await client._send_request(request)


def request_rejoin(consumer: AIOKafkaConsumer) -> None:
    """Make the consumer rejoin its group at its next poll (``_coordinator.request_rejoin``):
    aiokafka has no public ``enforceRebalance``. A fenced task is rebuilt only if the rebalance
    that follows gives it back to this member (Kafka Streams does the same on
    ``TaskMigratedException``)."""
    consumer._coordinator.request_rejoin()


def before_assignment(consumer: AIOKafkaConsumer, hook: Callable[[], Awaitable[None]]) -> None:
    """Await ``hook()`` each time this member, as the group's leader, is about to assign
    (``_coordinator._perform_assignment``, a coroutine that calls the assignor's synchronous
    ``assign``): the lag-aware assignor needs the changelogs' end offsets of that moment. Once
    per started consumer; a failing hook is the hook's to handle (it must not raise)."""
    coordinator = consumer._coordinator
    perform = coordinator._perform_assignment

    async def perform_assignment(response: Any) -> Any:
        await hook()
        return await perform(response)

    coordinator._perform_assignment = perform_assignment


def fatal_transaction_error(producer: AIOKafkaProducer) -> tuple[bool, BaseException | None]:
    """Whether the producer's transaction manager is in a fatal state (fenced), and the error
    it recorded (``_txn_manager``, ``_transaction_waiter``).

    After fencing, ``commit_transaction`` trips an assertion instead of raising: the sink checks
    this first and raises the recorded error as ``TaskFencedError``.
    """
    txn = producer._txn_manager
    if txn is None or not txn.is_fatal_error():
        return False, None
    waiter = txn._transaction_waiter
    cause = waiter.exception() if waiter is not None and waiter.done() else None
    return True, cause


def abortable(producer: AIOKafkaProducer) -> tuple[bool, str]:
    """Whether ``abort_transaction()`` may be called now (aiokafka asserts otherwise), and the
    transaction state's name for the log (``_txn_manager.state``)."""
    txn = producer._txn_manager
    if txn is None or txn.is_fatal_error():
        return False, "fatal" if txn is not None else "none"
    return txn.state in _ABORTABLE, str(txn.state)


# -- group membership (aiokafka 0.14.0) ---------------------------------------------------------


@dataclass
class _Liveness:
    clock: Callable[[], float]
    alive_at: float | None = None  # when the last request that proved membership was sent


# One record per group coordinator (a consumer makes one when it starts).
_LIVENESS: weakref.WeakKeyDictionary[Any, _Liveness] = weakref.WeakKeyDictionary()


def watch_membership(
    consumer: AIOKafkaConsumer, clock: Callable[[], float] = time.monotonic
) -> None:
    """Record when the group coordinator last confirmed this member; once per started consumer.

    Wraps ``consumer._coordinator._send_req``, through which the heartbeat routine
    (``_heartbeat_routine`` → ``_do_heartbeat``) and the rebalance (``CoordinatorGroupRebalance``,
    JoinGroup then SyncGroup) send every request, looked up on the instance each time. A
    Heartbeat or SyncGroup answered without error proves the member (id and generation) current
    when the broker handled it, and restarts its session timer there: the *send* time of such a
    request is recorded, a lower bound of that restart. ``_do_heartbeat`` itself is not the place:
    it also returns True for ``RebalanceInProgress`` (a pending rebalance, not a confirmation),
    and it starts only one heartbeat interval after the first join, whose SyncGroup is the first
    proof. Nothing else changes: the response goes back to aiokafka as it came.
    """
    coordinator = consumer._coordinator
    if coordinator is None or coordinator in _LIVENESS:
        return
    liveness = _Liveness(clock)
    _LIVENESS[coordinator] = liveness
    send = coordinator._send_req

    async def send_req(request: Any) -> Any:
        sent_at = liveness.clock()
        response = await send(request)
        if isinstance(request, HeartbeatRequest | SyncGroupRequest) and response.error_code == 0:
            liveness.alive_at = sent_at
        return response

    coordinator._send_req = send_req


def membership_confirmed(
    consumer: AIOKafkaConsumer, session_timeout_s: float, *, now: float | None = None
) -> bool:
    """Whether the group coordinator confirmed this member (a Heartbeat or SyncGroup answered
    without error, ``watch_membership``) within the last ``session_timeout_s``: unlike
    ``membership_current``, a pending rebalance does not matter. A member that is not may have
    been expelled, and its tasks given to others meanwhile."""
    coordinator = consumer._coordinator
    liveness = _LIVENESS.get(coordinator) if coordinator is not None else None
    if liveness is None or liveness.alive_at is None:
        return False
    return (liveness.clock() if now is None else now) - liveness.alive_at <= session_timeout_s


def membership_current(
    consumer: AIOKafkaConsumer, session_timeout_s: float, *, now: float | None = None
) -> tuple[bool, str]:
    """Whether this consumer is, as far as it can know, a current member of its group, and why
    not: a member that is not may have lost its partitions to another (a zombie).

    Not current when: ``watch_membership`` was not installed; the member id is unknown
    (``member_id``: before the first join, or after ``reset_generation`` on UnknownMemberId /
    IllegalGeneration, or after leaving); a rebalance is pending (``need_rejoin``: the
    ``_rejoin_needed_fut`` is set by ``request_rejoin``, e.g. on a RebalanceInProgress heartbeat,
    or the assignment was dropped for a join); or no Heartbeat / SyncGroup sent within the last
    ``session_timeout_s`` was answered, after which the broker may have expelled the member
    (a process paused past its session timeout wakes up in this state, before its next heartbeat
    fails).
    """
    coordinator = consumer._coordinator
    liveness = _LIVENESS.get(coordinator) if coordinator is not None else None
    if coordinator is None or liveness is None:
        return False, "group membership is not watched"
    if coordinator.member_id == JoinGroupRequest.UNKNOWN_MEMBER_ID:
        return False, "not a member of the group"
    subscription = coordinator._subscription.subscription
    if subscription is None or coordinator.need_rejoin(subscription):
        return False, "a rebalance is pending"
    if liveness.alive_at is None:
        return False, "the group coordinator has not confirmed the membership yet"
    age = (liveness.clock() if now is None else now) - liveness.alive_at
    if age > session_timeout_s:
        return False, (
            f"no heartbeat confirmed for {age:.1f}s, beyond the session timeout "
            f"({session_timeout_s:g}s): the group may have moved on"
        )
    return True, "current"


# -- prometheus-client -------------------------------------------------------------------------


def histogram_bounds(child: Histogram) -> Sequence[float]:
    """A histogram child's bucket upper bounds (``_upper_bounds``)."""
    bounds: Sequence[float] = child._upper_bounds
    return bounds


def histogram_add(child: Histogram, counts: Sequence[int], total: float) -> None:
    """Add per-bucket ``counts`` and their ``total`` to a histogram child (``_buckets``,
    ``_sum``): what ``observe`` does per value, once per batch. tests/unit/runtime/test_metrics.py
    checks the result against ``observe``."""
    buckets = child._buckets
    for i, count in enumerate(counts):
        if count:
            buckets[i].inc(count)
    child._sum.inc(total)
