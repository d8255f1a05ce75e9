//! Earlier versions of `examples/order-totals`, built twice from this file:
//! - `order-totals-v1` (1.0.0): the total only, each effect through
//!   `sql::apply_once("order_totals_applied", ...)`; the version the backfill test replaces with
//!   the example (2.0.0, which also counts orders).
//! - `order-totals-naive` (0.1.0): the same increment without the applied-events table, so every
//!   delivery of an event adds its amount again: what the test kit's `--deliver-twice` and a
//!   rebuild over the live model must expose.
//!
//! Payloads and outcomes as the example's (its module doc).

use projector_plugin_sdk::{deterministic, reason, sql, success, Event, Guest, Outcome, PluginInfo};
use serde::Deserialize;

const NAIVE: bool = matches!(env!("CARGO_PKG_NAME").as_bytes(), b"order-totals-naive");

const ADD: &str = "\
INSERT INTO order_totals (customer_id, total_cents) VALUES ($1, $2)
ON CONFLICT (customer_id) DO UPDATE SET total_cents = order_totals.total_cents + EXCLUDED.total_cents";

#[derive(Deserialize)]
struct Order {
    customer_id: String,
    amount_cents: u64,
}

fn project(event: &Event) -> Result<Outcome, Outcome> {
    let sign: i64 = match event.event_type.as_str() {
        "order.placed" => 1,
        "order.cancelled" => -1,
        other => return Err(deterministic(reason::BAD_PAYLOAD, format!("unknown event type `{other}`"))),
    };
    let order: Order = serde_json::from_str(&event.payload)
        .map_err(|e| deterministic(reason::BAD_PAYLOAD, format!("not an order: {e}")))?;
    let amount = i64::try_from(order.amount_cents)
        .map_err(|_| deterministic(reason::BAD_PAYLOAD, "amount_cents out of range"))?;
    let add = || sql::execute(ADD, &(&order.customer_id, sign * amount));
    if NAIVE {
        add()?;
    } else {
        sql::apply_once("order_totals_applied", &event.id, add)?;
    }
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
        events.iter().map(|e| project(e).unwrap_or_else(|f| f)).collect()
    }
}

projector_plugin_sdk::export!(OrderTotals);
