"""Store layouts on real SQLite files: recorded with the rows, adopted by a store that has none,
and a store laid out for another definition of its table wiped and rebuilt from the changelog
(docs/architecture.md, *State*, *Layout changes*)."""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.structs import TopicPartition

from onceflow import App, Tumbling
from onceflow.errors import ConfigurationError
from onceflow.runtime.layout import WindowsFrom, describe_change, encode
from onceflow.runtime.metrics import Metrics
from onceflow.runtime.stores import TaskStores, open_in_sync
from onceflow.settings import Settings
from onceflow.state.sqlite.partition import open_store
from onceflow.state.windowed import WindowedStorePartition, changelog_key
from onceflow.tables import WindowedTable

APP_ID = "layout-test"
ONE = (1).to_bytes(8, "big")
FIVE_MIN = 300_000
# A window far from segment 0, so that the segment id differs between the two layouts.
START = 7 * 600_000


def windowed_app(minutes: int = 5, retention: timedelta | None = None) -> App:
    app = App(APP_ID)
    source = app.topic("in", key_serde="str", value_serde="str")
    app.windowed_table(
        "counts", window=Tumbling(minutes=minutes), default=0, value_serde="int64",
        retention=retention,
    )  # fmt: skip
    app.table("totals", default=0, value_serde="int64")

    @app.handler(source)
    async def handle(ctx: Any, key: str, value: str) -> None: ...

    return app


def counts(app: App) -> WindowedTable[Any, Any]:
    table = app.tables["counts"]
    assert isinstance(table, WindowedTable)
    return table


def store_dir(tmp_path: Path) -> Path:
    return tmp_path / APP_ID / "counts" / "0"


def open_for(path: Path, table: WindowedTable[Any, Any]) -> tuple[WindowedStorePartition, Any]:
    opened = open_in_sync(path, cache_bytes=2**20, page_cache_mib=1, layout=table.layout())
    windowed = WindowedStorePartition(opened.store, segment_interval_ms=table.segment_interval_ms)
    return windowed, opened.wiped_because


def seed(path: Path, table: WindowedTable[Any, Any], *, checkpoint: int = 41) -> None:
    """A closed store holding window START of ``alice`` = 1, laid out for ``table``."""
    store, reason = open_for(path, table)
    assert reason is None
    store.put(b"alice", START, ONE)
    store.flush(checkpoint)
    store.close()


def recorded_layout(path: Path) -> bytes | None:
    store, _ = open_store(path)
    try:
        return store.layout
    finally:
        store.close()


def test_tables_describe_their_layout() -> None:
    app = windowed_app()
    assert app.tables["totals"].layout() == {"kind": "table"}
    assert counts(app).layout() == {
        "kind": "windowed",
        "window_size_ms": FIVE_MIN,
        "window_advance_ms": FIVE_MIN,
        "retention_ms": FIVE_MIN,
        "segment_interval_ms": FIVE_MIN,
    }


def test_a_change_is_described_field_by_field() -> None:
    old, new = counts(windowed_app(5)).layout(), counts(windowed_app(10)).layout()
    assert describe_change(old, new) == (
        "window size 300000 -> 600000 ms, window advance 300000 -> 600000 ms, "
        "retention 300000 -> 600000 ms, segment interval 300000 -> 600000 ms"
    )
    assert describe_change({"kind": "table"}, {"kind": "table", "ttl_ms": 5}) == "ttl none -> 5 ms"


def test_the_layout_is_recorded_with_the_first_rows(tmp_path: Path) -> None:
    path, table = store_dir(tmp_path), counts(windowed_app())
    store, _ = open_for(path, table)
    store.close()
    assert recorded_layout(path) is None  # nothing written: nothing laid out
    seed(path, table)
    assert recorded_layout(path) == encode(table.layout())


def test_the_same_layout_keeps_the_store(tmp_path: Path) -> None:
    path, table = store_dir(tmp_path), counts(windowed_app())
    seed(path, table)
    store, reason = open_for(path, table)
    try:
        assert reason is None and store.checkpoint == 41
        assert store.get(b"alice", START) == ONE
    finally:
        store.close()


def test_a_store_without_a_layout_adopts_the_current_one(tmp_path: Path) -> None:
    # Written by the version before layouts: kept as it is, and the layout written at once
    # (with the unchanged checkpoint), so that a later change is seen.
    path, table = store_dir(tmp_path), counts(windowed_app())
    plain, _ = open_store(path)
    WindowedStorePartition(plain, segment_interval_ms=FIVE_MIN).put(b"alice", START, ONE)
    plain.flush(41)
    plain.close()
    store, reason = open_for(path, table)
    try:
        assert reason is None and store.checkpoint == 41
        assert store.get(b"alice", START) == ONE
    finally:
        store.close()
    assert recorded_layout(path) == encode(table.layout())
    store, reason = open_for(path, counts(windowed_app(10)))  # now a change shows
    store.close()
    assert reason is not None and "window size 300000 -> 600000 ms" in reason


def test_a_store_without_a_layout_whose_rows_sit_under_other_segments_is_rebuilt(
    tmp_path: Path,
) -> None:
    # Upgraded and redefined in one restart: the segment interval shows in the first row.
    path = store_dir(tmp_path)
    plain, _ = open_store(path)
    WindowedStorePartition(plain, segment_interval_ms=FIVE_MIN).put(b"alice", START, ONE)
    plain.flush(41)
    plain.close()
    store, reason = open_for(path, counts(windowed_app(10)))
    try:
        assert reason == (
            "its rows, written without a recorded layout, are not laid out for segment interval "
            "600000 ms: rebuilding the store from its changelog"
        )
        assert store.checkpoint is None
    finally:
        store.close()


def test_a_changed_layout_wipes_the_store_and_the_rebuild_records_the_new_one(
    tmp_path: Path,
) -> None:
    path, old, new = store_dir(tmp_path), counts(windowed_app(5)), counts(windowed_app(10))
    seed(path, old)
    # What the old code did: the row sits under the old segment; the new layout misses it.
    plain, _ = open_store(path)
    assert plain.checkpoint == 41
    assert WindowedStorePartition(plain, segment_interval_ms=600_000).get(b"alice", START) is None
    plain.close()
    store, reason = open_for(path, new)
    try:
        assert reason == (
            "table layout changed (window size 300000 -> 600000 ms, window advance 300000 -> "
            "600000 ms, retention 300000 -> 600000 ms, segment interval 300000 -> 600000 ms): "
            "rebuilding the store from its changelog"
        )
        assert store.checkpoint is None and store.get(b"alice", START) is None
        store.restore_batch([(changelog_key(b"alice", START), ONE)], 41)  # the changelog
        assert store.get(b"alice", START) == ONE
    finally:
        store.close()
    assert recorded_layout(path) == encode(new.layout())
    store, reason = open_for(path, new)
    store.close()
    assert reason is None


def test_a_layout_not_yet_written_is_not_recorded(tmp_path: Path) -> None:
    # The layout goes with the rows: after a wipe and no restore, the empty store records none
    # (and adopts whatever comes next, which is right: it holds nothing).
    path = store_dir(tmp_path)
    seed(path, counts(windowed_app(5)))
    store, reason = open_for(path, counts(windowed_app(10)))
    store.close()
    assert reason is not None and recorded_layout(path) is None


def test_another_kind_of_table_is_refused(tmp_path: Path) -> None:
    path = store_dir(tmp_path)
    seed(path, counts(windowed_app()))
    with pytest.raises(ConfigurationError, match="table 'counts' was declared as kind 'windowed'"):
        open_in_sync(path, cache_bytes=2**20, page_cache_mib=1, layout={"kind": "table"})
    store, _ = open_store(path)  # the lock was released, the store left as it was
    try:
        assert store.checkpoint == 41
    finally:
        store.close()


def test_a_restore_leaves_out_windows_the_retention_expired(tmp_path: Path) -> None:
    store, _ = open_for(store_dir(tmp_path), counts(windowed_app()))
    try:
        records = [(changelog_key(b"k", start), ONE) for start in (0, FIVE_MIN, 2 * FIVE_MIN)]
        WindowsFrom(store, min_start=FIVE_MIN).restore_batch(records, 2)
        assert [store.get(b"k", s) for s in (0, FIVE_MIN, 2 * FIVE_MIN)] == [None, ONE, ONE]
        assert store.checkpoint == 2
    finally:
        store.close()


class EmptyChangelog:
    """The restore consumer of an empty changelog partition (offsets [0, 0))."""

    def __init__(self) -> None:
        cluster = SimpleNamespace(partitions_for_topic=lambda topic: {0})

        async def fetch_all_metadata() -> Any:
            return cluster

        self._client = SimpleNamespace(fetch_all_metadata=fetch_all_metadata)

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def assign(self, tps: Any) -> None: ...

    async def beginning_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return dict.fromkeys(tps, 0)

    end_offsets = beginning_offsets


async def test_a_task_logs_one_line_naming_the_table_partition_and_change(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    seed(store_dir(tmp_path), counts(windowed_app(5)), checkpoint=0)
    app = windowed_app(5, retention=timedelta(hours=1))
    stores = TaskStores(app.tables_of("0"), partition=0)
    with caplog.at_level(logging.INFO):
        await stores.open_and_restore(
            counts(app),
            app_id=APP_ID,
            settings=Settings(state_dir=tmp_path),
            metrics=Metrics(APP_ID, eos=True),
            consumer_factory=lambda **_: EmptyChangelog(),
        )
    try:
        reason = (
            "table layout changed (retention 300000 -> 3600000 ms, segment interval 300000 -> "
            "1800000 ms): rebuilding the store from its changelog"
        )
        warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert warnings == [f"store counts partition 0 wiped: {reason}"]
        assert stores.restores["counts"].wiped_because == reason
    finally:
        await stores.close()
