"""SQLite-only behaviour: durability across processes, corruption, locking, never pickling."""

from __future__ import annotations

import os
import pickle
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from onceflow.errors import StateError, StoreCorruptError, StoreLockedError
from onceflow.state.sqlite import file as sqlite_file
from onceflow.state.sqlite.file import DB_FILE
from onceflow.state.sqlite.partition import SqliteStorePartition, open_store

ROOT = Path(__file__).resolve().parents[3]


def run_env() -> dict[str, str]:
    # The caller's PYTHONPATH first: in a work tree it points at the tree's import view, where
    # the editable install would import the main checkout's code.
    path = os.pathsep.join(filter(None, (os.environ.get("PYTHONPATH"), str(ROOT))))
    return {**os.environ, "PYTHONPATH": path}


def run_python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        env=run_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def raw_rows(path: Path) -> dict[bytes, bytes]:
    with sqlite3.connect(path / DB_FILE) as conn:
        return {bytes(k): bytes(v) for k, v in conn.execute("SELECT key, value FROM kv")}


def test_reopen_sees_flushed_data_and_checkpoint(tmp_path: Path) -> None:
    with SqliteStorePartition(tmp_path) as store:
        store.put(b"a", b"1")
        store.flush(11)
        store.put(b"b", b"unflushed")
    with SqliteStorePartition(tmp_path) as store:
        assert store.checkpoint == 11
        assert store.get(b"a") == b"1"
        assert store.get(b"b") is None
    assert not (tmp_path / f"{DB_FILE}-wal").exists()  # clean close removes the WAL


def test_crash_with_pending_buffer_loses_neither_data_nor_checkpoint_order(
    tmp_path: Path,
) -> None:
    result = run_python(
        """
        import os, sys
        from pathlib import Path
        from onceflow.state.sqlite.partition import SqliteStorePartition
        store = SqliteStorePartition(Path(sys.argv[1]))
        store.put(b"a", b"1")
        store.flush(5)
        store.put(b"a", b"2")
        store.put(b"b", b"2")
        store.seal()
        os._exit(1)  # dies with sealed, unflushed writes
        """,
        str(tmp_path),
    )
    assert result.returncode == 1, result.stderr
    with SqliteStorePartition(tmp_path) as store:
        assert store.checkpoint == 5
        assert (store.get(b"a"), store.get(b"b")) == (b"1", None)


def test_crash_inside_flush_before_commit_applies_nothing(tmp_path: Path) -> None:
    # Invariant 2: the checkpoint is written in the same transaction as the data, so a crash
    # after every statement ran but before COMMIT leaves both at their previous state.
    result = run_python(
        """
        import os, sys
        from pathlib import Path
        from onceflow.state.sqlite.partition import SqliteStorePartition
        store = SqliteStorePartition(Path(sys.argv[1]), offload=False)  # the in-process writer
        store.put(b"a", b"1")
        store.flush(5)
        class CrashAtCommit:
            def __init__(self, conn):
                self._conn = conn
            def __getattr__(self, name):
                return getattr(self._conn, name)
            def execute(self, sql, *args):
                if sql == "COMMIT":
                    os._exit(1)
                return self._conn.execute(sql, *args)
        store._db._writer = CrashAtCommit(store._db._writer)
        for i in range(2000):
            store.put(b"k%d" % i, b"x" * 100)
        store.put(b"a", b"2")
        store.flush(6)
        """,
        str(tmp_path),
    )
    assert result.returncode == 1, result.stderr
    assert (tmp_path / f"{DB_FILE}-wal").exists()
    with SqliteStorePartition(tmp_path) as store:  # runs quick_check: unclean shutdown
        assert store.checkpoint == 5
        assert store.get(b"a") == b"1"
        assert store.range_items(b"k", b"l") == []


def test_failed_flush_rolls_back_and_keeps_the_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SqliteStorePartition(tmp_path, offload=False)  # the in-process writer
    store.put(b"a", b"1")
    store.flush(1)
    real = sqlite_file._upsert_sql
    calls = []

    def fail_second_chunk(rows: int) -> str:
        calls.append(rows)
        return "INSERT INTO no_such_table VALUES (1)" if len(calls) == 2 else real(rows)

    monkeypatch.setattr(sqlite_file, "_upsert_sql", fail_second_chunk)
    for i in range(700):  # two chunks of rows
        store.put(b"k%04d" % i, b"v")
    with pytest.raises(StateError, match="no_such_table"):
        store.flush(2)
    assert store.checkpoint == 1
    assert raw_rows(tmp_path).keys() == {b"ka", b"mcheckpoint", b"mformat"}
    assert store.committed_get(b"k0000") == b"v"  # still sealed: committed in Kafka
    monkeypatch.setattr(sqlite_file, "_upsert_sql", real)
    store.flush(2)  # the retry writes the kept batch
    store.close()
    with SqliteStorePartition(tmp_path) as reopened:
        assert reopened.checkpoint == 2
        assert len(reopened.range_items(b"k", b"l")) == 700


def test_garbage_file_is_corrupt_and_open_store_wipes_it(tmp_path: Path) -> None:
    tmp_path.joinpath(DB_FILE).write_bytes(b"definitely not SQLite " * 200)
    with pytest.raises(StoreCorruptError) as caught:
        SqliteStorePartition(tmp_path)
    message = str(caught.value)
    assert str(tmp_path / DB_FILE) in message
    assert "wiped and restored from the changelog" in message
    store, reason = open_store(tmp_path)  # the failed open released the lock
    with store:
        assert reason is not None and "not a database" in reason
        assert store.checkpoint is None
        store.put(b"a", b"1")
        store.flush(0)
    store, reason = open_store(tmp_path)
    with store:
        assert reason is None
        assert store.get(b"a") == b"1"


def test_truncated_database_fails_quick_check(tmp_path: Path) -> None:
    with SqliteStorePartition(tmp_path) as store:
        for i in range(3000):
            store.put(b"%06d" % i, os.urandom(100))
        store.flush(1)
    file = tmp_path / DB_FILE
    with file.open("r+b") as handle:
        handle.seek(8192)
        handle.write(os.urandom(4096))  # a b-tree page overwritten with noise
    with pytest.raises(StoreCorruptError, match="wiped and restored"):
        SqliteStorePartition(tmp_path, integrity="always")


def test_a_wal_left_without_its_database_is_not_replayed(tmp_path: Path) -> None:
    result = run_python(
        """
        import os, sys
        from pathlib import Path
        from onceflow.state.sqlite.partition import SqliteStorePartition
        store = SqliteStorePartition(Path(sys.argv[1]))
        store.put(b"a", b"1")
        store.flush(5)
        os._exit(1)  # leaves data.sqlite-wal behind
        """,
        str(tmp_path),
    )
    assert result.returncode == 1, result.stderr
    (tmp_path / DB_FILE).unlink()  # an operator deletes "the database"
    with SqliteStorePartition(tmp_path) as store:
        assert store.checkpoint is None
        assert store.get(b"a") is None


def test_unknown_layout_version_is_treated_as_corrupt(tmp_path: Path) -> None:
    with SqliteStorePartition(tmp_path) as store:
        store.flush(1)
    with sqlite3.connect(tmp_path / DB_FILE) as conn:
        conn.execute("UPDATE kv SET value = ? WHERE key = ?", (b"99", b"mformat"))
    with pytest.raises(StoreCorruptError, match="layout version"):
        SqliteStorePartition(tmp_path)


def test_store_locked_by_another_process(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from pathlib import Path; "
         "from onceflow.state.sqlite.lock import TaskLock; "
         "lock = TaskLock(Path(sys.argv[1])); lock.acquire(); print('locked', "
         "flush=True); sys.stdin.read()", str(tmp_path)],
        env=run_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(StoreLockedError) as caught:
            SqliteStorePartition(tmp_path)
        message = str(caught.value)
        assert str(tmp_path) in message
        assert "another onceflow worker on this host" in message
        assert f"pid {holder.pid}" in message
        with pytest.raises(StoreLockedError):
            open_store(tmp_path, lock_timeout_s=0.2)
    finally:
        assert holder.stdin is not None
        holder.stdin.close()  # the holder exits, the kernel releases its lock
        holder.wait(timeout=30)
        if holder.stdout is not None:
            holder.stdout.close()
    store, _ = open_store(tmp_path, lock_timeout_s=5)
    store.close()


def test_one_process_cannot_open_a_store_twice(tmp_path: Path) -> None:
    with SqliteStorePartition(tmp_path), pytest.raises(StoreLockedError):
        SqliteStorePartition(tmp_path)
    SqliteStorePartition(tmp_path).close()  # close() released the lock


class _Marker:
    """Unpickling this creates a file: proof that something called pickle.loads."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (Path(self.path).touch, ())  # type: ignore[return-value]


def test_values_and_keys_are_never_pickled(tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    value = pickle.dumps(_Marker(marker))
    key = pickle.dumps(("a", 1))
    store_dir = tmp_path / "store"
    with SqliteStorePartition(store_dir) as store:
        store.put(key, value)
        store.flush(1)
    with SqliteStorePartition(store_dir) as store:
        assert store.get(key) == value
        assert store.range_items(b"", b"\xff") == [(key, value)]
        store.restore_batch([(b"other", value)], 2)
        assert store.committed_get(b"other") == value
    assert not marker.exists()
    rows = raw_rows(store_dir)
    assert rows[b"k" + key] == value  # raw bytes on disk, under the data namespace
    assert rows[b"mcheckpoint"] == (2).to_bytes(8, "big", signed=True)
    with sqlite3.connect(store_dir / DB_FILE) as conn:
        assert {t for (t,) in conn.execute("SELECT DISTINCT typeof(value) FROM kv")} == {"blob"}


def test_range_reads_use_the_primary_key_index(tmp_path: Path) -> None:
    with SqliteStorePartition(tmp_path) as store:
        store.flush(0)
    with sqlite3.connect(tmp_path / DB_FILE) as conn:
        plan = conn.execute(
            "EXPLAIN QUERY PLAN SELECT key, value FROM kv WHERE key >= ? AND key < ? ORDER BY key",
            (b"ka", b"kb"),
        ).fetchall()
    assert "USING INDEX" in plan[0][-1] and "SCAN" not in plan[0][-1]


def test_cache_remembers_absent_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with SqliteStorePartition(tmp_path) as store:
        reads: list[bytes] = []
        real_get = store._db.get
        monkeypatch.setattr(store._db, "get", lambda key: reads.append(key) or real_get(key))
        assert store.get(b"missing") is None
        assert store.get(b"missing") is None
        assert reads == [b"kmissing"]
        store.put(b"missing", b"now")
        store.flush(1)
        assert store.committed_get(b"missing") == b"now"  # the flush refreshed the cache
        assert reads == [b"kmissing"]


def test_prefetch_loads_the_cache_in_one_round_trip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with SqliteStorePartition(tmp_path) as store:
        keys = [b"%04d" % i for i in range(1500)]
        for key in keys[::2]:
            store.put(key, key)
        store.flush(1)
        store._cache.clear()
        queries: list[int] = []
        real_get_many = store._db.get_many
        monkeypatch.setattr(
            store._db, "get_many", lambda ks: queries.append(len(ks)) or real_get_many(ks)
        )
        store.prefetch(keys)
        assert queries == [1500]  # one call; SqliteFile splits it into 999-key statements
        monkeypatch.setattr(store._db, "get", lambda key: pytest.fail("cache miss"))
        assert [store.get(k) for k in keys] == [
            k if i % 2 == 0 else None for i, k in enumerate(keys)
        ]
        store.prefetch(keys)  # all cached: no query
        assert queries == [1500]


def _committed_uncached(path: Path) -> SqliteStorePartition:
    """A store with ``a -> old`` in SQLite and nothing in its read cache."""
    store = SqliteStorePartition(path)
    store.put(b"a", b"old")
    store.flush(1)
    store._cache.clear()
    return store


def test_a_read_racing_a_flush_does_not_cache_a_stale_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _committed_uncached(tmp_path)
    real_get = store._db.get

    def read_then_flush_commits(key: bytes) -> bytes | None:
        value = real_get(key)  # reads "old" ...
        store.put(b"a", b"new")  # ... then a flush commits before the reader caches it
        thread = threading.Thread(target=store.flush, args=(2,))
        thread.start()
        thread.join()
        return value

    monkeypatch.setattr(store._db, "get", read_then_flush_commits)
    assert store.committed_get(b"a") == b"old"
    monkeypatch.setattr(store._db, "get", real_get)
    assert store.committed_get(b"a") == b"new"
    store.close()


def test_queries_during_a_flush_in_another_thread_see_old_or_new_values(tmp_path: Path) -> None:
    with SqliteStorePartition(tmp_path, cache_size=0) as store:
        keys = [b"%05d" % i for i in range(3000)]
        for key in keys:
            store.put(key, b"old")
        store.flush(1)
        for key in keys:
            store.put(key, b"new")
        store.seal()
        store.put(b"uncommitted", b"x")
        flusher = threading.Thread(target=store.flush, args=(2,), kwargs={"seal": False})
        flusher.start()
        seen = set()
        while flusher.is_alive():
            for key in keys[::300]:
                seen.add(store.committed_get(key))
            assert store.committed_get(b"uncommitted") is None
        flusher.join()
        assert seen <= {b"new"}  # sealed values are committed: never a mix with "old"
        assert {value for _, value in store.range_items(b"0", b"9")} == {b"new"}
        assert store.get(b"uncommitted") == b"x"


def test_wipe_keeps_the_lock_and_removes_the_files(tmp_path: Path) -> None:
    with SqliteStorePartition(tmp_path) as store:
        store.put(b"a", b"1")
        store.flush(3)
        store.wipe()
        with pytest.raises(StoreLockedError):
            SqliteStorePartition(tmp_path)
        assert store.checkpoint is None
        assert raw_rows(tmp_path).keys() == {b"mformat"}
    with SqliteStorePartition(tmp_path) as store:
        assert store.checkpoint is None


def test_lock_passed_by_the_caller_is_kept_on_failure(tmp_path: Path) -> None:
    from onceflow.state.sqlite.lock import TaskLock

    lock = TaskLock(tmp_path)
    lock.acquire()
    tmp_path.joinpath(DB_FILE).write_bytes(b"x" * 4096)
    with pytest.raises(StoreCorruptError):
        SqliteStorePartition(tmp_path, lock=lock)
    assert lock.locked
    tmp_path.joinpath(DB_FILE).unlink()
    with SqliteStorePartition(tmp_path, lock=lock):
        pass
    assert not lock.locked  # the store took it over and released it on close


def test_a_prefetch_racing_a_flush_keeps_the_keys_the_flush_did_not_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Flushes commit in a worker thread while the next batch's keys are prefetched in another:
    # voiding the whole prefetch on every overlapping flush sent most reads to SQLite.
    store = SqliteStorePartition(tmp_path)
    keys = [b"%03d" % i for i in range(100)]
    for key in keys:
        store.put(key, b"old")
    store.flush(1)
    store._cache.clear()
    real_get_many = store._db.get_many

    def read_then_flush_commits(raw: list[bytes]) -> dict[bytes, bytes]:
        found = real_get_many(raw)  # reads "old" everywhere ...
        store.put(keys[0], b"new")  # ... then a flush of one key commits before it caches
        store.delete(keys[1])
        thread = threading.Thread(target=store.flush, args=(2,))
        thread.start()
        thread.join()
        return found

    monkeypatch.setattr(store._db, "get_many", read_then_flush_commits)
    store.prefetch(keys)
    monkeypatch.setattr(store._db, "get", lambda key: pytest.fail(f"cache miss: {key!r}"))
    assert store.committed_get(keys[0]) == b"new"  # the flush's value, not the stale read
    assert store.committed_get(keys[1]) is None
    assert [store.committed_get(k) for k in keys[2:]] == [b"old"] * 98  # all prefetched
    store.close()


def test_a_read_racing_a_wipe_caches_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _committed_uncached(tmp_path)
    real_get_many = store._db.get_many

    def read_then_wipe(raw: list[bytes]) -> dict[bytes, bytes]:
        found = real_get_many(raw)
        store.wipe()
        return found

    monkeypatch.setattr(store._db, "get_many", read_then_wipe)
    store.prefetch([b"a"])
    monkeypatch.setattr(store._db, "get_many", real_get_many)
    assert store.committed_get(b"a") is None  # wiped: the read's "old" was not cached
    store.close()
