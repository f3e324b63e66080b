"""The SQLite file behind one store partition.

Layout: one table ``kv`` with sqlitedict's schema (``key TEXT PRIMARY KEY, value BLOB``; stores
were written through sqlitedict before, the file format is unchanged) holding user data *and*
metadata, so that the checkpoint commits in the same transaction as the data. Keys are
namespaced:

* ``b"k" + key``            user data
* ``b"m" + name``           metadata: ``mcheckpoint`` (8-byte signed big-endian changelog
                            offset), ``mtopic_id`` (the changelog topic's id the checkpoint
                            refers to, ASCII, written with a checkpoint), ``mformat`` (layout
                            version), ``mlayout`` (how the table lays out its rows: opaque
                            bytes, JSON from the runtime, written with the data laid out so)

Keys and values are stored as BLOBs, as given (*never* pickled: changelog records come from the
network). BLOBs compare with ``memcmp``, so the
primary-key index orders keys bytewise and serves range reads without a scan.

Two plain ``sqlite3`` connections share the file, each used in the thread that calls it (sqlite3
releases the GIL while SQLite works): a writer (flush, restore: a worker thread) and a read-only
reader (prefetch in a worker thread, point reads on the event loop). In WAL mode the reader sees
only committed transactions and is not queued behind a running flush. With ``offload`` (the
default), writes of more than a few rows and reads of more than a few keys run in the worker's
store I/O children instead (``store_io``: SQLite off the event loop's interpreter), each over a
connection of its own to the file; small ones stay here, where a round trip to a child would
cost more than the statement.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import resource
import shutil
import sqlite3
import struct
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar

from onceflow.errors import StateError, StoreCorruptError
from onceflow.state.sqlite import store_io
from onceflow.state.sqlite._io_child import as_stored, ladder, padded

__all__ = [
    "DB_FILE",
    "META_LAYOUT",
    "META_TOPIC_ID",
    "SqliteFile",
    "check_file",
    "db_files",
    "disk_diagnosis",
    "stored_checkpoint",
]

log = logging.getLogger("onceflow.state")

DB_FILE = "data.sqlite"
_TABLE = "kv"
META_CHECKPOINT = b"mcheckpoint"
META_FORMAT = b"mformat"
META_TOPIC_ID = b"mtopic_id"
META_LAYOUT = b"mlayout"
FORMAT_VERSION = b"1"
_OFFSET = struct.Struct(">q")


def _variable_limit() -> int:
    conn = sqlite3.connect(":memory:")
    try:
        return int(conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER))
    finally:
        conn.close()


# Items per multi-row statement (a power of two). Many rows per statement: one request to
# sqlitedict's thread (its executemany queues every row separately) and one GIL release in
# sqlite3 per statement, not per row; 1,024 rows cost half the CPU of 1 per row. Each statement
# *shape* is compiled once and kept in the connection's statement cache (128 entries, ~0.25 MiB
# for a 1,024-row upsert), so shapes come from a short ladder (``ladder``, ``padded``) instead
# of every remainder size: a busy writer with arbitrary sizes cached up to ~17 MiB of them.
_MAX_ITEMS = 1024 if _variable_limit() >= 2048 else 256  # SQLite before 3.32 allows 999
_ROWS = _MAX_ITEMS  # (key, value) pairs
_KEYS = _MAX_ITEMS
_RANGES = _MAX_ITEMS // 2  # (lo, hi) pairs, two conditions each
_CORRUPT_CODES = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})
_DISK_CODES = frozenset({sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR})
# Under this much free space a failed write is blamed on a full file system.
_LOW_SPACE = 64 * 1024 * 1024
_T = TypeVar("_T")
# Writes of at least this many rows, and reads of at least this many keys, go to a store I/O
# child (``offload``): below, a round trip to it (~0.1 ms) costs more than it takes off the loop.
CHILD_MIN_ROWS = 64
CHILD_MIN_KEYS = 32


class _InProcess:
    """``SqliteFile._in_child``'s answer when no child could be started."""


_IN_PROCESS: Final = _InProcess()


def db_files(directory: Path) -> list[Path]:
    """The database file and its WAL companions (the lock file is not one of them)."""
    return [directory / f"{DB_FILE}{suffix}" for suffix in ("", "-wal", "-shm")]


def corrupt_message(file: Path, detail: str) -> str:
    return (
        f"store database {str(file)!r} is corrupt ({detail}); it will be wiped and restored "
        "from the changelog"
    )


def translate(exc: sqlite3.Error, file: Path, doing: str) -> StateError:
    """The onceflow error for a SQLite error: corruption, or a state error that names the file,
    SQLite's error and, for a failed write, what the file system says (full? file too large?)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None and code & 0xFF in _CORRUPT_CODES:
        return StoreCorruptError(corrupt_message(file, str(exc)))
    name = getattr(exc, "sqlite_errorname", None)
    detail = f"{exc} ({name})" if name else str(exc)
    if code is not None and code & 0xFF in _DISK_CODES:
        return StateError(
            f"SQLite failed while {doing} {str(file)!r}: {detail}; {disk_diagnosis(file)}. "
            "Free disk space or raise the limit: the task retries, restoring from the changelog"
        )
    return StateError(
        f"SQLite failed while {doing} {str(file)!r}: {detail}. Check free disk space and the "
        "permissions of the state directory"
    )


def disk_diagnosis(file: Path) -> str:
    """Why writes to ``file`` likely fail: the process file size limit, or free space.

    SQLite reports EFBIG as a bare "disk I/O error" and ENOSPC as "database or disk is full";
    this says which limit is hit, with the errno's text.
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    if soft != resource.RLIM_INFINITY:
        sizes = {f.name: f.stat().st_size for f in db_files(file.parent) if f.exists()}
        biggest = max(sizes, key=sizes.__getitem__, default=None)
        # A write that would cross the limit fails; the file stops within two pages of it.
        if biggest is not None and sizes[biggest] + 8192 > soft:
            return (
                f"{biggest} reached the process file size limit (RLIMIT_FSIZE, ulimit -f) of "
                f"{soft} bytes: {errno.errorcode[errno.EFBIG]} ({os.strerror(errno.EFBIG)})"
            )
    try:
        free = shutil.disk_usage(file.parent).free
    except OSError as exc:
        return f"its directory cannot be examined: {exc}"
    if free < _LOW_SPACE:
        return (
            f"its file system has {free} bytes free: "
            f"{errno.errorcode[errno.ENOSPC]} ({os.strerror(errno.ENOSPC)})"
        )
    return f"its file system has {free // 2**20} MiB free"


def stored_checkpoint(file: Path) -> int | None:
    """The changelog checkpoint recorded in ``file``, read without touching the store: opened
    ``immutable`` (no WAL, no shared memory, no files created, the directory's mtime unmoved).
    The caller holds the store's ``TaskLock``, so no connection writes meanwhile; a WAL left by a
    crash is not read, and the checkpoint of the main file is older but consistent with it.
    None for a missing or unreadable file, or one without a checkpoint."""
    if not file.exists():
        return None
    try:
        conn = sqlite3.connect(f"{file.resolve().as_uri()}?immutable=1", uri=True)
        try:
            row = conn.execute(
                f'SELECT value FROM "{_TABLE}" WHERE key = ?', (META_CHECKPOINT,)
            ).fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return None
    if row is None or len(row[0]) != _OFFSET.size:
        return None
    value: int = _OFFSET.unpack(row[0])[0]
    return value


def check_file(file: Path, *, deep: bool) -> None:
    """Raise StoreCorruptError unless ``file`` (if it exists) is a store database we can use.

    Always reads the schema and the format version (a few pages). ``deep`` adds
    ``PRAGMA quick_check``, which reads every page: ~0.25 s per million 100-byte rows.
    Runs on a plain sqlite3 connection so that a bad file never kills sqlitedict's thread.
    """
    if not file.exists():
        return
    try:
        conn = sqlite3.connect(str(file))
        try:
            _check(conn, file, deep=deep)
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise translate(exc, file, "checking") from exc


def _check(conn: sqlite3.Connection, file: Path, *, deep: bool) -> None:
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if _TABLE in tables:
        row = conn.execute(f'SELECT value FROM "{_TABLE}" WHERE key = ?', (META_FORMAT,)).fetchone()
        if row is not None and bytes(row[0]) != FORMAT_VERSION:
            detail = f"layout version {bytes(row[0])!r}, this onceflow reads {FORMAT_VERSION!r}"
            raise StoreCorruptError(corrupt_message(file, detail))
    if deep:
        problems = [str(row[0]) for row in conn.execute("PRAGMA quick_check(5)")]
        if problems != ["ok"]:
            raise StoreCorruptError(corrupt_message(file, "; ".join(problems)))


def _open_writer(file: Path, page_cache_kib: int) -> sqlite3.Connection:
    """The writing connection (autocommit: ``write`` opens and commits its transactions), with
    the table created as sqlitedict did."""
    conn = sqlite3.connect(str(file), isolation_level=None, check_same_thread=False)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL is WAL's crash-safe setting: a power loss may lose the last commits but not
        # corrupt the file; data and checkpoint still commit or vanish together.
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(f"PRAGMA cache_size=-{page_cache_kib}")
        conn.execute("PRAGMA wal_autocheckpoint=4000")  # fewer, larger WAL checkpoints
        conn.execute(f'CREATE TABLE IF NOT EXISTS "{_TABLE}" (key TEXT PRIMARY KEY, value BLOB)')
    except BaseException:
        conn.close()
        raise
    return conn


def _open_reader(file: Path, page_cache_kib: int) -> sqlite3.Connection:
    """A read-only connection of the calling threads (autocommit: every statement reads the
    latest committed transaction, as sqlitedict's reader did). The writer created the file and
    set WAL mode, which is persistent."""
    conn = sqlite3.connect(str(file), isolation_level=None, check_same_thread=False)
    try:
        conn.execute("PRAGMA query_only=1")
        conn.execute(f"PRAGMA cache_size=-{page_cache_kib}")
    except BaseException:
        conn.close()
        raise
    return conn


class SqliteFile:
    """Open writer and reader connections to one store database (all blocking calls)."""

    def __init__(self, file: Path, *, page_cache_kib: int, offload: bool | None = None) -> None:
        """``page_cache_kib``: SQLite's page cache of *each* of the two connections (it fills up
        to the smaller of this and the file's size, and stays allocated while open).
        ``offload``: big reads and writes run in the store I/O children (``store_io``; None:
        unless ``store_io.configure(0)``)."""
        self.file = file
        self.offload = store_io.enabled() if offload is None else offload
        # Writes come one at a time (the store partition's write lock); reads too (_read_lock).
        self._writer: Any = None  # sqlite3.Connection (Any: tests wrap it)
        self._reader: sqlite3.Connection | None = None
        self._read_lock = threading.Lock()
        self.checkpoint_at_open: int | None = None
        self.topic_id_at_open: str | None = None
        self.layout_at_open: bytes | None = None
        try:
            self._writer = _open_writer(file, page_cache_kib)
            if self._writer_get(META_FORMAT) is None:
                self.apply(b"", {}, meta=[(META_FORMAT, FORMAT_VERSION)])
            raw = self._writer_get(META_CHECKPOINT)
            self.checkpoint_at_open = None if raw is None else int(_OFFSET.unpack(raw)[0])
            raw = self._writer_get(META_TOPIC_ID)
            self.topic_id_at_open = None if raw is None else raw.decode("ascii")
            self.layout_at_open = self._writer_get(META_LAYOUT)
            self._reader = _open_reader(file, page_cache_kib)
        except sqlite3.Error as exc:
            self.close()
            raise translate(exc, file, "opening") from exc
        except BaseException:
            self.close()
            raise

    def _writer_get(self, key: bytes) -> bytes | None:
        row = self._writer.execute(f'SELECT value FROM "{_TABLE}" WHERE key = ?', (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def get(self, key: bytes) -> bytes | None:
        """Committed value of a raw (namespaced) key."""
        row = self._select_one(f'SELECT value FROM "{_TABLE}" WHERE key = ?', (key,))
        return None if row is None else bytes(row[0])

    def get_many(self, keys: Sequence[bytes]) -> dict[bytes, bytes]:
        """Committed values of the raw keys that exist, one round trip per 1,024 keys."""
        if self.offload and len(keys) >= CHILD_MIN_KEYS:
            self._check_readable()
            found = self._in_child("reading", lambda io: io.read(self.file, keys))
            if not isinstance(found, _InProcess):
                return found
        found = {}
        for chunk in padded(keys, _KEYS):
            marks = ",".join("?" * len(chunk))
            sql = f'SELECT key, value FROM "{_TABLE}" WHERE key IN ({marks})'
            found.update((bytes(k), bytes(v)) for k, v in self._select(sql, tuple(chunk)))
        return found

    def range(self, lo: bytes, hi: bytes, limit: int | None) -> list[tuple[bytes, bytes]]:
        """Committed rows with ``lo <= key < hi`` in key order, via the primary-key index."""
        sql = f'SELECT key, value FROM "{_TABLE}" WHERE key >= ? AND key < ? ORDER BY key'
        args: tuple[Any, ...] = (lo, hi)
        if limit is not None:
            sql, args = sql + " LIMIT ?", (lo, hi, limit)
        return [(bytes(k), bytes(v)) for k, v in self._select(sql, args)]

    def count(self, lo: bytes, hi: bytes) -> int:
        """Number of keys in ``[lo, hi)``; scans the index (~0.3 s per million keys)."""
        row = self._select_one(
            f'SELECT count(*) FROM "{_TABLE}" WHERE key >= ? AND key < ?', (lo, hi)
        )
        return 0 if row is None else int(row[0])

    def _select_one(self, sql: str, args: tuple[Any, ...]) -> Any:
        rows = self._select(sql, args)
        return rows[0] if rows else None

    def _check_readable(self) -> sqlite3.Connection:
        if self._reader is None:
            raise StateError(f"store database {str(self.file)!r} is closed")
        return self._reader

    def _in_child(self, doing: str, call: Callable[[store_io.StoreIO], _T]) -> _T | _InProcess:
        """``call`` the worker's store I/O pool; ``_IN_PROCESS`` (and in-process from now on)
        if no child can be started."""
        try:
            return call(store_io.store_io(_CHILD_LAYOUT))
        except sqlite3.Error as exc:
            raise translate(exc, self.file, doing) from exc
        except OSError as exc:
            log.warning("SQLite of store %s runs in-process: %s", self.file.parent, exc)
            self.offload = False
            return _IN_PROCESS

    def _select(self, sql: str, args: tuple[Any, ...]) -> list[Any]:
        with self._read_lock:
            reader = self._check_readable()
            try:
                return reader.execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                raise translate(exc, self.file, "reading") from exc

    def apply(
        self,
        prefix: bytes,
        latest: dict[bytes, bytes | None],
        *,
        ranges: Sequence[tuple[bytes, bytes]] = (),
        meta: Sequence[tuple[bytes, bytes]] = (),
        checkpoint: int | None = None,
    ) -> list[bytes] | None:
        """Apply, in one transaction and in this order: the range deletions ``ranges``, then
        ``latest`` (keys and range bounds get ``prefix``; None deletes; puts in key order),
        ``meta`` and the checkpoint. Returns the keys (without ``prefix``) the range deletions
        removed, to evict from caches, or None when they are unknown (``StoreIO.apply``). Run
        by a store I/O child when offloaded and big enough, else in this thread. On any error
        the transaction is rolled back and the file is unchanged."""
        meta = [*meta]
        if checkpoint is not None:
            meta.append((META_CHECKPOINT, _OFFSET.pack(checkpoint)))
        conn = self._writer
        if conn is None:
            raise StateError(f"store database {str(self.file)!r} is closed")
        if self.offload and (ranges or len(latest) >= CHILD_MIN_ROWS):
            # The child prefixes the keys and splits puts from deletes: no Python work per key
            # here but marshal's (docs/architecture.md, *SQLite in child processes*).
            answer = self._in_child(
                "writing", lambda io: io.apply(self.file, prefix, latest, meta, ranges)
            )
            if not isinstance(answer, _InProcess):
                return answer
        bounds, deletes, puts = as_stored(prefix, latest, ranges)
        # Sorted keys walk the index in order: fewer pages touched than in arrival order.
        rows = [*sorted(puts), *meta]
        # Multi-row statements (not executemany: it releases and takes back the GIL per row,
        # and each take may wait for the event loop's thread to give it up).
        try:
            conn.execute("BEGIN")
            removed = self._delete_ranges(conn, bounds)
            for keys in padded(deletes, _KEYS):
                marks = ",".join("?" * len(keys))
                conn.execute(f'DELETE FROM "{_TABLE}" WHERE key IN ({marks})', tuple(keys))
            for chunk in ladder(rows, _ROWS):
                conn.execute(_upsert_sql(len(chunk)), [x for row in chunk for x in row])
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise translate(exc, self.file, "writing") from exc
        return [key[len(prefix) :] for key in removed]

    @staticmethod
    def _delete_ranges(conn: Any, ranges: Sequence[tuple[bytes, bytes]]) -> list[bytes]:
        removed: list[bytes] = []
        for chunk in ladder(ranges, _RANGES):
            where = " OR ".join(["(key >= ? AND key < ?)"] * len(chunk))
            sql = f'DELETE FROM "{_TABLE}" WHERE {where} RETURNING key'
            rows = conn.execute(sql, [x for r in chunk for x in r]).fetchall()
            removed.extend(bytes(row[0]) for row in rows)
        return removed

    def _rollback(self) -> None:
        try:
            if self._writer.in_transaction:
                self._writer.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # SQLite already rolled back (e.g. disk full): nothing left to undo

    def close(self) -> None:
        """Close the children's connections, then both of ours (the last one to close
        checkpoints and removes the WAL)."""
        store_io.release(self.file)
        with self._read_lock:
            reader, self._reader = self._reader, None
        for handle in (reader, self._writer):
            if handle is not None:
                handle.close()
        self._writer = None


# An upsert updates the row in place; REPLACE would delete and re-insert it, touching the key
# index too.
_UPSERT_HEAD = f'INSERT INTO "{_TABLE}" (key, value) VALUES '
_UPSERT_TAIL = " ON CONFLICT(key) DO UPDATE SET value = excluded.value"
# What a store I/O child needs to read and write like SqliteFile (``_io_child``). Its
# connections stay open (up to ``_io_child.MAX_OPEN``): a smaller page cache than ours.
_CHILD_LAYOUT = (
    _UPSERT_HEAD,
    "(?,?)",
    _UPSERT_TAIL,
    f'DELETE FROM "{_TABLE}" WHERE key IN (',
    _ROWS,
    ("PRAGMA synchronous=NORMAL", "PRAGMA cache_size=-512", "PRAGMA wal_autocheckpoint=4000"),
    f'SELECT key, value FROM "{_TABLE}" WHERE key IN (',
    f'DELETE FROM "{_TABLE}" WHERE ',
)


@functools.cache
def _upsert_sql(rows: int) -> str:
    return _UPSERT_HEAD + ",".join(["(?,?)"] * rows) + _UPSERT_TAIL
