"""The global table store: rows and per-partition positions commit together, survive a reopen,
and each worker process on a host takes its own slot."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from onceflow.errors import StateError
from onceflow.state.sqlite.global_store import (
    META_POSITIONS,
    GlobalStorePartition,
    open_global_store,
)


def test_restore_batch_records_rows_and_positions_together(tmp_path: Path) -> None:
    store, wiped = open_global_store(tmp_path)
    assert wiped is None and store.positions == {}
    store.set_positions({0: 3, 1: 2})
    store.restore_batch([(b"a", b"1"), (b"b", b"2"), (b"a", b"3"), (b"c", None)], 5)
    assert store.positions == {0: 3, 1: 2}
    store.close()
    reopened, _ = open_global_store(tmp_path)
    assert reopened.positions == {0: 3, 1: 2}
    assert (reopened.get(b"a"), reopened.get(b"b"), reopened.get(b"c")) == (b"3", b"2", None)
    reopened.close()


def test_flush_records_positions_of_the_sealed_rows_only(tmp_path: Path) -> None:
    store, _ = open_global_store(tmp_path)
    store.put(b"k", b"v1")
    store.seal()
    store.set_positions({0: 1})
    store.put(b"k2", b"later")  # after the seal: not part of this flush
    store.flush(1, seal=False)
    assert store.positions == {0: 1}
    store.close()  # drops the unflushed b"k2", as a crash would
    reopened, _ = open_global_store(tmp_path)
    assert reopened.positions == {0: 1}
    assert reopened.get(b"k") == b"v1" and reopened.get(b"k2") is None
    reopened.close()


def test_positions_only_change_with_a_write(tmp_path: Path) -> None:
    store, _ = open_global_store(tmp_path)
    store.set_positions({0: 1})
    store.restore_batch([(b"a", b"1")], 1)
    store.set_positions({0: 9})
    with pytest.raises(ValueError):
        store.restore_batch([(b"a", b"2")], -1)
    assert store.positions == {0: 1}
    store.close()


def test_wipe_forgets_positions(tmp_path: Path) -> None:
    store, _ = open_global_store(tmp_path)
    store.set_positions({0: 4})
    store.restore_batch([(b"a", b"1")], 4)
    store.wipe()
    assert store.positions == {} and store.get(b"a") is None
    store.close()
    reopened, _ = open_global_store(tmp_path)
    assert reopened.positions == {}
    reopened.close()


def test_each_open_takes_a_free_slot(tmp_path: Path) -> None:
    first, _ = open_global_store(tmp_path)
    second, _ = open_global_store(tmp_path)
    assert (first.path.name, second.path.name) == ("0", "1")
    first.close()
    third, _ = open_global_store(tmp_path)  # slot 0 is free again: its copy is reused
    assert third.path.name == "0"
    second.close()
    third.close()


def test_all_slots_taken_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("onceflow.state.sqlite.global_store.MAX_SLOTS", 1)
    first, _ = open_global_store(tmp_path)
    with pytest.raises(StateError, match="separate ONCEFLOW_STATE_DIRs"):
        open_global_store(tmp_path)
    first.close()


def test_unreadable_positions_wipe_the_store(tmp_path: Path) -> None:
    store, _ = open_global_store(tmp_path)
    store.set_positions({0: 1})
    store.restore_batch([(b"a", b"1")], 1)
    store.close()
    with sqlite3.connect(tmp_path / "0" / "data.sqlite") as conn:
        conn.execute("UPDATE kv SET value = ? WHERE key = ?", (b"{not json", META_POSITIONS))
    reopened, wiped = open_global_store(tmp_path)
    assert wiped is not None and "unreadable positions" in wiped
    assert reopened.positions == {} and reopened.get(b"a") is None
    assert isinstance(reopened, GlobalStorePartition)
    reopened.close()


def test_big_batches_written_by_the_restore_child_record_positions(tmp_path: Path) -> None:
    store, _ = open_global_store(tmp_path)
    rows = [(b"k%05d" % i, b"v%d" % i) for i in range(2_500)]  # written by a store I/O child
    store.set_positions({0: 1_500, 1: 1_000})
    store.restore_batch(rows, 2_500)
    store.close()
    reopened, _ = open_global_store(tmp_path)
    assert reopened.positions == {0: 1_500, 1: 1_000}
    assert reopened.approximate_size() == 2_500 and reopened.get(b"k02499") == b"v2499"
    reopened.close()
