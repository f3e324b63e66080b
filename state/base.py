"""Transaction buffering shared by the SQLite and in-memory store partitions.

A store's writes pass through four stages, each a ``WriteBatch``::

    buffer  --cut()-->  cut  --seal()-->  sealed  --flush()-->  flushing  --commit-->  durable
    (open               (its Kafka        (committed in Kafka,  (being written by a
     transaction)        transaction is    waiting for a flush)  worker thread)
                         committing)

``cut`` is optional: a task cuts its buffers when its commit begins and goes on writing into a
fresh buffer while the Kafka transaction commits (docs/architecture.md, *The commit*); ``seal``
then seals the cut batch only. Without a cut, ``seal`` seals the buffer.

Reads of committed state (``committed_get``, ``range_items(include_pending=False)``) see
``flushing`` and ``sealed`` overlaid on durable state: both hold writes whose Kafka transaction
already committed, so a query never sees an aborted update, nor a flush half-applied. Reads
through the open transaction (``get``, ``range_items``) see the cut batch and the buffer too.

Threads: the buffer and the cut batch belong to the event-loop thread (put/delete/discard/cut/seal
run there).
``flush``, ``restore_batch`` and ``wipe`` may run in one worker thread at a time (``_write_lock``);
``_state_lock`` guards the hand-over of batches and the subclasses' read caches, and
``_generation`` changes whenever durable state does, so a reader can tell that a value it read
from disk may be stale before it caches it.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from types import MappingProxyType, TracebackType
from typing import Self

from onceflow.errors import StateError
from onceflow.state.buffer import WriteBatch, merge_range, merge_range_paged

__all__ = ["BufferedStorePartition"]


class BufferedStorePartition(ABC):
    """Base of the store partitions: buffer, seal/flush hand-over, checkpoint, lifecycle.

    Subclasses implement durable reads and writes (the ``_``-prefixed abstract methods).
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._buffer = WriteBatch()
        self._cut: WriteBatch | None = None  # the writes of the transaction being committed
        self._sealed: WriteBatch | None = None
        self._flushing: WriteBatch | None = None
        self._checkpoint: int | None = None
        # The changelog's topic id the checkpoint refers to (durable), and the current one,
        # recorded with the next checkpoint (``set_changelog_topic_id``).
        self._changelog_topic_id: str | None = None
        self._current_topic_id: str | None = None
        self._closed = False
        self._generation = 0
        self._state_lock = threading.Lock()
        self._write_lock = threading.Lock()

    @property
    def checkpoint(self) -> int | None:
        """Changelog offset of the last record applied to durable state, or None."""
        return self._checkpoint

    @property
    def changelog_topic_id(self) -> str | None:
        """Topic id of the changelog topic the checkpoint refers to, or None if none was
        recorded (no checkpoint yet, or one written before topic ids were)."""
        return self._changelog_topic_id

    def set_changelog_topic_id(self, topic_id: str) -> None:
        """The changelog topic's current id: every later checkpoint refers to that topic, so
        the next one to be written (``restore_batch``, or ``flush`` with a checkpoint) records
        it in its transaction. Until then ``changelog_topic_id`` is unchanged."""
        self._check_open()
        self._current_topic_id = topic_id

    @property
    def has_pending(self) -> bool:
        """Whether the open transaction has buffered writes or range deletions."""
        return bool(self._buffer)

    @property
    def closed(self) -> bool:
        """Whether ``close()`` was called."""
        return self._closed

    def get(self, key: bytes) -> bytes | None:
        """Read through the open transaction: buffer, the cut batch, then committed state."""
        self._check_open()
        found, value = self._buffer.lookup(key)
        if found:
            return value
        cut = self._cut
        if cut is not None:
            found, value = cut.lookup(key)
            if found:
                return value
        return self.committed_get(key)

    def committed_get(self, key: bytes) -> bytes | None:
        """Read committed state only, never the open buffer (interactive queries use this)."""
        self._check_open()
        # Newest first, and in this order: a flush in another thread publishes a batch as
        # ``_flushing`` before it takes it from ``_sealed``, and drops ``_flushing`` only once
        # the read cache has its values, so a read without the lock never misses a batch.
        for batch in (self._sealed, self._flushing):
            if batch is not None:
                found, value = batch.lookup(key)
                if found:
                    return value
        return self._read_committed(key)

    def range_items(
        self,
        lo: bytes,
        hi: bytes,
        *,
        include_pending: bool = True,
        limit: int | None = None,
    ) -> list[tuple[bytes, bytes]]:
        """Items with ``lo <= key < hi`` in key order, at most ``limit`` of them.

        ``include_pending=False`` leaves out the open transaction (for queries).
        """
        self._check_open()
        with self._state_lock:
            overlays = [b for b in (self._flushing, self._sealed) if b is not None]
            cut = self._cut
        if include_pending:
            if cut is not None:
                overlays.append(cut)
            overlays.append(self._buffer)
        if limit is None:
            return merge_range(self._committed_range(lo, hi, None), overlays, lo, hi)
        return merge_range_paged(self._committed_range, overlays, lo, hi, limit)

    def put(self, key: bytes, value: bytes) -> None:
        """Buffer a write of ``value`` under ``key``."""
        self._check_open()
        if type(key) is not bytes or type(value) is not bytes:
            raise TypeError(
                f"store {self._name!r} takes bytes keys and values, got "
                f"{type(key).__name__} and {type(value).__name__}: serialize them first"
            )
        self._buffer.put(key, value)

    def delete(self, key: bytes) -> None:
        """Buffer a delete; it appears in ``pending()`` as a tombstone."""
        self._check_open()
        self._buffer.put(key, None)

    def delete_range(self, lo: bytes, hi: bytes) -> None:
        """Buffer deletion of every key in ``[lo, hi)``, applied at the next flush.

        Range deletions hide keys from reads at once but are not listed in ``pending()``: they
        are local retention (dropping expired segments), not changes to send to the changelog.
        Delete keys one by one when the changelog must carry the deletion.
        """
        self._check_open()
        self._buffer.delete_range(lo, hi)

    def pending(self) -> Mapping[bytes, bytes | None]:
        """The open transaction's point writes, last value per key (``None`` = delete)."""
        return MappingProxyType(self._buffer.writes)

    def discard(self) -> None:
        """Drop the open transaction and the cut one (their Kafka transactions aborted). Sealed
        writes stay."""
        self._buffer = WriteBatch()
        self._cut = None

    def cut(self) -> None:
        """The open transaction's Kafka commit begins: its writes become the cut batch and later
        writes go to a fresh buffer (the next transaction's). Reads through the open
        transaction still see the cut batch; ``seal`` hands it to the next flush once the Kafka
        commit returned, ``discard`` drops it if it failed. One cut at a time."""
        self._check_open()
        if self._cut is not None:
            raise StateError(f"store {self._name!r} is committing a cut batch already")
        with self._state_lock:
            self._cut, self._buffer = self._buffer, WriteBatch()

    def seal(self) -> None:
        """Hand the cut batch (after ``cut``), or else the open buffer, to the next ``flush``
        (a fresh buffer takes the open one's place).

        Call this on the event loop right after the Kafka transaction committed, then run
        ``flush(checkpoint, seal=False)`` in a worker thread while the loop goes on writing.
        """
        self._check_open()
        # Under the lock: a range read in a worker thread sees the batch in one place or the
        # other (``range_items``).
        with self._state_lock:
            batch = self._cut if self._cut is not None else self._buffer
            if batch:
                if self._sealed is None:
                    self._sealed = batch
                else:
                    self._sealed.absorb(batch)
            if self._cut is not None:
                self._cut = None
            else:
                self._buffer = WriteBatch()

    def flush(self, checkpoint: int | None, *, seal: bool = True) -> None:
        """Make the sealed writes and ``checkpoint`` durable, atomically.

        Steps:

        1. Seal the open buffer (unless ``seal=False``: the caller sealed it on the loop).
        2. Move the sealed batch to ``flushing``; reads of committed state still see it.
        3. Write batch and checkpoint in one durable transaction (``None`` = keep checkpoint).
        4. Update read caches and drop ``flushing``. On failure the batch goes back to
           ``sealed`` so that a retry writes it, and the durable state is unchanged.
        """
        with self._write_lock:
            self._check_open()
            # Step 1
            if seal:
                self.seal()
            # Step 2 (``_flushing`` first: see ``committed_get``)
            with self._state_lock:
                batch = self._flushing = self._sealed
                self._sealed = None
            if batch is None and checkpoint in (None, self._checkpoint):
                return
            # Step 3
            try:
                invalidated = self._commit(batch or WriteBatch(), checkpoint)
            except BaseException:
                self._unflush()
                raise
            # Step 4
            with self._state_lock:
                self._after_commit(batch or WriteBatch(), invalidated)
                self._flushing = None
                self._generation += 1
                if checkpoint is not None:
                    self._checkpoint = checkpoint
                    self._topic_id_recorded()

    def _unflush(self) -> None:
        with self._state_lock:
            batch = self._flushing
            if batch is not None:
                if self._sealed is not None:
                    batch.absorb(self._sealed)
                self._sealed = batch  # before ``_flushing`` goes: see ``committed_get``
            self._flushing = None

    def restore_batch(
        self, records: Sequence[tuple[bytes, bytes | None]], last_offset: int
    ) -> None:
        """Apply changelog records (``None`` value = delete) and checkpoint ``last_offset`` in
        one durable transaction, bypassing the buffer. Later records of a key win."""
        with self._write_lock:
            self._check_open()
            if last_offset < 0:
                raise ValueError(f"last_offset must be >= 0, got {last_offset}")
            batches = (self._cut, self._sealed, self._flushing)
            if self._buffer or any(b is not None for b in batches):
                raise StateError(
                    f"cannot restore store {self._name!r} while it has unflushed writes: "
                    "restore runs before processing starts (flush or discard them first)"
                )
            latest = dict(records)  # the last record of a key decides its value
            self._restore(latest, last_offset)
            with self._state_lock:
                self._after_restore(latest)
                self._generation += 1
                self._checkpoint = last_offset
                self._topic_id_recorded()

    def wipe(self) -> None:
        """Delete all data, buffered writes and the checkpoint; the store stays open."""
        with self._write_lock:
            self._check_open()
            with self._state_lock:
                self._buffer = WriteBatch()
                self._cut = self._sealed = self._flushing = None
                self._generation += 1
                self._wipe_storage()
                self._checkpoint = None
                self._changelog_topic_id = None

    def close(self) -> None:
        """Release the store; waits for a running flush. Safe to call twice.

        Unflushed writes are dropped; the changelog still has them, restore replays them.
        """
        with self._write_lock:
            if self._closed:
                return
            self._closed = True
            self._buffer = WriteBatch()
            self._cut = self._sealed = self._flushing = None
            self._close_storage()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"checkpoint={self._checkpoint}"
        return f"<{type(self).__name__} {self._name!r} {state}>"

    def _topic_id_to_record(self, checkpoint: int | None) -> str | None:
        """The topic id that a write of ``checkpoint`` must record with it (None: nothing to
        record, or no checkpoint written). For the subclasses' ``_commit`` and ``_restore``."""
        current = self._current_topic_id
        if checkpoint is None or current is None or current == self._changelog_topic_id:
            return None
        return current

    def _topic_id_recorded(self) -> None:
        if self._current_topic_id is not None:
            self._changelog_topic_id = self._current_topic_id

    def _check_open(self) -> None:
        if self._closed:
            raise StateError(f"store {self._name!r} is closed; it was released by its task")

    # Implemented by subclasses:
    # _read_committed: durable value (read caches allowed, see _generation).
    # _committed_range: durable items of [lo, hi) in key order.
    # _commit: durably apply batch then checkpoint (and _topic_id_to_record(checkpoint));
    #   return the keys its ranges removed (None: unknown, the caches forget everything).
    # _after_commit / _after_restore: update read caches (called under _state_lock).
    # _restore: durably apply the records and the checkpoint (and _topic_id_to_record).

    @abstractmethod
    def approximate_size(self) -> int:
        """Number of committed keys."""

    @abstractmethod
    def _read_committed(self, key: bytes) -> bytes | None: ...

    @abstractmethod
    def _committed_range(
        self, lo: bytes, hi: bytes, limit: int | None
    ) -> list[tuple[bytes, bytes]]: ...

    @abstractmethod
    def _commit(self, batch: WriteBatch, checkpoint: int | None) -> list[bytes] | None: ...

    @abstractmethod
    def _after_commit(self, batch: WriteBatch, range_deleted: list[bytes] | None) -> None: ...

    @abstractmethod
    def _restore(self, latest: dict[bytes, bytes | None], last_offset: int) -> None: ...

    @abstractmethod
    def _after_restore(self, latest: dict[bytes, bytes | None]) -> None: ...

    @abstractmethod
    def _wipe_storage(self) -> None: ...

    @abstractmethod
    def _close_storage(self) -> None: ...
