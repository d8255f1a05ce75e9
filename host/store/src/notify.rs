//! Waking the hosts: one channel, the projection name as payload.
//!
//! Invariants:
//! - [`CHANNEL`] is the channel migration 0001's insert trigger notifies (`pg_notify` there names
//!   it literally): the two must agree.
//! - A notification sent inside a transaction is delivered only when it commits, so a host never
//!   wakes for a change it cannot see yet. Every notify here takes the caller's connection or
//!   transaction for that reason.

use sqlx::PgConnection;

const NOTIFY: &str = include_str!("notify.sql");

/// The channel the outbox trigger and every wake-up below notify.
pub const CHANNEL: &str = "projector_outbox";

/// The channel a plugin version change is announced on, with the projection name as payload:
/// every host reloads that projection's active version.
pub const PLUGINS_CHANNEL: &str = "projector_plugins";

/// Tells every host that `projection`'s active plugin version changed.
pub async fn plugins(conn: &mut PgConnection, projection: &str) -> sqlx::Result<()> {
    sqlx::query(NOTIFY)
        .bind(PLUGINS_CHANNEL)
        .bind(projection)
        .execute(conn)
        .await?;
    Ok(())
}

/// Wakes the hosts running `projection` (when the surrounding transaction commits).
pub async fn projection(conn: &mut PgConnection, projection: &str) -> sqlx::Result<()> {
    sqlx::query(NOTIFY)
        .bind(CHANNEL)
        .bind(projection)
        .execute(conn)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_insert_trigger_notifies_the_channel_the_hosts_listen_on() {
        let migration = include_str!("../../../migrations/0001_outbox_events.sql");
        let sent = format!("pg_notify('{}',", super::CHANNEL);
        assert!(
            migration.contains(&sent),
            "migration 0001 does not send {sent}"
        );
        assert!(!migration.contains(&format!("pg_notify('{}',", super::PLUGINS_CHANNEL)));
    }
}
