"""The latency benchmark's load generator and timing consumer on librdkafka (confluent-kafka).

The aiokafka harness (``bench.latency``: a paced producer and a ``read_committed`` consumer in
one Python event loop) took 0.57 cores at 50 % load on this 2-core machine, as much as the
worker it measures. These do the same work in C threads; Python only stamps each value, hands it
to ``produce`` and parses the stamp of each received record, so the harness costs a small
fraction of a core, like a load generator on another host would. Same settings as the aiokafka
harness: idempotent producer, ``acks=all``, ``linger.ms=1``, murmur2 partitioning of the keys
(as aiokafka and the Java client); a ``read_committed`` consumer with ``fetch.wait.max.ms=10``.

Both are blocking calls meant for a thread of their own (``asyncio.to_thread``): librdkafka
releases the GIL while it waits.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition

from bench.kafka_io import key_of, padded

__all__ = ["consume_stamps", "produce_paced"]

TICK_S = 0.005
BATCH = 10_000


def produce_paced(
    bootstrap: str, topic: str, rate: float, seconds: float, stop: threading.Event | None = None
) -> int:
    """Send ``rate`` stamped records/s (keys ``key_of(n % 10_000)``) for ``seconds`` or until
    ``stop`` is set; returns how many were sent, all acknowledged (else it raises)."""
    failed: list[KafkaError] = []

    def report(err: KafkaError | None, _msg: object) -> None:  # only errors are reported
        if err is not None:
            failed.append(err)

    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 1,
            "partitioner": "murmur2_random",
            "delivery.report.only.error": True,
            "on_delivery": report,
        }
    )
    sent = 0
    started = time.monotonic()
    while (elapsed := time.monotonic() - started) < seconds and not (stop and stop.is_set()):
        for _ in range(int(elapsed * rate) - sent):  # catch up with the schedule
            value = padded(b"%d" % time.time_ns())
            while True:
                try:
                    producer.produce(topic, value=value, key=key_of(sent % 10_000))
                    break
                except BufferError:  # the local queue is full: let deliveries drain it
                    producer.poll(0.001)
            sent += 1
        producer.poll(0)
        time.sleep(TICK_S)
    left = producer.flush(60)
    if left or failed:
        first = failed[0] if failed else f"{left} records not delivered within 60 s"
        raise RuntimeError(f"{len(failed) or left} sends failed, the first: {first!r}")
    return sent


def consume_stamps(
    bootstrap: str,
    topic: str,
    partitions: int,
    since_ns: int,
    done: Callable[[int], bool],
) -> list[float]:
    """Read ``topic`` from the beginning, ``read_committed``, until ``done(records seen)``;
    the latency (ms, receive time minus the value's stamp) of each record stamped at or after
    ``since_ns``."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-latency-{uuid.uuid4().hex}",  # required; nothing is committed
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "fetch.wait.max.ms": 10,
        }
    )
    latencies: list[float] = []
    seen = 0
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        while not done(seen):
            # consume(n, timeout) waits for n records or the timeout: wait for the first one
            # only, then take what is already queued.
            first = consumer.poll(0.1)
            if first is None:
                continue
            messages = [first, *consumer.consume(BATCH, 0)]
            now = time.time_ns()
            for message in messages:
                if message.error() is not None:
                    raise RuntimeError(f"consume {topic}: {message.error()}")
                value = message.value()
                assert value is not None
                seen += 1
                stamp = int(value.split(b" ", 1)[0])
                if stamp >= since_ns:
                    latencies.append((now - stamp) / 1e6)
    finally:
        consumer.close()
    return latencies
