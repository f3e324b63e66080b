"""What onceflow's exactly-once design takes for granted from the broker and aiokafka 0.14.

If one of these fails, the runtime's guarantees fail with it: read_committed hides aborted and
open transactions, and a second producer with the same transactional id fences the first.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import ProducerFenced
from kafka_helpers import end_offsets, read_to_end, unique_name

NewTopic = Callable[..., Awaitable[str]]


@contextlib.asynccontextmanager
async def transactional_producer(bootstrap: str, txn_id: str) -> AsyncIterator[AIOKafkaProducer]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=txn_id)
    await producer.start()  # InitProducerId: fences any older producer with this id
    try:
        yield producer
    finally:
        await producer.stop()


def values(records: list[object]) -> list[bytes]:
    return [r.value for r in records]  # type: ignore[attr-defined]


async def test_read_committed_sees_only_committed(
    bootstrap_servers: str, new_topic: NewTopic
) -> None:
    topic = await new_topic("txn")
    async with transactional_producer(bootstrap_servers, unique_name("txn")) as producer:
        async with producer.transaction():
            for i in range(3):
                await producer.send(topic, f"committed-{i}".encode(), key=b"k")
        await producer.begin_transaction()
        for i in range(2):
            await producer.send(topic, f"aborted-{i}".encode(), key=b"k")
        await producer.abort_transaction()

    committed = await read_to_end(bootstrap_servers, topic, "read_committed")
    assert values(committed) == [b"committed-0", b"committed-1", b"committed-2"]
    raw = await read_to_end(bootstrap_servers, topic, "read_uncommitted")
    assert values(raw) == [
        b"committed-0",
        b"committed-1",
        b"committed-2",
        b"aborted-0",
        b"aborted-1",
    ]
    # 5 records + a commit marker + an abort marker; with nothing open, LSO == high watermark.
    assert await end_offsets(bootstrap_servers, topic, "read_committed") == {0: 7}
    assert await end_offsets(bootstrap_servers, topic, "read_uncommitted") == {0: 7}


async def test_open_transaction_holds_back_the_last_stable_offset(
    bootstrap_servers: str, new_topic: NewTopic
) -> None:
    topic = await new_topic("lso")
    async with transactional_producer(bootstrap_servers, unique_name("txn")) as producer:
        await producer.begin_transaction()
        await producer.send_and_wait(topic, b"pending-0")
        await producer.send_and_wait(topic, b"pending-1")

        assert await end_offsets(bootstrap_servers, topic, "read_committed") == {0: 0}
        assert await end_offsets(bootstrap_servers, topic, "read_uncommitted") == {0: 2}
        assert await read_to_end(bootstrap_servers, topic, "read_committed") == []

        await producer.commit_transaction()

    assert await end_offsets(bootstrap_servers, topic, "read_committed") == {0: 3}
    committed = await read_to_end(bootstrap_servers, topic, "read_committed")
    assert values(committed) == [b"pending-0", b"pending-1"]


async def test_same_transactional_id_fences_the_zombie(
    bootstrap_servers: str, new_topic: NewTopic
) -> None:
    topic = await new_topic("fence")
    txn_id = unique_name("txn")
    async with transactional_producer(bootstrap_servers, txn_id) as zombie:
        await zombie.begin_transaction()
        await zombie.send_and_wait(topic, b"zombie")

        # The new owner's InitProducerId bumps the epoch and aborts the zombie's open transaction.
        async with transactional_producer(bootstrap_servers, txn_id) as owner:
            with pytest.raises(ProducerFenced):
                await zombie.commit_transaction()
            async with owner.transaction():
                await owner.send_and_wait(topic, b"owner")

    committed = await read_to_end(bootstrap_servers, topic, "read_committed")
    assert values(committed) == [b"owner"]
    raw = await read_to_end(bootstrap_servers, topic, "read_uncommitted")
    assert values(raw) == [b"zombie", b"owner"]
