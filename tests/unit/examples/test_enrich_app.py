"""processors/enrich.py in the in-memory driver: valid orders enriched, non-positive amounts
filtered, invalid ones dead-lettered (once: no retries) with headers naming the cause."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from onceflow.examples import enrich
from onceflow.testing import TestDriver

T = 1_700_000_000_123  # 2023-11-14T22:13:20.123Z


@pytest.fixture
async def driver() -> AsyncIterator[TestDriver]:
    async with TestDriver(enrich.app, partitions=2) as driver:
        yield driver


def order(**fields: Any) -> dict[str, Any]:
    return {"id": "o-1", "customer": "c-1", "amount": 25.5, "currency": "eur", **fields}


async def test_a_valid_order_is_enriched_and_keeps_key_and_timestamp(driver: TestDriver) -> None:
    await driver.send(enrich.orders, "c-1", order(note="gift"), timestamp=T)
    (out,) = driver.read(enrich.enriched)
    assert (out.key, out.timestamp) == ("c-1", T)
    assert out.value == {
        "id": "o-1",
        "customer": "c-1",
        "amount": 25.5,
        "currency": "EUR",
        "note": "gift",
        "amount_eur": 25.5,
        "tier": "small",
        "event_time": "2023-11-14T22:13:20.123+00:00",
    }
    assert driver.dead_letters == []


@pytest.mark.parametrize(
    ("amount", "currency", "amount_eur", "tier"),
    [(99.99, "EUR", 99.99, "small"), (100, "EUR", 100, "medium"), (1000, "USD", 920.0, "medium"),
     (1000, "GBP", 1170.0, "large"), (3, "JPY", 0.02, "small")],
)  # fmt: skip
async def test_amounts_are_converted_and_tiered(
    driver: TestDriver, amount: float, currency: str, amount_eur: float, tier: str
) -> None:
    await driver.send(enrich.orders, "k", order(amount=amount, currency=currency), timestamp=T)
    (out,) = driver.read(enrich.enriched)
    assert (out.value["amount_eur"], out.value["tier"]) == (amount_eur, tier)


@pytest.mark.parametrize("amount", [0, -5, -0.01])
async def test_non_positive_amounts_are_filtered_not_dead_lettered(
    driver: TestDriver, amount: float
) -> None:
    await driver.send(enrich.orders, "k", order(amount=amount), timestamp=T)
    assert driver.read(enrich.enriched) == []
    assert driver.dead_letters == []


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"customer": "c", "amount": 1, "currency": "EUR"}, "has no 'id'"),
        (order(customer=None), "has no 'customer'"),
        (order(amount="12"), "'amount' is not valid"),
        (order(amount=True), "'amount' is not valid"),
        (order(currency="XYZ"), "unknown currency 'XYZ'"),
        ([1, 2], "an order is a JSON object, got list"),
        (None, "got NoneType"),  # a tombstone
    ],
)
async def test_invalid_orders_go_to_the_dead_letter_topic_once(
    driver: TestDriver, value: Any, message: str
) -> None:
    await driver.send(enrich.orders, "k", value, timestamp=T)
    assert driver.read(enrich.enriched) == []
    (dead,) = driver.dead_letters
    assert dead.headers["onceflow.error.stage"] == "handler"
    assert dead.headers["onceflow.error.type"] == "InvalidOrderError"
    assert message in dead.headers["onceflow.error.message"]
    assert dead.headers["onceflow.source.topic"] == enrich.orders.name
    assert dead.value == (None if value is None else orjson.dumps(value))


async def test_input_that_is_not_json_is_dead_lettered_by_the_serde(driver: TestDriver) -> None:
    await driver.send_raw(enrich.orders, b"k", b"{not json", timestamp=T)
    await driver.send(enrich.orders, "k", order(), timestamp=T)
    (dead,) = driver.dead_letters
    assert (dead.key, dead.value) == (b"k", b"{not json")
    assert dead.headers["onceflow.error.stage"] == "deserialize"
    assert [o.value["id"] for o in driver.read(enrich.enriched)] == ["o-1"]


async def test_a_mixed_stream_splits_between_output_filter_and_dead_letters(
    driver: TestDriver,
) -> None:
    inputs = [order(id=f"o-{i}", amount=(i % 4) * 100 - 100) for i in range(12)]
    inputs[5] = {"id": "o-5"}  # invalid
    for i, value in enumerate(inputs):
        await driver.send(enrich.orders, f"c-{i % 3}", value, timestamp=T + i)
    ids = sorted(o.value["id"] for o in driver.read(enrich.enriched))
    assert ids == sorted(f"o-{i}" for i in range(12) if i % 4 >= 2 and i != 5)
    assert [orjson.loads(d.value or b"") for d in driver.dead_letters] == [{"id": "o-5"}]
