-- The read model `{{name}}` writes through the sql capability. Apply it with the application's
-- migrations; grant it with `[projection.grants] sql_tables = ["{{table}}"]`.
CREATE TABLE IF NOT EXISTS {{table}} (
    event_id     uuid PRIMARY KEY,   -- = the outbox event's id: replays never duplicate
    event_type   text  NOT NULL,
    aggregate_id text  NOT NULL,
    payload      jsonb NOT NULL
);
