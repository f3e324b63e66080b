"""An exclusive, host-local lock on one task's store directory.

Two worker processes on the same host must never open the same (store, partition): both would
apply changelog records and flush buffers into one SQLite file, and the checkpoint would stop
describing the data. An ``fcntl.flock`` on a file inside the store directory prevents it, and the
kernel releases it when the owner dies, so a crashed worker never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from onceflow.errors import StoreLockedError

__all__ = ["LOCK_FILE_NAME", "TaskLock"]

LOCK_FILE_NAME = "onceflow.lock"

# How often acquire() re-tries while another process is still releasing the lock.
_RETRY_INTERVAL_S = 0.05


class TaskLock:
    """Exclusive, non-blocking ``flock`` on ``<path>/onceflow.lock``.

    The lock file is never deleted: unlinking it while another process waits on the old inode
    would let two processes "hold" the lock at once.

    Example::

        with TaskLock(store_dir) as lock:   # raises StoreLockedError if another worker has it
            ...

    ``acquire(timeout_s)`` re-tries for a short while, for the rebalance where the previous owner
    (another process on this host) releases the task a moment after this one is assigned it.
    ``close()`` releases the lock and is safe to call twice.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.file = self.path / LOCK_FILE_NAME
        self._fd: int | None = None

    @property
    def locked(self) -> bool:
        """Whether this object currently holds the lock."""
        return self._fd is not None

    def acquire(self, timeout_s: float = 0.0) -> None:
        """Take the lock, re-trying for up to ``timeout_s`` seconds; blocking, so call it off the
        event loop when ``timeout_s`` > 0. Raises StoreLockedError when the time is up."""
        if self._fd is not None:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        # O_CLOEXEC (Python's default) keeps subprocesses from inheriting the lock.
        fd = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + max(timeout_s, 0.0)
        try:
            while not _try_flock(fd):
                if time.monotonic() >= deadline:
                    raise StoreLockedError(self._locked_message(fd, timeout_s))
                time.sleep(_RETRY_INTERVAL_S)
            _write_owner(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def close(self) -> None:
        """Release the lock (closing the descriptor releases the flock). Safe to call twice."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "locked" if self.locked else "unlocked"
        return f"<TaskLock {str(self.path)!r} {state}>"

    def _locked_message(self, fd: int, timeout_s: float) -> str:
        owner = _read_owner(fd)
        holder = f" (pid {owner})" if owner else ""
        waited = f" after waiting {timeout_s:g}s" if timeout_s > 0 else ""
        return (
            f"store directory {str(self.path)!r} is locked{waited}: another onceflow worker on "
            f"this host{holder} owns this task's store. Two workers on one host must not share a "
            "task; give each worker its own state_dir, or wait for the other worker to release "
            "the task (it does so on rebalance or exit)."
        )


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _write_owner(fd: int) -> None:
    # The pid is for the error message of the next process that finds the lock taken.
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)


def _read_owner(fd: int) -> str:
    try:
        raw = os.pread(fd, 32, 0)
    except OSError:
        return ""
    text = raw.decode("ascii", "replace").strip()
    return text if text.isdigit() else ""
