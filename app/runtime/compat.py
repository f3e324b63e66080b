"""Every use of a dependency's private API, in one place.

Checked against aiokafka 0.14.0 and prometheus-client 0.26.0 (constraints.txt pins them).
When either is upgraded, read each function below against the new source first: each says what
it reaches into and why the public API does not do.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from aiokafka.producer.transaction_manager import TransactionState
from aiokafka.structs import OffsetAndMetadata, TopicPartition

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.cluster import ClusterMetadata
    from prometheus_client import Histogram

__all__ = [
    "abortable",
    "cluster_metadata",
    "committed_offsets",
    "fatal_transaction_error",
    "histogram_add",
    "histogram_bounds",
    "send_admin_request",
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
