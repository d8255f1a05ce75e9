-- One event of projection $1, by seq $2 or, when $2 is NULL, by id $3 (a row of EventDetail).
-- The payload and headers come as text cut at $4 bytes' worth of characters, with their full
-- length in bytes, so an oversized payload costs the reader at most that much.
SELECT seq, id, projection, event_type, aggregate_type, aggregate_id,
       left(payload::text, $4) AS payload_text, octet_length(payload::text) AS payload_bytes,
       left(headers::text, $4) AS headers_text, octet_length(headers::text) AS headers_bytes,
       occurred_at, created_at, status, attempts, next_retry_at, claimed_by, lease_expires_at,
       processing_started_at, done_at, error_reason, error, failure_kind, projection_version,
       replay_count, last_replayed_at, last_replayed_by, last_replayed_reason
FROM outbox_events
WHERE projection = $1
  AND seq = COALESCE($2::bigint, (SELECT seq FROM outbox_events WHERE id = $3::uuid))
