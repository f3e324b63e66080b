"""Global tables in the test driver: any handler of any task group reads any key, updates are
seen by every task, tombstones delete, unreadable records are skipped; declaration errors."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from onceflow import App, ConfigurationError, Context
from onceflow.testing import TestDriver


def enrich_app() -> tuple[App, Any, Any, Any, Any]:
    app = App("global-unit")
    orders = app.topic("orders", key_serde="str", value_serde="json")
    payments = app.topic("payments", key_serde="str", value_serde="json")
    out = app.topic("out", key_serde="str", value_serde="json")
    countries = app.global_table("countries", key_serde="str", value_serde="json", default={})

    @app.handler(orders)
    async def enrich(ctx: Context, key: str, order: dict[str, Any]) -> None:
        await ctx.send(out, key, {**order, "country": countries.get(ctx, order["country"])})

    @app.handler(payments, group="payments")
    async def pay(ctx: Context, key: str, payment: dict[str, Any]) -> None:
        await ctx.send(out, key, {"paid_in": countries.get(ctx, payment["country"]).get("name")})

    return app, orders, payments, out, countries


async def test_every_task_of_every_group_reads_every_key() -> None:
    app, orders, payments, out, countries = enrich_app()
    async with TestDriver(app, partitions={"orders": 4, "payments": 3, "out": 4}) as driver:
        await driver.send(countries, "fr", {"name": "France"})
        await driver.send("countries", "de", {"name": "Germany"})  # by topic name
        for i in range(8):
            await driver.send(orders, f"o{i}", {"country": "fr" if i % 2 else "de"})
        await driver.send(payments, "p1", {"country": "fr"})
        values = [o.value for o in driver.read(out)]
        assert {o.partition for o in driver.read(out)} != {
            0
        }  # keyed like the orders: several tasks answered
        assert [v["country"]["name"] for v in values[:8]] == ["Germany", "France"] * 4
        assert values[8] == {"paid_in": "France"}
        assert driver.table(countries).get("fr") == {"name": "France"}


async def test_updates_and_tombstones_are_seen_at_once() -> None:
    app, orders, _, out, countries = enrich_app()
    async with TestDriver(app, partitions=2) as driver:
        await driver.send(countries, "fr", {"name": "France"})
        await driver.send(orders, "o1", {"country": "fr"})
        await driver.send(countries, "fr", {"name": "République française"})
        await driver.send(orders, "o2", {"country": "fr"})
        await driver.send(countries, "fr", None)
        await driver.send(orders, "o3", {"country": "fr"})
        got = [o.value["country"] for o in driver.read(out)]
        assert got == [{"name": "France"}, {"name": "République française"}, {}]
        assert driver.table(countries).get("fr", "gone") == "gone"


async def test_a_handler_that_writes_the_topic_updates_the_table() -> None:
    app = App("global-writer")
    names = app.topic("names", key_serde="str", value_serde="json")
    feed = app.topic("countries", key_serde="str", value_serde="json")
    countries = app.global_table("countries", name="geo", key_serde="str", value_serde="json")

    @app.handler(names)
    async def publish(ctx: Context, key: str, value: Any) -> None:
        await ctx.send(feed, key, value)

    async with TestDriver(app) as driver:
        await driver.send(names, "it", {"name": "Italy"})
        assert driver.table(countries).get("it") == {"name": "Italy"}
        assert driver.table("geo").get("it") == {"name": "Italy"}


async def test_unreadable_records_are_skipped_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    app, orders, _, out, countries = enrich_app()
    async with TestDriver(app) as driver:
        await driver.send(countries, "fr", {"name": "France"})
        with caplog.at_level(logging.WARNING, "onceflow.testing"):
            driver._globals.apply("countries", b"fr", b"{not json")
        assert "global table countries: skipped record" in caplog.text
        await driver.send(orders, "o1", {"country": "fr"})
        assert driver.read(out)[0].value["country"] == {"name": "France"}  # kept its value


def test_declaration_errors() -> None:
    app = App("global-decl")
    app.table("totals")
    app.global_table("countries")
    with pytest.raises(ConfigurationError, match="declared twice"):
        app.global_table("other-topic", name="totals")
    with pytest.raises(ConfigurationError, match="declared twice"):
        app.table("countries")
    with pytest.raises(ConfigurationError, match="already feeds a global table"):
        app.global_table("countries", name="again")
    with pytest.raises(ConfigurationError, match="must not be a number"):
        app.global_table("t", name="3")
    with pytest.raises(ConfigurationError, match="plain word"):
        app.global_table("t", name="a/b")
    assert countries_layout(app) == {"kind": "global", "topic": "countries"}


def countries_layout(app: App) -> dict[str, Any]:
    return app.global_tables["countries"].layout()
