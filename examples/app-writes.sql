-- How the seed applications write their changes: each business change and its outbox row in
-- one transaction (here, bulk statements standing in for many such transactions). scripts/demo
-- runs this file; the tables come from ../migrations (projector) and migrations/ (the apps).
-- An outbox row needs only projection, event_type, aggregate_id and payload.

-- Search (seed 003): books created, renamed, one deleted, one without a title (bad payload).
INSERT INTO outbox_events (projection, event_type, aggregate_type, aggregate_id, payload)
SELECT 'search', e.type, 'book', 'book-' || b, e.payload
FROM generate_series(1, 12) AS b,
LATERAL (VALUES
    (1, 'book.created', jsonb_build_object('title', 'Book ' || b, 'tenantId', 't-1', 'requestId', 'req-c' || b)),
    (2, 'book.renamed', jsonb_build_object('title', 'Book ' || b || ' (2nd ed.)', 'tenantId', 't-1', 'requestId', 'req-r' || b))
) AS e(step, type, payload)
ORDER BY e.step, b;
INSERT INTO outbox_events (projection, event_type, aggregate_type, aggregate_id, payload) VALUES
    ('search', 'book.deleted', 'book', 'book-12', '{"tenantId": "t-1"}'),
    ('search', 'book.created', 'book', 'book-13', '{"tenantId": "t-1", "note": "no title"}');

-- Chronicle (seed 004): the source-of-truth row and its outbox row, together.
WITH changes AS (
    INSERT INTO chronicle_events (actor_user_id, entity_type, entity_id, event_type, before, after, occurred_at, request_id)
    SELECT 'user-' || (i % 3), 'book', 'book-' || (i % 12 + 1), 'BookRenamed',
           jsonb_build_object('title', 'v' || (i - 1)), jsonb_build_object('title', 'v' || i),
           now() - make_interval(mins => 60 - i), 'req-' || i
    FROM generate_series(1, 40) AS i
    RETURNING *
)
INSERT INTO outbox_events (projection, event_type, aggregate_type, aggregate_id, payload)
SELECT 'chronicle', 'book.renamed', entity_type, entity_type || ':' || entity_id,
       jsonb_build_object('chronicleEventId', id, 'actorUserId', actor_user_id, 'entityType', entity_type,
                          'entityId', entity_id, 'eventType', event_type, 'before', before, 'after', after,
                          'occurredAt', occurred_at, 'requestId', request_id, 'tenantId', 't-1')
FROM changes ORDER BY occurred_at;

-- Query cache (seeds 000/001): positions, assignments, a job-level version.
INSERT INTO outbox_events (projection, event_type, aggregate_type, aggregate_id, payload)
SELECT 'query-cache', e.type, e.agg_type, e.agg, e.payload || jsonb_build_object(
           'tenantId', 't-1', 'occurredAt', now(), 'requestId', 'req-' || e.n, 'source', 'demo')
FROM (VALUES
    (1, 'position.created', 'position', 'position:t-1:P-1', '{"positionCode": "P-1", "title": "Engineer", "jobLevelCode": "L3", "headcount": 2}'::jsonb),
    (2, 'position.created', 'position', 'position:t-1:P-2', '{"positionCode": "P-2", "title": "Designer", "jobLevelCode": "L2", "headcount": 1}'),
    (3, 'assignment.filled', 'position', 'position:t-1:P-1', '{"positionCode": "P-1", "assignmentId": "A-1", "employeeId": "E-1"}'),
    (4, 'assignment.filled', 'position', 'position:t-1:P-1', '{"positionCode": "P-1", "assignmentId": "A-2", "employeeId": "E-2"}'),
    (5, 'assignment.filled', 'position', 'position:t-1:P-2', '{"positionCode": "P-2", "assignmentId": "A-3", "employeeId": "E-3"}'),
    (6, 'assignment.closed', 'position', 'position:t-1:P-1', '{"positionCode": "P-1", "assignmentId": "A-1"}'),
    (7, 'jobLevel.versionCreated', 'jobLevel', 'jobLevel:t-1:L3', '{"jobLevelCode": "L3", "version": 2}'),
    (8, 'assignment.closed', 'position', 'position:t-1:P-2', '{"positionCode": "P-2", "assignmentId": "A-404"}')
) AS e(n, type, agg_type, agg, payload)
ORDER BY e.n;
