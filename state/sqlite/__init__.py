"""The SQLite backend: one database file per (store, partition).

``file`` (the database, its schema and writes), ``partition`` (``SqliteStorePartition`` and
``open_store``), ``lock`` (the host-local task lock), ``restore_writer`` with ``_restore_child``
(big restore batches applied in a child process, so SQLite gets a core of its own).
"""

from onceflow.state.sqlite.lock import TaskLock
from onceflow.state.sqlite.partition import SqliteStorePartition, open_store

__all__ = ["SqliteStorePartition", "TaskLock", "open_store"]
