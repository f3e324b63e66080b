"""The runtime side of tables fed by a topic, without a broker: the checkpoint a commit records
(the offset of the last table record consumed), a restore that applies exactly what processing
applies, and a store ahead of the committed offset wiped before its restore."""

from __future__ import annotations

from aiokafka.structs import TopicPartition

from onceflow import App
from onceflow.runtime.restore import RestoreProgress, _wipe_ahead
from onceflow.runtime.source_tables import SourceRestore, TableFeed, source_checkpoints
from onceflow.state.memory import InMemoryStorePartition


def _app() -> App:
    app = App("feed")
    app.topic("orders")
    app.table("plain")
    app.source_table("customers", key_serde="str", value_serde="json")
    return app


def test_checkpoints_are_the_last_consumed_offsets_of_source_tables_only() -> None:
    tables = list(_app().tables.values())
    positions = {
        TopicPartition("customers", 2): 41,
        TopicPartition("orders", 2): 9,
        TopicPartition("feed-plain-changelog", 2): 5,
    }
    assert source_checkpoints(tables, 2, positions) == {"customers": 40}
    assert source_checkpoints(tables, 2, {TopicPartition("customers", 2): 0}) == {}
    assert source_checkpoints(tables, 1, positions) == {}


def test_restores_stop_at_the_committed_offset_of_source_tables_only() -> None:
    app = _app()
    feed = TableFeed(app.tables.values())
    committed = {TopicPartition("customers", 0): 17}
    assert "customers" in feed and "orders" not in feed
    assert feed.until(app.tables["customers"], committed, 0) == 17
    assert feed.until(app.tables["customers"], committed, 1) == 0  # nothing committed: none
    assert feed.until(app.tables["plain"], committed, 0) is None  # to the changelog's end


def test_a_restore_applies_what_processing_applies() -> None:
    store = InMemoryStorePartition("customers/0")
    restore = SourceRestore(_app().tables["customers"], store)
    restore.restore_batch(
        [
            (b"a", b'{"n": 1}'),
            (None, b'{"n": 2}'),  # a null key: never applied
            (b"b", b"{bad json"),  # processing dead-letters it
            (b"c", b'{"n": 3}'),
            (b"c", None),  # a tombstone deletes
        ],
        4,
    )
    assert store.checkpoint == 4
    assert [store.committed_get(k) for k in (b"a", b"b", b"c")] == [b'{"n": 1}', None, None]
    assert restore.skipped == 1


def test_a_store_ahead_of_the_committed_offset_is_wiped() -> None:
    store = InMemoryStorePartition("customers/0")
    store.restore_batch([(b"a", b"1")], 9)
    progress = RestoreProgress("customers", 0)
    _wipe_ahead(store, progress, until=12, end=20)  # behind: kept
    assert store.checkpoint == 9 and progress.wiped_because is None
    _wipe_ahead(store, progress, until=5, end=9)  # beyond the log end: the restore refuses it
    assert store.checkpoint == 9
    _wipe_ahead(store, progress, until=9, end=20)  # at the committed offset: never committed
    assert store.checkpoint is None and store.committed_get(b"a") is None
    assert "committed offset 9" in (progress.wiped_because or "")
