"""Joins: orders enriched with a customers table fed by a topic and a global countries table.

* ``orders`` (key: customer id, value: ``{"id", "amount"}``) is the stream;
* ``customers`` (key: customer id, value: ``{"name", "country"}``), a compacted topic written by
  another service, is a **source table** of the same task group: co-partitioned with
  ``orders``, each task holds its partition's customers (a stream-table join);
* ``countries`` (key: country code, value: ``{"name", "vat"}``) is a **global table**: every
  instance holds all of it, so the order's customer's country can be looked up whatever its
  partition (a foreign-key join).

Each order goes out once to ``orders-enriched`` with the customer's name, the country's name
and the VAT due. An order whose customer (or country) is unknown goes to the dead-letter topic
(``UnmatchedOrderError``) — or, with ``UNMATCHED=pass``, out unenriched with
``"matched": false``. Topic names can be changed with ``ONCEFLOW_INPUT_TOPIC`` /
``ONCEFLOW_OUTPUT_TOPIC``.
"""

from __future__ import annotations

import os
from typing import Any

from onceflow import App, Context

PASS_UNMATCHED = os.environ.get("UNMATCHED", "dlq") == "pass"


class UnmatchedOrderError(Exception):
    """The order's customer or the customer's country is not known (yet)."""


app = App("order-joiner")
orders = app.topic(
    os.environ.get("ONCEFLOW_INPUT_TOPIC", "orders"), key_serde="str", value_serde="json"
)
enriched = app.topic(
    os.environ.get("ONCEFLOW_OUTPUT_TOPIC", "orders-enriched"), key_serde="str", value_serde="json"
)
customers = app.source_table("customers", key_serde="str", value_serde="json")
countries = app.global_table("countries", key_serde="str", value_serde="json")


@app.handler(orders, max_retries=0)
async def enrich(ctx: Context, customer_id: str, order: dict[str, Any]) -> None:
    customer = customers.get(ctx, customer_id)  # as of this order's place in the partition
    country = countries.get(ctx, customer["country"]) if customer else None
    if customer is None or country is None:
        if not PASS_UNMATCHED:
            what = "customer" if customer is None else f"country {customer['country']!r}"
            raise UnmatchedOrderError(f"order {order.get('id')!r}: unknown {what}")
        await ctx.send(enriched, customer_id, {**order, "matched": False})
        return
    vat = round(order["amount"] * country["vat"], 2)
    await ctx.send(
        enriched,
        customer_id,
        {**order, "matched": True, "customer": customer["name"], "country": country["name"],
         "vat": vat},
    )  # fmt: skip
