"""SQLite run by helper processes, so that it has a core of its own.

One interpreter runs the event loop, the handlers and aiokafka; SQLite releases the GIL while it
steps, but binding a statement's parameters, building its result rows and the thread hand-offs
around it do not: with large key spaces a worker's threads reading and writing SQLite took the
GIL from the event loop for about half its time, and the worker stayed at one core whatever the
machine had. So up to ``PROCESSES`` child processes per worker (``_io_child.py``, standard library
only) run the statements instead — restore batches, the writes of each commit (``flush``) and a
batch's point reads (``prefetch``) — each request in whichever child is idle; the worker's
threads wait for them with the GIL released. docs/architecture.md, *State*, has the whole path.

Exactly-once is unchanged: each write and its checkpoint commit in one SQLite transaction, as
in-process. The child never holds the store's lock, so it writes only for a live parent: it
checks its parent just before COMMIT and exits when its stdin closes — when the worker exits or
is killed. Each also exits after 10 s idle; the next request starts another (~20 ms). A child
keeps a connection per file it used (checked against the file's inode before each use, so a
wiped store is never written through the old file) until the store releases it (``release``:
at close and before a wipe). If a child dies mid-request the request is retried once in a new
child (reads and re-applied writes are idempotent: whole values and the same checkpoint; which
keys a repeated range deletion removed is then unknown, and ``write`` says so); a second death is
a ``RestoreChildGoneError`` (the task is rebuilt). Only a child that cannot be started at all
(``OSError``) falls back to in-process SQLite.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import queue
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from onceflow.errors import RestoreChildGoneError
from onceflow.state.sqlite import _io_child as child

__all__ = ["PROCESSES", "StoreIO", "configure", "enabled", "release", "store_io"]

log = logging.getLogger("onceflow.state")
_SCRIPT = Path(child.__file__)
PROCESSES = max(1, min(4, os.cpu_count() or 1))
"""Children per worker: one per core (the event loop's interpreter is one of the cores' users,
SQLite the other), at most four."""


class StoreIO:
    """Up to ``processes`` lazily started children that run SQLite requests; thread-safe.
    Each request goes to an idle child (a caller waits while all are busy). A store writes one
    batch at a time (its write lock), so two children never write one file at once; reads of a
    file may run in one child while another writes it (WAL: readers see committed data only).
    ``close()`` stops them; safe to call twice."""

    def __init__(self, layout: tuple[Any, ...], processes: int = 1) -> None:
        self._children = [_Child(layout) for _ in range(max(1, processes))]
        # Last in, first out: a light load keeps using one warm child.
        self._idle: queue.LifoQueue[_Child] = queue.LifoQueue()
        for c in reversed(self._children):
            self._idle.put(c)

    def apply(
        self,
        file: Path,
        prefix: bytes,
        latest: dict[bytes, bytes | None],
        meta: Sequence[tuple[bytes, bytes]],
        ranges: Sequence[tuple[bytes, bytes]] = (),
    ) -> list[bytes] | None:
        """``SqliteFile.apply``'s transaction, run by a child: the range deletions ``ranges``,
        ``latest`` (keys and bounds get ``prefix``; None deletes) and ``meta``, committed at
        once. Returns the keys the range deletions removed (without ``prefix``), or None when
        that is unknown (the child died after committing and the retry found them gone).
        Raises ``sqlite3.Error`` (with SQLite's code and name) if it rolled back, ``OSError``
        if no child could be started."""
        request = ("apply", str(file), prefix, latest, list(meta), list(ranges))
        removed, retried = self._call(request)
        return None if retried and ranges else removed

    def read(self, file: Path, keys: Sequence[bytes]) -> dict[bytes, bytes]:
        """The committed values of the raw keys that exist. Raises like ``apply``."""
        found: dict[bytes, bytes] = self._call(("read", str(file), list(keys)))[0]
        return found

    def release(self, file: Path) -> None:
        """Close every child's connection to ``file`` (before the store closes or wipes it);
        children that are not running have none."""
        for c in self._children:
            c.release(str(file))

    def _call(self, request: tuple[Any, ...]) -> tuple[Any, bool]:
        c = self._idle.get()
        try:
            (error, result), retried = c.call(request)
        finally:
            self._idle.put(c)
        if error is not None:
            code, name, message = error
            exc = sqlite3.OperationalError(message)
            exc.sqlite_errorcode = code
            exc.sqlite_errorname = name
            raise exc
        return result, retried

    def close(self) -> None:
        """Stop the children (each exits when its stdin closes) and wait for them."""
        for c in self._children:
            c.close()


class _Child:
    """One child process, started on first use and again after it exited."""

    def __init__(self, layout: tuple[Any, ...]) -> None:
        self._layout = layout
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None

    def call(self, request: tuple[Any, ...]) -> tuple[Any, bool]:
        """The reply, and whether the request had to be sent again to a new child."""
        with self._lock:
            try:
                return self._exchange(request), False
            except RestoreChildGoneError:
                return self._exchange(request), True  # a new child; the request is idempotent

    def release(self, file: str) -> None:
        with self._lock:
            if self._proc is not None and self._proc.poll() is None:
                with contextlib.suppress(RestoreChildGoneError):  # gone: its connections too
                    self._exchange(("release", file))

    def _exchange(self, request: tuple[Any, ...]) -> Any:
        proc = self._proc if self._proc is not None and self._proc.poll() is None else None
        if proc is None:
            proc = self._start()
        stdin, stdout = _pipes(proc)
        try:
            child.write_frame(stdin, request)
            return child.read_frame(stdout)
        except (EOFError, BrokenPipeError) as exc:
            self._reap()
            raise RestoreChildGoneError(
                f"the store I/O child (pid {proc.pid}) exited before it answered"
            ) from exc

    def _start(self) -> subprocess.Popen[bytes]:
        self._reap()
        # -I -S: no site, no environment, no working directory on the path: stdlib only.
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", str(_SCRIPT)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self._proc = proc
        child.write_frame(_pipes(proc)[0], self._layout)
        return proc

    def _reap(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def close(self) -> None:
        with self._lock:
            self._reap()


def _pipes(proc: subprocess.Popen[bytes]) -> tuple[IO[bytes], IO[bytes]]:
    assert proc.stdin is not None and proc.stdout is not None  # Popen(stdin=PIPE, stdout=PIPE)
    return proc.stdin, proc.stdout


_pool: StoreIO | None = None
_pool_lock = threading.Lock()
_processes = PROCESSES


def configure(processes: int | None) -> None:
    """Children of the process's pool from now on (``ONCEFLOW_STATE_IO_PROCESSES``; None:
    ``PROCESSES``; 0: stores opened from now on run SQLite in-process). Call it before stores
    open: a pool of another size is stopped."""
    global _pool, _processes
    wanted = PROCESSES if processes is None else processes
    with _pool_lock:
        old = _pool if _pool is not None and len(_pool._children) != wanted else None
        if old is not None:
            _pool = None
        _processes = wanted
    if old is not None:
        old.close()


def enabled() -> bool:
    """Whether stores opened now run their big reads and writes in the children."""
    return _processes > 0


def store_io(layout: tuple[Any, ...]) -> StoreIO:
    """The process's store I/O pool (``configure``'s number of children, shared by every
    store), created on first use."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = StoreIO(layout, max(1, _processes))
            atexit.register(_pool.close)
        return _pool


def release(file: Path) -> None:
    """Close the children's connections to ``file``, if the pool has been started."""
    with _pool_lock:
        pool = _pool
    if pool is not None:
        pool.release(file)
