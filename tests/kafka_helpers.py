"""Helpers for tests that talk to a real broker: names, topics, and reading what is committed.

``end_offsets`` and ``read_to_end`` take an ``isolation`` so tests can compare what a
``read_committed`` reader may see (up to the last stable offset) with the raw log.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import time
import uuid
from pathlib import Path
from types import ModuleType
from typing import Literal

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

Isolation = Literal["read_committed", "read_uncommitted"]
REPO = Path(__file__).resolve().parents[1]
READ_TIMEOUT_S = 30.0


def recent_window_start(window_ms: int, hours_ago: float = 2.0) -> int:
    """A window boundary a little in the past. Record timestamps flow to output topics (event
    time, as in Kafka Streams), and the broker deletes records older than the topic's retention
    (7 days by default): test data must be recent, or its outputs vanish mid-test."""
    now = int(time.time() * 1000) - int(hours_ago * 3_600_000)
    return now - now % window_ms


def unique_name(prefix: str = "t") -> str:
    """A topic / group / transactional id no other test (or earlier run) has used."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def load_kafka_local() -> ModuleType:
    """Import scripts/kafka_local.py, which is a script rather than a package module."""
    return load_script("kafka_local")


def load_script(script: str) -> ModuleType:
    """Import scripts/<script>.py as the module ``onceflow_<script>``."""
    name = f"onceflow_{script}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / f"scripts/{script}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while the class is built
        spec.loader.exec_module(module)
    return sys.modules[name]


async def create_topics(
    admin: AIOKafkaAdminClient,
    names: list[str],
    partitions: int,
    replication: int = 1,
    config: dict[str, str] | None = None,
) -> None:
    """Create topics and fail loudly: aiokafka returns per-topic errors instead of raising."""
    topics = [NewTopic(name, partitions, replication, topic_configs=config or {}) for name in names]
    response = await admin.create_topics(topics)
    errors = [(t[0], t[1]) for t in response.topic_errors if t[1] != 0]
    assert not errors, f"create_topics failed (topic, error code): {errors}"


async def _consumer(bootstrap: str, isolation: Isolation) -> AIOKafkaConsumer:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        isolation_level=isolation,
    )
    await consumer.start()
    return consumer


async def partitions_of(bootstrap: str, topic: str) -> list[TopicPartition]:
    """The topic's partitions, from a fresh Metadata request (clients cache topics they track)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        for _ in range(50):  # a new topic's leaders may need a moment
            (described,) = await admin.describe_topics([topic])
            if described["error_code"] == 0 and described["partitions"]:
                numbers = sorted(p["partition"] for p in described["partitions"])
                return [TopicPartition(topic, p) for p in numbers]
            await asyncio.sleep(0.1)
    finally:
        await admin.close()
    raise AssertionError(f"topic {topic}: no partitions in the metadata ({described})")


async def end_offsets(bootstrap: str, topic: str, isolation: Isolation) -> dict[int, int]:
    """End offset per partition: the last stable offset for read_committed, else the high mark."""
    partitions = await partitions_of(bootstrap, topic)
    consumer = await _consumer(bootstrap, isolation)
    try:
        ends = await consumer.end_offsets(partitions)
        return {tp.partition: offset for tp, offset in ends.items()}
    finally:
        await consumer.stop()


async def start_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """The log start offset per partition (where DeleteRecords and retention moved it)."""
    partitions = await partitions_of(bootstrap, topic)
    consumer = await _consumer(bootstrap, "read_uncommitted")
    try:
        starts = await consumer.beginning_offsets(partitions)
        return {tp.partition: offset for tp, offset in starts.items()}
    finally:
        await consumer.stop()


async def read_to_end(
    bootstrap: str, topic: str, isolation: Isolation = "read_committed"
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of ``topic`` visible at ``isolation``, up to the end offsets taken now."""
    partitions = await partitions_of(bootstrap, topic)
    consumer = await _consumer(bootstrap, isolation)
    try:
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        records: list[ConsumerRecord[bytes, bytes]] = []
        async with asyncio.timeout(READ_TIMEOUT_S):
            while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
                batches = await consumer.getmany(*partitions, timeout_ms=200)
                records += [r for batch in batches.values() for r in batch]
        return sorted(records, key=lambda r: (r.partition, r.offset))
    finally:
        await consumer.stop()
