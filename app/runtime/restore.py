"""Restoring a task's store from its changelog partition.

Restore reads with ``read_committed`` from checkpoint + 1 to the end offset (the LSO, which equals
the log end once the task's producer has fenced the previous owner), in batches written to SQLite
off the event loop. It runs outside the rebalance callback, with the task's source partitions
paused, so heartbeats go on and the worker stays in the group however long it takes.

A missing changelog partition, a checkpoint at or beyond the end offset (the topic was
recreated or truncated: it lost records this store applied), or a checkpoint recorded with another
topic id than the changelog's (deleted and recreated since, whatever its offsets say) raises
``ChangelogMissingError`` rather than restoring state that silently diverges from what was
committed.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from onceflow.errors import ChangelogMissingError, RestoreCancelledError
from onceflow.runtime import changelog_chunks
from onceflow.runtime.changelog_chunks import Chunk
from onceflow.runtime.compat import cluster_metadata
from onceflow.state.typing import Restorable

__all__ = [
    "ConsumerFactory",
    "RestoreProgress",
    "changelog_reader",
    "restore_partition",
    "start_offset",
]

log = logging.getLogger("onceflow.restore")
ConsumerFactory = Callable[..., AIOKafkaConsumer]

BATCH_RECORDS = 10_000
"""Records per restore transaction (about: whole fetched record batches). Beyond a few thousand
the per-transaction cost (a commit, a thread hand-off) is amortized; more only grows the decoded
batch held in memory (30,000 were measured no faster)."""
POLL_MS = 20
"""The longest a restore waits for one fetch before it looks at its position again."""
FETCH_BYTES = 2 * 2**20
"""Bytes per fetch of a changelog reader by default (a standby's consumer reads all its standby
partitions with one: this is their total)."""
RESTORE_FETCH_BYTES = 2**19
"""Bytes per fetch of a restore consumer (it reads one partition): ~17k records of a 12-byte key
and an 8-byte value. The broker still returns a first record batch larger than this whole. A
worker restores all its store partitions at once, each holding a few fetches' bytes (the
response being read, its records, the next one): on the restore benchmark (6 partitions) each
MiB here cost ~20 MB of the worker's peak RSS, and 2 MiB restored no faster than 512 KiB
(docs/benchmarks.md, *Restore*, session 9)."""


@dataclass
class RestoreProgress:
    """Live progress of one store partition's restore, for logs, readiness and metrics."""

    store: str
    partition: int
    start_offset: int = 0
    end_offset: int = 0
    position: int = 0
    restored: int = 0
    started_at: float = 0.0
    done: bool = False
    wiped_because: str | None = None
    cancelled: bool = False  # set by the owner to stop between batches (task revoked)

    @property
    def remaining(self) -> int:
        return max(0, self.end_offset - self.position)

    @property
    def rate(self) -> float:
        elapsed = time.monotonic() - self.started_at
        return self.restored / elapsed if elapsed > 0 else 0.0


async def _offsets(consumer: AIOKafkaConsumer, tp: TopicPartition) -> tuple[int, int]:
    begin = (await consumer.beginning_offsets([tp]))[tp]
    end = (await consumer.end_offsets([tp]))[tp]
    return begin, end


def changelog_reader(
    consumer_factory: ConsumerFactory, fetch_bytes: int = FETCH_BYTES, *, chunked: bool = False
) -> AIOKafkaConsumer:
    """A consumer that reads changelogs as restores and standbys do: no group, committed
    records only, from the log start when asked for an offset retention removed.

    ``chunked``: its ``getmany`` returns a ``Chunk`` of ``(key, value)`` pairs per fetched record
    batch instead of ``ConsumerRecord``s (``changelog_chunks``), unless aiokafka changed."""
    extra: dict[str, Any] = {}
    if chunked and changelog_chunks.install():
        extra["key_deserializer"] = changelog_chunks.CHUNKED
    return consumer_factory(
        group_id=None,
        isolation_level="read_committed",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=fetch_bytes,
        fetch_max_bytes=fetch_bytes,
        **extra,
    )


async def restore_partition(
    consumer_factory: ConsumerFactory,
    topic: str,
    partition: int,
    store: Restorable,
    progress: RestoreProgress,
    *,
    on_batch: Callable[[RestoreProgress, int], Any] | None = None,
    batch_records: int = BATCH_RECORDS,
    fetch_bytes: int = RESTORE_FETCH_BYTES,
    topic_id: str | None = None,
    until: int | None = None,
) -> RestoreProgress:
    """Bring ``store`` up to the end of its changelog partition; return the final progress.

    ``topic_id``: the changelog topic's id (None: unknown, the broker predates topic ids). The
    store's checkpoint must have been recorded with it (or with none); it records it with its
    next checkpoint.

    ``until``: stop before this offset instead of the end (a source table's topic: the task's
    committed offset; docs/architecture.md, *Tables fed by a topic*). A store whose checkpoint
    is at or beyond it holds records the task never committed: it is wiped and restored from
    the beginning.

    Memory: the consumer holds a few fetch responses' bytes (``fetch_bytes``) and the batch being
    applied, about ``batch_records`` decoded records (a ``(key, value)`` tuple each, ~130 bytes
    for small records: no ``ConsumerRecord``, see ``changelog_chunks``) and their latest-value
    dict; a worker restores all its store partitions at once.
    """
    tp = TopicPartition(topic, partition)
    consumer = changelog_reader(consumer_factory, fetch_bytes, chunked=True)
    await consumer.start()
    try:
        cluster = await cluster_metadata(consumer)
        if partition not in (cluster.partitions_for_topic(topic) or set()):
            raise ChangelogMissingError(
                f"changelog topic {topic!r} partition {partition} does not exist: it was deleted "
                "under the app, with the state it held. Restore the topic; or, to start this "
                "table from empty, stop every worker, delete the state directory and restart"
            )
        consumer.assign([tp])
        begin, end = await _offsets(consumer, tp)
        if until is not None:
            await asyncio.to_thread(_wipe_ahead, store, progress, until, end)
            end = min(end, until)
        start = await asyncio.to_thread(start_offset, store, progress, topic, begin, end, topic_id)
        progress.start_offset = progress.position = start
        progress.end_offset = end
        progress.started_at = time.monotonic()
        if start < end:
            consumer.seek(tp, start)
            await _copy(consumer, tp, store, progress, on_batch, batch_records)
        progress.done = True
        return progress
    finally:
        await consumer.stop()


def start_offset(
    store: Restorable,
    progress: RestoreProgress,
    topic: str,
    begin: int,
    end: int,
    topic_id: str | None = None,
) -> int:
    checkpoint = store.checkpoint
    if checkpoint is not None and checkpoint >= end:
        # The log lost records this store applied: the topic was deleted and recreated (by the
        # worker's start, or by a broker with auto.create.topics.enable) or truncated (unclean
        # leader election). Restoring from it would silently diverge from what was committed.
        raise ChangelogMissingError(
            f"store {progress.store!r} partition {progress.partition} has checkpoint "
            f"{checkpoint} but changelog topic {topic!r} partition {progress.partition} ends at "
            f"offset {end}: the topic was deleted and recreated, or truncated, and the state it "
            "held is gone. Restore the topic's data; or, to accept the loss and rebuild from what "
            f"the changelog holds now, stop every worker, delete the directory of store "
            f"{progress.store!r} partition {progress.partition} under ONCEFLOW_STATE_DIR and "
            "restart"
        )
    if topic_id is not None:
        _check_topic_id(store, progress, topic, topic_id)
    start = begin if checkpoint is None else checkpoint + 1
    # Below the log start the records expired by retention (windowed changelogs): nothing to read.
    return max(start, begin)


def _wipe_ahead(store: Restorable, progress: RestoreProgress, until: int, end: int) -> None:
    """Wipe a store whose checkpoint is at or beyond ``until`` (and within the log: beyond it,
    ``start_offset`` stops the worker): it holds records past the offsets the task committed
    (the group's offsets were reset), which Invariant 1 forbids."""
    checkpoint = store.checkpoint
    if checkpoint is None or checkpoint < until or checkpoint >= end:
        return
    reason = (
        f"its checkpoint {checkpoint} is at or beyond the task's committed offset {until} "
        "(the group's offsets were reset?): restoring from the beginning up to that offset"
    )
    log.warning("store %s partition %d wiped: %s", progress.store, progress.partition, reason)
    store.wipe()
    progress.wiped_because = progress.wiped_because or reason


def _check_topic_id(
    store: Restorable, progress: RestoreProgress, topic: str, topic_id: str
) -> None:
    """Refuse a checkpoint recorded with another topic id than the changelog's: the topic was
    deleted and recreated since, and whatever its offsets say, the records this store applied are
    not in it (a store elsewhere may have restored the new topic and written past the
    checkpoint). Otherwise the store records ``topic_id`` with its next checkpoint; a checkpoint
    without a recorded id (written before ids were) is taken to be of the current topic, and
    written again at once with it, in one transaction."""
    recorded, checkpoint = store.changelog_topic_id, store.checkpoint
    if checkpoint is not None and recorded is not None and recorded != topic_id:
        raise ChangelogMissingError(
            f"store {progress.store!r} partition {progress.partition} has checkpoint "
            f"{checkpoint} of changelog topic {topic!r} with topic id {recorded}, but the "
            f"topic now has id {topic_id}: it was deleted and recreated, and the state this store "
            "applied from the old topic is not in the new one. To accept the loss and rebuild "
            "from what the changelog holds now, stop every worker, delete the directory of store "
            f"{progress.store!r} partition {progress.partition} under ONCEFLOW_STATE_DIR and "
            "restart"
        )
    store.set_changelog_topic_id(topic_id)
    if checkpoint is not None and recorded is None:
        store.restore_batch([], checkpoint)


async def _copy(
    consumer: AIOKafkaConsumer,
    tp: TopicPartition,
    store: Restorable,
    progress: RestoreProgress,
    on_batch: Callable[[RestoreProgress, int], Any] | None,
    batch_records: int,
) -> None:
    per_chunk = 0.0  # records per item getmany returns (a fetched record batch), so far
    while not progress.cancelled:
        position = await consumer.position(tp)
        progress.position = position
        if position >= progress.end_offset:
            return
        chunks, per_chunk = await _fetch(consumer, tp, batch_records, per_chunk)
        batch, last = take(chunks, progress.end_offset)
        if not batch:
            continue
        await asyncio.to_thread(store.restore_batch, batch, last)
        progress.restored += len(batch)
        progress.position = last + 1
        if on_batch is not None:
            on_batch(progress, len(batch))
    raise RestoreCancelledError(f"restore of {progress.store} partition {progress.partition}")


async def _fetch(
    consumer: AIOKafkaConsumer, tp: TopicPartition, batch_records: int, per_item: float
) -> tuple[list[Chunk], float]:
    """Fetched chunks holding about ``batch_records`` records (at least one chunk, if any came
    within ``POLL_MS``; more only while they are already fetched), and the records per item
    ``getmany`` returned. It counts items (chunks), so it is asked for as many as make up the
    rest at ``per_item`` records each (1 item if not known yet)."""
    chunks: list[Chunk] = []
    records = items = 0
    timeout_ms = POLL_MS
    while records < batch_records:
        # A short wait: a tail of transaction markers returns no records, and getmany would
        # sit out its whole timeout although the position moved past them (every restore of a
        # store that was in sync ends with its last commit's marker).
        wanted = 1 if per_item <= 0 else max(1, int((batch_records - records) / per_item))
        fetched = await consumer.getmany(tp, timeout_ms=timeout_ms, max_records=wanted)
        got = fetched.get(tp)
        if not got:
            break
        items += len(got)
        if not isinstance(got[0], Chunk):  # changelog_chunks could not be installed
            got = [changelog_chunks.as_chunk(got)]
        chunks.extend(got)
        records += sum(len(c.offsets) for c in got)
        per_item = records / items
        timeout_ms = 0
    return chunks, per_item


def take(chunks: list[Chunk], end: int) -> tuple[list[tuple[bytes, bytes | None]], int]:
    """The records of ``chunks`` before offset ``end`` (a restore that ends before the log end,
    ``until``, leaves out what it fetched beyond) and the offset of the last of them (-1: none)."""
    batch: list[tuple[bytes, bytes | None]] = []
    last = -1
    for chunk in chunks:
        offsets = chunk.offsets
        if offsets[-1] < end:
            batch.extend(chunk.pairs)
            last = offsets[-1]
            continue
        n = bisect.bisect_left(offsets, end)
        if n:
            batch.extend(chunk.pairs[:n])
            last = offsets[n - 1]
        break
    return batch, last
