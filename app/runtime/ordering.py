"""The order in which a task handles what one poll fetched for its partitions (docs/
architecture.md, *The life of a record*).

A task that owns several source partitions (two co-partitioned streams, a stream and a
repartition topic) handles them in timestamp order, as Kafka Streams does: it always takes the
next record of the partition whose next record has the smallest timestamp, so a join or a late
decision sees its inputs in event time order, not in the order the fetches happened to return
them. Within a partition the offset order is kept (a record with a smaller timestamp than the
one before it in its partition waits for it). Only what was fetched together is ordered: like
Kafka Streams' ``max.task.idle.ms=0``, a partition with nothing fetched does not hold the
others back, so across polls the order is the order of arrival.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

__all__ = ["by_timestamp"]

T = TypeVar("T")


def by_timestamp(work: Sequence[tuple[T, Sequence[Any]]]) -> list[tuple[T, list[Any]]]:
    """``work`` (per partition, its records in offset order) as runs of one partition's records,
    in the order the task handles them: by the timestamp of each partition's next record (ties:
    the order of ``work``), offsets in order within a partition. One partition: unchanged."""
    live = [(key, records) for key, records in work if records]
    if len(live) <= 1:
        return [(key, list(records)) for key, records in live]
    heads = [0] * len(live)
    runs: list[tuple[T, list[Any]]] = []
    while True:
        pending = [i for i in range(len(live)) if heads[i] < len(live[i][1])]
        if not pending:
            return runs
        first = min(pending, key=lambda i: (live[i][1][heads[i]].timestamp, i))
        # Take from ``first`` while its next record would still be picked (ties: work order).
        others = [(live[i][1][heads[i]].timestamp, i) for i in pending if i != first]
        bound = min(others, default=None)
        key, records = live[first]
        start = heads[first]
        end = start + 1
        while end < len(records) and (bound is None or (records[end].timestamp, first) < bound):
            end += 1
        heads[first] = end
        runs.append((key, list(records[start:end])))
