-- Skip (failed -> skipped, terminal): the events $1 (uuid[]) still failed stop blocking their
-- aggregates.
UPDATE outbox_events SET status = 'skipped' WHERE id = ANY($1) AND status = 'failed'
