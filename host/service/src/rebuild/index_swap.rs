//! Zero-downtime rebuilds of search projections: a new index behind each granted name.
//!
//! Invariants:
//! - Each granted index name `N` (exact names only) gets a new index `N-rebuild-<id>` with the
//!   live index's mappings. The plugin's writes to `N` are redirected there by the host (the
//!   grant is checked on `N`); readers keep reading `N`.
//! - Documents carry the event `seq` as an external version, so the source rows must carry a
//!   `seq` comparable with the outbox's: the `seq` of the latest outbox event the row reflects.
//!   A source without a `seq` column is refused before anything is built. Catch-up events (done
//!   after the snapshot) are then newer than every rebuilt document of their aggregate.
//! - The switch is one `_aliases` request, atomic on the server: `N` becomes an alias of the new
//!   index, and the old index (or the indices the alias `N` pointed to) stops being read. Events
//!   a host finished between the last catch-up and the switch are applied to the new index
//!   right after it, before the projection is resumed; then the unfinished events the new index
//!   already contains are marked done with the pause lifted in one database transaction.

use super::{Applier, Report};
use crate::settings::ProjectionSpec;
use crate::{Error, Result};
use elasticsearch::http::Method;
use projector_runtime::search::SearchClient;
use serde_json::{json, Value};
use sqlx::PgPool;
use std::collections::BTreeMap;

/// One granted name and its new index.
#[derive(Debug)]
struct Target {
    /// The name readers and the plugin use.
    name: String,
    /// The index being built.
    new: String,
    /// The physical indices `name` resolves to now (itself when it is a concrete index).
    old: Vec<String>,
    /// Whether `name` is an alias now (else a concrete index, or nothing yet).
    alias: bool,
}

/// The new indices of one search projection.
pub struct IndexSwap {
    client: SearchClient,
    projection: String,
    targets: Vec<Target>,
}

fn refuse(what: String) -> Error {
    Error::config("--zero-downtime", what)
}

impl IndexSwap {
    /// Creates a new index for each of `spec`'s granted indices, with the live one's mappings.
    pub async fn prepare(
        client: SearchClient,
        spec: &ProjectionSpec,
        rebuild_id: i64,
    ) -> Result<Self> {
        let mut targets = Vec::new();
        for name in &spec.grants.search_indices {
            if name.contains('*') {
                return Err(refuse(format!(
                    "projection `{}` is granted the index pattern `{name}`: a zero-downtime rebuild needs exact index names",
                    spec.name
                )));
            }
            let new = format!("{name}-rebuild-{rebuild_id}");
            let (status, aliases) = client
                .admin(Method::Get, &format!("/_alias/{name}"), None)
                .await?;
            let (old, alias, mappings) =
                if status == 200 && aliases.as_object().is_some_and(|m| !m.is_empty()) {
                    let old: Vec<String> = aliases.as_object().unwrap().keys().cloned().collect();
                    let (_, m) = client
                        .admin(Method::Get, &format!("/{}/_mapping", old[0]), None)
                        .await?;
                    (
                        old,
                        true,
                        m.as_object()
                            .and_then(|m| m.values().next())
                            .map(|v| v["mappings"].clone()),
                    )
                } else {
                    let (status, m) = client
                        .admin(Method::Get, &format!("/{name}/_mapping"), None)
                        .await?;
                    if status == 200 {
                        let mappings = m
                            .as_object()
                            .and_then(|m| m.values().next())
                            .map(|v| v["mappings"].clone());
                        (vec![name.clone()], false, mappings)
                    } else {
                        (Vec::new(), false, None)
                    }
                };
            let body = match mappings {
                Some(m) if m.is_object() => json!({"mappings": m}),
                _ => json!({}),
            };
            let (status, answer) = client
                .admin(Method::Put, &format!("/{new}"), Some(body))
                .await?;
            if !(200..300).contains(&status) {
                return Err(Error::Other(anyhow::anyhow!(
                    "creating the index `{new}`: {status} {answer}"
                )));
            }
            targets.push(Target {
                name: name.clone(),
                new,
                old,
                alias,
            });
        }
        Ok(IndexSwap {
            client,
            projection: spec.name.clone(),
            targets,
        })
    }

    /// Where the plugin's writes go while the new indices are built.
    pub fn redirect(&self) -> BTreeMap<String, String> {
        self.targets
            .iter()
            .map(|t| (t.name.clone(), t.new.clone()))
            .collect()
    }

    /// Deletes the new indices (a failed rebuild): the live ones are untouched.
    pub async fn discard(&self) -> Result<()> {
        for t in &self.targets {
            self.client
                .admin(Method::Delete, &format!("/{}", t.new), None)
                .await?;
        }
        Ok(())
    }

    /// Makes the new indices live (see the module doc); the projection is paused by `pauser`.
    pub(super) async fn switch(
        &self,
        pool: &PgPool,
        applier: &mut Applier,
        snapshot: &str,
        applied: &mut Vec<i64>,
        report: &mut Report,
        pauser: &str,
    ) -> Result<()> {
        let patience = applier.spec.tuning.max_processing + applier.spec.tuning.lease;
        super::wait_until_nothing_in_flight(pool, &self.projection, patience).await?;
        super::catch_up(pool, &self.projection, applier, snapshot, applied, report).await?;
        // Readers must find every document of the new indices the moment they switch.
        for t in &self.targets {
            let (status, answer) = self
                .client
                .admin(Method::Post, &format!("/{}/_refresh", t.new), None)
                .await?;
            if !(200..300).contains(&status) {
                return Err(Error::Other(anyhow::anyhow!(
                    "refreshing `{}`: {status} {answer}",
                    t.new
                )));
            }
        }
        let mut actions: Vec<Value> = Vec::new();
        for t in &self.targets {
            if t.alias {
                for old in &t.old {
                    actions.push(json!({"remove": {"index": old, "alias": t.name}}));
                }
                actions.push(json!({"add": {"index": t.new, "alias": t.name}}));
            } else if t.old.is_empty() {
                actions.push(json!({"add": {"index": t.new, "alias": t.name}}));
            } else {
                actions.push(json!({"add": {"index": t.new, "alias": t.name}}));
                actions.push(json!({"remove_index": {"index": t.name}}));
            }
        }
        let (status, answer) = self
            .client
            .admin(Method::Post, "/_aliases", Some(json!({"actions": actions})))
            .await?;
        if !(200..300).contains(&status) {
            return Err(Error::Other(anyhow::anyhow!(
                "switching the aliases: {status} {answer}"
            )));
        }
        // From here the new indices are live: a failure below must not discard them.
        report.switched = true;
        // Events a host settled into the old index in the instant before the switch.
        super::catch_up(pool, &self.projection, applier, snapshot, applied, report).await?;
        let mut tx = pool.begin().await?;
        super::finish_switch(&mut tx, &self.projection, snapshot, pauser, report).await?;
        tx.commit().await?;
        for t in self.targets.iter().filter(|t| t.alias) {
            for old in &t.old {
                let (status, _) = self
                    .client
                    .admin(Method::Delete, &format!("/{old}"), None)
                    .await?;
                if !(200..300).contains(&status) {
                    tracing::warn!(index = %old, status, "could not delete the index the rebuild replaced");
                }
            }
        }
        Ok(())
    }
}
