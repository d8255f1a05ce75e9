-- How many events of projection $1 are processing under a live lease.
SELECT count(*) FROM outbox_events
WHERE projection = $1 AND status = 'processing' AND lease_expires_at >= now()
