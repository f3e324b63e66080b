"""Example: stateless enrichment and filtering, with a dead-letter topic for invalid input.

Reads JSON orders from ``orders`` and writes the valid ones, enriched, to ``orders-enriched``
(``ONCEFLOW_ENRICH_INPUT`` / ``ONCEFLOW_ENRICH_OUTPUT`` override the names). An order is
``{"id": str, "customer": str, "amount": number, "currency": "EUR" | "USD" | ...}``:

* ``amount <= 0`` (a cancellation, a zero-value test order) is filtered out: not an error;
* an order with a missing or malformed field, an unknown currency, or input that is not JSON
  goes to ``order-enricher-dlq`` with headers naming the source record and the error — the
  framework does that: the handler only raises (``InvalidOrderError``), and JSON that does not
  decode fails in the value serde before the handler runs;
* a valid order gains ``amount_eur`` (from a fixed rate table: enrichment from reference data),
  ``tier`` (``small`` < 100 EUR <= ``medium`` < 1000 EUR <= ``large``) and ``event_time`` (the
  record timestamp, ISO 8601), and keeps its key.

The handler has ``max_retries=0``: validation fails the same way every time, so retrying
would only delay the dead letter. Output and dead letters join the task's transaction, so each
order lands exactly once in one of the two topics (or in neither, if filtered).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any

from onceflow import App, Context

# Reference data for the example; a real service would load it at start or join a table.
EUR_RATES = {"EUR": 1.0, "USD": 0.92, "GBP": 1.17, "CHF": 1.04, "JPY": 0.0061}

app = App("order-enricher")
orders = app.topic(
    os.environ.get("ONCEFLOW_ENRICH_INPUT", "orders"), key_serde="str", value_serde="json"
)
enriched = app.topic(
    os.environ.get("ONCEFLOW_ENRICH_OUTPUT", "orders-enriched"), key_serde="str", value_serde="json"
)


class InvalidOrderError(ValueError):
    """The order lacks a field or has a bad one; the record goes to the dead-letter topic."""


def _field(order: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = order.get(name)
    if value is None:
        raise InvalidOrderError(f"order has no {name!r}: {order!r:.200}")
    if not isinstance(value, kind) or isinstance(value, bool):
        raise InvalidOrderError(f"order {name!r} is not valid: {value!r:.100}")
    return value


def enrich_order(order: Any, timestamp_ms: int) -> dict[str, Any] | None:
    """The enriched order, or None when it is filtered out; ``InvalidOrderError`` if invalid."""
    if not isinstance(order, dict):
        raise InvalidOrderError(f"an order is a JSON object, got {type(order).__name__}")
    _field(order, "id", str)
    _field(order, "customer", str)
    amount = _field(order, "amount", (int, float))
    currency = _field(order, "currency", str).upper()
    if currency not in EUR_RATES:
        raise InvalidOrderError(f"unknown currency {currency!r}; known: {sorted(EUR_RATES)}")
    if amount <= 0:
        return None
    amount_eur = round(amount * EUR_RATES[currency], 2)
    tier = "small" if amount_eur < 100 else "medium" if amount_eur < 1000 else "large"
    event_time = datetime.fromtimestamp(timestamp_ms / 1000, UTC).isoformat(timespec="milliseconds")
    return {
        **order,
        "currency": currency,
        "amount_eur": amount_eur,
        "tier": tier,
        "event_time": event_time,
    }


@app.handler(orders, max_retries=0)
async def enrich(ctx: Context, key: str | None, order: Any) -> None:
    result = enrich_order(order, ctx.timestamp)
    if result is not None:
        await ctx.send(enriched, key, result, timestamp_ms=ctx.timestamp)
