-- The schema `outbox_events` lives in (resolved on the search path).
SELECT n.nspname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = 'outbox_events'::regclass
