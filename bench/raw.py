"""The ceiling: a bare aiokafka consume -> produce loop, without onceflow, in its own process.

    python -m bench.raw --bootstrap B --group G --input IN --output OUT --mode alos|eos [--batch]

``alos``: idempotent producer, sends not awaited one by one, every 100 ms the pending sends are
awaited and the consumer commits. ``eos``: the same inside transactions of one transactional
producer, one per 100 ms (``send_offsets_to_transaction`` + ``commit_transaction``).
``--batch`` builds one ``create_batch()`` per output partition and hands it over with
``send_batch()`` instead of calling ``send()`` per record. Clients are configured like the
worker's (app.clients) so that the comparison is about the loop, not the settings.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import time
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka.structs import OffsetAndMetadata, TopicPartition

from onceflow.partitioner import partition_for_key

COMMIT_INTERVAL_S = 0.1


class _Ready(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self) -> None:
        self.assigned = asyncio.Event()

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        return None

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        if assigned:
            self.assigned.set()


class RawLoop:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.eos = args.mode == "eos"
        common: dict[str, Any] = {"bootstrap_servers": args.bootstrap}
        self.consumer = AIOKafkaConsumer(
            group_id=args.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            fetch_max_wait_ms=100,
            max_partition_fetch_bytes=4 * 1024 * 1024,
            **common,
        )
        self.producer = AIOKafkaProducer(
            enable_idempotence=True,
            acks="all",
            linger_ms=5,
            max_batch_size=256 * 1024,
            transactional_id=f"{args.group}-raw" if self.eos else None,
            **common,
        )
        self.stop = asyncio.Event()
        self.partitions = 0

    async def run(self) -> None:
        await self.producer.start()
        await self.consumer.start()
        ready = _Ready()
        self.consumer.subscribe([self.args.input], listener=ready)
        try:
            while not ready.assigned.is_set():  # the first getmany joins the group
                await self.consumer.getmany(timeout_ms=100)
            self.partitions = len(
                await self.producer.partitions_for(self.args.output)  # also warms metadata
            )
            print("raw loop ready", flush=True)
            await self._loop()
        finally:
            await self.consumer.stop()
            await self.producer.stop()

    async def _loop(self) -> None:
        offsets: dict[TopicPartition, OffsetAndMetadata] = {}
        futures: list[asyncio.Future[Any]] = []
        last_commit = time.monotonic()
        in_txn = False
        while not self.stop.is_set():
            batch = await self.consumer.getmany(timeout_ms=50, max_records=2000)
            if batch and self.eos and not in_txn:
                await self.producer.begin_transaction()
                in_txn = True
            for tp, records in batch.items():
                if self.args.batch:
                    futures += await self._send_batches(records)
                else:
                    for r in records:
                        futures.append(
                            await self.producer.send(self.args.output, value=r.value, key=r.key)
                        )
                offsets[tp] = OffsetAndMetadata(records[-1].offset + 1, "")
            if offsets and time.monotonic() - last_commit >= COMMIT_INTERVAL_S:
                await self._commit(offsets, futures)
                offsets, futures, in_txn = {}, [], False
                last_commit = time.monotonic()

    async def _send_batches(self, records: list[Any]) -> list[asyncio.Future[Any]]:
        builders: dict[int, Any] = {}
        futures = []
        for r in records:
            p = partition_for_key(r.key, self.partitions)
            builder = builders.get(p) or builders.setdefault(p, self.producer.create_batch())
            if builder.append(key=r.key, value=r.value, timestamp=None) is None:
                futures.append(await self._send_batch(builder, p))
                builder = builders[p] = self.producer.create_batch()
                builder.append(key=r.key, value=r.value, timestamp=None)
        for p, builder in builders.items():
            futures.append(await self._send_batch(builder, p))
        return futures

    async def _send_batch(self, builder: Any, partition: int) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = await self.producer.send_batch(
            builder, self.args.output, partition=partition
        )
        return future

    async def _commit(
        self, offsets: dict[TopicPartition, OffsetAndMetadata], futures: list[asyncio.Future[Any]]
    ) -> None:
        await asyncio.gather(*futures)
        if self.eos:
            await self.producer.send_offsets_to_transaction(offsets, self.args.group)
            await self.producer.commit_transaction()
        else:
            await self.consumer.commit(offsets)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--mode", choices=["alos", "eos"], required=True)
    parser.add_argument("--batch", action="store_true", help="create_batch/send_batch")
    return parser


async def _main(args: argparse.Namespace) -> None:
    loop = RawLoop(args)
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, loop.stop.set)
    await loop.run()


if __name__ == "__main__":
    asyncio.run(_main(_parser().parse_args()))
