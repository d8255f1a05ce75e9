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
use projector_store::versions;
use sqlx::PgPool;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

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

/// The plugin versions of every projection this host runs.
pub struct ActiveVersions {
    runtime: Arc<Runtime>,
    pool: PgPool,
    worker_id: String,
    slots: HashMap<String, Arc<ActiveSlot>>,
}

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
                versions::record_rejected(&self.pool, projection, &digest, &e.to_string()).await?;
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
        let Some(bytes) = versions::previous(&self.pool, projection).await? else {
            return Err(Error::config(
                "rollback",
                format!("projection `{projection}` has no previous version"),
            ));
        };
        self.activate(projection, bytes, by).await
    }
}

async fn record_active(
    pool: &PgPool,
    projection: &str,
    plugin: &LoadedPlugin,
    bytes: &[u8],
    by: &str,
) -> Result<()> {
    versions::record_active(
        pool,
        &versions::Activation {
            projection,
            digest: &plugin.digest,
            declared_name: &plugin.info.name,
            declared_version: &plugin.info.version,
            version_label: &plugin.version_label,
            component: bytes,
            by,
        },
    )
    .await?;
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
        let Some(versions::StoredComponent {
            digest,
            component: bytes,
        }) = versions::active(&self.pool, projection).await?
        else {
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
