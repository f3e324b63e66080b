"""The restore writer's child process: it applies a batch and its checkpoint atomically, reports
SQLite errors, is replaced when it dies, and never commits once its parent is gone."""

from __future__ import annotations

import sqlite3
import struct
from pathlib import Path

import pytest

from onceflow.errors import StateError
from onceflow.state.sqlite._restore_child import Applier
from onceflow.state.sqlite.file import _CHILD_LAYOUT, DB_FILE, META_CHECKPOINT, META_TOPIC_ID
from onceflow.state.sqlite.partition import OFFLOAD_MIN_RECORDS, SqliteStorePartition
from onceflow.state.sqlite.restore_writer import RestoreWriter


def rows(path: Path) -> dict[bytes, bytes]:
    with sqlite3.connect(path / DB_FILE) as conn:
        return {bytes(k): bytes(v) for k, v in conn.execute("SELECT key, value FROM kv")}


def big_batch(n: int = OFFLOAD_MIN_RECORDS * 3) -> list[tuple[bytes, bytes | None]]:
    return [(b"%06d" % i, b"v%d" % i) for i in range(n)]


def test_a_big_restore_batch_is_written_by_the_child_like_in_process(tmp_path: Path) -> None:
    batch = [*big_batch(), (b"000007", None)]
    with SqliteStorePartition(tmp_path / "child") as store:
        store.set_changelog_topic_id("UghfcGq0S3-YOhw7sSOVbw")
        store.restore_batch(batch, 99)
    with SqliteStorePartition(tmp_path / "inline", offload_restore=False) as store:
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
    writer = RestoreWriter(_CHILD_LAYOUT)
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
    writer = RestoreWriter(bad)
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
    writer = RestoreWriter(_CHILD_LAYOUT, processes=2)
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
