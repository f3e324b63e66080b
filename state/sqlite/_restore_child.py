"""The restore writer's child process (see ``restore_writer``): applies restore batches to
store databases in one SQLite transaction each. Run as a script, standard library only, so that
it starts in ~20 ms without importing onceflow.

Protocol on stdin/stdout: frames of an 8-byte big-endian length and a ``marshal`` payload (the
parent is the same interpreter; the changelog's bytes stay opaque ``bytes`` objects).

* first frame in: the SQL layout, ``(upsert_head, upsert_row, upsert_tail, delete_head,
  rows_per_statement, pragmas)``;
* each request: ``(file, prefix, latest, meta)``: ``latest`` maps keys to values (None: delete),
  ``prefix`` namespaces them, ``meta`` rows (the checkpoint) commit with them;
* each reply: ``None`` (committed) or ``(sqlite_errorcode, sqlite_errorname, message)`` (rolled
  back).

It exits when stdin closes (its parent exited or died), after ``IDLE_S`` without a request, and
before committing if its parent is gone: the parent holds the store's lock, the child does not,
so without a live parent nothing may be written.
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
from typing import IO, Any

IDLE_S = 10.0
_LENGTH = struct.Struct(">Q")


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


def _ladder(items: list[Any], size: int) -> Any:
    start, n = 0, len(items)
    while start < n:
        step = min(size, 1 << ((n - start).bit_length() - 1))
        yield items[start : start + step]
        start += step


class Applier:
    def __init__(self, layout: tuple[Any, ...], parent: int) -> None:
        self.upsert_head, self.upsert_row, self.upsert_tail = layout[0], layout[1], layout[2]
        self.delete_head, self.rows, self.pragmas = layout[3], layout[4], layout[5]
        self.parent = parent
        self._sql: dict[int, str] = {}

    def upsert_sql(self, rows: int) -> str:
        sql = self._sql.get(rows)
        if sql is None:
            sql = self._sql[rows] = (
                self.upsert_head + ",".join([self.upsert_row] * rows) + self.upsert_tail
            )
        return sql

    def apply(
        self, file: str, prefix: bytes, latest: dict[bytes, bytes | None], meta: list[Any]
    ) -> tuple[int | None, str | None, str] | None:
        try:
            # mode=rw: never create a database the parent wiped meanwhile.
            uri = f"file:{urllib.parse.quote(file)}?mode=rw"
            conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=60)
        except sqlite3.Error as exc:
            return _error(exc)
        try:
            self._write(conn, prefix, latest, meta)
        except sqlite3.Error as exc:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):  # SQLite may have rolled back already
                    conn.execute("ROLLBACK")
            return _error(exc)
        finally:
            conn.close()
        return None

    def _write(
        self,
        conn: sqlite3.Connection,
        prefix: bytes,
        latest: dict[bytes, bytes | None],
        meta: list[Any],
    ) -> None:
        for pragma in self.pragmas:
            conn.execute(pragma)
        deletes = [prefix + k for k, v in latest.items() if v is None]
        rows = [(prefix + k, v) for k, v in latest.items() if v is not None]
        rows.sort()  # sorted keys walk the index in order
        rows.extend(tuple(row) for row in meta)
        conn.execute("BEGIN IMMEDIATE")
        for chunk in _ladder(deletes, self.rows):
            marks = ",".join("?" * len(chunk))
            conn.execute(f"{self.delete_head}{marks})", chunk)
        for chunk in _ladder(rows, self.rows):
            conn.execute(self.upsert_sql(len(chunk)), [x for row in chunk for x in row])
        if os.getppid() != self.parent:
            conn.execute("ROLLBACK")
            raise SystemExit(0)
        conn.execute("COMMIT")


def _error(exc: sqlite3.Error) -> tuple[int | None, str | None, str]:
    code = getattr(exc, "sqlite_errorcode", None)
    return (code, getattr(exc, "sqlite_errorname", None), str(exc))


def main() -> None:
    parent = os.getppid()
    # Unbuffered stdin: select() must see every byte not yet read.
    stdin = open(sys.stdin.fileno(), "rb", buffering=0, closefd=False)  # noqa: SIM115
    stdout = sys.stdout.buffer
    try:
        applier = Applier(read_frame(stdin), parent)
        while True:
            ready, _, _ = select.select([stdin], [], [], IDLE_S)
            if not ready:
                return  # idle: the parent starts another one when it needs it
            write_frame(stdout, applier.apply(*read_frame(stdin)))
    except (EOFError, BrokenPipeError):
        return


if __name__ == "__main__":
    main()
