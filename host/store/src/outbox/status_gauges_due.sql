-- Takes the gauge refresh of those of projections $1 (text[]) that no host refreshed in the last
-- $2 seconds (float8), and returns them (migration 0012). The rows stay locked until the
-- transaction that stores the new reading commits: a host asking meanwhile waits, then finds
-- them fresh and reads the stored values.
INSERT INTO outbox_gauges AS g (projection, refreshed_at)
SELECT p, now() FROM unnest($1::text[]) AS p ORDER BY p
ON CONFLICT (projection) DO UPDATE SET refreshed_at = now()
WHERE g.refreshed_at <= now() - make_interval(secs => $2)
RETURNING g.projection
