"""State stores: one transactional key-value store per (store, partition), changelogged to Kafka.

Modules: ``partition`` (SQLite store, ``open_store``), ``memory`` (in-memory store for the test
driver), ``windowed`` (windowed layout over any store), ``lock`` (host-local task lock),
``typing`` (the ``StorePartition`` protocol). The rest is internal; ``restore_writer`` applies
big restore batches in a child process (``_restore_child``) so that SQLite gets its own core.
"""

from state.lock import TaskLock
from state.memory import InMemoryStorePartition
from state.partition import SqliteStorePartition, open_store
from state.typing import StorePartition, StorePartitionOpener
from state.windowed import WindowedStorePartition

__all__ = [
    "InMemoryStorePartition",
    "SqliteStorePartition",
    "StorePartition",
    "StorePartitionOpener",
    "TaskLock",
    "WindowedStorePartition",
    "open_store",
]
