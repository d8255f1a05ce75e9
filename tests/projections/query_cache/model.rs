//! The query-cache scenarios' model of the HR system: its changes (`Ev`) as the command side
//! writes them to the outbox, a deterministic workload of them, and the specification of the
//! projection as a fold of the events in `seq` order (`fold`), which the read model must equal.

use super::PROJECTION;
use crate::common::NewEvent;
use chrono::{DateTime, FixedOffset, SecondsFormat, TimeZone, Utc};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// `(tenant, code)` of a position or of a job level.
pub type Key = (String, String);

pub fn key(tenant: &str, code: &str) -> Key {
    (tenant.to_owned(), code.to_owned())
}

/// One change of the HR system, as its command side writes it to the outbox.
#[derive(Debug, Clone)]
pub enum Ev {
    Created {
        at: Key,
        title: String,
        level: Option<String>,
        headcount: Option<i64>,
    },
    Updated {
        at: Key,
        title: Option<String>,
        level: Option<String>,
        headcount: Option<i64>,
    },
    Deleted {
        at: Key,
    },
    Filled {
        at: Key,
        assignment: String,
        employee: String,
    },
    Closed {
        at: Key,
        assignment: String,
    },
    LevelVersion {
        level: Key,
        version: i64,
    },
    /// An event the plugin must refuse with `reason`, on an aggregate of its own.
    Broken {
        event_type: &'static str,
        payload: Value,
        reason: &'static str,
    },
}

/// When change `i` happened: 1.5 s apart, with microseconds, so normalisation is visible.
fn occurred(i: usize) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 11, 8, 2, 0, 0).unwrap()
        + chrono::Duration::milliseconds(1500 * i as i64)
        + chrono::Duration::microseconds(7)
}

/// How the read model spells a time: RFC 3339 UTC with microseconds.
pub fn utc_text(i: usize) -> String {
    occurred(i).to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// The seed's envelope, with occurredAt in the command side's own zone (CST, +08:00).
fn envelope(i: usize, tenant: &str, aggregate_id: &str) -> Map<String, Value> {
    let cst = FixedOffset::east_opt(8 * 3600).unwrap();
    let mut m = Map::new();
    m.insert("tenantId".into(), json!(tenant));
    m.insert("requestId".into(), json!(format!("req-{i}")));
    m.insert("correlationId".into(), json!(format!("corr-{i}")));
    m.insert("source".into(), json!("hrms-command"));
    m.insert(
        "occurredAt".into(),
        json!(occurred(i)
            .with_timezone(&cst)
            .to_rfc3339_opts(SecondsFormat::Micros, false)),
    );
    m.insert("aggregateId".into(), json!(aggregate_id));
    m
}

fn position_aggregate(at: &Key) -> String {
    format!("position:{}:{}", at.0, at.1)
}

impl Ev {
    pub fn aggregate_id(&self, i: usize) -> String {
        match self {
            Ev::Created { at, .. }
            | Ev::Updated { at, .. }
            | Ev::Deleted { at }
            | Ev::Filled { at, .. }
            | Ev::Closed { at, .. } => position_aggregate(at),
            Ev::LevelVersion { level, .. } => format!("jobLevel:{}:{}", level.0, level.1),
            Ev::Broken { .. } => format!("broken:{i}"),
        }
    }

    /// The outbox row the command side writes for change `i`.
    pub fn to_outbox(&self, i: usize) -> NewEvent {
        let aggregate_id = self.aggregate_id(i);
        let position = |at: &Key, fields: Value| {
            let mut p = envelope(i, &at.0, &aggregate_id);
            p.insert("positionCode".into(), json!(at.1));
            for (k, v) in fields.as_object().unwrap() {
                if !v.is_null() {
                    p.insert(k.clone(), v.clone());
                }
            }
            Value::Object(p)
        };
        let (event_type, aggregate_type, payload) = match self {
            Ev::Created {
                at,
                title,
                level,
                headcount,
            } => (
                "position.created",
                "position",
                position(
                    at,
                    json!({"title": title, "jobLevelCode": level, "headcount": headcount}),
                ),
            ),
            Ev::Updated {
                at,
                title,
                level,
                headcount,
            } => (
                "position.updated",
                "position",
                position(
                    at,
                    json!({"title": title, "jobLevelCode": level, "headcount": headcount}),
                ),
            ),
            Ev::Deleted { at } => ("position.deleted", "position", position(at, json!({}))),
            Ev::Filled {
                at,
                assignment,
                employee,
            } => (
                "assignment.filled",
                "position",
                position(
                    at,
                    json!({"assignmentId": assignment, "employeeId": employee}),
                ),
            ),
            Ev::Closed { at, assignment } => (
                "assignment.closed",
                "position",
                position(at, json!({"assignmentId": assignment})),
            ),
            Ev::LevelVersion { level, version } => {
                let mut p = envelope(i, &level.0, &aggregate_id);
                p.insert("jobLevelCode".into(), json!(level.1));
                p.insert("version".into(), json!(version));
                ("jobLevel.versionCreated", "jobLevel", Value::Object(p))
            }
            Ev::Broken {
                event_type,
                payload,
                ..
            } => (*event_type, "position", payload.clone()),
        };
        NewEvent::new(PROJECTION, aggregate_id, payload)
            .event_type(event_type)
            .aggregate_type(aggregate_type)
    }
}

/// A small deterministic random source, so a failing workload can be replayed exactly.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) % n as u64) as usize
    }
}

/// A plausible stream of `total` changes: every position of every tenant created (the same
/// codes in each tenant), then fills, closes, updates and job-level versions at random, and at
/// `delete_at` one position deleted (its open assignments may still be closed afterwards).
pub fn workload(
    seed: u64,
    tenants: &[&str],
    per_tenant: usize,
    total: usize,
    delete_at: usize,
) -> Vec<Ev> {
    let mut rng = Lcg(seed);
    let levels = ["L1", "L2", "L3"];
    let mut events = Vec::new();
    let mut live = Vec::new();
    let mut open: Vec<(Key, String)> = Vec::new();
    let mut versions: BTreeMap<Key, i64> = BTreeMap::new();
    let mut assignments = 0;
    for tenant in tenants {
        for n in 0..per_tenant {
            let at = key(tenant, &format!("P{}", 1000 + n));
            let level = (rng.below(4) > 0).then(|| levels[rng.below(3)].to_owned());
            events.push(Ev::Created {
                title: format!("Position {} of {tenant}", at.1),
                at: at.clone(),
                level,
                headcount: Some(1 + rng.below(4) as i64),
            });
            live.push(at);
        }
    }
    while events.len() < total {
        if events.len() == delete_at {
            let at = live.remove(rng.below(live.len()));
            events.push(Ev::Deleted { at });
            continue;
        }
        let dice = rng.below(20);
        if dice < 7 || (dice < 12 && open.is_empty()) {
            let at = live[rng.below(live.len())].clone();
            assignments += 1;
            let assignment = format!("A{assignments:04}");
            open.push((at.clone(), assignment.clone()));
            events.push(Ev::Filled {
                at,
                assignment,
                employee: format!("E{}", rng.below(500)),
            });
        } else if dice < 12 {
            let (at, assignment) = open.remove(rng.below(open.len()));
            events.push(Ev::Closed { at, assignment });
        } else if dice < 16 {
            let at = live[rng.below(live.len())].clone();
            let mask = 1 + rng.below(7);
            events.push(Ev::Updated {
                title: (mask & 1 != 0).then(|| format!("{} rev {}", at.1, events.len())),
                level: (mask & 2 != 0).then(|| levels[rng.below(3)].to_owned()),
                headcount: (mask & 4 != 0).then(|| rng.below(6) as i64),
                at,
            });
        } else {
            let level = key(tenants[rng.below(tenants.len())], levels[rng.below(3)]);
            let version = versions.entry(level.clone()).or_insert(0);
            *version += 1;
            events.push(Ev::LevelVersion {
                level,
                version: *version,
            });
        }
    }
    events
}

/// A position as the read model should hold it.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub title: String,
    pub job_level_code: Option<String>,
    pub job_level_version: Option<i32>,
    pub headcount_capacity: Option<i32>,
    pub headcount_in_use: i32,
    pub assignment_history: Value,
    pub deleted: bool,
    pub last_event_seq: i64,
    pub last_request_id: Option<String>,
}

/// What the host should make of one event.
#[derive(Debug, Clone, PartialEq)]
pub enum Expect {
    /// Done; the positions whose row it changed (each notified once). Empty: a no-op.
    Applied(Vec<Key>),
    /// Failed at once with this reason.
    Failed(&'static str),
    /// Still pending behind a failed event of its aggregate.
    Blocked,
}

/// The specification of the projection: the events folded in `seq` order.
///
/// Hosts may apply events of different aggregates in another order (a job level's version
/// before or after a position moves to that job level). The final state must not depend on it:
/// versions only move up and reach deleted positions too, so the fold's `positions` and `levels`
/// are the final state of any run. `expect`'s changed keys are exact for a run that applies the
/// events one at a time in `seq` order.
pub struct Fold {
    pub positions: BTreeMap<Key, Row>,
    pub levels: BTreeMap<Key, i32>,
    pub expect: Vec<Expect>,
}

pub fn fold(events: &[Ev], seqs: &[i64]) -> Fold {
    let mut positions: BTreeMap<Key, Row> = BTreeMap::new();
    let mut levels: BTreeMap<Key, i32> = BTreeMap::new();
    let mut failed_aggregates = Vec::new();
    let mut expect = Vec::new();
    for (i, (ev, &seq)) in events.iter().zip(seqs).enumerate() {
        let aggregate = ev.aggregate_id(i);
        if failed_aggregates.contains(&aggregate) {
            expect.push(Expect::Blocked);
            continue;
        }
        let request_id = Some(format!("req-{i}"));
        let version_of = |levels: &BTreeMap<Key, i32>, at: &Key, level: &Option<String>| {
            level
                .as_ref()
                .and_then(|l| levels.get(&key(&at.0, l)).copied())
        };
        let outcome: Result<Vec<Key>, &'static str> = match ev {
            Ev::Created {
                at,
                title,
                level,
                headcount,
            } => {
                let history = positions
                    .get(at)
                    .map(|r| r.assignment_history.clone())
                    .unwrap_or(json!([]));
                let in_use = positions.get(at).map_or(0, |r| r.headcount_in_use);
                positions.insert(
                    at.clone(),
                    Row {
                        title: title.clone(),
                        job_level_code: level.clone(),
                        job_level_version: version_of(&levels, at, level),
                        headcount_capacity: headcount.map(|h| h as i32),
                        headcount_in_use: in_use,
                        assignment_history: history,
                        deleted: false,
                        last_event_seq: seq,
                        last_request_id: request_id,
                    },
                );
                Ok(vec![at.clone()])
            }
            Ev::Updated {
                at,
                title,
                level,
                headcount,
            } => match positions.get_mut(at) {
                None => Err("unknown_position"),
                Some(r) if r.deleted => Err("position_deleted"),
                Some(r) => {
                    if let Some(t) = title {
                        r.title = t.clone();
                    }
                    if level.is_some() && *level != r.job_level_code {
                        r.job_level_version = version_of(&levels, at, level);
                        r.job_level_code = level.clone();
                    }
                    if let Some(h) = headcount {
                        r.headcount_capacity = Some(*h as i32);
                    }
                    r.last_event_seq = seq;
                    r.last_request_id = request_id;
                    Ok(vec![at.clone()])
                }
            },
            Ev::Deleted { at } => match positions.get_mut(at) {
                None => Err("unknown_position"),
                Some(r) if r.deleted => Ok(vec![]),
                Some(r) => {
                    r.deleted = true;
                    r.last_event_seq = seq;
                    r.last_request_id = request_id;
                    Ok(vec![at.clone()])
                }
            },
            Ev::Filled {
                at,
                assignment,
                employee,
            } => match positions.get_mut(at) {
                None => Err("unknown_position"),
                Some(r) if r.deleted => Err("position_deleted"),
                Some(r) => {
                    let history = r.assignment_history.as_array_mut().unwrap();
                    if history.iter().any(|e| e["assignmentId"] == *assignment) {
                        Ok(vec![])
                    } else {
                        history.push(json!({"assignmentId": assignment, "employeeId": employee,
                                            "filledAt": utc_text(i), "closedAt": null}));
                        r.headcount_in_use += 1;
                        r.last_event_seq = seq;
                        r.last_request_id = request_id;
                        Ok(vec![at.clone()])
                    }
                }
            },
            Ev::Closed { at, assignment } => match positions.get_mut(at) {
                None => Err("unknown_position"),
                Some(r) => {
                    let history = r.assignment_history.as_array_mut().unwrap();
                    match history
                        .iter_mut()
                        .find(|e| e["assignmentId"] == *assignment)
                    {
                        None => Err("unknown_assignment"),
                        Some(e) if !e["closedAt"].is_null() => Ok(vec![]),
                        Some(e) => {
                            e["closedAt"] = json!(utc_text(i));
                            r.headcount_in_use -= 1;
                            r.last_event_seq = seq;
                            r.last_request_id = request_id;
                            Ok(vec![at.clone()])
                        }
                    }
                }
            },
            Ev::LevelVersion { level, version } => {
                let version = *version as i32;
                let known = levels.entry(level.clone()).or_insert(version);
                *known = (*known).max(version);
                let mut changed = Vec::new();
                for (at, r) in positions.iter_mut() {
                    if at.0 == level.0
                        && r.job_level_code.as_deref() == Some(level.1.as_str())
                        && r.job_level_version.is_none_or(|v| v < version)
                    {
                        r.job_level_version = Some(version);
                        changed.push(at.clone());
                    }
                }
                Ok(changed)
            }
            Ev::Broken { reason, .. } => Err(*reason),
        };
        expect.push(match outcome {
            Ok(keys) => Expect::Applied(keys),
            Err(reason) => {
                failed_aggregates.push(aggregate);
                Expect::Failed(reason)
            }
        });
    }
    Fold {
        positions,
        levels,
        expect,
    }
}
