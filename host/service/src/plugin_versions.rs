//! Where plugin versions are loaded and swapped: every version each projection was given
//! (`plugin_versions`), the active version each claim loop runs, which version a starting host
//! runs, and canary rollouts (the split of a batch itself is [`crate::canary`]).
//!
//! Invariants:
//! - A new version is compiled and validated off the claim loops (on a blocking thread): the
//!   right world, `describe()` answers, only granted capabilities imported. One that fails is
//!   recorded `rejected` with the reason and the active version keeps serving.
//! - The active version (and the canary, while one runs) sits behind an atomic pointer per
//!   projection. A claim loop reads them once per batch, so a batch in flight finishes on the
//!   versions it started with and the next batch runs the new ones; nothing is lost or applied
//!   twice by a switch (outcomes are settled by the same fenced statement whatever version
//!   produced them, stamped with that version).
//! - The database is the truth: exactly one version per projection is `active` in the table and
//!   at most one is a running `canary`; every host runs those and follows every change (NOTIFY,
//!   and a re-read after each reconnection). Changes of one projection are serialised in this
//!   host, and across hosts by an advisory lock per projection held by the changing transaction.
//! - At start ([`ActiveVersions::start`], by [`crate::version_rule`]) the configured file is
//!   activated only when the table has no active version, when the file's component is one the
//!   table has never been given (a new deploy), or under `OUTBOX_PLUGIN_FILE_POLICY=file`.
//!   Otherwise a file that differs from the active version is ignored with a WARN naming both
//!   versions and the policy: a restart never silently undoes an upload, a rollback or a
//!   promotion.
//! - Every activation records its source: `file`, `upload`, `rollback`, `canary`, `promote`.
//! - A canary is decided once ([`ActiveVersions::decide`]): under the projection's lock, by
//!   whichever host first sees its outcome count reach `min_events`, or by hand (promote,
//!   abort); the decision, its reason and the counters stay in `plugin_canaries`.

use crate::canary::{self, Canary, Decision};
use crate::settings::{CanaryRule, PluginFilePolicy, ProjectionSpec};
use crate::{Error, Result};
use arc_swap::{ArcSwap, ArcSwapOption};
use projector_runtime::{LoadedPlugin, Runtime};
use projector_store::versions;
use sqlx::PgPool;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

/// One projection's active version, and its canary while one runs.
pub struct ActiveSlot {
    spec: Arc<ProjectionSpec>,
    active: ArcSwap<LoadedPlugin>,
    canary: ArcSwapOption<Canary>,
    switching: tokio::sync::Mutex<()>,
}

impl ActiveSlot {
    /// The version to run the next batch on (the canary's aggregates aside).
    pub fn current(&self) -> Arc<LoadedPlugin> {
        self.active.load_full()
    }

    /// The canary running beside it, if any.
    pub fn canary(&self) -> Option<Arc<Canary>> {
        self.canary.load_full()
    }
}

/// The plugin versions of every projection this host runs.
pub struct ActiveVersions {
    runtime: Arc<Runtime>,
    pool: PgPool,
    worker_id: String,
    rule: CanaryRule,
    slots: HashMap<String, Arc<ActiveSlot>>,
}

fn digest_of(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(bytes))
}

fn activation<'a>(
    projection: &'a str,
    plugin: &'a LoadedPlugin,
    bytes: &'a [u8],
    by: &'a str,
    source: &'a str,
) -> versions::Activation<'a> {
    versions::Activation {
        projection,
        digest: &plugin.digest,
        declared_name: &plugin.info.name,
        declared_version: &plugin.info.version,
        version_label: &plugin.version_label,
        component: bytes,
        by,
        source,
    }
}

async fn load_blocking(
    runtime: &Arc<Runtime>,
    spec: &Arc<ProjectionSpec>,
    worker_id: &str,
    bytes: Vec<u8>,
    origin: String,
) -> (Result<Arc<LoadedPlugin>>, Vec<u8>) {
    let (runtime, spec, worker_id) = (runtime.clone(), spec.clone(), worker_id.to_owned());
    let origin = PathBuf::from(origin);
    match tokio::task::spawn_blocking(move || {
        let loaded = runtime.load_bytes(&spec, &worker_id, &bytes, &origin);
        (loaded, bytes)
    })
    .await
    {
        Ok(done) => done,
        Err(e) => (
            Err(Error::Other(anyhow::anyhow!("loading thread failed: {e}"))),
            Vec::new(),
        ),
    }
}

impl ActiveVersions {
    /// Decides, for each configured projection (`loaded`: the file's version, loaded, with its
    /// bytes), which version this host runs (see the module invariants), records it when the file
    /// wins, and loads a running canary.
    pub async fn start(
        runtime: Arc<Runtime>,
        pool: PgPool,
        worker_id: &str,
        policy: PluginFilePolicy,
        rule: CanaryRule,
        loaded: Vec<(ProjectionSpec, Arc<LoadedPlugin>, Vec<u8>)>,
    ) -> Result<Self> {
        let mut slots = HashMap::new();
        for (spec, file, bytes) in loaded {
            let spec = Arc::new(spec);
            let database_version = async |component: Vec<u8>| {
                let origin = format!("(active version of `{}` in plugin_versions)", spec.name);
                load_blocking(&runtime, &spec, worker_id, component, origin)
                    .await
                    .0
            };
            let plugin = crate::version_rule::startup_version(
                &pool,
                worker_id,
                policy,
                &spec,
                file,
                &bytes,
                database_version,
            )
            .await?;
            slots.insert(
                spec.name.clone(),
                Arc::new(ActiveSlot {
                    spec,
                    active: ArcSwap::new(plugin),
                    canary: ArcSwapOption::empty(),
                    switching: Default::default(),
                }),
            );
        }
        let versions = ActiveVersions {
            runtime,
            pool,
            worker_id: worker_id.to_owned(),
            rule,
            slots,
        };
        for name in versions.slots.keys() {
            versions.sync(name).await?;
        }
        Ok(versions)
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

    /// Compiles and validates `bytes` as a version of `projection`; a bad one is recorded
    /// `rejected` and returned as [`Error::Plugin`].
    async fn validate(
        &self,
        slot: &ActiveSlot,
        projection: &str,
        bytes: Vec<u8>,
        by: &str,
    ) -> Result<(Arc<LoadedPlugin>, Vec<u8>)> {
        let origin = format!("(new version of `{projection}`)");
        let (loaded, bytes) =
            load_blocking(&self.runtime, &slot.spec, &self.worker_id, bytes, origin).await;
        match loaded {
            Ok(plugin) => Ok((plugin, bytes)),
            Err(e) => {
                let digest = digest_of(&bytes);
                versions::record_rejected(&self.pool, projection, &digest, &e.to_string()).await?;
                tracing::warn!(projection, digest, error = %e, by, "plugin version rejected; the active version keeps serving");
                Err(e)
            }
        }
    }

    /// Validates `bytes` as a new version of `projection` and, if good, makes it active
    /// (`source`: `upload`, `file`, `rollback`). A bad one is recorded `rejected` and returned
    /// as [`Error::Plugin`]; the active version stays. A running canary is aborted (superseded).
    pub async fn activate(
        &self,
        projection: &str,
        bytes: Vec<u8>,
        by: &str,
        source: &str,
    ) -> Result<Arc<LoadedPlugin>> {
        let slot = self.slot_or_err(projection)?;
        let _one_at_a_time = slot.switching.lock().await;
        let (plugin, bytes) = self.validate(slot, projection, bytes, by).await?;
        versions::record_active(
            &self.pool,
            &activation(projection, &plugin, &bytes, by, source),
        )
        .await?;
        projector_store::notify::plugins(&mut *self.pool.acquire().await?, projection).await?;
        let previous = slot.active.swap(plugin.clone());
        slot.canary.store(None);
        tracing::info!(projection, from = %previous.version_label, to = %plugin.version_label, by, source,
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
        self.activate(projection, bytes, by, "rollback").await
    }
}

impl ActiveVersions {
    /// Starts a canary of `projection`: validates `bytes` and runs them for `share_percent` %
    /// of its aggregates (by [`canary::is_canary_side`]) beside the active version, which keeps
    /// the others, until the canary is promoted or rolled back.
    pub async fn start_canary(
        &self,
        projection: &str,
        bytes: Vec<u8>,
        share_percent: u8,
        by: &str,
    ) -> Result<Arc<LoadedPlugin>> {
        let slot = self.slot_or_err(projection)?;
        if !(1..=99).contains(&share_percent) {
            return Err(Error::config(
                "canary",
                format!("the share must be between 1 and 99 percent, got {share_percent}"),
            ));
        }
        let _one_at_a_time = slot.switching.lock().await;
        let (plugin, bytes) = self.validate(slot, projection, bytes, by).await?;
        let mut tx = versions::begin_locked(&self.pool, projection).await?;
        let Some(active) = versions::active_on(&mut tx, projection).await? else {
            return Err(Error::config(
                "canary",
                format!("projection `{projection}` has no active version to compare a canary with"),
            ));
        };
        if active.digest == plugin.digest {
            return Err(Error::config(
                "canary",
                format!(
                    "{} is already the active version of `{projection}`",
                    plugin.version_label
                ),
            ));
        }
        if let Some(running) = versions::running_canary_on(&mut tx, projection).await? {
            return Err(Error::config(
                "canary",
                format!(
                    "a canary of `{projection}` is running ({}, started by {}): promote or abort it first",
                    running.version_label.unwrap_or_default(),
                    running.started_by
                ),
            ));
        }
        let id = versions::start_canary_on(
            &mut tx,
            &versions::CanaryStart {
                version: activation(projection, &plugin, &bytes, by, "canary"),
                baseline_id: active.id,
                share_percent: share_percent.into(),
                min_events: self.rule.min_events,
                margin_percent: self.rule.margin_percent,
            },
        )
        .await?;
        tx.commit().await?;
        projector_store::notify::plugins(&mut *self.pool.acquire().await?, projection).await?;
        slot.canary.store(Some(Arc::new(Canary {
            id,
            share_percent,
            plugin: plugin.clone(),
        })));
        tracing::info!(projection, canary = %plugin.version_label, active = %slot.current().version_label,
            share_percent, min_events = self.rule.min_events, margin_percent = self.rule.margin_percent, by,
            "canary started: its share of aggregates runs the new version from the next batch");
        Ok(plugin)
    }

    /// Promotes `projection`'s running canary by hand.
    pub async fn promote(&self, projection: &str, by: &str) -> Result<Arc<LoadedPlugin>> {
        self.end_canary(projection, by, Decision::Promote("promoted by hand".into()))
            .await?
            .ok_or_else(|| no_canary(projection))
    }

    /// Aborts `projection`'s running canary by hand: its aggregates go back to the active
    /// version. Returns the active version.
    pub async fn abort(&self, projection: &str, by: &str) -> Result<Arc<LoadedPlugin>> {
        self.end_canary(projection, by, Decision::RollBack("aborted by hand".into()))
            .await?
            .ok_or_else(|| no_canary(projection))
    }

    /// Takes the automatic decision on `projection`'s running canary once its outcome count
    /// reached `min_events` ([`canary::decide`]). Any host may call it; the first one decides.
    pub async fn decide(&self, projection: &str) -> Result<()> {
        self.end_canary(
            projection,
            &format!("auto:{}", self.worker_id),
            Decision::Wait,
        )
        .await
        .map(|_| ())
    }

    /// Ends the running canary: with `Decision::Wait`, as the rule says once it is due (and not
    /// at all before); otherwise as `decision` says. Returns the version now active, or `None`
    /// when no canary was ended.
    async fn end_canary(
        &self,
        projection: &str,
        by: &str,
        decision: Decision,
    ) -> Result<Option<Arc<LoadedPlugin>>> {
        let slot = self.slot_or_err(projection)?;
        let _one_at_a_time = slot.switching.lock().await;
        let mut tx = versions::begin_locked(&self.pool, projection).await?;
        let Some(running) = versions::running_canary_on(&mut tx, projection).await? else {
            return Ok(None);
        };
        let automatic = decision == Decision::Wait;
        let decision = match decision {
            Decision::Wait => canary::decide(&running),
            by_hand => by_hand,
        };
        let label = running.version_label.clone().unwrap_or_default();
        let figures = (
            running.canary_events,
            running.canary_transient,
            running.canary_terminal,
            running.baseline_events,
            running.baseline_transient,
            running.baseline_terminal,
        );
        let now_active = match decision {
            Decision::Wait => return Ok(None),
            Decision::Promote(reason) => {
                let plugin = match slot.canary().filter(|c| c.plugin.digest == running.digest) {
                    Some(c) => c.plugin.clone(),
                    None => self.load_canary(slot, projection, running.id).await?,
                };
                versions::end_canary_on(&mut tx, projection, "promoted", by, &reason).await?;
                let bytes = versions::canary_component(&self.pool, running.id)
                    .await?
                    .unwrap_or_default();
                versions::record_active_on(
                    &mut tx,
                    &activation(projection, &plugin, &bytes, by, "promote"),
                )
                .await?;
                tx.commit().await?;
                let previous = slot.active.swap(plugin.clone());
                slot.canary.store(None);
                tracing::info!(projection, from = %previous.version_label, to = %label, by, %reason,
                    canary_events = figures.0, canary_transient = figures.1, canary_terminal = figures.2,
                    baseline_events = figures.3, baseline_transient = figures.4, baseline_terminal = figures.5,
                    "canary promoted: it is the active version for every aggregate from the next batch");
                plugin
            }
            Decision::RollBack(reason) => {
                let state = if automatic { "rolled_back" } else { "aborted" };
                versions::end_canary_on(&mut tx, projection, state, by, &reason).await?;
                versions::retire_canary_on(&mut tx, projection, &reason).await?;
                tx.commit().await?;
                slot.canary.store(None);
                tracing::warn!(projection, canary = %label, active = %slot.current().version_label, by, state, %reason,
                    canary_events = figures.0, canary_transient = figures.1, canary_terminal = figures.2,
                    baseline_events = figures.3, baseline_transient = figures.4, baseline_terminal = figures.5,
                    "canary rolled back: its aggregates return to the active version from the next batch");
                slot.current()
            }
        };
        projector_store::notify::plugins(&mut *self.pool.acquire().await?, projection).await?;
        Ok(Some(now_active))
    }

    /// Decides the canaries this host runs once they are due, every `every`, until `shutdown`.
    pub async fn watch_canaries(
        self: Arc<Self>,
        every: std::time::Duration,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !shutdown.is_cancelled() {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            for (name, slot) in &self.slots {
                if slot.canary().is_none() {
                    continue;
                }
                // A cheap read first: the locked decision only once the canary is due.
                let due = match versions::running_canary(&self.pool, name).await {
                    Ok(Some(c)) => c.canary_events >= c.min_events,
                    Ok(None) => false,
                    Err(e) => {
                        tracing::warn!(projection = %name, error = %e, "cannot read the canary");
                        false
                    }
                };
                if !due {
                    continue;
                }
                if let Err(e) = self.decide(name).await {
                    tracing::warn!(projection = %name, error = %e, "cannot decide the canary");
                }
            }
        }
    }
}

impl ActiveVersions {
    /// Loads the version canary `canary_id` of `projection` runs, from the table.
    async fn load_canary(
        &self,
        slot: &ActiveSlot,
        projection: &str,
        canary_id: i64,
    ) -> Result<Arc<LoadedPlugin>> {
        let bytes = versions::canary_component(&self.pool, canary_id)
            .await?
            .ok_or_else(|| no_canary(projection))?;
        let origin = format!("(canary of `{projection}` in plugin_versions)");
        load_blocking(&self.runtime, &slot.spec, &self.worker_id, bytes, origin)
            .await
            .0
    }
}

fn no_canary(projection: &str) -> Error {
    Error::config(
        "canary",
        format!("projection `{projection}` has no running canary"),
    )
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
        // What the file held at start: the database's version may be running instead of it
        // (see `start`), and that is no reason to activate the file now.
        let mut last_seen = match tokio::fs::read(&path).await {
            Ok(bytes) => digest_of(&bytes),
            Err(_) => slot.current().digest.clone(),
        };
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Ok(bytes) = tokio::fs::read(&path).await else {
                continue;
            };
            let digest = digest_of(&bytes);
            if digest == last_seen {
                continue;
            }
            last_seen = digest;
            let by = format!("file:{}", path.display());
            // Rejections are recorded and logged by `activate`.
            let _ = self.activate(&projection, bytes, &by, "file").await;
        }
    }
}

impl ActiveVersions {
    /// Makes this host run the versions the table says are active and canary for `projection`,
    /// if it runs others (another host changed them).
    pub async fn sync(&self, projection: &str) -> Result<()> {
        let Some(slot) = self.slot(projection) else {
            return Ok(());
        };
        let _one_at_a_time = slot.switching.lock().await;
        if let Some(active) = versions::active(&self.pool, projection).await? {
            if active.digest != slot.current().digest {
                let origin = format!("(active version of `{projection}` in plugin_versions)");
                let plugin = load_blocking(
                    &self.runtime,
                    &slot.spec,
                    &self.worker_id,
                    active.component,
                    origin,
                )
                .await
                .0?;
                let previous = slot.active.swap(plugin.clone());
                tracing::info!(projection, from = %previous.version_label, to = %plugin.version_label,
                    source = active.source.as_deref().unwrap_or("-"),
                    "following the version another host activated; the next batch runs it");
            }
        }
        let running = versions::running_canary(&self.pool, projection).await?;
        match (running, slot.canary()) {
            (None, None) => {}
            (None, Some(mine)) => {
                slot.canary.store(None);
                tracing::info!(projection, canary = %mine.plugin.version_label,
                    "following the end of the canary; its aggregates return to the active version");
            }
            (Some(r), Some(mine)) if r.id == mine.id => {}
            (Some(r), _) => {
                let plugin = self.load_canary(&slot, projection, r.id).await?;
                let share_percent = u8::try_from(r.share_percent).unwrap_or(0);
                slot.canary.store(Some(Arc::new(Canary {
                    id: r.id,
                    share_percent,
                    plugin: plugin.clone(),
                })));
                tracing::info!(projection, canary = %plugin.version_label, share_percent,
                    "following the canary another host started; its share of aggregates runs it from the next batch");
            }
        }
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
