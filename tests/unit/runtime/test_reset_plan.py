"""What ``onceflow reset`` decides before it acts: its targets, the internal topics it deletes
and keeps, the plan it prints, and the local state step, which needs no broker. The whole reset
against a real broker: tests/integration/test_reset.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from onceflow import App, Context
from onceflow.errors import ConfigurationError
from onceflow.runtime import Clients, Target, parse_datetime, parse_duration, reset_app
from onceflow.runtime.reset import ResetRefusedError, plan_reset, run_reset
from onceflow.runtime.reset_plan import Member, OffsetMove, ResetPlan, internal_to_delete
from onceflow.settings import Settings
from onceflow.state.sqlite.lock import TaskLock


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("PT1H", timedelta(hours=1)),
        ("P1D", timedelta(days=1)),
        ("P1DT12H30M", timedelta(days=1, hours=12, minutes=30)),
        ("PT0.5S", timedelta(milliseconds=500)),
        ("P2W", timedelta(weeks=2)),
        ("pt15m", timedelta(minutes=15)),
    ],
)
def test_iso_durations(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["1h", "P", "PT", "P1Y", "P1M", "P1DT", "-PT1H", ""])
def test_bad_durations_name_the_flag(text: str) -> None:
    with pytest.raises(ConfigurationError, match="--by-duration"):
        parse_duration(text)


def test_datetimes_without_a_zone_are_utc() -> None:
    at = int(datetime(2026, 11, 30, 8, tzinfo=UTC).timestamp() * 1000)
    assert parse_datetime("2026-11-30T08:00:00Z") == at
    assert parse_datetime("2026-11-30T08:00:00") == at
    assert parse_datetime("2026-11-30T09:00:00+01:00") == at
    assert parse_datetime("2026-11-30T08:00:00.250Z") == at + 250
    with pytest.raises(ConfigurationError, match="--to-datetime 'yesterday'"):
        parse_datetime("yesterday")


def test_targets_from_flags() -> None:
    assert Target.of(False, None, None) == Target("earliest")
    assert Target.of(True, None, None) == Target("latest")
    assert Target.of(False, "2026-11-30T08:00:00Z", None).timestamp_ms == parse_datetime(
        "2026-11-30T08:00:00Z"
    )
    hour_ago = Target.of(False, None, "PT1H")
    now_ms = datetime.now(UTC).timestamp() * 1000
    assert hour_ago.kind == "duration"
    assert hour_ago.timestamp_ms is not None
    assert 3_599_000 <= now_ms - hour_ago.timestamp_ms <= 3_700_000
    assert "PT1H before now" in hour_ago.describe()


def make_app() -> App:
    app = App("shop")
    orders = app.topic("orders")
    by_item = app.repartition("by-item")
    app.table("totals", group="items")
    app.source_table("users")
    app.global_table("prices")

    @app.handler(orders)
    async def rekey(ctx: Context, key: bytes, value: bytes) -> None:
        pass

    @app.handler(by_item, group="items")
    async def count(ctx: Context, key: bytes, value: bytes) -> None:
        pass

    return app


DECLARED = ["shop-by-item-repartition", "shop-totals-changelog", "shop-dlq"]


def test_internal_topics_deleted_and_kept() -> None:
    app = make_app()
    existing = {
        *DECLARED,
        "shop-old-changelog",  # a table the app no longer declares
        "shop-v2-totals-changelog",  # app shop-v2's
        "orders",
        "users",
        "unrelated-changelog",
    }
    delete, keep = internal_to_delete(app, DECLARED, existing, ["shop", "shop-v2"], False)
    assert delete == {
        "shop-by-item-repartition": "repartition topic",
        "shop-totals-changelog": "changelog",
        "shop-old-changelog": "changelog the topology no longer declares",
    }
    assert set(keep) == {"shop-dlq", "shop-v2-totals-changelog"}
    assert "--include-dlq" in keep["shop-dlq"]
    delete, keep = internal_to_delete(app, DECLARED, existing, ["shop"], True)
    assert {"shop-dlq", "shop-v2-totals-changelog"} <= delete.keys()
    assert keep == {}
    # a topic missing on the cluster is not planned (a second reset finds nothing to do)
    assert internal_to_delete(app, DECLARED, {"orders"}, [], True) == ({}, {})


def test_a_source_named_like_an_internal_topic_is_never_deleted() -> None:
    app = App("shop")
    feed = app.topic("shop-feed-changelog")
    app.global_table("shop-g-repartition")

    @app.handler(feed)
    async def handle(ctx: Context, key: bytes, value: bytes) -> None:
        pass

    existing = {"shop-feed-changelog", "shop-g-repartition"}
    delete, keep = internal_to_delete(app, [], existing, [], True)
    assert delete == {}
    assert set(keep) == existing


def test_the_plan_says_what_moves_and_why_it_is_refused(tmp_path: Path) -> None:
    plan = ResetPlan("shop", Target("earliest"), False, tmp_path / "shop")
    plan.moves = [OffsetMove("orders", 0, 120, 0), OffsetMove("orders", 1, 0, 0)]
    plan.moves.append(OffsetMove("users", 0, None, 0))
    plan.delete = {"shop-totals-changelog": "changelog"}
    plan.keep = {"shop-dlq": "the dead-letter topic: deleted with --include-dlq"}
    plan.missing_sources = ["gone"]
    text = "\n".join(plan.lines())
    assert "orders[0]: at 120 -> 0\n" in text + "\n"
    assert "orders[1]: at 0 -> 0 (already there)" in text
    assert "users[0]: nothing committed -> 0" in text
    assert "gone: does not exist, nothing to reset" in text
    assert "delete topic shop-totals-changelog (changelog)" in text
    assert "keep topic shop-dlq" in text
    assert f"nothing to wipe: no local state directory {tmp_path / 'shop'}" in text
    assert plan.refused == []
    plan.members = [Member("m-1", "shop-host-42", "/10.0.0.7")]
    (reason,) = plan.refused
    assert "shop-host-42 on 10.0.0.7 (member m-1)" in reason


async def test_local_state_only_wipes_and_is_idempotent(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path, bootstrap_servers="127.0.0.1:1")  # never contacted
    store = tmp_path / "shop" / "totals" / "0"
    store.mkdir(parents=True)
    (store / "data.sqlite").write_text("x")
    lock = TaskLock(store)
    lock.acquire()
    lock.close()  # a lock file, as a stopped worker leaves it
    said: list[str] = []
    for _ in range(2):
        await reset_app(
            make_app(), settings, Target(), include_dlq=False, local_state_only=True,
            dry_run=False, say=said.append,
        )  # fmt: skip
    assert not (tmp_path / "shop").exists()
    assert f"wiped local state {tmp_path / 'shop'}" in said
    assert f"local state {tmp_path / 'shop'}: nothing to wipe" in said


async def test_a_store_locked_by_a_live_worker_refuses_the_reset(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path, bootstrap_servers="127.0.0.1:1")
    store = tmp_path / "shop" / "global" / "prices" / "0"
    lock = TaskLock(store)
    lock.acquire()  # another open file description: conflicts like another process's
    try:
        plan = await plan_reset(make_app(), settings, Clients(settings, client_id="t"), Target(),
                                local_state_only=True)  # fmt: skip
        (reason,) = plan.refused
        assert str(store) in reason and "stop the worker on this host" in reason
        with pytest.raises(ResetRefusedError):
            await run_reset(plan, Clients(settings, client_id="t"), print)
        dry: list[str] = []
        with pytest.raises(ResetRefusedError):
            await reset_app(
                make_app(), settings, Target(), include_dlq=False, local_state_only=True,
                dry_run=True, say=dry.append,
            )  # fmt: skip
        assert store.exists()
    finally:
        lock.close()
