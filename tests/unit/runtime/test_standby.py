"""A standby task's copy on real SQLite files: records applied once with their checkpoint, the
position past transaction markers, lag, and a windowed table's old windows expired as the active
would (docs/architecture.md, *High availability*)."""

from __future__ import annotations

import concurrent.futures
from datetime import timedelta
from pathlib import Path
from typing import Any, NamedTuple

from aiokafka.structs import TopicPartition

from onceflow import App, Tumbling
from onceflow.runtime.local_state import process_id, stored_positions
from onceflow.runtime.standby import StandbyTask, changelog_tables
from onceflow.state.sqlite.partition import open_store
from onceflow.state.windowed import WindowedStorePartition, changelog_key
from onceflow.tables import WindowedTable

APP_ID = "standby-test"
MINUTE = 60_000


class Rec(NamedTuple):
    offset: int
    key: bytes
    value: bytes | None


def _app() -> App:
    app = App(APP_ID)
    source = app.topic("in", key_serde="str", value_serde="str")
    app.table("totals", default=0, value_serde="int64")
    app.windowed_table(
        "counts", window=Tumbling(minutes=1), default=0, value_serde="int64",
        retention=timedelta(minutes=10),
    )  # fmt: skip
    app.source_table("prices", name="prices", value_serde="int64")

    @app.handler(source)
    async def handle(ctx: Any, key: str, value: str) -> None: ...

    return app


def _standby(tmp_path: Path, app: App, name: str) -> tuple[StandbyTask, TopicPartition, Any]:
    """A standby of task 0_0 keeping only ``name``, its store opened on ``tmp_path``."""
    table = app.tables[name]
    standby = StandbyTask(("0", 0), [table])
    store, _ = open_store(tmp_path / APP_ID / name / "0", cache_bytes=2**20, page_cache_mib=1)
    target = standby.stores.attach(table, store)
    tp = TopicPartition(table.changelog_topic, 0)
    standby.targets[tp] = target  # type: ignore[assignment]
    standby.table_of[tp] = name
    standby.positions[tp] = 0
    standby.ends[tp] = 0
    if isinstance(table, WindowedTable):
        standby.retention_ms[tp] = table.retention_ms
    return standby, tp, target


def test_the_standby_keeps_tables_with_a_changelog_only() -> None:
    assert [t.name for t in changelog_tables(_app(), "0")] == ["totals", "counts"]


async def test_records_apply_once_with_their_checkpoint(tmp_path: Path) -> None:
    standby, tp, store = _standby(tmp_path, _app(), "totals")
    one, two = (1).to_bytes(8, "big"), (2).to_bytes(8, "big")
    assert await standby.apply(tp, [Rec(0, b"a", one), Rec(1, b"b", one)], end=10) == 2
    # A refetch from an older position (a reassignment) applies nothing twice.
    assert await standby.apply(tp, [Rec(1, b"b", two), Rec(2, b"a", two)], end=10) == 1
    assert store.checkpoint == 2 and store.committed_get(b"a") == two
    assert store.committed_get(b"b") == one
    assert standby.lag == 7 and standby.table_lag("totals") == 7
    standby.follow(tp, 10, end=10)  # past a commit marker: nothing to apply, caught up
    assert standby.lag == 0 and standby.position == 10
    await standby.close()


async def test_a_windowed_copy_expires_old_windows_as_the_active_would(tmp_path: Path) -> None:
    app = _app()
    standby, tp, store = _standby(tmp_path, app, "counts")
    assert isinstance(store, WindowedStorePartition)
    one = (1).to_bytes(8, "big")
    old = [Rec(i, changelog_key(b"k", i * MINUTE), one) for i in range(5)]
    await standby.apply(tp, old, end=100)
    assert [s for s, _ in store.fetch(b"k", 0, 10**12, committed=True)] == [
        i * MINUTE for i in range(5)
    ]
    # Stream time reaches at least minute 30: retention (10 min) ends minutes 0-4, whose
    # segment lies wholly before the bound, and a late write to minute 2 is not applied.
    late = [
        Rec(5, changelog_key(b"k", 30 * MINUTE), one),
        Rec(6, changelog_key(b"j", 2 * MINUTE), one),
    ]
    await standby.apply(tp, late, end=100)
    await standby.apply(tp, [Rec(7, changelog_key(b"j", 2 * MINUTE), one)], end=100)
    assert [s for s, _ in store.fetch(b"k", 0, 10**12, committed=True)] == [30 * MINUTE]
    assert store.fetch(b"j", 0, 10**12, committed=True) == []
    assert store.checkpoint == 7
    await standby.close()


def test_positions_on_disk_and_the_process_id(tmp_path: Path) -> None:
    app = _app()
    root = tmp_path / APP_ID
    store, _ = open_store(root / "totals" / "3", cache_bytes=2**20, page_cache_mib=1)
    store.put(b"a", b"1")
    store.flush(41)
    store.close()
    found = stored_positions(app, root, {"0": 6}, {})
    assert found == {("0", 3): 42}  # checkpoint + 1; the windowed table has no store: 0
    assert stored_positions(app, root, {"0": 6}, {}, skip={("0", 3)}) == {}
    # An open store (another worker on this host) is that worker's to report.
    again, _ = open_store(root / "totals" / "3", cache_bytes=2**20, page_cache_mib=1)
    assert stored_positions(app, root, {"0": 6}, {}) == {}
    again.close()
    assert process_id(root) == process_id(root) != process_id(tmp_path / "elsewhere")


def test_workers_starting_at_once_on_one_directory_agree_on_its_process_id(
    tmp_path: Path,
) -> None:
    root = tmp_path / "app"
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(lambda _: process_id(root), range(32)))
    assert len(set(ids)) == 1
    assert sorted(p.name for p in root.iterdir()) == ["onceflow.process"]  # no temp left
