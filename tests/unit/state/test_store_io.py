"""The store I/O children: a restore batch or a commit's writes and its checkpoint land
atomically, reads see committed data, SQLite errors come back, a dead child is replaced, a wiped
file is never written through an old connection, and nothing commits once the parent is gone."""

from __future__ import annotations

import sqlite3
import struct
from pathlib import Path
from typing import Any

import pytest

from onceflow.errors import RestoreChildGoneError, StateError
from onceflow.state.cache import MISS
from onceflow.state.sqlite import store_io
from onceflow.state.sqlite._io_child import Applier
from onceflow.state.sqlite.file import (
    _CHILD_LAYOUT,
    CHILD_MIN_ROWS,
    DB_FILE,
    META_CHECKPOINT,
    META_TOPIC_ID,
)
from onceflow.state.sqlite.partition import SqliteStorePartition
from onceflow.state.sqlite.store_io import StoreIO, _Child

BIG_BATCH = CHILD_MIN_ROWS * 16  # written by a store I/O child


def rows(path: Path) -> dict[bytes, bytes]:
    conn = sqlite3.connect(path / DB_FILE)
    try:
        return {bytes(k): bytes(v) for k, v in conn.execute("SELECT key, value FROM kv")}
    finally:
        conn.close()


def big_batch(n: int = BIG_BATCH * 3) -> list[tuple[bytes, bytes | None]]:
    return [(b"%06d" % i, b"v%d" % i) for i in range(n)]


def test_a_big_restore_batch_is_written_by_the_child_like_in_process(tmp_path: Path) -> None:
    batch = [*big_batch(), (b"000007", None)]
    with SqliteStorePartition(tmp_path / "child") as store:
        store.set_changelog_topic_id("UghfcGq0S3-YOhw7sSOVbw")
        store.restore_batch(batch, 99)
    with SqliteStorePartition(tmp_path / "inline", offload=False) as store:
        store.restore_batch(batch, 99)
    child = rows(tmp_path / "child")
    assert child.pop(META_TOPIC_ID) == b"UghfcGq0S3-YOhw7sSOVbw"  # in the checkpoint's transaction
    assert child == rows(tmp_path / "inline")
    assert child[META_CHECKPOINT] == struct.pack(">q", 99)
    with SqliteStorePartition(tmp_path / "child") as store:
        assert (store.checkpoint, store.changelog_topic_id) == (99, "UghfcGq0S3-YOhw7sSOVbw")
        assert store.get(b"000007") is None
        assert store.get(b"000008") == b"v8"


def test_a_dead_child_is_replaced_and_the_batch_applied(tmp_path: Path) -> None:
    writer = StoreIO(_CHILD_LAYOUT)
    try:
        with SqliteStorePartition(tmp_path) as store:
            writer.apply(store.file, b"k", {b"a": b"1"}, [])
            proc = writer._children[0]._proc
            assert proc is not None
            proc.kill()
            proc.wait()
            writer.apply(store.file, b"k", {b"b": b"2"}, [])
        assert {b"ka", b"kb"} <= rows(tmp_path).keys()
    finally:
        writer.close()
        writer.close()  # safe twice


def test_sqlite_errors_come_back_with_their_code(tmp_path: Path) -> None:
    bad = (_CHILD_LAYOUT[0].replace('"kv"', '"missing"'), *_CHILD_LAYOUT[1:])
    writer = StoreIO(bad)
    try:
        with SqliteStorePartition(tmp_path) as store:
            with pytest.raises(sqlite3.OperationalError, match="no such table") as caught:
                writer.apply(store.file, b"k", {b"a": b"1"}, [])
            assert caught.value.sqlite_errorname == "SQLITE_ERROR"
            writer.apply(store.file, b"k", {}, [])  # the child survived its error
    finally:
        writer.close()


def test_a_failed_child_write_is_a_state_error_and_changes_nothing(tmp_path: Path) -> None:
    with SqliteStorePartition(tmp_path) as store:
        store.restore_batch([(b"a", b"1")], 5)
        (tmp_path / DB_FILE).unlink()  # the child opens with mode=rw: it never creates one
        with pytest.raises(StateError, match="SQLite failed while writing"):
            store.restore_batch(big_batch(), 6)
        assert store.checkpoint == 5


def test_the_child_never_commits_for_a_dead_parent(tmp_path: Path) -> None:
    with SqliteStorePartition(tmp_path) as store:
        store.restore_batch([(b"a", b"1")], 5)
        orphan = Applier(_CHILD_LAYOUT, parent=-1)  # its parent is not its parent any more
        with pytest.raises(SystemExit):
            orphan.apply(str(store.file), b"k", {b"a": b"2"}, [(META_CHECKPOINT, b"x" * 8)])
    with SqliteStorePartition(tmp_path) as store:
        assert (store.checkpoint, store.get(b"a")) == (5, b"1")


def test_a_batch_goes_to_an_idle_child_while_another_is_busy(tmp_path: Path) -> None:
    writer = StoreIO(_CHILD_LAYOUT, processes=2)
    try:
        with SqliteStorePartition(tmp_path / "a") as a, SqliteStorePartition(tmp_path / "b") as b:
            writer.apply(a.file, b"k", {b"x": b"1"}, [])
            first = writer._idle.get()  # the warm child, as if busy with another store's batch
            try:
                writer.apply(b.file, b"k", {b"y": b"2"}, [])
            finally:
                writer._idle.put(first)
            started = [c._proc is not None for c in writer._children]
            assert started == [True, True]
        assert rows(tmp_path / "a")[b"kx"] == b"1"
        assert rows(tmp_path / "b")[b"ky"] == b"2"
    finally:
        writer.close()


def _fill(store: SqliteStorePartition, n: int, value: bytes) -> None:
    for i in range(n):
        store.put(b"%06d" % i, value)


def test_a_commits_writes_in_the_child_land_like_in_process(tmp_path: Path) -> None:
    def commit(store: SqliteStorePartition) -> None:
        _fill(store, 300, b"a")
        store.flush(1)
        _fill(store, 200, b"b")  # updates
        store.delete(b"000007")
        store.delete_range(b"000100", b"000150")
        store.flush(2)

    with SqliteStorePartition(tmp_path / "child") as store:
        commit(store)
        assert store.committed_get(b"000120") is None  # the child told which keys went
        assert store.committed_get(b"000160") == b"b"
        assert store.committed_get(b"000250") == b"a"
    assert not (tmp_path / "child" / f"{DB_FILE}-wal").exists()  # released: cleanly closed
    with SqliteStorePartition(tmp_path / "inline", offload=False) as store:
        commit(store)
    child = rows(tmp_path / "child")
    assert child == rows(tmp_path / "inline")
    assert len(child) == 300 - 1 - 50 + 2  # + checkpoint and format


def test_batch_loads_in_the_child_fill_the_cache_with_values_and_absences(tmp_path: Path) -> None:
    with SqliteStorePartition(tmp_path) as store:
        _fill(store, 100, b"v")
        store.flush(1)
        store._cache.clear()
        keys = [b"%06d" % i for i in range(50, 150)]  # half of them absent
        store.prefetch(keys)
        assert store._cache.lookup(b"000060") == b"v"
        assert store._cache.lookup(b"000140") is None  # known absent, not MISS


def test_a_wiped_store_is_never_written_through_the_old_files_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with SqliteStorePartition(tmp_path) as store:
        _fill(store, 100, b"old")
        store.flush(1)  # the child keeps a connection to this file
        monkeypatch.setattr(store_io, "release", lambda file: None)  # and is not told to close it
        store.wipe()
        _fill(store, 80, b"new")
        store.flush(2)
    data = rows(tmp_path)
    assert data[META_CHECKPOINT] == struct.pack(">q", 2)
    assert {v for k, v in data.items() if k.startswith(b"k")} == {b"new"}
    assert sum(k.startswith(b"k") for k in data) == 80


def test_a_child_that_died_after_a_range_deletion_makes_the_cache_forget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with SqliteStorePartition(tmp_path) as store:
        _fill(store, 100, b"v")
        store.flush(1)
        store.prefetch([b"%06d" % i for i in range(100)])
        real = _Child._exchange
        deaths = []

        def dies_after_answering(self: _Child, request: tuple[Any, ...]) -> Any:
            answer = real(self, request)
            if request[0] == "apply" and not deaths:
                deaths.append(request)
                raise RestoreChildGoneError("killed after COMMIT, before the answer")
            return answer

        monkeypatch.setattr(_Child, "_exchange", dies_after_answering)
        store.delete_range(b"000000", b"000050")
        _fill(store, 70, b"w")  # rows 0-69 come back with w
        store.flush(2)
        assert deaths
        assert store._cache.lookup(b"000080") is MISS  # forgotten: cannot tell what went
        assert store.committed_get(b"000010") == b"w"
        assert store.committed_get(b"000080") == b"v"
    assert sum(k.startswith(b"k") for k in rows(tmp_path)) == 100


def test_no_children_when_configured_so(tmp_path: Path) -> None:
    store_io.configure(0)
    try:
        with SqliteStorePartition(tmp_path) as store:
            assert not store._db.offload
    finally:
        store_io.configure(None)
    with SqliteStorePartition(tmp_path) as store:
        assert store._db.offload
