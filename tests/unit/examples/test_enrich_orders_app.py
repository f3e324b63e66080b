"""processors/enrich_orders.py in the in-memory driver: orders joined with the customers source
table (as of each order's place) and the global countries table; unmatched orders go to the
dead-letter topic."""

from __future__ import annotations

from onceflow.examples import enrich_orders as ex
from onceflow.testing import TestDriver


async def test_orders_are_joined_with_the_customer_and_the_country_as_of_their_place() -> None:
    async with TestDriver(ex.app, partitions=3) as driver:
        await driver.send(ex.countries, "FR", {"name": "France", "vat": 0.2})
        await driver.send("customers", "c1", {"name": "Ann", "country": "FR"})
        await driver.send(ex.orders, "c1", {"id": "o1", "amount": 10.0})
        await driver.send("customers", "c1", {"name": "Ann B.", "country": "FR"})
        await driver.send(ex.orders, "c1", {"id": "o2", "amount": 20.0})
        out = [o.value for o in driver.read(ex.enriched)]
        assert out == [
            {"id": "o1", "amount": 10.0, "matched": True, "customer": "Ann", "country": "France",
             "vat": 2.0},
            {"id": "o2", "amount": 20.0, "matched": True, "customer": "Ann B.",
             "country": "France", "vat": 4.0},
        ]  # fmt: skip


async def test_an_unknown_customer_or_country_is_dead_lettered() -> None:
    async with TestDriver(ex.app, partitions=2) as driver:
        await driver.send(ex.orders, "nobody", {"id": "o1", "amount": 1.0})
        await driver.send("customers", "c2", {"name": "Bo", "country": "XX"})
        await driver.send(ex.orders, "c2", {"id": "o2", "amount": 1.0})
        assert driver.read(ex.enriched) == []
        messages = [d.headers["onceflow.error.message"] for d in driver.dead_letters]
        assert messages == ["order 'o1': unknown customer", "order 'o2': unknown country 'XX'"]
        await driver.send("customers", "nobody", None)  # a tombstone for a key never set: fine
