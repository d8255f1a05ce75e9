-- Outbox-mode rebuild: the source rows as new outbox events of projection $1, in the order given.
-- One element per event in each array: $2 event_type, $3 aggregate_type, $4 aggregate_id,
-- $5 payload (JSON text), $6 occurred_at (RFC 3339 text), $7 headers (JSON object text).
INSERT INTO outbox_events (projection, event_type, aggregate_type, aggregate_id, payload, occurred_at, headers)
SELECT $1, t, a, i, p::jsonb, o::timestamptz, h::jsonb
FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[])
     WITH ORDINALITY AS u(t, a, i, p, o, h, n)
ORDER BY n
