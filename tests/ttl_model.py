"""What tests/apps/ttl_counts.py must compute: a model of a table with TTL by stream time, for
the integration and chaos tests to compare a real run with."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from onceflow.partitioner import partition_for_key


def ttl_counts(
    records: Iterable[tuple[bytes, bytes, int]], partitions: int, ttl_ms: int
) -> tuple[dict[int, list[tuple[bytes, int]]], dict[bytes, int]]:
    """Per partition, the outputs ``(key, count)`` in order; and the final table as queries see
    it: the keys not expired by their partition's final stream time, with their counts."""
    stream_time: dict[int, int] = defaultdict(lambda: -1)
    table: dict[bytes, tuple[int, int]] = {}  # key -> (count, written_at)
    outputs: dict[int, list[tuple[bytes, int]]] = defaultdict(list)
    for key, _, timestamp in records:
        p = partition_for_key(key, partitions)
        now = stream_time[p] = max(stream_time[p], timestamp)
        count, written_at = table.get(key, (0, -1))
        if key in table and written_at + ttl_ms <= now:
            count = 0
        table[key] = (count + 1, now)
        outputs[p].append((key, count + 1))
    final = {
        key: count
        for key, (count, written_at) in table.items()
        if written_at + ttl_ms > stream_time[partition_for_key(key, partitions)]
    }
    return dict(outputs), final
