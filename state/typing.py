"""Protocols for the pluggable pieces of the state layer.

``StorePartition`` is the contract every key-value store for one (store, partition) fulfils; the
SQLite store (``onceflow.state.sqlite.partition``) and the in-memory one (``onceflow.state.memory``)
both pass the same contract test suite (``tests/unit/state/test_store_contract.py``).
``Restorable`` is the part of a store that a changelog restore drives: a key-value store
partition, or the windowed layout over one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self

__all__ = ["Restorable", "StorePartition", "StorePartitionOpener"]


class Restorable(Protocol):
    """What restoring from a changelog needs of a store partition."""

    @property
    def checkpoint(self) -> int | None:
        """Changelog offset of the last record applied to durable state, or None."""
        ...

    @property
    def changelog_topic_id(self) -> str | None:
        """Topic id of the changelog topic the checkpoint refers to, or None if none was
        recorded (no checkpoint, or one written before topic ids were)."""
        ...

    def set_changelog_topic_id(self, topic_id: str) -> None:
        """The changelog topic's current id, recorded with the next checkpoint written (in the
        same durable transaction), so that a recorded id always describes the topic of the
        checkpoint beside it."""
        ...

    def restore_batch(
        self, records: Sequence[tuple[bytes, bytes | None]], last_offset: int
    ) -> None:
        """Apply changelog ``(key, value)`` records (None: a tombstone) and checkpoint
        ``last_offset``, in one durable transaction."""
        ...

    def wipe(self) -> None:
        """Drop every value and the checkpoint."""
        ...


class StorePartition(Restorable, Protocol):
    """A transactional key-value store for one (store, partition); keys and values are bytes.

    Writes go to the open transaction's buffer; ``flush`` makes them durable together with the
    changelog checkpoint. The lifecycle of one transaction, as the runtime drives it::

        store.put(k, v)                 # event loop: buffered, visible to get()
        store.pending()                 # event loop: what to produce to the changelog
        store.cut()                     # event loop: the buffer becomes the cut batch; later
                                        # writes (the next transaction's) go to a fresh buffer
        ...                             # Kafka transaction commits
        store.seal()                    # event loop: the cut batch becomes the sealed batch
        await asyncio.to_thread(store.flush, last_changelog_offset)

    (``cut`` is optional: without it ``seal`` seals the buffer), or ``store.discard()`` when the
    Kafka transaction aborts. The buffer belongs to the event
    loop thread: only ``flush``, ``restore_batch`` and ``wipe`` may run in a worker thread, one at
    a time, while the loop keeps reading.
    """

    @property
    def has_pending(self) -> bool:
        """Whether the open transaction has buffered writes or range deletions."""
        ...

    @property
    def closed(self) -> bool:
        """Whether ``close()`` was called."""
        ...

    def get(self, key: bytes) -> bytes | None:
        """Read through the open transaction: buffer, the cut batch, then committed state."""
        ...

    def committed_get(self, key: bytes) -> bytes | None:
        """Read committed state only (never the open buffer); for interactive queries."""
        ...

    def prefetch(self, keys: Iterable[bytes]) -> None:
        """Warm the read cache for ``keys`` in bulk (blocking; call it off the event loop)."""
        ...

    def put(self, key: bytes, value: bytes) -> None:
        """Buffer a write."""
        ...

    def delete(self, key: bytes) -> None:
        """Buffer a delete (a tombstone in ``pending()``)."""
        ...

    def delete_range(self, lo: bytes, hi: bytes) -> None:
        """Buffer deletion of every key in ``[lo, hi)``; not listed in ``pending()``."""
        ...

    def range_items(
        self,
        lo: bytes,
        hi: bytes,
        *,
        include_pending: bool = True,
        limit: int | None = None,
    ) -> list[tuple[bytes, bytes]]:
        """Items with ``lo <= key < hi`` in key order (at most ``limit``)."""
        ...

    def pending(self) -> Mapping[bytes, bytes | None]:
        """The open transaction's point writes, last value per key (``None`` = delete)."""
        ...

    def discard(self) -> None:
        """Drop the open transaction's writes and the cut ones (the Kafka transaction
        aborted)."""
        ...

    def cut(self) -> None:
        """The open transaction starts committing: its writes become the cut batch (still read
        by ``get``), later writes go to a fresh buffer."""
        ...

    def seal(self) -> None:
        """Hand the cut batch (or, without a cut, the open buffer) to the next ``flush``."""
        ...

    def flush(self, checkpoint: int | None, *, seal: bool = True) -> None:
        """Durably apply the sealed writes and ``checkpoint`` (None = unchanged) atomically;
        seals the open buffer first unless ``seal=False``."""
        ...

    def approximate_size(self) -> int:
        """Number of committed keys (may be cached; see the implementation)."""
        ...

    def close(self) -> None:
        """Release the store; safe to call twice."""
        ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class StorePartitionOpener(Protocol):
    """Opens the store in ``path``; returns it and why it had to be wiped (None if it did not)."""

    def __call__(self, path: Path) -> tuple[StorePartition, str | None]: ...
