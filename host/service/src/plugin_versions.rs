//! Where plugin versions are loaded and swapped: every version each projection was given
//! (`plugin_versions`), and the active version each claim loop runs.
//!
//! Invariants:
//! - A new version is compiled and validated off the claim loops (on a blocking thread): the
//!   right world, `describe()` answers, only granted capabilities imported. One that fails is
//!   recorded `rejected` with the reason and the active version keeps serving.
//! - The active version sits behind an atomic pointer per projection. A claim loop reads it once
//!   per batch, so a batch in flight finishes on the version it started with and the next batch
//!   runs the new one; nothing is lost or applied twice by a switch (outcomes are settled by the
//!   same fenced statement whatever version produced them, stamped with that version).
//! - Exactly one version per projection is `active` in the table; activations of one projection
//!   are serialised in this host, and recording them is serialised across hosts (an advisory
//!   lock per projection).
//! - The configured file is activated at start, so a restart runs what the configuration says.

use crate::settings::ProjectionSpec;
use crate::{Error, Result};
use arc_swap::ArcSwap;
use projector_runtime::{LoadedPlugin, Runtime};
use serde::Serialize;
use sqlx::PgPool;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

const ACTIVE: &str = "\
SELECT digest, component FROM plugin_versions
WHERE projection = $1 AND status = 'active' AND component IS NOT NULL";

/// The component of `projection`'s active version, if a host has recorded one.
pub async fn active_component(pool: &PgPool, projection: &str) -> sqlx::Result<Option<Vec<u8>>> {
    let row: Option<(String, Vec<u8>)> = sqlx::query_as(ACTIVE)
        .bind(projection)
        .fetch_optional(pool)
        .await?;
    Ok(row.map(|(_, bytes)| bytes))
}

/// One projection's active version.
pub struct ActiveSlot {
    spec: Arc<ProjectionSpec>,
    active: ArcSwap<LoadedPlugin>,
    switching: tokio::sync::Mutex<()>,
}

impl ActiveSlot {
    /// The version to run the next batch on.
    pub fn current(&self) -> Arc<LoadedPlugin> {
        self.active.load_full()
    }
}

/// A row of `plugin_versions`, as the admin API and `versions list` show it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct VersionRow {
    /// Row id.
    pub id: i64,
    /// Projection.
    pub projection: String,
    /// sha256 of the component.
    pub digest: String,
    /// `describe().version`.
    pub declared_version: Option<String>,
    /// The label stamped on events.
    pub version_label: Option<String>,
    /// active / retired / rejected.
    pub status: String,
    /// Why it was rejected.
    pub reason: Option<String>,
    /// When it was first given to a host.
    pub loaded_at: chrono::DateTime<chrono::Utc>,
    /// When it was last activated.
    pub activated_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Who activated it.
    pub activated_by: Option<String>,
    /// Events whose final outcome it produced.
    pub events: i64,
}

/// The plugin versions of every projection this host runs.
pub struct ActiveVersions {
    runtime: Arc<Runtime>,
    pool: PgPool,
    worker_id: String,
    slots: HashMap<String, Arc<ActiveSlot>>,
}

// Two statements in one transaction: the partial unique index allows one active row, and
// statements of one WITH run in no defined order.
const RETIRE_OTHERS: &str = "\
UPDATE plugin_versions SET status = 'retired'
WHERE projection = $1 AND status = 'active' AND digest <> $2";

const RECORD_ACTIVE: &str = "\
INSERT INTO plugin_versions (projection, digest, declared_name, declared_version, version_label,
                             component, status, activated_at, activated_by)
VALUES ($1, $2, $3, $4, $5, $6, 'active', now(), $7)
ON CONFLICT (projection, digest) DO UPDATE
SET status = 'active', activated_at = now(), activated_by = EXCLUDED.activated_by,
    component = EXCLUDED.component, reason = NULL";

const RECORD_REJECTED: &str = "\
INSERT INTO plugin_versions (projection, digest, status, reason)
VALUES ($1, $2, 'rejected', $3)
ON CONFLICT (projection, digest) DO UPDATE SET reason = EXCLUDED.reason, loaded_at = now()
WHERE plugin_versions.status = 'rejected'";

const PREVIOUS: &str = "\
SELECT component FROM plugin_versions
WHERE projection = $1 AND status = 'retired' AND component IS NOT NULL
ORDER BY activated_at DESC NULLS LAST, id DESC
LIMIT 1";

const LIST: &str = "\
SELECT v.id, v.projection, v.digest, v.declared_version, v.version_label, v.status, v.reason,
       v.loaded_at, v.activated_at, v.activated_by,
       (SELECT count(*) FROM outbox_events e
        WHERE e.projection = v.projection AND e.projection_version = v.version_label) AS events
FROM plugin_versions v
WHERE v.projection = $1
ORDER BY v.id";

impl ActiveVersions {
    /// Records the versions loaded at start (`loaded`, one per projection, with their bytes) as
    /// active and makes them the slots' versions.
    pub async fn start(
        runtime: Arc<Runtime>,
        pool: PgPool,
        worker_id: &str,
        loaded: Vec<(ProjectionSpec, Arc<LoadedPlugin>, Vec<u8>)>,
    ) -> Result<Self> {
        let mut slots = HashMap::new();
        for (spec, plugin, bytes) in loaded {
            record_active(
                &pool,
                &spec.name,
                &plugin,
                &bytes,
                &format!("startup:{worker_id}"),
            )
            .await?;
            slots.insert(
                spec.name.clone(),
                Arc::new(ActiveSlot {
                    spec: Arc::new(spec),
                    active: ArcSwap::new(plugin),
                    switching: Default::default(),
                }),
            );
        }
        Ok(ActiveVersions {
            runtime,
            pool,
            worker_id: worker_id.to_owned(),
            slots,
        })
    }

    /// The slot of `projection`, for its claim loops.
    pub fn slot(&self, projection: &str) -> Option<Arc<ActiveSlot>> {
        self.slots.get(projection).cloned()
    }

    fn slot_or_err(&self, projection: &str) -> Result<&Arc<ActiveSlot>> {
        self.slots.get(projection).ok_or_else(|| {
            Error::config(
                "projection",
                format!("this host runs no projection `{projection}`"),
            )
        })
    }

    /// Validates `bytes` as a new version of `projection` and, if good, makes it active. A bad
    /// one is recorded `rejected` and returned as [`Error::Plugin`]; the active version stays.
    pub async fn activate(
        &self,
        projection: &str,
        bytes: Vec<u8>,
        by: &str,
    ) -> Result<Arc<LoadedPlugin>> {
        let slot = self.slot_or_err(projection)?;
        let _one_at_a_time = slot.switching.lock().await;
        let (runtime, spec, worker_id) = (
            self.runtime.clone(),
            slot.spec.clone(),
            self.worker_id.clone(),
        );
        let origin = PathBuf::from(format!("(new version of `{projection}`)"));
        let (loaded, bytes) = tokio::task::spawn_blocking(move || {
            let loaded = runtime.load_bytes(&spec, &worker_id, &bytes, &origin);
            (loaded, bytes)
        })
        .await
        .map_err(|e| Error::Other(anyhow::anyhow!("loading thread failed: {e}")))?;
        let plugin = match loaded {
            Ok(plugin) => plugin,
            Err(e) => {
                let digest = {
                    use sha2::{Digest, Sha256};
                    hex::encode(Sha256::digest(&bytes))
                };
                sqlx::query(RECORD_REJECTED)
                    .bind(projection)
                    .bind(&digest)
                    .bind(e.to_string())
                    .execute(&self.pool)
                    .await?;
                tracing::warn!(projection, digest, error = %e, by, "plugin version rejected; the active version keeps serving");
                return Err(e);
            }
        };
        record_active(&self.pool, projection, &plugin, &bytes, by).await?;
        projector_store::notify::plugins(&mut *self.pool.acquire().await?, projection).await?;
        let previous = slot.active.swap(plugin.clone());
        tracing::info!(projection, from = %previous.version_label, to = %plugin.version_label, by,
            compiled = plugin.compiled.as_str(), load_ms = plugin.load_time.as_secs_f64() * 1000.0,
            "plugin version activated; the next batch runs it");
        Ok(plugin)
    }

    /// Re-activates the version that was active before the current one.
    pub async fn rollback(&self, projection: &str, by: &str) -> Result<Arc<LoadedPlugin>> {
        self.slot_or_err(projection)?;
        let previous: Option<(Vec<u8>,)> = sqlx::query_as(PREVIOUS)
            .bind(projection)
            .fetch_optional(&self.pool)
            .await?;
        let Some((bytes,)) = previous else {
            return Err(Error::config(
                "rollback",
                format!("projection `{projection}` has no previous version"),
            ));
        };
        self.activate(projection, bytes, by).await
    }
}

/// Every recorded version of `projection` with the number of events it settled, read through
/// `pool` (the admin API's read pool).
pub async fn list(pool: &PgPool, projection: &str) -> sqlx::Result<Vec<VersionRow>> {
    sqlx::query_as(LIST).bind(projection).fetch_all(pool).await
}

async fn record_active(
    pool: &PgPool,
    projection: &str,
    plugin: &LoadedPlugin,
    bytes: &[u8],
    by: &str,
) -> Result<()> {
    let mut tx = pool.begin().await?;
    // Hosts starting together record the same version at once: serialise per projection, or
    // both inserts race on the one-active index.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('projector_plugin_versions:' || $1))")
        .bind(projection)
        .execute(&mut *tx)
        .await?;
    sqlx::query(RETIRE_OTHERS)
        .bind(projection)
        .bind(&plugin.digest)
        .execute(&mut *tx)
        .await?;
    sqlx::query(RECORD_ACTIVE)
        .bind(projection)
        .bind(&plugin.digest)
        .bind(&plugin.info.name)
        .bind(&plugin.info.version)
        .bind(&plugin.version_label)
        .bind(bytes)
        .bind(by)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

impl ActiveVersions {
    /// Watches `projection`'s configured plugin file every `every`: a file whose content differs
    /// from what was last seen there is activated as a new version (`by` = `file:<path>`); a bad
    /// one is rejected once, not at every tick. Runs until the task is aborted.
    pub async fn watch_file(self: Arc<Self>, projection: String, every: std::time::Duration) {
        let Some(slot) = self.slot(&projection) else {
            return;
        };
        let path = slot.spec.plugin.clone();
        let mut last_seen = slot.current().digest.clone();
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Ok(bytes) = tokio::fs::read(&path).await else {
                continue;
            };
            let digest = {
                use sha2::{Digest, Sha256};
                hex::encode(Sha256::digest(&bytes))
            };
            if digest == last_seen {
                continue;
            }
            last_seen = digest;
            let by = format!("file:{}", path.display());
            // Rejections are recorded and logged by `activate`.
            let _ = self.activate(&projection, bytes, &by).await;
        }
    }
}

impl ActiveVersions {
    /// Makes this host run the version the table says is active for `projection`, if it runs
    /// another (another host activated it).
    pub async fn sync(&self, projection: &str) -> Result<()> {
        let Some(slot) = self.slot(projection) else {
            return Ok(());
        };
        let _one_at_a_time = slot.switching.lock().await;
        let active: Option<(String, Vec<u8>)> = sqlx::query_as(ACTIVE)
            .bind(projection)
            .fetch_optional(&self.pool)
            .await?;
        let Some((digest, bytes)) = active else {
            return Ok(());
        };
        if digest == slot.current().digest {
            return Ok(());
        }
        let (runtime, spec, worker_id) = (
            self.runtime.clone(),
            slot.spec.clone(),
            self.worker_id.clone(),
        );
        let origin = PathBuf::from(format!(
            "(active version of `{projection}` in plugin_versions)"
        ));
        let plugin = tokio::task::spawn_blocking(move || {
            runtime.load_bytes(&spec, &worker_id, &bytes, &origin)
        })
        .await
        .map_err(|e| Error::Other(anyhow::anyhow!("loading thread failed: {e}")))??;
        let previous = slot.active.swap(plugin.clone());
        tracing::info!(projection, from = %previous.version_label, to = %plugin.version_label,
            "following the version another host activated; the next batch runs it");
        Ok(())
    }

    /// Follows activations made by other hosts until `shutdown`: on every notification, and
    /// after every (re)connection, since notifications sent meanwhile are lost.
    pub async fn follow(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        let names: Vec<String> = self.slots.keys().cloned().collect();
        while !shutdown.is_cancelled() {
            let mut listener = match sqlx::postgres::PgListener::connect_with(&self.pool).await {
                Ok(l) => l,
                Err(_) => {
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    continue;
                }
            };
            if listener
                .listen(projector_store::notify::PLUGINS_CHANNEL)
                .await
                .is_err()
            {
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
            for name in &names {
                if let Err(e) = self.sync(name).await {
                    tracing::warn!(projection = %name, error = %e, "cannot follow the active plugin version");
                }
            }
            loop {
                match listener.try_recv().await {
                    Ok(Some(n)) => {
                        if let Err(e) = self.sync(n.payload()).await {
                            tracing::warn!(projection = n.payload(), error = %e, "cannot follow the active plugin version");
                        }
                    }
                    Ok(None) => break,
                    Err(_) => break,
                }
            }
        }
    }
}
