"""Tables fed by a topic (``app.source_table``) in the TestDriver: a stream-table join that sees
the table as of each record's place, tombstones, read-only access, bad records, the checks at
declaration, and what the runtime commits for them (no changelog records, offset checkpoints)."""

from __future__ import annotations

from typing import Any

import pytest

from onceflow import App, ConfigurationError, Context, CopartitioningError, SourceTable
from onceflow.naming import changelog_topic
from onceflow.partitioner import partition_for_key
from onceflow.testing import TestDriver


def enrich_app(app_id: str = "enrich") -> tuple[App, SourceTable[Any, Any]]:
    """orders (keyed by customer) joined with a customers source table."""
    app = App(app_id)
    orders = app.topic("orders", key_serde="str", value_serde="json")
    out = app.topic("enriched", key_serde="str", value_serde="json")
    customers = app.source_table("customers", key_serde="str", value_serde="json")

    @app.handler(orders)
    async def enrich(ctx: Context, customer: str, order: dict[str, Any]) -> None:
        await ctx.send(out, customer, {**order, "customer": customers.get(ctx, customer)})

    return app, customers


async def test_orders_join_the_table_as_of_their_place() -> None:
    app, customers = enrich_app()
    async with TestDriver(app, partitions=3) as driver:
        await driver.send("orders", "c1", {"id": 1})
        await driver.send("customers", "c1", {"name": "Ann"})
        await driver.send("orders", "c1", {"id": 2})
        await driver.send("customers", "c1", {"name": "Ann B."})
        await driver.send("orders", "c1", {"id": 3})
        await driver.send("customers", "c1", None)  # a tombstone deletes
        await driver.send("orders", "c1", {"id": 4})
        got = [(o.value["id"], o.value["customer"]) for o in driver.read("enriched")]
        assert got == [(1, None), (2, {"name": "Ann"}), (3, {"name": "Ann B."}), (4, None)]
        await driver.send("customers", "c2", {"name": "Bo"})
        assert driver.table(customers).get("c2") == {"name": "Bo"}
        assert driver.table("customers").get("c1", "gone") == "gone"
        # Nothing goes to a changelog: the topic is the table's changelog.
        assert customers.changelog_topic == "customers"
        assert "enrich-customers-changelog" not in driver.read_all()


async def test_a_table_update_and_a_read_in_one_transaction() -> None:
    app, customers = enrich_app()
    async with TestDriver(app, partitions=1, auto_commit=False) as driver:
        await driver.send("customers", "c1", {"name": "Ann"})
        await driver.send("orders", "c1", {"id": 1})  # reads the uncommitted update
        assert driver.read("enriched") == []
        assert driver.table(customers).get("c1") is None  # committed state only
        await driver.commit()
        assert driver.read("enriched")[0].value["customer"] == {"name": "Ann"}
        assert driver.table(customers).get("c1") == {"name": "Ann"}


async def test_the_commit_checkpoints_the_topic_offset() -> None:
    app, customers = enrich_app()
    async with TestDriver(app, partitions=1) as driver:
        for i in range(3):
            await driver.send("customers", f"c{i}", {"n": i})
        store = driver.task(0).store(customers.name)
        assert store.committed_get(b"c1") == b'{"n":1}'
    assert store.checkpoint == 2  # the offset of the last record applied (flushed at close)


async def test_handlers_cannot_write_a_source_table() -> None:
    app = App("writes")
    orders = app.topic("orders", key_serde="str", value_serde="str")
    customers = app.source_table("customers", key_serde="str", value_serde="str")

    @app.handler(orders)
    async def write(ctx: Context, key: str, value: str) -> None:
        if value == "set":
            customers.set(ctx, key, value)
        else:
            customers.delete(ctx, key)

    async with TestDriver(app) as driver:
        await driver.send(orders, "k", "set")
        await driver.send(orders, "k", "delete")
        letters = driver.dead_letters
        assert len(letters) == 2
        assert all("read-only" in d.headers["onceflow.error.message"] for d in letters)


async def test_a_bad_table_record_is_dead_lettered_and_changes_nothing() -> None:
    app, _ = enrich_app()
    async with TestDriver(app, partitions=1) as driver:
        await driver.send("customers", "c1", {"name": "Ann"})
        await driver.send_raw("customers", b"c1", b"{not json")
        await driver.send_raw("customers", None, b'{"name": "keyless"}')  # not applied
        await driver.send("orders", "c1", {"id": 1})
        assert driver.read("enriched")[0].value["customer"] == {"name": "Ann"}
        [letter] = driver.dead_letters
        assert letter.headers["onceflow.error.stage"] == "deserialize"
        assert letter.headers["onceflow.source.topic"] == "customers"


async def test_a_key_of_another_partition_is_refused() -> None:
    app = App("misread")
    orders = app.topic("orders", key_serde="str", value_serde="str")
    customers = app.source_table("customers", key_serde="str", value_serde="str")

    @app.handler(orders)
    async def read(ctx: Context, key: str, value: str) -> None:
        customers.get(ctx, value)  # the value names a customer: maybe on another partition

    other = next(f"c{i}" for i in range(100) if partition_for_key(f"c{i}".encode(), 4) != 0)
    mine = next(f"k{i}" for i in range(100) if partition_for_key(f"k{i}".encode(), 4) == 0)
    async with TestDriver(app, partitions=4) as driver:
        await driver.send(orders, mine, other)
        [letter] = driver.dead_letters
        assert letter.headers["onceflow.error.type"] == "WrongPartitionError"


def test_declaration_checks() -> None:
    app = App("checks")
    orders = app.topic("orders", key_serde="str", value_serde="str")
    with pytest.raises(ConfigurationError, match="not both"):
        app.source_table(orders, key_serde="str")
    table = app.source_table(orders)  # a declared topic: its serdes
    assert table.name == "orders" and table.key_serde is orders.key_serde

    @app.handler(orders)
    async def handle(ctx: Context, key: str, value: str) -> None: ...

    with pytest.raises(ConfigurationError, match="feeds source table 'orders' and has handler"):
        app.validate()

    lonely = App("lonely")
    lonely.source_table("users", group="g")
    with pytest.raises(ConfigurationError, match="no handlers"):
        lonely.validate()

    twice = App("twice")
    source = twice.topic("s")
    twice.source_table("users")
    twice.source_table("users", name="users-again")

    @twice.handler(source)
    async def noop(ctx: Context, key: bytes, value: bytes) -> None: ...

    with pytest.raises(ConfigurationError, match="feeds source tables 'users' and 'users-again'"):
        twice.validate()


def test_the_table_topic_is_a_source_of_its_group() -> None:
    app, customers = enrich_app()
    assert app.groups() == {"0": ["orders", "customers"]}
    assert app.group_of("customers") == "0"
    app.with_app_id("renamed")  # the changelog of a source table is its topic, whatever the id
    assert customers.changelog_topic == "customers"
    assert app.tables["customers"].layout() == {"kind": "source table", "topic": "customers"}
    assert changelog_topic("renamed", "customers") != customers.changelog_topic


async def test_the_table_topic_needs_the_group_partition_count() -> None:
    app, _ = enrich_app()
    with pytest.raises(CopartitioningError, match="'orders': 3, 'customers': 2"):
        TestDriver(app, partitions={"orders": 3, "customers": 2})


async def test_sending_to_the_table_topic_is_not_a_checkpoint() -> None:
    """A handler may write the table's topic: the table sees it once the task consumes it (the
    driver feeds committed records of topics the app reads back in); what it produced there
    says nothing about what the store applied."""
    app = App("writer")
    orders = app.topic("orders", key_serde="str", value_serde="str")
    customers = app.source_table("customers", key_serde="str", value_serde="str")
    topic = app.topics["customers"]

    @app.handler(orders)
    async def register(ctx: Context, key: str, value: str) -> None:
        await ctx.send(topic, key, value)

    async with TestDriver(app, auto_commit=False) as driver:
        await driver.send(orders, "c1", "Ann")
        assert driver.read(topic) == []
        store = driver.task(0).store(customers.name)
        await driver.commit()  # commits the send, then the driver consumes the table's topic
        assert [o.value for o in driver.read(topic)] == ["Ann"]
        assert store.checkpoint is None  # producing to the topic moved nothing
        await driver.commit()  # commits the consumption
        assert driver.table(customers).get("c1") == "Ann"
    assert store.checkpoint == 0  # the offset of the record the task consumed
