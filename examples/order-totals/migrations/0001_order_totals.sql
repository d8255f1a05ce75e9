-- The order-totals read model (version 1 of the plugin writes it): one row per customer, and the
-- events already applied to it. Apply with the application's migrations; grant both tables:
-- [projection.grants] sql_tables = ["order_totals", "order_totals_applied"].
CREATE TABLE order_totals (
    customer_id text PRIMARY KEY,
    total_cents bigint NOT NULL DEFAULT 0
);

-- One row per outbox event applied to order_totals, written in the same transaction as its
-- effect (projector_plugin_sdk::sql::apply_once): a redelivered event finds its id here and
-- changes nothing. Grows by one row per event; see docs/plugins.md (Idempotency patterns) for
-- when rows may be pruned.
CREATE TABLE order_totals_applied (
    event_id   uuid PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
);
