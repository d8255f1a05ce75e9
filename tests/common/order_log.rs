//! An order oracle that does not trust the host: triggers in the test database record every claim
//! and every transition to `done` of `outbox_events`, and [`OrderLog::violations`] checks the
//! record against strict per-aggregate order.
//!
//! Both triggers are deferred constraint triggers, so they run when the host's transaction
//! commits and see what that commit makes visible: its own writes (all of them, whichever
//! statement made them) and everything other transactions committed before. For each recorded
//! row they count the earlier events of its aggregate that are unfinished (not `done` or
//! `skipped`):
//! - at a claim, not counting earlier events held by the same claim (a run of one aggregate in
//!   one batch), so a claim that hands a plugin an event whose predecessor is pending, failed or
//!   in another batch is caught;
//! - at a transition to `done`, so an event settled before its predecessor is caught.
//!
//! A count can only be too low, never too high: a finished event never becomes unfinished again,
//! so anything the trigger sees unfinished was unfinished when the host decided.
//!
//! The counts read a shadow of each event's status and claim (`order_log_status`, written by
//! plain row triggers in the same transaction as the change it mirrors) with an index of its own,
//! so the recorder costs the same whatever indexes the host's schema has, and adds none to
//! `outbox_events` that could change the plans of the host's statements.
//!
//! The record's identity `n` follows commit order within one aggregate when the order holds (the
//! next event of an aggregate can only be claimed after the previous one's settle committed), and
//! rows settled together carry the same `txid`.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use sqlx::postgres::PgPool;
use uuid::Uuid;

use super::EventRow;

/// Installs the recording tables and triggers in the database `pool` is on (after `migrate`).
pub async fn record_delivery_order(pool: &PgPool) {
    sqlx::raw_sql(
        "CREATE TABLE order_log_claims (
             n                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
             seq               bigint NOT NULL,
             projection        text NOT NULL,
             aggregate_id      text NOT NULL,
             claim_batch_id    uuid,
             claimed_by        text,
             previous_status   text NOT NULL,
             unfinished_before bigint NOT NULL,
             at                timestamptz NOT NULL DEFAULT clock_timestamp(),
             txid              bigint NOT NULL DEFAULT txid_current());
         CREATE TABLE order_log_done (
             n                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
             seq               bigint NOT NULL,
             projection        text NOT NULL,
             aggregate_id      text NOT NULL,
             claim_batch_id    uuid,
             unfinished_before bigint NOT NULL,
             at                timestamptz NOT NULL DEFAULT clock_timestamp(),
             txid              bigint NOT NULL DEFAULT txid_current());

         CREATE TABLE order_log_status (
             seq            bigint PRIMARY KEY,
             projection     text NOT NULL,
             aggregate_id   text NOT NULL,
             status         text NOT NULL,
             claim_batch_id uuid);
         CREATE INDEX order_log_status_aggregate
             ON order_log_status (projection, aggregate_id, seq);
         INSERT INTO order_log_status
             SELECT seq, projection, aggregate_id, status, claim_batch_id FROM outbox_events;

         -- SECURITY DEFINER: a trigger runs as whoever writes or commits, which may be a
         -- projection's restricted role (sql projections settle through projector_settle).
         CREATE FUNCTION order_log_mirror() RETURNS trigger
             LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
         BEGIN
             IF TG_OP = 'INSERT' THEN
                 INSERT INTO order_log_status
                     VALUES (NEW.seq, NEW.projection, NEW.aggregate_id, NEW.status,
                             NEW.claim_batch_id);
             ELSIF TG_OP = 'UPDATE' THEN
                 UPDATE order_log_status
                    SET status = NEW.status, claim_batch_id = NEW.claim_batch_id
                  WHERE seq = NEW.seq;
             ELSE
                 DELETE FROM order_log_status WHERE seq = OLD.seq;
             END IF;
             RETURN NULL;
         END $$;
         CREATE TRIGGER order_log_mirror_rows AFTER INSERT OR DELETE ON outbox_events
             FOR EACH ROW EXECUTE FUNCTION order_log_mirror();
         CREATE TRIGGER order_log_mirror_update AFTER UPDATE ON outbox_events
             FOR EACH ROW
             WHEN (NEW.status IS DISTINCT FROM OLD.status
                   OR NEW.claim_batch_id IS DISTINCT FROM OLD.claim_batch_id)
             EXECUTE FUNCTION order_log_mirror();

         CREATE FUNCTION order_log_claimed() RETURNS trigger
             LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
         BEGIN
             INSERT INTO order_log_claims
                 (seq, projection, aggregate_id, claim_batch_id, claimed_by, previous_status,
                  unfinished_before)
             SELECT NEW.seq, NEW.projection, NEW.aggregate_id, NEW.claim_batch_id, NEW.claimed_by,
                    OLD.status, count(*)
               FROM order_log_status p
              WHERE p.projection = NEW.projection AND p.aggregate_id = NEW.aggregate_id
                AND p.seq < NEW.seq AND p.status NOT IN ('done', 'skipped')
                AND NOT (p.status = 'processing'
                         AND p.claim_batch_id IS NOT DISTINCT FROM NEW.claim_batch_id);
             RETURN NULL;
         END $$;
         CREATE FUNCTION order_log_done() RETURNS trigger
             LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
         BEGIN
             INSERT INTO order_log_done
                 (seq, projection, aggregate_id, claim_batch_id, unfinished_before)
             SELECT NEW.seq, NEW.projection, NEW.aggregate_id, NEW.claim_batch_id, count(*)
               FROM order_log_status p
              WHERE p.projection = NEW.projection AND p.aggregate_id = NEW.aggregate_id
                AND p.seq < NEW.seq AND p.status NOT IN ('done', 'skipped');
             RETURN NULL;
         END $$;

         CREATE CONSTRAINT TRIGGER order_log_claimed AFTER UPDATE ON outbox_events
             DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
             WHEN (NEW.status = 'processing'
                   AND NEW.claim_batch_id IS DISTINCT FROM OLD.claim_batch_id)
             EXECUTE FUNCTION order_log_claimed();
         -- A done row settled again (a new done_at) is recorded again: a duplicate delivery.
         CREATE CONSTRAINT TRIGGER order_log_done AFTER UPDATE ON outbox_events
             DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
             WHEN (NEW.status = 'done'
                   AND (OLD.status <> 'done' OR NEW.done_at IS DISTINCT FROM OLD.done_at))
             EXECUTE FUNCTION order_log_done();",
    )
    .execute(pool)
    .await
    .expect("install the delivery-order recorder");
}

/// One claim of one event, as the recorder saw it commit.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ClaimRecord {
    pub n: i64,
    pub seq: i64,
    pub aggregate_id: String,
    pub claim_batch_id: Option<Uuid>,
    pub claimed_by: Option<String>,
    /// The status the claim took the row from (`pending`, or `processing` when reclaimed).
    pub previous_status: String,
    /// Earlier events of the aggregate, unfinished and not in this claim, at commit.
    pub unfinished_before: i64,
    pub at: DateTime<Utc>,
    pub txid: i64,
}

/// One transition to `done`, as the recorder saw it commit.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DoneRecord {
    pub n: i64,
    pub seq: i64,
    pub aggregate_id: String,
    pub claim_batch_id: Option<Uuid>,
    /// Earlier events of the aggregate not done or skipped, at commit.
    pub unfinished_before: i64,
    pub at: DateTime<Utc>,
    pub txid: i64,
}

/// What the recorder holds for one projection, in recording order.
#[derive(Debug, Clone)]
pub struct OrderLog {
    pub claims: Vec<ClaimRecord>,
    pub done: Vec<DoneRecord>,
}

/// Reads the record of `projection` (see [`record_delivery_order`]).
pub async fn delivery_order(pool: &PgPool, projection: &str) -> OrderLog {
    let claims = sqlx::query_as(
        "SELECT n, seq, aggregate_id, claim_batch_id, claimed_by, previous_status,
                unfinished_before, at, txid
           FROM order_log_claims WHERE projection = $1 ORDER BY n",
    )
    .bind(projection)
    .fetch_all(pool)
    .await
    .expect("read order_log_claims");
    let done = sqlx::query_as(
        "SELECT n, seq, aggregate_id, claim_batch_id, unfinished_before, at, txid
           FROM order_log_done WHERE projection = $1 ORDER BY n",
    )
    .bind(projection)
    .fetch_all(pool)
    .await
    .expect("read order_log_done");
    OrderLog { claims, done }
}

impl OrderLog {
    /// Every breach of strict per-aggregate order in the record, one line each, checked against
    /// the projection's final rows `rows`: an event claimed while an earlier one of its aggregate
    /// was unfinished outside its claim, or claimed from a terminal state; an event done while an
    /// earlier one was unfinished; an aggregate whose settles, in commit order, do not follow seq
    /// order (by the record, and by `done_at` across transactions); an event recorded done twice;
    /// a row done without a recorded settle, or recorded done and no longer done.
    pub fn violations(&self, rows: &[EventRow]) -> Vec<String> {
        let mut found = Vec::new();
        for c in &self.claims {
            if c.unfinished_before > 0 {
                found.push(format!(
                    "{}: seq {} claimed (batch {:?}, by {:?}) while {} earlier event(s) were \
                     unfinished outside that batch",
                    c.aggregate_id, c.seq, c.claim_batch_id, c.claimed_by, c.unfinished_before
                ));
            }
            if c.previous_status != "pending" && c.previous_status != "processing" {
                found.push(format!(
                    "{}: seq {} claimed from status {}",
                    c.aggregate_id, c.seq, c.previous_status
                ));
            }
        }
        let mut done_count: HashMap<i64, usize> = HashMap::new();
        for d in &self.done {
            *done_count.entry(d.seq).or_default() += 1;
            if d.unfinished_before > 0 {
                found.push(format!(
                    "{}: seq {} done while {} earlier event(s) were not done or skipped",
                    d.aggregate_id, d.seq, d.unfinished_before
                ));
            }
        }
        for (seq, times) in &done_count {
            if *times > 1 {
                found.push(format!("seq {seq} recorded done {times} times"));
            }
        }
        for row in rows {
            let recorded = done_count.get(&row.seq).copied().unwrap_or(0);
            if row.status == "done" && recorded == 0 {
                found.push(format!(
                    "{}: seq {} is done but no settle of it was recorded",
                    row.aggregate_id, row.seq
                ));
            }
            if row.status != "done" && recorded > 0 {
                found.push(format!(
                    "{}: seq {} was recorded done but is now {}",
                    row.aggregate_id, row.seq, row.status
                ));
            }
        }

        // Commit order per aggregate: the settles (grouped by transaction, in recording order)
        // must cover increasing seq ranges.
        let mut by_aggregate: BTreeMap<&str, Vec<&DoneRecord>> = BTreeMap::new();
        for d in &self.done {
            by_aggregate.entry(&d.aggregate_id).or_default().push(d);
        }
        for (aggregate, records) in &by_aggregate {
            let groups = records.chunk_by(|a, b| a.txid == b.txid);
            let mut previous: Option<(i64, i64)> = None; // (highest seq, txid)
            for group in groups {
                let lowest = group.iter().map(|d| d.seq).min().expect("non-empty");
                let highest = group.iter().map(|d| d.seq).max().expect("non-empty");
                if let Some((earlier_highest, earlier_tx)) = previous {
                    if lowest < earlier_highest {
                        found.push(format!(
                            "{aggregate}: seq {earlier_highest} (tx {earlier_tx}) became done \
                             before seq {lowest} (tx {})",
                            group[0].txid
                        ));
                    }
                }
                previous = Some((highest, group[0].txid));
            }
        }

        // done_at, as the host stamps it: across transactions it follows seq order.
        let done_tx: HashMap<i64, i64> = self.done.iter().map(|d| (d.seq, d.txid)).collect();
        let mut done_rows: BTreeMap<&str, Vec<&EventRow>> = BTreeMap::new();
        for row in rows.iter().filter(|r| r.status == "done") {
            done_rows.entry(&row.aggregate_id).or_default().push(row);
        }
        for (aggregate, rows) in &done_rows {
            let mut rows = rows.clone();
            rows.sort_by_key(|r| r.seq);
            for pair in rows.windows(2) {
                let (earlier, later) = (pair[0], pair[1]);
                let same_tx = done_tx.contains_key(&earlier.seq)
                    && done_tx.get(&earlier.seq) == done_tx.get(&later.seq);
                if !same_tx && later.done_at <= earlier.done_at {
                    found.push(format!(
                        "{aggregate}: seq {} done at {:?}, not after seq {} done at {:?}",
                        later.seq, later.done_at, earlier.seq, earlier.done_at
                    ));
                }
            }
        }
        found
    }

    /// The most events of one aggregate that one claim held.
    pub fn largest_run(&self) -> usize {
        let mut per_claim: HashMap<(Option<Uuid>, &str), usize> = HashMap::new();
        for c in &self.claims {
            *per_claim
                .entry((c.claim_batch_id, c.aggregate_id.as_str()))
                .or_default() += 1;
        }
        per_claim.values().copied().max().unwrap_or(0)
    }

    /// The claims of event `seq`, oldest first.
    pub fn claims_of(&self, seq: i64) -> Vec<&ClaimRecord> {
        self.claims.iter().filter(|c| c.seq == seq).collect()
    }

    /// The seqs one claim held.
    pub fn claimed_together(&self, claim_batch_id: Option<Uuid>) -> BTreeSet<i64> {
        self.claims
            .iter()
            .filter(|c| c.claim_batch_id == claim_batch_id)
            .map(|c| c.seq)
            .collect()
    }

    /// The settle that made `seq` done, if one did.
    pub fn done_of(&self, seq: i64) -> Option<&DoneRecord> {
        self.done.iter().find(|d| d.seq == seq)
    }

    /// The workers that claimed anything.
    pub fn workers(&self) -> BTreeSet<&str> {
        self.claims
            .iter()
            .filter_map(|c| c.claimed_by.as_deref())
            .collect()
    }
}

/// `violations`, as an assertion message: how many, and the first few.
pub fn describe_violations(violations: &[String]) -> String {
    let shown: Vec<&str> = violations.iter().take(15).map(String::as_str).collect();
    format!(
        "{} order violation(s), first {}:\n  {}",
        violations.len(),
        shown.len(),
        shown.join("\n  ")
    )
}
