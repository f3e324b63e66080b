"""``describe_topology`` and its text form on an app that declares one of everything; the
cluster comparison's pure parts (names, configs). Against a real cluster:
tests/integration/test_reset.py."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from onceflow import App, Context, Hopping, Session
from onceflow.runtime import Topology, describe_topology, render_text, source_counts
from onceflow.runtime.admin import internal_topics
from onceflow.runtime.cluster_check import (
    ClusterReport,
    ClusterTopic,
    foreign_topics,
    named_like_internal,
)


def make_app() -> App:
    app = App("shop")
    orders = app.topic("orders", key_serde="str", value_serde="json", partitions=4)
    out = app.topic("totals", key_serde="str", value_serde="str")
    by_item = app.repartition("by-item", key_serde="str", value_serde="json")
    totals = app.table("totals", default=0, value_serde="int64", ttl=timedelta(days=1))
    per_item = app.windowed_table(
        "per-item", window=Hopping(size=timedelta(minutes=10), advance=timedelta(minutes=5)),
        grace=timedelta(seconds=30), value_serde="int64", group="items",
    )  # fmt: skip
    visits = app.windowed_table(
        "visits", window=Session(gap=timedelta(minutes=30)), merge=lambda a, b: a + b,
        value_serde="int64", group="items",
    )  # fmt: skip
    users = app.source_table("users", key_serde="str", value_serde="json")
    prices = app.global_table("prices")

    @app.handler(orders)
    async def rekey(ctx: Context, key: str, order: dict) -> None:
        totals.add(ctx, key, 1)
        users.get(ctx, key)
        await ctx.send(by_item, order["item"], order)

    @app.handler(by_item, group="items")
    async def count(ctx: Context, item: str, order: dict) -> None:
        def later() -> None:  # nested code counts too
            prices.get(ctx, item)

        later()
        per_item.add(ctx, item, 1)
        visits.get(ctx, item)
        await ctx.send(out, item, "x")

    @app.timer(every=timedelta(minutes=1))
    async def tick(ctx: Context) -> None:
        pass

    return app


def test_the_description_names_every_declaration() -> None:
    app = make_app()
    t = describe_topology(app)
    groups = {g.name: g for g in t.task_groups}
    assert [(s.topic, s.kind, s.partitions) for s in groups["0"].sources] == [
        ("orders", "stream", 4),
        ("users", "source table", None),
    ]
    assert groups["0"].partitions == 4  # the first source whose count is known
    assert [(s.topic, s.kind) for s in groups["items"].sources] == [
        ("shop-by-item-repartition", "repartition")
    ]
    # the repartition topic follows the widest source, as the worker would create it
    assert groups["items"].partitions == 4
    assert [timer.name for timer in groups["0"].timers] == ["make_app.<locals>.tick"]
    handlers = {h.name.rsplit(".", 1)[-1]: h for h in t.handlers}
    assert handlers["rekey"].outputs == ["shop-by-item-repartition"]
    assert handlers["rekey"].tables == ["totals", "users"]
    assert handlers["count"].inputs == ["shop-by-item-repartition"]
    assert handlers["count"].outputs == ["totals"]  # the topic named totals
    assert handlers["count"].tables == ["per-item", "prices", "visits"]
    tables = {table.name: table for table in t.tables}
    assert tables["totals"].ttl_ms == 86_400_000 and tables["totals"].kind == "table with ttl"
    assert tables["per-item"].window == {
        "type": "hopping", "size_ms": 600_000, "advance_ms": 300_000
    }  # fmt: skip
    assert tables["per-item"].grace_ms == 30_000 and tables["per-item"].emit == "update"
    assert tables["visits"].window == {"type": "session", "gap_ms": 1_800_000}
    assert tables["users"].changelog_topic == "users"  # a source table's topic is its changelog
    assert [(g.name, g.topic) for g in t.global_tables] == [("prices", "prices")]


def test_internal_topics_are_the_workers() -> None:
    app = make_app()
    t = describe_topology(app)
    worker = internal_topics(app, {"0": 4, "items": 4})
    assert [(i.name, i.partitions, i.config) for i in t.internal_topics] == [
        (w.name, w.partitions, w.config) for w in worker
    ]
    kinds = {i.name: i.kind for i in t.internal_topics}
    assert kinds == {
        "shop-by-item-repartition": "repartition",
        "shop-totals-changelog": "changelog",
        "shop-per-item-changelog": "changelog",
        "shop-visits-changelog": "changelog",
        "shop-dlq": "dlq",
    }


def test_counts_from_the_cluster_win_and_unknown_ones_stay_unknown() -> None:
    app = App("plain")
    source = app.topic("in")
    app.table("t")

    @app.handler(source)
    async def handle(ctx: Context, key: bytes, value: bytes) -> None:
        pass

    unknown = describe_topology(app)
    assert unknown.task_groups[0].partitions is None
    assert {i.partitions for i in unknown.internal_topics} == {None}
    known = describe_topology(app, source_counts(app, {"0": 6}))
    assert known.task_groups[0].partitions == 6
    assert {i.partitions for i in known.internal_topics} == {6}


def test_the_json_round_trips_and_the_text_shows_it_all() -> None:
    t = describe_topology(make_app())
    text = json.dumps(t.model_dump())
    assert Topology.model_validate(json.loads(text)) == t
    rendered = render_text(t)
    for name in ("shop-by-item-repartition", "shop-dlq", "per-item", "prices", "ttl_ms=86400000"):
        assert name in rendered
    assert "window=hopping(size_ms=600000, advance_ms=300000)" in rendered


def test_the_text_shows_the_cluster_comparison() -> None:
    t = describe_topology(make_app())
    report = ClusterReport(
        bootstrap_servers="b:9092",
        topics=[
            ClusterTopic(
                name="orders",
                role="source",
                expected_partitions=4,
                partitions=3,
                config={},
                status="mismatch",
                problems=["3 partitions, the count is 4"],
            )
        ],
        stale=["shop-old-changelog"],
        foreign=["shop-v2-x-changelog"],
    )
    rendered = render_text(t, report)
    assert "mismatch orders [source] partitions=3" in rendered
    assert "3 partitions, the count is 4" in rendered
    assert "stale    shop-old-changelog" in rendered
    assert "other    shop-v2-x-changelog" in rendered


@pytest.mark.parametrize(
    ("name", "internal"),
    [
        ("shop-a-changelog", True),
        ("shop-a-repartition", True),
        ("shop-dlq", True),
        ("shop-dlq-2", False),
        ("shopping-a-changelog", False),
        ("shop-changelog-old", False),
        ("orders", False),
    ],
)
def test_names_like_internal_topics(name: str, internal: bool) -> None:
    assert named_like_internal("shop", [name]) == ([name] if internal else [])


def test_a_longer_group_id_owns_its_topics() -> None:
    names = ["shop-v2-counts-changelog", "shop-counts-changelog", "shop-v2x-changelog"]
    assert foreign_topics("shop", names, ["shop", "shop-v2", "other"]) == {
        "shop-v2-counts-changelog"
    }
    assert foreign_topics("shop", names, ["shop"]) == set()


def test_what_counts_as_a_mismatch() -> None:
    from onceflow.runtime.cluster_check import _problems

    compact = {"cleanup.policy": "compact,delete", "retention.ms": "1000"}
    assert _problems("changelog", 3, 3, compact, {**compact}) == []
    swapped = {"cleanup.policy": "delete,compact", "retention.ms": "5000"}  # longer: fine
    assert _problems("changelog", 3, 3, compact, swapped) == []
    assert _problems("changelog", 3, 3, compact, {**compact, "retention.ms": "999"}) == [
        "retention.ms=999, the worker creates it with 1000"
    ]
    assert _problems(
        "changelog", 3, 2, {"cleanup.policy": "compact"}, {"cleanup.policy": "delete"}
    ) == [
        "2 partitions, the planned count is 3",
        "cleanup.policy=delete, the worker creates it with compact",
    ]
    infinite = {"retention.ms": "-1"}
    assert _problems("repartition", 2, 2, infinite, {"retention.ms": "604800000"}) != []
    assert _problems("source", 4, 3, {}, {}) == ["3 partitions, the task group's count is 4"]
    assert "onceflow topics create" in _problems("source", 4, None, {}, {})[0]
    assert "the worker creates it at start" in _problems("dlq", 4, None, {}, {})[0]


def test_sql_sinks_are_described_without_their_dsn() -> None:
    app = App("shop")
    orders = app.topic("orders", key_serde="str", value_serde="json")

    @app.sql_sink(orders, name="orders", batch=100)
    async def into_env_dsn(tx: object, records: object) -> None:
        pass

    @app.sql_sink(orders, name="named", database="main")
    async def into_named(tx: object, records: object) -> None:
        pass

    @app.sql_sink(orders, name="literal", database="postgresql+asyncpg://u:secret@db/shop")
    async def into_literal(tx: object, records: object) -> None:
        pass

    sinks = {s.name: s for s in describe_topology(app).sql_sinks}
    assert sinks["orders"].consumer_group == "shop-sink-orders"
    assert (sinks["orders"].database, sinks["orders"].batch) == ("ONCEFLOW_SQL_SINK_DSN", 100)
    assert sinks["named"].database == "ONCEFLOW_SQL_DATABASES['main']"
    assert sinks["literal"].database == "a postgresql+asyncpg URL in the code"
    text = render_text(describe_topology(app))
    assert "secret" not in text and "secret" not in describe_topology(app).model_dump_json()
    assert "orders: orders -> database from ONCEFLOW_SQL_SINK_DSN" in text
