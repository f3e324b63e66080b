"""One SQL sink at work: its own read_committed consumer and group, the partitions it claimed,
and the batch transactions (docs/architecture.md, *Exactly-once into a database*).

Each batch of one partition commits in one database transaction: the sink's function, then the
fenced offset update (``sql_offsets.advance``). A batch whose function fails for a record's data
is split in halves until the record is alone; that record is dead-lettered and a transaction of
its own moves the offset past it. A database that cannot be used pauses the partition and
retries with backoff: one log line when it goes, one when it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener
from aiokafka.errors import KafkaError
from aiokafka.structs import TopicPartition
from sqlalchemy.ext.asyncio import AsyncEngine

from onceflow.errors import HandlerFailedError
from onceflow.runtime.clients import Clients
from onceflow.runtime.sql_health import Outage, SinkMetrics
from onceflow.runtime.sql_offsets import PartitionKey, advance, claim, create_tables, is_outage
from onceflow.runtime.sql_offsets import position as read_position
from onceflow.runtime.sql_partition import Record, SinkPartition
from onceflow.settings import Settings
from onceflow.sql_sink import SinkRecord, SinkTransaction, SqlSink

__all__ = ["SinkRunner"]

log = logging.getLogger("onceflow.sql_sink")

FETCH_RECORDS = 500  # at least, per fetch: a sink of small batches writes several per fetch
REPORT_INTERVAL_S = 1.0  # lag metrics and the informational Kafka commit
BadRecord = Callable[[str, Record, BaseException], Awaitable[None]]


class _Fenced(Exception):
    """The offset update matched no row: a newer owner, or our own ambiguous commit."""


class _RecordFailed(Exception):
    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


class SinkRunner(ConsumerRebalanceListener):  # type: ignore[misc]
    """Runs one ``SqlSink``: ``await run(stop)``, ``not_ready()``, ``close()``."""

    def __init__(
        self,
        sink: SqlSink,
        *,
        group: str,
        engine: AsyncEngine,
        settings: Settings,
        clients: Clients,
        metrics: SinkMetrics,
        owner: str,
        on_bad_record: BadRecord,
    ) -> None:
        self.sink = sink
        self.group = group
        self.engine = engine
        self.metrics = metrics
        self._clients = clients
        self._owner = owner
        self._on_bad_record = on_bad_record
        self._batch = sink.batch or settings.sql_sink_batch_size
        self._wait_s = settings.sql_sink_max_batch_wait_ms / 1000
        self._parts: dict[TopicPartition, SinkPartition] = {}
        self._lock = asyncio.Lock()
        self._consumer: AIOKafkaConsumer | None = None
        self._started = False
        self._outage = Outage(sink.name, metrics)

    # -- lifecycle -----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        while not await self._outage.attempt(create_tables(self.engine)):  # noqa: ASYNC110
            await asyncio.sleep(self._outage.backoff())
        fetch = max(self._batch, FETCH_RECORDS)
        self._consumer = consumer = self._clients.consumer(
            group_id=self.group, isolation_level="read_committed", max_poll_records=fetch
        )
        await consumer.start()
        consumer.subscribe([self.sink.topic.name], listener=self)
        self._started = True
        log.info(
            "sql sink %r reading %r as group %r", self.sink.name, self.sink.topic.name, self.group
        )
        reported = 0.0
        while not stop.is_set():
            try:
                fetched = await consumer.getmany(timeout_ms=self._wait_ms(), max_records=fetch)
            except KafkaError as exc:
                log.warning("sql sink %r: fetch failed: %r; retrying", self.sink.name, exc)
                await asyncio.sleep(0.5)
                continue
            now = time.monotonic()
            for tp, records in fetched.items():
                self._take(tp, records, now)
            async with self._lock:
                due = [p for p in self._parts.values() if self._due(p, now)]
                if due:
                    await asyncio.gather(*(self._flush(p) for p in due))
                for p in self._parts.values():
                    self._sync_pause(p)
            if now >= reported + REPORT_INTERVAL_S:
                reported = now
                await self._report(consumer)

    def not_ready(self) -> str | None:
        name = self.sink.name
        down = self._outage.not_ready()
        if down is not None:
            return down
        if not self._started:
            return f"sql sink {name}: starting"
        for p in self._parts.values():
            if p.epoch is None:
                return f"sql sink {name} partition {p.tp.partition}: claiming it in the database"
        return None

    async def close(self) -> None:
        for p in self._parts.values():
            if p.claim is not None:
                p.claim.cancel()
        self._parts.clear()
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            with contextlib.suppress(KafkaError, TimeoutError):
                await asyncio.wait_for(consumer.stop(), 10)
        await self.engine.dispose()

    # -- rebalances ----------------------------------------------------------------------------

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        async with self._lock:  # an open batch transaction finishes first
            for tp in revoked:
                p = self._parts.pop(tp, None)
                if p is not None and p.claim is not None:
                    p.claim.cancel()
                with contextlib.suppress(KeyError):
                    self.metrics.lag.remove(self.metrics.app_id, self.sink.name, str(tp.partition))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        assigned = sorted(assigned)
        log.info(
            "sql sink %r: assigned partitions %s",
            self.sink.name, ", ".join(str(tp.partition) for tp in assigned) or "(none)",
        )  # fmt: skip
        for tp in assigned:
            p = SinkPartition(tp, PartitionKey(self.group, tp.topic, tp.partition))
            self._parts[tp] = p
            self._sync_pause(p)
            p.claim = asyncio.get_running_loop().create_task(self._claim(p))

    async def _claim(self, p: SinkPartition) -> None:
        """Bump the partition's epoch and read its offset in one transaction, then seek there
        (docs/architecture.md, *Exactly-once into a database*, step 1)."""
        claimed: list[tuple[int, int]] = []

        async def once() -> None:
            async with self.engine.begin() as conn:
                claimed.append(await claim(conn, p.key, self._owner))

        while not await self._outage.attempt(once()):  # noqa: ASYNC110
            await asyncio.sleep(self._outage.backoff())
        p.epoch, p.next_offset = claimed[0]
        p.fetched_to = p.next_offset
        p.clear()
        if self._consumer is not None and self._parts.get(p.tp) is p:
            self._consumer.seek(p.tp, p.next_offset)
            self._sync_pause(p)
        log.info(
            "sql sink %r partition %d claimed: epoch %d, from offset %d",
            self.sink.name, p.tp.partition, p.epoch, p.next_offset,
        )  # fmt: skip

    # -- batches -------------------------------------------------------------------------------

    def _take(self, tp: TopicPartition, records: list[Record], now: float) -> None:
        p = self._parts.get(tp)
        if p is not None and p.epoch is not None and not p.fenced:
            p.take(records, now)  # else fetched before the claim's seek: fetched again from there

    def _due(self, p: SinkPartition, now: float) -> bool:
        if p.epoch is None or p.fenced or not p.buffer:
            return False
        if p.retry_at is not None:
            return now >= p.retry_at
        return len(p.buffer) >= self._batch or now - p.oldest_at >= self._wait_s

    async def _flush(self, p: SinkPartition) -> None:
        """Write the partition's full batches, and the rest if it waited long enough."""
        while self._due(p, time.monotonic()):
            try:
                try:
                    await self._write(p, p.buffer[: self._batch])
                except _Fenced:
                    await self._fenced(p)  # reads the row: may meet an outage too
                    return
            except HandlerFailedError:
                raise  # error policy "fail": the worker stops
            except Exception as exc:  # the database (or the DLQ) cannot be used now
                self._outage.failed(exc)
                p.retry_at = time.monotonic() + self._outage.backoff()
                return
            p.retry_at = None
            self._outage.healthy()

    async def _write(self, p: SinkPartition, records: list[Record]) -> None:
        """Apply ``records`` (a prefix of the buffer); a record whose data fails is found by
        halving the batch, dead-lettered, and skipped by an offset-only transaction."""
        try:
            await self._transaction(p, records, records[-1].offset + 1)
        except _RecordFailed as failed:
            self.metrics.transactions.labels(
                self.metrics.app_id, self.sink.name, "rolled_back"
            ).inc()
            if len(records) > 1:
                mid = len(records) // 2
                await self._write(p, records[:mid])
                await self._write(p, records[mid:])
                return
            self.metrics.failures.labels(self.metrics.app_id, self.sink.name, "record").inc()
            await self._on_bad_record(self.sink.name, records[0], failed.cause)
            await self._transaction(p, [], records[0].offset + 1)

    async def _transaction(self, p: SinkPartition, records: list[Record], next_offset: int) -> None:
        """One database transaction: the sink's function on ``records``, then the fenced offset
        update from ``p.next_offset`` to ``next_offset``; committed, or rolled back on any error."""
        assert p.epoch is not None
        decoded = [self._decode(r) for r in records]
        async with self.engine.connect() as conn, conn.begin():
            if decoded:
                tx = SinkTransaction(
                    conn, sink=self.sink.name, topic=p.tp.topic, partition=p.tp.partition,
                    epoch=p.epoch,
                )  # fmt: skip
                try:
                    await self.sink.fn(tx, decoded)
                except Exception as exc:
                    if is_outage(exc):
                        raise
                    raise _RecordFailed(exc) from exc
            moved = await advance(
                conn, p.key, epoch=p.epoch, expected=p.next_offset, next_offset=next_offset
            )
            if not moved:
                raise _Fenced
        p.applied(next_offset)
        self.metrics.transactions.labels(self.metrics.app_id, self.sink.name, "committed").inc()
        self.metrics.records.labels(self.metrics.app_id, self.sink.name).inc(len(records))

    def _decode(self, r: Record) -> SinkRecord[Any, Any]:
        topic = self.sink.topic
        try:
            key = None if r.key is None else topic.key_serde.deserialize(r.key)
            value = None if r.value is None else topic.value_serde.deserialize(r.value)
        except Exception as exc:  # a SerdeError, or a custom serde's own
            raise _RecordFailed(exc) from exc
        headers = tuple(r.headers or ())
        return SinkRecord(key, value, r.topic, r.partition, r.offset, r.timestamp, headers)

    async def _fenced(self, p: SinkPartition) -> None:
        """No row matched: if the epoch is still ours, an earlier commit whose answer was lost
        (a dropped connection) did go through: take its offset and go on. Otherwise a newer owner
        claimed the partition: drop what is buffered and wait, paused, for the rebalance."""
        async with self.engine.connect() as conn:
            epoch, next_offset = await read_position(conn, p.key)
        if epoch == p.epoch:
            p.applied(next_offset)
            return
        p.fenced = True
        p.clear()
        self.metrics.transactions.labels(self.metrics.app_id, self.sink.name, "fenced").inc()
        self.metrics.failures.labels(self.metrics.app_id, self.sink.name, "fenced").inc()
        log.info(
            "sql sink %r partition %d fenced: epoch %d superseded by %d; closed until rebalanced",
            self.sink.name, p.tp.partition, p.epoch, epoch,
        )  # fmt: skip

    # -- outages, pauses, lag ------------------------------------------------------------------

    def _wait_ms(self) -> int:
        retries = [p.retry_at for p in self._parts.values() if p.retry_at is not None]
        wait = self._wait_s
        if retries:
            wait = min(wait, max(0.0, min(retries) - time.monotonic()))
        return max(1, min(100, int(wait * 1000)))

    def _sync_pause(self, p: SinkPartition) -> None:
        consumer = self._consumer
        if consumer is None or p.tp not in consumer.assignment():
            return
        hold = p.epoch is None or p.fenced or p.retry_at is not None
        if hold or len(p.buffer) >= 2 * self._batch:
            consumer.pause(p.tp)
        else:
            consumer.resume(p.tp)

    async def _report(self, consumer: AIOKafkaConsumer) -> None:
        """Lag per partition: records not fetched yet (to the last stable offset) plus those
        buffered, counted from the fetch position so that transaction markers count as read.
        And the group's Kafka commit, only informational (lag tools read it)."""
        offsets = {p.tp: p.next_offset for p in self._parts.values() if p.epoch and p.next_offset}
        if offsets:
            with contextlib.suppress(KafkaError):
                await consumer.commit(offsets)
        for p in list(self._parts.values()):
            end = consumer.last_stable_offset(p.tp)
            if end is None or p.epoch is None or p.tp not in consumer.assignment():
                continue
            with contextlib.suppress(KafkaError, TimeoutError):
                fetched = await asyncio.wait_for(consumer.position(p.tp), 1)
                lag = max(0, end - max(fetched, p.next_offset)) + len(p.buffer)
                labels = (self.metrics.app_id, self.sink.name, str(p.tp.partition))
                self.metrics.lag.labels(*labels).set(lag)
