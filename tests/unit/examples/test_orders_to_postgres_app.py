"""processors/orders_to_postgres.py: the enrichment handler in the in-memory driver, and the
sink's function on a real SQLite file (a re-sent order moves its customer's total by the
difference, twice in one batch too)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from onceflow import SinkRecord, SinkTransaction
from onceflow.examples import orders_to_postgres as ex
from onceflow.testing import TestDriver


async def test_orders_are_enriched_with_vat_and_band() -> None:
    async with TestDriver(ex.app, partitions=2) as driver:
        await driver.send(ex.orders, "c1", {"id": "o1", "amount": 150})
        await driver.send(ex.orders, "c2", {"id": "o2", "amount": 5000})
        out = sorted((o.value for o in driver.read(ex.enriched)), key=lambda v: v["id"])
        assert out == [
            {"id": "o1", "amount": 150, "vat": 30.0, "band": "medium"},
            {"id": "o2", "amount": 5000, "vat": 1000.0, "band": "large"},
        ]


def _record(offset: int, customer: str, oid: str, amount: float) -> SinkRecord[str, Any]:
    value = {"id": oid, "amount": amount, "vat": round(amount * ex.VAT, 2), "band": "small"}
    return SinkRecord(customer, value, "orders-enriched", 0, offset, 0, ())


async def test_the_sink_upserts_orders_and_moves_totals_by_the_change(tmp_path: Path) -> None:
    dsn = f"sqlite+aiosqlite:///{tmp_path / 'orders.db'}"
    await ex.create_schema(dsn)
    engine = create_async_engine(dsn)
    batches = [
        [_record(0, "c1", "o1", 10), _record(1, "c1", "o2", 5), _record(2, "c2", "o3", 7)],
        [_record(3, "c1", "o1", 30), _record(4, "c1", "o1", 40), _record(5, "c2", "o4", 1)],
    ]
    for batch in batches:
        async with engine.begin() as conn:
            tx = SinkTransaction(conn, sink="orders", topic="orders-enriched", partition=0, epoch=1)
            await ex.store(tx, batch)
    async with engine.connect() as conn:
        totals = (await conn.execute(text("SELECT * FROM customer_totals ORDER BY 1"))).all()
        amount = (await conn.execute(text("SELECT amount FROM orders WHERE id = 'o1'"))).scalar()
    await engine.dispose()
    assert [tuple(t) for t in totals] == [("c1", 45, 2), ("c2", 8, 2)]
    assert amount == 40
