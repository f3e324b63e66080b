"""A store I/O child process (see ``store_io``): runs SQLite for the worker's store partitions
— restore batches, the writes of commits, batched point reads — so that SQLite's CPU, and the
Python work around each statement, is off the event loop's interpreter. Run as a script,
standard library only, so that it starts in ~20 ms without importing onceflow.

Protocol on stdin/stdout: frames of an 8-byte big-endian length and a ``marshal`` payload (the
parent is the same interpreter; keys and values stay opaque ``bytes`` objects).

* first frame in: the SQL layout, ``(upsert_head, upsert_row, upsert_tail, delete_head,
  rows_per_statement, pragmas, select_head, range_delete_head)``;
* each request, ``(op, file, *args)``:

  - ``("apply", file, prefix, latest, meta, ranges)``: a commit's writes or a restore batch,
    as ``SqliteFile.apply``: the range deletions ``ranges``, then ``latest``, which maps keys
    to values (None: delete), then ``meta`` rows (the checkpoint), in one transaction; keys and
    range bounds get ``prefix``, puts go in key order; answers the keys (without ``prefix``)
    the range deletions removed;
  - ``("read", file, keys)``: the committed values of the keys that exist, as a dict;
  - ``("release", file)``: close the connection to ``file`` (the store closes or is wiped);

* each reply: ``(None, result)`` or ``((sqlite_errorcode, sqlite_errorname, message), None)``
  (a write rolled back).

Connections stay open between requests, one per file, and are checked against the file's inode
before each use: a database wiped and created again is opened again, never written through a
connection to the deleted one. The child exits when stdin closes (its parent exited or died),
after ``IDLE_S`` without a request, and before committing if its parent is gone: the parent holds
the store's lock, the child does not, so without a live parent nothing may be written.
"""

from __future__ import annotations

import contextlib
import marshal
import os
import select
import sqlite3
import struct
import sys
import urllib.parse
from collections.abc import Iterator, Sequence
from typing import IO, Any, TypeVar

IDLE_S = 10.0
_T = TypeVar("_T")
MAX_OPEN = 32
"""Connections a child keeps open (least recently used closed first): each holds a page cache."""
_LENGTH = struct.Struct(">Q")
Error = tuple[int | None, str | None, str]


def read_frame(stream: IO[bytes]) -> Any:
    """The next frame's object; raises EOFError when the stream ends."""
    (size,) = _LENGTH.unpack(_read_exactly(stream, _LENGTH.size))
    return marshal.loads(_read_exactly(stream, size))


def _read_exactly(stream: IO[bytes], size: int) -> bytes:
    # Unbuffered streams return short reads; a buffered one would read ahead and hide the next
    # frame from select().
    parts, missing = [], size
    while missing:
        part = stream.read(missing)
        if not part:
            raise EOFError
        parts.append(part)
        missing -= len(part)
    return b"".join(parts)


def write_frame(stream: IO[bytes], obj: Any) -> None:
    body = marshal.dumps(obj)
    stream.write(_LENGTH.pack(len(body)) + body)
    stream.flush()


def ladder(items: Sequence[_T], size: int) -> Iterator[Sequence[_T]]:
    """``items`` in chunks of ``size`` (a power of two), then power-of-two pieces of the rest:
    at most log2(size) + 1 distinct chunk lengths (statement shapes), whatever ``len(items)``."""
    start, n = 0, len(items)
    while start < n:
        step = min(size, 1 << ((n - start).bit_length() - 1))
        yield items[start : start + step]
        start += step


def as_stored(
    prefix: bytes, latest: dict[bytes, bytes | None], ranges: Sequence[tuple[bytes, bytes]]
) -> tuple[list[tuple[bytes, bytes]], list[bytes], list[tuple[bytes, bytes]]]:
    """An ``apply`` request's range bounds, deletes and puts, keys under ``prefix`` (for this
    child and for ``SqliteFile.apply`` in-process alike)."""
    deletes = [prefix + k for k, v in latest.items() if v is None]
    puts = [(prefix + k, v) for k, v in latest.items() if v is not None]
    return [(prefix + lo, prefix + hi) for lo, hi in ranges], deletes, puts


def padded(keys: Sequence[bytes], size: int) -> Iterator[list[bytes]]:
    """``keys`` in chunks of at most ``size``, each padded to a power of two by repeating its
    last key: for ``IN (...)`` lists, where a duplicate changes nothing, few statement shapes."""
    for start in range(0, len(keys), size):
        chunk = list(keys[start : start + size])
        chunk.extend(chunk[-1:] * ((1 << (len(chunk) - 1).bit_length()) - len(chunk)))
        yield chunk


class Applier:
    def __init__(self, layout: tuple[Any, ...], parent: int) -> None:
        self.upsert_head, self.upsert_row, self.upsert_tail = layout[0], layout[1], layout[2]
        self.delete_head, self.rows, self.pragmas = layout[3], layout[4], layout[5]
        self.select_head, self.range_delete_head = layout[6], layout[7]
        self.parent = parent
        self._sql: dict[int, str] = {}
        self._conns: dict[str, tuple[sqlite3.Connection, tuple[int, int]]] = {}

    def handle(self, request: tuple[Any, ...]) -> tuple[Error | None, Any]:
        op, file, *args = request
        if op == "release":
            self.release(file)
            return None, None
        try:
            conn = self._conn(file)
        except sqlite3.Error as exc:
            return _error(exc), None
        try:
            if op == "read":
                return None, self._read(conn, *args)
            return None, self._transaction(conn, self._apply, *args)
        except sqlite3.Error as exc:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):  # SQLite may have rolled back already
                    conn.execute("ROLLBACK")
            return _error(exc), None

    def apply(
        self, file: str, prefix: bytes, latest: dict[bytes, bytes | None], meta: list[Any]
    ) -> Error | None:
        """A restore batch (the ``apply`` request); the error, or None once committed."""
        return self.handle(("apply", file, prefix, latest, meta, []))[0]

    def _conn(self, file: str) -> sqlite3.Connection:
        try:
            st = os.stat(file)
        except OSError as exc:
            self.release(file)
            raise sqlite3.OperationalError(f"unable to open database file: {exc}") from exc
        identity = (st.st_dev, st.st_ino)
        cached = self._conns.pop(file, None)
        if cached is not None:
            if cached[1] == identity:
                self._conns[file] = cached  # most recently used last
                return cached[0]
            with contextlib.suppress(sqlite3.Error):  # wiped and created again: never the
                cached[0].close()  # deleted file's connection
        while len(self._conns) >= MAX_OPEN:
            self.release(next(iter(self._conns)))
        # mode=rw: never create a database the parent wiped meanwhile.
        uri = f"file:{urllib.parse.quote(file)}?mode=rw"
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=60)
        try:
            for pragma in self.pragmas:
                conn.execute(pragma)
        except BaseException:
            conn.close()
            raise
        self._conns[file] = (conn, identity)
        return conn

    def release(self, file: str) -> None:
        cached = self._conns.pop(file, None)
        if cached is not None:
            with contextlib.suppress(sqlite3.Error):
                cached[0].close()

    def close(self) -> None:
        for file in list(self._conns):
            self.release(file)

    def upsert_sql(self, rows: int) -> str:
        sql = self._sql.get(rows)
        if sql is None:
            sql = self._sql[rows] = (
                self.upsert_head + ",".join([self.upsert_row] * rows) + self.upsert_tail
            )
        return sql

    def _read(self, conn: sqlite3.Connection, keys: list[bytes]) -> dict[bytes, bytes]:
        found: dict[bytes, bytes] = {}
        for chunk in padded(keys, self.rows):
            sql = self.select_head + ",".join("?" * len(chunk)) + ")"
            found.update(conn.execute(sql, chunk).fetchall())
        return found

    def _transaction(self, conn: sqlite3.Connection, body: Any, *args: Any) -> Any:
        conn.execute("BEGIN IMMEDIATE")
        result = body(conn, *args)
        if os.getppid() != self.parent:
            conn.execute("ROLLBACK")
            raise SystemExit(0)
        conn.execute("COMMIT")
        return result

    def _apply(
        self,
        conn: sqlite3.Connection,
        prefix: bytes,
        latest: dict[bytes, bytes | None],
        meta: list[Any],
        ranges: list[tuple[bytes, bytes]],
    ) -> list[bytes]:
        bounds, deletes, rows = as_stored(prefix, latest, ranges)
        return [key[len(prefix) :] for key in self._write(conn, bounds, deletes, rows, meta)]

    def _write(
        self,
        conn: sqlite3.Connection,
        ranges: list[tuple[bytes, bytes]],
        deletes: list[bytes],
        puts: list[tuple[bytes, bytes]],
        meta: list[Any],
    ) -> list[bytes]:
        removed: list[bytes] = []
        for pairs in ladder(ranges, self.rows // 2):
            where = " OR ".join(["(key >= ? AND key < ?)"] * len(pairs))
            sql = f"{self.range_delete_head}{where} RETURNING key"
            removed.extend(row[0] for row in conn.execute(sql, [x for r in pairs for x in r]))
        for keys in padded(deletes, self.rows):
            conn.execute(f"{self.delete_head}{','.join('?' * len(keys))})", keys)
        puts.sort()  # sorted keys walk the index in order: fewer pages touched
        puts.extend(tuple(row) for row in meta)
        for rows in ladder(puts, self.rows):
            conn.execute(self.upsert_sql(len(rows)), [x for row in rows for x in row])
        return removed


def _error(exc: sqlite3.Error) -> Error:
    code = getattr(exc, "sqlite_errorcode", None)
    return (code, getattr(exc, "sqlite_errorname", None), str(exc))


def main() -> None:
    parent = os.getppid()
    # Unbuffered stdin: select() must see every byte not yet read.
    stdin = open(sys.stdin.fileno(), "rb", buffering=0, closefd=False)  # noqa: SIM115
    stdout = sys.stdout.buffer
    applier: Applier | None = None
    try:
        applier = Applier(read_frame(stdin), parent)
        while True:
            ready, _, _ = select.select([stdin], [], [], IDLE_S)
            if not ready:
                return  # idle: the parent starts another one when it needs it
            write_frame(stdout, applier.handle(read_frame(stdin)))
    except (EOFError, BrokenPipeError):
        return
    finally:
        if applier is not None:
            applier.close()


if __name__ == "__main__":
    main()
