-- One event's replay history (host/store/src/outbox/events_history.sql): the replay_audit rows
-- whose event_ids hold it, found through an index rather than by reading every audit row.
CREATE INDEX replay_audit_event_ids ON replay_audit USING gin (event_ids);
