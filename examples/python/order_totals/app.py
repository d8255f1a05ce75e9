"""order-totals, in Python: a port of examples/order-totals (the Rust plugin, version 2).

A running total and an order count per customer from `order.placed` / `order.cancelled` events
(aggregate = the order). The increment goes through the SDK's `apply_once`: the event id is
inserted into `order_totals_applied` in the same transaction, and the increment runs only when
the id is new, so a redelivered event changes nothing. Same statements, parameters and outcomes
as the Rust plugin: the test kit checks both against the same expectation file.

Build (from the repository root; the second `-p` is the SDK's directory):
    componentize-py -d wit -w sql-plugin componentize -p examples/python/order_totals \
        -p plugins/sdk/python app -o order_totals_py.wasm
"""

import json

import projector_plugin_sdk as sdk
from wit_world import exports
from wit_world.imports.types import Event, Outcome, PluginInfo

APPLIED = "order_totals_applied"

ADD = """
INSERT INTO order_totals (customer_id, total_cents, orders) VALUES ($1, $2, $3)
ON CONFLICT (customer_id) DO UPDATE SET
    total_cents = order_totals.total_cents + EXCLUDED.total_cents,
    orders = order_totals.orders + EXCLUDED.orders"""

SIGNS = {"order.placed": 1, "order.cancelled": -1}


def project(event: Event) -> Outcome:
    sign = SIGNS.get(event.event_type)
    if sign is None:
        return sdk.deterministic(
            sdk.BAD_PAYLOAD,
            f"unknown event type `{event.event_type}` (order.placed, order.cancelled)")
    try:
        order = json.loads(event.payload)
    except ValueError as e:
        return sdk.deterministic(sdk.BAD_PAYLOAD, f"not an order: {e}")
    customer = order.get("customer_id") if isinstance(order, dict) else None
    amount = order.get("amount_cents") if isinstance(order, dict) else None
    if not isinstance(customer, str) or not isinstance(amount, int) or isinstance(amount, bool) \
            or amount < 0:
        return sdk.deterministic(sdk.BAD_PAYLOAD, "not an order: customer_id (text) and "
                                 "amount_cents (a non-negative integer) expected")
    if not customer.strip():
        return sdk.deterministic(sdk.BAD_PAYLOAD, "empty customer_id")
    try:
        sdk.apply_once(APPLIED, event.id,
                       lambda: sdk.execute(ADD, [customer, sign * amount, sign]))
    except sdk.Failed as failed:
        return failed.outcome
    return sdk.success()


class Projection(exports.Projection):
    def describe(self) -> PluginInfo:
        return PluginInfo(name="order-totals-py", version="2.0.0",
                          event_types=list(SIGNS))

    def handle(self, events: list[Event]) -> list[Outcome]:
        return [project(e) for e in events]
