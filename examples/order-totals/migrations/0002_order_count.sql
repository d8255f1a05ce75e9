-- Version 2 of the plugin also counts each customer's orders. Existing rows start at 0: the
-- orders v1 already applied are counted by the backfill in README.md (a zero-downtime rebuild
-- from the outbox), not by this migration.
ALTER TABLE order_totals ADD COLUMN orders integer NOT NULL DEFAULT 0;
