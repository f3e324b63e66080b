"""Restore batches applied by helper processes, so that SQLite runs on every core.

A restore is CPU-bound: the worker decodes each changelog record (~0.7 us, see
``runtime/changelog_chunks``) and SQLite inserts it (~3-4 us). In one interpreter the two do not
overlap: SQLite releases the GIL while it runs, but two threads inserting into two databases
were measured no faster than one (~340k rows/s either way; its allocator serializes them). So
up to ``PROCESSES`` child processes per worker (``_restore_child.py``, standard library only)
apply the batches instead, each batch in whichever is idle; the worker's threads wait for them
with the GIL released.

Exactly-once is unchanged: each batch and its checkpoint commit in one SQLite transaction, as
in-process. The child never holds the store's lock, so it writes only for a live parent: it
checks its parent just before COMMIT and exits when its stdin closes — when the worker exits or
is killed. Each also exits after 10 s idle; the next batch starts another (~20 ms). If the child
dies mid-batch the batch is retried once in a new child (re-applying a batch is idempotent:
whole values and the same checkpoint); a second death is a ``RestoreChildGoneError`` (the task
is rebuilt). Only a child that cannot be started at all (``OSError``) falls back to writing
in-process.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Any

from onceflow.errors import RestoreChildGoneError
from onceflow.state.sqlite import _restore_child as child

__all__ = ["RestoreWriter", "restore_writer"]

log = logging.getLogger("onceflow.state")
_SCRIPT = Path(child.__file__)
PROCESSES = max(1, min(4, os.cpu_count() or 1))
"""Children per worker: SQLite is most of a restore's CPU once decoding is cheap, and a worker
restores all its store partitions at once; one child per core (the worker's own share is small),
at most four."""


class RestoreWriter:
    """Up to ``processes`` lazily started children that apply restore batches; thread-safe.
    Each batch goes to an idle child (a caller waits while all are busy): a store restores one
    batch at a time (its write lock), so two children never write one file at once.
    ``close()`` stops them; safe to call twice."""

    def __init__(self, layout: tuple[Any, ...], processes: int = 1) -> None:
        self._children = [_Child(layout) for _ in range(max(1, processes))]
        # Last in, first out: a lone restore keeps using one warm child.
        self._idle: queue.LifoQueue[_Child] = queue.LifoQueue()
        for c in reversed(self._children):
            self._idle.put(c)

    def apply(
        self,
        file: Path,
        prefix: bytes,
        latest: dict[bytes, bytes | None],
        meta: list[tuple[bytes, bytes]],
    ) -> None:
        """Apply ``latest`` (keys get ``prefix``; None deletes) and ``meta`` to ``file`` in one
        transaction. Raises ``sqlite3.Error`` (with SQLite's code and name) if it rolled back,
        ``OSError`` if no child could be started."""
        request = (str(file), prefix, latest, meta)
        c = self._idle.get()
        try:
            reply = c.apply(request)
        finally:
            self._idle.put(c)
        if reply is not None:
            code, name, message = reply
            exc = sqlite3.OperationalError(message)
            exc.sqlite_errorcode = code
            exc.sqlite_errorname = name
            raise exc

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

    def apply(self, request: tuple[Any, ...]) -> Any:
        with self._lock:
            try:
                return self._call(request)
            except RestoreChildGoneError:
                return self._call(request)  # a new child; the batch is idempotent

    def _call(self, request: tuple[Any, ...]) -> Any:
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
                f"the restore writer child (pid {proc.pid}) exited before it answered"
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


_writer: RestoreWriter | None = None
_writer_lock = threading.Lock()


def restore_writer(layout: tuple[Any, ...]) -> RestoreWriter:
    """The process's restore writer (``PROCESSES`` children for every store), created on first
    use."""
    global _writer
    with _writer_lock:
        if _writer is None:
            _writer = RestoreWriter(layout, PROCESSES)
            atexit.register(_writer.close)
        return _writer
