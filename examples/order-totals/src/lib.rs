//! `order-totals`: a running total and an order count per customer, from the events of orders.
//!
//! The read model most projections end up needing, and the one the simple idempotency patterns
//! do not cover:
//! - the row key (the customer) is not the aggregate (the order), so an upsert keyed by the event
//!   id has no row to key, and a `WHERE version < seq` guard on the customer's row drops events:
//!   events of *different* orders of one customer are not delivered in `seq` order (each order is
//!   ordered on its own; one order's retry lets another's later event through first);
//! - the effect is an increment, so applying an event twice counts it twice.
//!
//! So every effect goes through [`sql::apply_once`]: the event id is inserted into
//! `order_totals_applied` in the same transaction as the increment, and the increment runs only
//! when the id is new. A redelivery (a replay, a rebuild over the live model, the test kit's
//! `--deliver-twice`) changes nothing.
//!
//! Events (aggregate = the order): `order.placed` and `order.cancelled`, payload
//! `{"customer_id": "c-1", "amount_cents": 1250}`. A payload without a customer or with an amount
//! that is not a non-negative integer is `bad_payload`, as is any other event type.
//!
//! Version 2 (this one) also counts orders (`orders`, added by `migrations/0002_order_count.sql`);
//! version 1 kept the total only. README.md shows the backfill of the counts of what version 1
//! applied.

use projector_plugin_sdk::{deterministic, reason, sql, success, Event, Guest, Outcome, PluginInfo};
use serde::Deserialize;

/// Event ids already applied to `order_totals` (see `migrations/0001_order_totals.sql`).
const APPLIED: &str = "order_totals_applied";

/// Adds `$2` cents and `$3` orders to customer `$1`'s row, creating it on the first order.
const ADD: &str = "\
INSERT INTO order_totals (customer_id, total_cents, orders) VALUES ($1, $2, $3)
ON CONFLICT (customer_id) DO UPDATE SET
    total_cents = order_totals.total_cents + EXCLUDED.total_cents,
    orders = order_totals.orders + EXCLUDED.orders";

#[derive(Deserialize)]
struct Order {
    customer_id: String,
    amount_cents: u64,
}

fn project(event: &Event) -> Result<Outcome, Outcome> {
    let sign: i64 = match event.event_type.as_str() {
        "order.placed" => 1,
        "order.cancelled" => -1,
        other => {
            return Err(deterministic(
                reason::BAD_PAYLOAD,
                format!("unknown event type `{other}` (order.placed, order.cancelled)"),
            ))
        }
    };
    let order: Order = serde_json::from_str(&event.payload)
        .map_err(|e| deterministic(reason::BAD_PAYLOAD, format!("not an order: {e}")))?;
    if order.customer_id.trim().is_empty() {
        return Err(deterministic(reason::BAD_PAYLOAD, "empty customer_id"));
    }
    let amount = i64::try_from(order.amount_cents)
        .map_err(|_| deterministic(reason::BAD_PAYLOAD, "amount_cents out of range"))?;
    sql::apply_once(APPLIED, &event.id, || {
        sql::execute(ADD, &(&order.customer_id, sign * amount, sign))
    })?;
    Ok(success())
}

struct OrderTotals;

impl Guest for OrderTotals {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "order-totals".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            event_types: vec!["order.placed".into(), "order.cancelled".into()],
        }
    }

    fn handle(events: Vec<Event>) -> Vec<Outcome> {
        events
            .iter()
            .map(|e| project(e).unwrap_or_else(|failed| failed))
            .collect()
    }
}

projector_plugin_sdk::export!(OrderTotals);
