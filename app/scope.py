"""``TaskScope``: what tables and handler contexts may ask of the task that runs a record.

The declaration layer (tables, ``Context``) talks to the runtime only through this protocol;
``onceflow.runtime.task.Task`` fulfils it, and so does anything a test builds with the same
attributes. It is what keeps the import graph one-way (docs/architecture.md, *Layers*).
"""

from __future__ import annotations

from typing import Protocol

from onceflow.state.typing import StorePartition
from onceflow.state.windowed import WindowedStorePartition

__all__ = ["TaskScope"]


class TaskScope(Protocol):
    """The running task, as a record's handler and tables see it."""

    @property
    def task_id(self) -> str:
        """E.g. ``"0_3"``: partition 3 of task group ``"0"``."""
        ...

    @property
    def partition(self) -> int:
        """The partition number of every source partition the task owns."""
        ...

    @property
    def num_partitions(self) -> int:
        """Partitions of the task's group: what a key's owning partition is computed over."""
        ...

    @property
    def stream_time(self) -> int:
        """The largest record timestamp the task has seen (ms; -1 before the first record)."""
        ...

    @property
    def max_record_bytes(self) -> int:
        """The largest record the task's producer may send (``ONCEFLOW_MAX_REQUEST_SIZE``)."""
        ...

    def store(self, name: str) -> StorePartition:
        """The task's partition of key-value table ``name``."""
        ...

    def windowed_store(self, name: str) -> WindowedStorePartition:
        """The task's partition of windowed table ``name``."""
        ...

    def global_store(self, name: str) -> StorePartition:
        """The worker's store of global table ``name`` (all partitions of its topic)."""
        ...
