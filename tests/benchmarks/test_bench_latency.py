"""The latency benchmark's librdkafka harness (bench/load_rdkafka.py) against the real broker:
it sends what it says at the pace asked, keyed as aiokafka and onceflow partition, and the timing
consumer counts every record and times only those stamped after the warm-up."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from aiokafka import AIOKafkaConsumer, TopicPartition

from bench.load_rdkafka import consume_stamps, produce_paced
from onceflow.partitioner import partition_for_key

PARTITIONS = 3


async def _read_all(bootstrap: str, topic: str, count: int) -> list[tuple[int, bytes]]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    out: list[tuple[int, bytes]] = []
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        async with asyncio.timeout(30):
            while len(out) < count:
                for tp, records in (await consumer.getmany(timeout_ms=200)).items():
                    out += [(tp.partition, r.key) for r in records if r.key is not None]
    finally:
        await consumer.stop()
    return out


async def test_paced_records_are_keyed_like_onceflow_and_all_timed(
    bootstrap_servers: str, new_topic: Callable[..., Awaitable[str]]
) -> None:
    topic = await new_topic("bench-latency", partitions=PARTITIONS)
    started = time.monotonic()
    sent = await asyncio.to_thread(produce_paced, bootstrap_servers, topic, 1_000, 0.5)
    elapsed = time.monotonic() - started
    assert 400 <= sent <= 500 and elapsed >= 0.5  # the pace: rate x seconds, never ahead
    read = await _read_all(bootstrap_servers, topic, sent)
    assert len(read) == sent
    assert all(p == partition_for_key(key, PARTITIONS) for p, key in read)  # murmur2, as aiokafka

    latencies = await asyncio.to_thread(
        consume_stamps, bootstrap_servers, topic, PARTITIONS, 0, lambda seen: seen >= sent
    )
    assert len(latencies) == sent and min(latencies) > 0
    late = time.time_ns()  # every record was stamped before: all counted, none timed
    seen: list[int] = []
    untimed = await asyncio.to_thread(
        consume_stamps, bootstrap_servers, topic, PARTITIONS, late,
        lambda n: seen.append(n) is None and n >= sent,
    )  # fmt: skip
    assert untimed == [] and seen[-1] == sent
