-- Removes the empty heads among the $2 oldest of projection $1 that the ordered claim walks (not
-- blocked; it walks the oldest first, so that is where leftovers cost it), under the same
-- `version` check as the settle, and like the settle without waiting for a head an inserting
-- transaction holds.
WITH oldest AS (
    SELECT h.aggregate_id, h.next_seq, h.version
    FROM outbox_heads h
    WHERE h.projection = $1 AND NOT h.blocked
    ORDER BY h.next_seq
    LIMIT $2
),
empty AS (
    SELECT o.aggregate_id, o.version
    FROM oldest o
    WHERE NOT EXISTS (
        SELECT 1 FROM outbox_events e
        WHERE e.projection = $1 AND e.aggregate_id = o.aggregate_id AND e.seq >= o.next_seq
          AND e.status <> 'done' AND e.status <> 'skipped')
),
held AS (
    SELECT e.aggregate_id
    FROM (SELECT * FROM empty ORDER BY aggregate_id) e
    CROSS JOIN LATERAL (
        SELECT h.version
        FROM outbox_heads h
        WHERE h.projection = $1 AND h.aggregate_id = e.aggregate_id
        FOR UPDATE SKIP LOCKED
    ) l
    WHERE l.version = e.version
)
DELETE FROM outbox_heads h
USING held l
WHERE h.projection = $1 AND h.aggregate_id = l.aggregate_id
