-- The installed projector_settle function in the outbox's schema: (body, settings such as its
-- pinned search_path); no row when it is not installed.
SELECT prosrc, coalesce(proconfig, '{}') FROM pg_proc WHERE proname = 'projector_settle'
AND pronamespace = (SELECT relnamespace FROM pg_class WHERE oid = 'outbox_events'::regclass)
