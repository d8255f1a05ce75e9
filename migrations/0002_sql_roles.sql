-- Credentials of the per-projection database roles that `sql` plugins run as (see
-- host/src/sql_roles.rs). Only the host's own role may read them: plugins' roles get no
-- privilege on this table.
CREATE TABLE projector_sql_roles (
    projection  text PRIMARY KEY,
    role        name NOT NULL UNIQUE,
    password    text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

REVOKE ALL ON projector_sql_roles FROM PUBLIC;
