//! The rule for which plugin version a starting host runs (docs/plugins.md, "Which version runs
//! after a restart"; README, "Which version runs"): the database's active version is the truth.
//!
//! Invariants:
//! - The decision, and the write when the file wins, run in one transaction holding the
//!   projection's advisory lock, so replicas starting together agree: the first registers, the
//!   next finds its file active.
//! - The configured file is activated (source `file`) only when the table has no active version
//!   (first start), when its component is one the table has never been given or only rejected (a
//!   new deploy), or under `OUTBOX_PLUGIN_FILE_POLICY=file`; replacing another active version is
//!   logged as a WARN naming both.
//! - Otherwise a file that differs from the active version is not run: the host loads the
//!   database's version and logs a WARN naming the file's version, the active one, its source,
//!   who activated it and the policy. A host that cannot load the database's version refuses to
//!   start (exit 2), naming the setting that lets the file win.

use crate::settings::{PluginFilePolicy, ProjectionSpec};
use crate::{Error, Result};
use projector_runtime::LoadedPlugin;
use projector_store::versions;
use sqlx::PgPool;
use std::sync::Arc;

/// The version a starting host runs for `spec`, given its configured `file` (see the module
/// invariants): the file, recorded as active when it wins, or the database's active version,
/// loaded from its component by `load`.
pub async fn startup_version(
    pool: &PgPool,
    worker_id: &str,
    policy: PluginFilePolicy,
    spec: &ProjectionSpec,
    file: Arc<LoadedPlugin>,
    bytes: &[u8],
    load: impl AsyncFnOnce(Vec<u8>) -> Result<Arc<LoadedPlugin>>,
) -> Result<Arc<LoadedPlugin>> {
    let projection = spec.name.as_str();
    let by = format!("startup:{worker_id}");
    let as_file = versions::Activation {
        projection,
        digest: &file.digest,
        declared_name: &file.info.name,
        declared_version: &file.info.version,
        version_label: &file.version_label,
        component: bytes,
        by: &by,
        source: "file",
    };
    let mut tx = versions::begin_locked(pool, projection).await?;
    let active = versions::active_on(&mut tx, projection).await?;
    let known = versions::known_on(&mut tx, projection, &file.digest).await?;
    let file_is_new = known
        .as_ref()
        .is_none_or(|(status, _)| status == "rejected");
    let active = match active {
        Some(active) if active.digest != file.digest => active,
        Some(_) => {
            tracing::info!(projection, version = %file.version_label, "the configured file is the active version");
            return Ok(file);
        }
        None => {
            versions::record_active_on(&mut tx, &as_file).await?;
            tx.commit().await?;
            tracing::info!(projection, version = %file.version_label, "first start: the configured file is registered as the active version");
            return Ok(file);
        }
    };
    let active_label = active.version_label.clone().unwrap_or_default();
    let active_source = active.source.clone().unwrap_or_default();
    if policy == PluginFilePolicy::File || file_is_new {
        versions::record_active_on(&mut tx, &as_file).await?;
        tx.commit().await?;
        let why = if file_is_new {
            "the configured file is a version the database has never been given (a new deploy)"
        } else {
            "OUTBOX_PLUGIN_FILE_POLICY=file: the configured file wins over the database"
        };
        tracing::warn!(projection, file_version = %file.version_label, replaced = %active_label,
            replaced_source = %active_source, policy = %policy,
            "the configured file replaces the database's active version: {why}");
        return Ok(file);
    }
    tx.commit().await?;
    tracing::warn!(projection, file_version = %file.version_label, file = %spec.plugin.display(),
        active_version = %active_label, active_source = %active_source,
        activated_by = active.activated_by.as_deref().unwrap_or("-"), policy = %policy,
        "the configured plugin file differs from the database's active version; running the database's version (OUTBOX_PLUGIN_FILE_POLICY=database: the database's active version is the truth; set it to `file` to make the file win, or activate the file with `projector versions load`)");
    load(active.component).await.map_err(|e| {
        Error::config(
            "OUTBOX_PLUGIN_FILE_POLICY",
            format!(
                "the database's active version {active_label} of `{projection}` cannot be loaded by this host ({e}); \
                 set OUTBOX_PLUGIN_FILE_POLICY=file to run the configured file"
            ),
        )
    })
}
