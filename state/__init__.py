"""State stores: one transactional key-value store per (store, partition), changelogged to Kafka.

``typing`` (the ``StorePartition`` protocol), ``base`` and ``buffer`` (the write buffer every
store shares), ``windowed`` (the windowed layout and key codec over any store), ``memory`` (the
in-memory store of the test driver), ``sqlite/`` (the SQLite backend). Nothing here imports the
rest of onceflow except ``onceflow.errors``.
"""

from onceflow.state.memory import InMemoryStorePartition
from onceflow.state.sqlite import SqliteStorePartition, TaskLock, open_store
from onceflow.state.typing import StorePartition, StorePartitionOpener
from onceflow.state.windowed import WindowedStorePartition

__all__ = [
    "InMemoryStorePartition",
    "SqliteStorePartition",
    "StorePartition",
    "StorePartitionOpener",
    "TaskLock",
    "WindowedStorePartition",
    "open_store",
]
