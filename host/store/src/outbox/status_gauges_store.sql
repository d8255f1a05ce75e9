-- Stores a gauge reading taken by status_gauges.sql, one array element per projection:
--   $1: projections (text[])
--   $2..$5: their lag, in flight, stuck and blocked counts (int8[])
--   $6: when each one's oldest unfinished event was created (timestamptz[], NULL: none)
UPDATE outbox_gauges g
SET lag = r.lag, inflight = r.inflight, stuck = r.stuck, blocked = r.blocked,
    oldest_created_at = r.oldest_created_at
FROM unnest($1::text[], $2::int8[], $3::int8[], $4::int8[], $5::int8[], $6::timestamptz[])
     AS r(projection, lag, inflight, stuck, blocked, oldest_created_at)
WHERE g.projection = r.projection
