"""The commit protocol of one task: what it consumed since its last commit, and how that becomes
one Kafka transaction and then one SQLite write (docs/architecture.md, *The commit*).

A task processes into its ``Checkpoint`` (``processed``) and the worker begins a commit on
schedule (``begin``: the cut) and lets it finish in the background (``finish``) while the task
processes into the next transaction. Stream time travels in the metadata of the committed
offsets, so a task that moves resumes with the stream time its outputs were computed with.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson
from aiokafka.structs import OffsetAndMetadata, TopicPartition

from onceflow.errors import TaskCorruptedError, TaskFencedError

if TYPE_CHECKING:
    from onceflow.runtime.sinks import Sink
    from onceflow.runtime.stores import TaskStores

__all__ = ["Checkpoint", "CommitMetrics", "Cut", "offset_metadata", "stream_time_of", "tables_of"]


def offset_metadata(stream_time: int, tables: Sequence[str] = ()) -> str:
    """The metadata committed with a task's offsets: its stream time, and the names of its
    tables — so that a start-up can tell a table's deleted changelog from a new table's."""
    return orjson.dumps({"stream_time": stream_time, "tables": list(tables)}).decode()


def _parsed(metadata: str | None) -> dict[str, Any]:
    if not metadata:
        return {}
    try:
        value = orjson.loads(metadata)
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def stream_time_of(metadata: str | None) -> int:
    """The stream time in committed offset metadata; -1 when there is none (or it is not ours)."""
    value = _parsed(metadata).get("stream_time", -1)
    return value if isinstance(value, int) and not isinstance(value, bool) else -1


def tables_of(metadata: str | None) -> set[str]:
    """The table names in committed offset metadata (none in metadata written before 0.2)."""
    value = _parsed(metadata).get("tables", [])
    return {t for t in value if isinstance(t, str)} if isinstance(value, list) else set()


class CommitMetrics:
    """The metric children a task's commits update (``onceflow.runtime.metrics.Metrics``)."""

    __slots__ = ("committed", "latency", "producer_errors")

    def __init__(self, committed: Any, latency: Any, producer_errors: Any) -> None:
        self.committed = committed
        self.latency = latency
        self.producer_errors = producer_errors


class Checkpoint:
    """Positions and dirty counters of one task between two commits, and the commit itself."""

    def __init__(self, sink: Sink, stores: TaskStores, metrics: CommitMetrics) -> None:
        self._sink = sink
        self._stores = stores
        self._metrics = metrics
        self._positions: dict[TopicPartition, int] = {}
        self._committed: dict[TopicPartition, int] = {}  # as of the last commit
        self._uncommitted = 0
        self._touched = False  # work without records: a timer fired, stream time moved
        self._table_names = sorted(table.name for table in stores.tables)

    @property
    def positions(self) -> Mapping[TopicPartition, int]:
        """The next offset to process per source partition, as far as the task processed."""
        return self._positions

    @property
    def committed(self) -> Mapping[TopicPartition, int]:
        """The offsets the last commit of this task committed (what a purge may delete up to:
        the next owner starts there)."""
        return self._committed

    @property
    def uncommitted(self) -> int:
        """Records processed since the last commit."""
        return self._uncommitted

    def empty(self) -> bool:
        """Whether there is nothing to commit."""
        return self._uncommitted == 0 and not self._touched

    def touched(self) -> None:
        """Note work that consumed no record (a wall-clock timer fired): commit it anyway."""
        self._touched = True

    def processed(self, tp: TopicPartition, next_offset: int, count: int) -> None:
        """Note that ``count`` records of ``tp`` were handled, up to ``next_offset`` exclusive."""
        self._positions[tp] = next_offset
        self._uncommitted += count

    async def commit(self, stream_time: int) -> bool:
        """Commit what the task processed since its last commit, start to end (``begin`` then
        ``finish``, after the previous commit's SQLite write); False when there was nothing."""
        await self._stores.flushed()
        cut = self.begin(stream_time)
        if cut is None:
            return False
        await self.finish(cut)
        return True

    def begin(self, stream_time: int) -> Cut | None:
        """Begin a commit of what the task processed since its last one (None: nothing to
        commit), on the event loop and between two batches of the task: the steps below up to
        the cut run at once, so that what is committed is exactly what those records did.
        ``finish`` does the rest, while the task goes on processing into the next transaction
        (docs/architecture.md, *The commit*).

        0. The previous commit's SQLite write is over (the caller waited for it: writes land in
           commit order); a failed one fails the task here.
        1. Expire old windows; hand each store's changelog records (last value per key) to the
           producer.
        2. Cut: the offsets, the stream time, every store's buffer (``TaskStores.cut``) and the
           sink's sends (``Sink.cut``) so far are this commit's; what the task processes from
           now on is the next transaction's.
        """
        if self.empty():
            return None
        started = time.perf_counter()
        # Step 0
        self._stores.check_flushed()
        # Step 1
        partition = self._stores.partition
        for table, records in self._stores.changelog_records(stream_time):
            self._sink.send_pairs(table.changelog_topic, partition, records)
        # Step 2
        meta = offset_metadata(stream_time, self._table_names)
        positions = dict(self._positions)
        offsets = {tp: OffsetAndMetadata(pos, meta) for tp, pos in positions.items()}
        self._stores.cut()
        self._sink.cut()
        self._uncommitted = 0
        self._touched = False
        return Cut(positions, offsets, started)

    async def finish(self, cut: Cut) -> None:
        """Finish the commit ``begin`` cut.

        3. Wait for the broker to acknowledge every send of the transaction (aiokafka would
           commit a transaction whose sends failed) and note the last changelog offset per store.
           Meanwhile, send the cut offsets, with the stream time and the table names as metadata,
           to the transaction — once (``Sink.stage_offsets``: they count only if step 4 commits;
           a failed send aborts them with the rest).
        4. Commit the transaction, once both parts of step 3 succeeded. The sends the task made
           since the cut go to the next transaction.
        5. Persist each store's cut batch with its changelog checkpoint to SQLite (Invariant 1:
           only after the commit returned; Invariant 2: data and checkpoint in one SQLite
           transaction). The batches are sealed on the loop and written in a worker thread while
           the task goes on processing.

        If it raises, the task has failed: what it processed since the cut is dropped with it.
        """
        # Step 3: the acknowledgements and the offsets' round trips at once
        delivered, staged = await asyncio.gather(
            self._sink.delivered(), self._sink.stage_offsets(cut.offsets), return_exceptions=True
        )
        if isinstance(delivered, BaseException):
            if isinstance(delivered, TaskFencedError | TaskCorruptedError):
                self._metrics.producer_errors.inc()
            raise delivered
        if isinstance(staged, BaseException):
            raise staged
        checkpoints = self._stores.checkpoints(delivered, cut.positions)
        # Step 4
        await self._sink.commit(cut.offsets)
        self._committed.update(cut.positions)
        self._metrics.committed.inc()
        # Step 5
        self._stores.persist(checkpoints)
        self._metrics.latency.observe(time.perf_counter() - cut.started)


class Cut(NamedTuple):
    """What a commit commits, fixed when it begins (``Checkpoint.begin``)."""

    positions: dict[TopicPartition, int]
    offsets: dict[TopicPartition, OffsetAndMetadata]
    started: float  # ``time.perf_counter()``
