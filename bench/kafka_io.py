"""Kafka plumbing for the benchmarks: topics, the input backlog, progress probes, verification.

The input backlog is written inside **one open transaction** while the worker joins its group;
committing it makes the whole backlog visible to the worker's ``read_committed`` consumer at once.
So the timed window starts at that commit: worker start-up, group join and the rebalances of a
two-worker run all happen before it, and the producer does not compete for CPU during it.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterable, Iterator
from typing import Any, Literal

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from onceflow.partitioner import partition_for_key

__all__ = [
    "Backlog",
    "Progress",
    "count_committed",
    "create_topics",
    "end_offsets",
    "key_of",
    "padded",
    "unique",
]

VALUE_BYTES = 100
_BATCH_BYTES = 512 * 1024


def unique(prefix: str) -> str:
    """A topic / group name no earlier run used."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def key_of(i: int) -> bytes:
    return b"key-%08d" % i


def padded(text: str | bytes, size: int = VALUE_BYTES) -> bytes:
    """``text`` left-aligned in ``size`` bytes (the app parses numbers with the padding)."""
    data = text.encode() if isinstance(text, str) else text
    return data.ljust(size, b" ")


async def create_topics(
    bootstrap: str, names: list[str], partitions: int, configs: dict[str, str] | None = None
) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        response = await admin.create_topics(
            [NewTopic(name, partitions, 1, topic_configs=configs or {}) for name in names]
        )
        errors = [(t[0], t[1]) for t in response.topic_errors if t[1] != 0]
        if errors:
            raise RuntimeError(f"create_topics failed (topic, error code): {errors}")
        for _ in range(100):  # leaders of new partitions may take a moment
            described = await admin.describe_topics(names)
            if all(d["error_code"] == 0 and len(d["partitions"]) == partitions for d in described):
                return
            await asyncio.sleep(0.1)
    finally:
        await admin.close()


class Backlog:
    """Input records produced in one transaction, released (committed) on demand.

    ``fill`` writes every record with ``create_batch``/``send_batch`` (one batch per partition at
    a time, keys placed by murmur2 like every Kafka client), ``release`` commits.
    ``transactional=False`` writes with a plain idempotent producer (changelog fill).
    ``memo=False`` does not remember each key's partition: for fills of millions of distinct
    keys, where the memo would only cost memory (~100 bytes a key).
    """

    def __init__(
        self, bootstrap: str, topic: str, partitions: int, *, transactional: bool, memo: bool = True
    ):
        self.topic = topic
        self.partitions = partitions
        self.count = 0
        self._transactional = transactional
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            enable_idempotence=True,
            acks="all",
            max_batch_size=_BATCH_BYTES,
            transactional_id=unique("bench-input") if transactional else None,
            transaction_timeout_ms=900_000,
            request_timeout_ms=120_000,
        )
        self._partition_of: dict[bytes, int] = {}
        self._memo = memo

    async def __aenter__(self) -> Backlog:
        await self._producer.start()
        if self._transactional:
            await self._producer.begin_transaction()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._producer.stop()

    def _partition(self, key: bytes) -> int:
        if not self._memo:
            return partition_for_key(key, self.partitions)
        p = self._partition_of.get(key)
        if p is None:
            p = self._partition_of[key] = partition_for_key(key, self.partitions)
        return p

    async def fill(
        self, records: Iterable[tuple[bytes, bytes]], *, event_step_ms: int | None = None
    ) -> int:
        """Send ``records`` and wait until the broker has them all (not yet visible). With
        ``event_step_ms``, record ``i``'s timestamp is ``i * event_step_ms`` after a recent
        start (event time spread as in a stream of that rate); else the time it was added."""
        batches: dict[int, Any] = {}
        futures = []
        start = int(time.time() * 1000) - 2 * 3_600_000  # recent: within topic retention
        for i, (key, value) in enumerate(records):
            ts = None if event_step_ms is None else start + i * event_step_ms
            p = self._partition(key)
            batch = batches.get(p) or batches.setdefault(p, self._producer.create_batch())
            if batch.append(key=key, value=value, timestamp=ts) is None:
                futures.append(await self._producer.send_batch(batch, self.topic, partition=p))
                batch = batches[p] = self._producer.create_batch()
                batch.append(key=key, value=value, timestamp=ts)
            self.count += 1
        for p, batch in batches.items():
            if batch.record_count():
                futures.append(await self._producer.send_batch(batch, self.topic, partition=p))
        await asyncio.gather(*futures)
        return self.count

    async def release(self) -> float:
        """Commit the backlog's transaction; returns the time it became visible."""
        if self._transactional:
            await self._producer.commit_transaction()
        return time.monotonic()


ProgressSource = Literal["committed", "output"]


class Progress:
    """How many input records have been fully processed, read cheaply from the broker.

    * ``committed``: the group's committed input offsets (transactional runs: they commit with
      the output, so they count records whose output is visible to ``read_committed``).
    * ``output``: the output topic's end offsets (non-transactional runs: no control records,
      so the end offset is the record count; the group commits too rarely to be used).
    """

    def __init__(
        self, bootstrap: str, source: ProgressSource, group: str, topic: str, partitions: int
    ):
        self.source = source
        self._group = group
        self._tps = [TopicPartition(topic, p) for p in range(partitions)]
        self._admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, group_id=None, isolation_level="read_committed"
        )
        self._coordinator: int | None = None

    async def __aenter__(self) -> Progress:
        await self._admin.start()
        await self._consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._consumer.stop()
        await self._admin.close()

    async def read(self) -> int:
        if self.source == "output":
            ends = await self._consumer.end_offsets(self._tps)
            return sum(ends.values())
        if self._coordinator is None:
            self._coordinator = await self._admin.find_coordinator(self._group)
        offsets = await self._admin.list_consumer_group_offsets(
            self._group, self._coordinator, self._tps
        )
        return sum(max(0, meta.offset) for meta in offsets.values())


async def end_offsets(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    """Each partition's end offset (records and transaction markers written so far)."""
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        ends = await consumer.end_offsets(tps)
        return {tp.partition: offset for tp, offset in ends.items()}
    finally:
        await consumer.stop()


async def count_committed(
    bootstrap: str, topic: str, partitions: int, timeout: float
) -> tuple[int, int]:
    """Every record of ``topic`` a ``read_committed`` consumer sees, counted, and the sum of the
    partitions' end offsets (which also counts transaction markers: one per commit and
    partition)."""
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=8 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
    )
    await consumer.start()
    try:
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        count = 0
        async with asyncio.timeout(timeout):
            while any([await consumer.position(tp) < ends[tp] for tp in tps]):
                batches = await consumer.getmany(timeout_ms=500, max_records=100_000)
                count += sum(len(records) for records in batches.values())
        return count, sum(ends.values())
    finally:
        await consumer.stop()


def numbered(keys: int, records: int) -> Iterator[tuple[bytes, bytes]]:
    """``records`` records over ``keys`` distinct keys, round robin; the value is the record's
    number padded to 100 bytes (echo copies it, sum/count adds it up)."""
    for i in range(records):
        yield key_of(i % keys), padded(str(i))
