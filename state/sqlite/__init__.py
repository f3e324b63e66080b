"""The SQLite backend: one database file per (store, partition).

``file`` (the database, its schema and writes), ``partition`` (``SqliteStorePartition`` and
``open_store``), ``lock`` (the host-local task lock), ``store_io`` with ``_io_child``
(SQLite run by child processes: restores, commits' writes, batched reads, so that it
gets a core of its own).
"""

from onceflow.state.sqlite.lock import TaskLock
from onceflow.state.sqlite.partition import SqliteStorePartition, open_store

__all__ = ["SqliteStorePartition", "TaskLock", "open_store"]
